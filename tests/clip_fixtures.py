"""Test helpers: a tiny random CLIP, and writers for both OpenAI checkpoint formats (no downloads needed).

``save_openai_torchscript`` produces an archive shaped like OpenAI's ``ViT-B-32.pt``: a TorchScript module
whose ``state_dict()`` has OpenAI's key names plus ``input_resolution``/``context_length``/``vocab_size``.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from tempme_composer.clip import CLIP, CLIP_PRESETS, ours_to_openai

__all__ = ['save_openai_state_dict', 'save_openai_torchscript', 'tiny_clip']

log = logging.getLogger(__name__)


def tiny_clip(seed: int = 0) -> CLIP:
    """A randomly initialised ``tiny`` preset CLIP, deterministic in ``seed``, in eval mode."""
    torch.manual_seed(seed)
    return CLIP(CLIP_PRESETS['tiny']).eval()


def save_openai_state_dict(model: CLIP, path: str | os.PathLike, *, nested: bool = False) -> None:
    """``torch.save`` the weights under OpenAI key names (optionally nested under ``'state_dict'``)."""
    sd = ours_to_openai(model.state_dict())
    torch.save({'state_dict': sd} if nested else sd, path)


def save_openai_torchscript(
    model: CLIP, path: str | os.PathLike, *, dtype: torch.dtype | None = None, traced: bool = False
) -> None:
    """Write a TorchScript archive whose ``state_dict()`` is like OpenAI's (optionally cast, e.g. fp16).

    ``traced=True`` makes it with ``torch.jit.trace``, as OpenAI made theirs; otherwise ``torch.jit.script``.
    """
    sd = {
        k: (v.to(dtype) if dtype is not None else v).detach().clone()
        for k, v in ours_to_openai(model.state_dict()).items()
    }
    config = model.config
    extras = {
        'input_resolution': config.image_resolution,
        'context_length': config.context_length,
        'vocab_size': config.vocab_size,
    }
    holder = _OpenAIHolder(sd, extras)
    if traced:
        example = torch.zeros(1, dtype=next(iter(sd.values())).dtype)
        module = torch.jit.trace(holder, example, check_trace=False)
    else:
        module = torch.jit.script(holder)
    torch.jit.save(module, str(path))


class _OpenAIHolder(nn.Module):
    """Registers each tensor at its dotted OpenAI name through nested empty modules; forward is a no-op."""

    def __init__(self, sd: dict[str, torch.Tensor], extras: dict[str, int]) -> None:
        super().__init__()
        for key, value in sd.items():
            *parents, leaf = key.split('.')
            module: nn.Module = self
            for name in parents:
                if not hasattr(module, name):
                    module.add_module(name, nn.Module())
                module = getattr(module, name)
            module.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
        for key, value in extras.items():
            self.register_buffer(key, torch.tensor(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
