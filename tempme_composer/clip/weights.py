"""Read OpenAI CLIP checkpoints from a local file and load them into ``CLIP`` (no downloads, ever).

Reading, config inference and key remapping are separate pure steps so each can be tested alone:

    sd = read_openai_state_dict(path)        # OpenAI key names, checkpoint dtype
    config = infer_clip_config(sd)           # from shapes, like OpenAI's ``build_model``
    model = CLIP(config)
    model.load_state_dict(openai_to_ours(sd), strict=True)

``load_clip`` does all of it and turns every mismatch into a ``CLIPCheckpointError`` that names the offending
keys. OpenAI keeps the text tower at the top level (``transformer.*``, ``token_embedding``, ...); we keep it
under ``text.``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from tempme_composer.clip.config import CLIPConfig
from tempme_composer.clip.torchscript_archive import (
    TorchScriptArchiveError,
    is_torchscript_archive,
    read_torchscript_state_dict,
)
from tempme_composer.clip.towers import CLIP

__all__ = [
    'CLIPCheckpointError',
    'infer_clip_config',
    'load_clip',
    'load_openai_weights',
    'openai_to_ours',
    'ours_to_openai',
    'read_openai_state_dict',
]

log = logging.getLogger(__name__)

# Non-parameter entries that OpenAI's TorchScript archives carry in their state dict.
_OPENAI_EXTRA_KEYS = ('input_resolution', 'context_length', 'vocab_size')
# Top-level OpenAI names that belong to the text tower.
_TEXT_PREFIXES = ('transformer.', 'token_embedding.', 'ln_final.')
_TEXT_KEYS = ('positional_embedding', 'text_projection')
# Entries ``infer_clip_config`` needs (OpenAI names).
_REQUIRED_KEYS = (
    'visual.conv1.weight',
    'visual.positional_embedding',
    'token_embedding.weight',
    'positional_embedding',
    'ln_final.weight',
    'text_projection',
)
_EXPECTED_FORMAT = "an OpenAI CLIP TorchScript archive or a torch.save'd state dict with OpenAI key names"
_MAX_LISTED = 10


class CLIPCheckpointError(ValueError):
    """A CLIP checkpoint is missing, unreadable, or does not match the architecture it should describe."""


def read_openai_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a local OpenAI CLIP checkpoint into a state dict with OpenAI key names (dtype as stored).

    Accepts OpenAI's TorchScript archives (``ViT-B-32.pt`` etc.) and plain ``torch.save``d state dicts,
    optionally nested under ``'state_dict'`` and/or prefixed with ``module.``.

    Raises:
        CLIPCheckpointError: if the file is missing or is not one of the accepted formats.
    """
    path = Path(path)
    if not path.is_file():
        raise CLIPCheckpointError(
            f'CLIP checkpoint not found: {path}' + (' (it is a directory)' if path.is_dir() else '')
        )
    try:
        if is_torchscript_archive(path):
            sd = read_torchscript_state_dict(path)  # tensors only: no TorchScript, no code from the file
        else:
            sd = torch.load(path, map_location='cpu', weights_only=True)
    except TorchScriptArchiveError as err:  # already one line naming the file and what is wrong
        raise CLIPCheckpointError(str(err)) from err
    except Exception as err:  # a file-format boundary: any parser failure means "not a checkpoint"
        raise CLIPCheckpointError(
            f'cannot read CLIP checkpoint {path}: expected {_EXPECTED_FORMAT} ({type(err).__name__}: {err})'
        ) from err
    if isinstance(sd, Mapping) and isinstance(sd.get('state_dict'), Mapping):
        sd = sd['state_dict']
    if not isinstance(sd, Mapping):
        raise CLIPCheckpointError(f'{path} holds a {type(sd).__name__}, but expected {_EXPECTED_FORMAT}')
    sd = dict(sd)
    if sd and all(isinstance(k, str) and k.startswith('module.') for k in sd):
        sd = {k[len('module.') :]: v for k, v in sd.items()}  # saved from a DDP-wrapped model
    not_tensors = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CLIPCheckpointError(
            f'{path} is not a state dict of tensors (offending keys: {_short_list(not_tensors)}); '
            f'expected {_EXPECTED_FORMAT}'
        )
    if 'token_embedding.weight' not in sd:
        hint = ''
        if 'text.token_embedding.weight' in sd:
            hint = ' It uses tempme_composer names (text.*); convert it with ours_to_openai first.'
        raise CLIPCheckpointError(
            f"{path} is not an OpenAI CLIP checkpoint: no 'token_embedding.weight' among its {len(sd)} keys "
            f'(first: {_short_list(sd, 5)}); expected {_EXPECTED_FORMAT}.{hint}'
        )
    log.debug('read %d entries from %s', len(sd), path)
    return sd


def infer_clip_config(sd: Mapping[str, torch.Tensor]) -> CLIPConfig:
    """Infer the architecture from the tensor shapes of an OpenAI-named state dict (OpenAI's ``build_model``).

    Head counts follow OpenAI's rule (one head per 64 channels) because they leave no trace in the shapes.

    Raises:
        CLIPCheckpointError: for ResNet CLIP backbones, missing required keys, or inconsistent shapes.
    """
    if any(k.startswith('visual.layer1.') for k in sd):
        raise CLIPCheckpointError(
            'only ViT CLIP models are supported; this checkpoint has a ResNet visual backbone'
        )
    missing = [k for k in _REQUIRED_KEYS if k not in sd]
    vision_layers = _count_blocks(sd, 'visual.transformer.resblocks.')
    text_layers = _count_blocks(sd, 'transformer.resblocks.')
    if vision_layers == 0:
        missing.append('visual.transformer.resblocks.*')
    if text_layers == 0:
        missing.append('transformer.resblocks.*')
    if missing:
        raise CLIPCheckpointError(f'CLIP state dict is missing required keys: {", ".join(missing)}')

    conv = sd['visual.conv1.weight']  # [vision_width, 3, patch, patch]
    vision_width, patch_size = conv.shape[0], conv.shape[-1]
    num_tokens = sd['visual.positional_embedding'].shape[0]  # grid**2 + 1
    grid = math.isqrt(num_tokens - 1)
    if grid * grid != num_tokens - 1:
        raise CLIPCheckpointError(
            f'visual.positional_embedding has {num_tokens} rows; expected grid**2 + 1 for a square patch grid'
        )
    transformer_width = sd['ln_final.weight'].shape[0]
    try:
        return CLIPConfig(
            embed_dim=sd['text_projection'].shape[1],
            image_resolution=grid * patch_size,
            vision_layers=vision_layers,
            vision_width=vision_width,
            vision_patch_size=patch_size,
            context_length=sd['positional_embedding'].shape[0],
            vocab_size=sd['token_embedding.weight'].shape[0],
            transformer_width=transformer_width,
            transformer_heads=max(transformer_width // 64, 1),
            transformer_layers=text_layers,
            vision_heads=max(vision_width // 64, 1),
        )
    except ValueError as err:
        raise CLIPCheckpointError(f'CLIP state dict describes an invalid architecture: {err}') from err


def openai_to_ours(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename OpenAI keys to ours: the top-level text tower moves under ``text.``; ``visual.*`` and
    ``logit_scale`` stay; the archive's non-parameter entries are dropped. Unknown keys pass through unchanged
    (so a strict load reports them)."""
    out = {}
    for key, value in sd.items():
        if key in _OPENAI_EXTRA_KEYS:
            continue
        if key.startswith(_TEXT_PREFIXES) or key in _TEXT_KEYS:
            key = f'text.{key}'
        out[key] = value
    return out


def ours_to_openai(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of ``openai_to_ours`` (without re-adding the archive's non-parameter entries)."""
    return {(key[len('text.') :] if key.startswith('text.') else key): value for key, value in sd.items()}


def load_openai_weights(model: CLIP, path: str | os.PathLike) -> CLIP:
    """Load an OpenAI checkpoint into an existing ``model`` (strict, fp32-cast to the model's dtype).

    Raises:
        CLIPCheckpointError: if the file is unreadable, its architecture differs from ``model.config``, or any
            key or shape does not match.
    """
    path = Path(path)
    sd = read_openai_state_dict(path)
    _check_config(infer_clip_config(sd), model.config, path)
    _load_strict(model, openai_to_ours(sd), path)
    return model


def load_clip(path: str | os.PathLike, *, expected: CLIPConfig | None = None) -> CLIP:
    """Build a ``CLIP`` with the architecture inferred from the checkpoint at ``path``; load it (fp32).

    Args:
        path: local OpenAI CLIP checkpoint (TorchScript archive or state dict).
        expected: if given, the inferred architecture must equal it (catches a YAML/checkpoint mismatch).

    Raises:
        CLIPCheckpointError: if the file is unreadable, the architecture differs from ``expected``, or any key
            or shape does not match the model.
    """
    path = Path(path)
    sd = read_openai_state_dict(path)
    config = infer_clip_config(sd)
    if expected is not None:
        _check_config(config, expected, path)
    c = config
    log.info(
        'CLIP from %s: ViT %d layers x %d wide (%d heads), %dpx, %dpx patches (%d tokens); '
        'text %d layers x %d wide (%d heads), context %d, vocab %d; embed_dim %d',
        path, c.vision_layers, c.vision_width, c.vision_heads, c.image_resolution, c.vision_patch_size,
        c.num_visual_tokens, c.transformer_layers, c.transformer_width, c.transformer_heads, c.context_length,
        c.vocab_size, c.embed_dim,
    )  # fmt: skip
    model = CLIP(config)
    _load_strict(model, openai_to_ours(sd), path)
    return model


def _count_blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of distinct block indices under ``prefix`` (e.g. ``transformer.resblocks.``)."""
    return len({k[len(prefix) :].split('.', 1)[0] for k in sd if k.startswith(prefix)})


def _check_config(found: CLIPConfig, expected: CLIPConfig, path: Path) -> None:
    """Raise naming every field where the checkpoint's architecture differs from the configured one."""
    diffs = [
        f'{name}: expected {getattr(expected, name)}, checkpoint has {getattr(found, name)}'
        for name in (f.name for f in dataclasses.fields(CLIPConfig))
        if getattr(found, name) != getattr(expected, name)
    ]
    if diffs:
        raise CLIPCheckpointError(
            f'CLIP checkpoint {path} does not match the configured architecture: ' + '; '.join(diffs)
        )


def _load_strict(model: CLIP, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    """``load_state_dict(strict=True)`` after our own check, which names every bad key and shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong_shape = [
        f'{k} (expected {list(own[k].shape)}, found {list(sd[k].shape)})'
        for k in own
        if k in sd and own[k].shape != sd[k].shape
    ]
    problems = []
    if missing:
        problems.append(f'missing keys (our names): {_short_list(missing)}')
    if unexpected:
        problems.append(f'unexpected keys (our names): {_short_list(unexpected)}')
    if wrong_shape:
        problems.append(f'shape mismatches: {_short_list(wrong_shape)}')
    if problems:
        raise CLIPCheckpointError(f'CLIP checkpoint {path} does not fit the model: ' + '; '.join(problems))
    dtype = next(model.parameters()).dtype  # fp32 unless the caller built the model otherwise
    model.load_state_dict(
        {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}, strict=True
    )


def _short_list(items: Iterable[object], limit: int = _MAX_LISTED) -> str:
    """Comma-join at most ``limit`` items so an error message stays readable for a wholly wrong file."""
    items = [str(i) for i in items]
    shown = ', '.join(items[:limit])
    return shown + (f', ... and {len(items) - limit} more' if len(items) > limit else '')
