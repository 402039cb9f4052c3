"""STOP's shared prompt generator (DGL's "shared latent space"): deep text and per-frame visual prompts for
every layer, from parameters only (docs/reference/stop.md#shared-prompt-generator).

The output does not depend on the input, so it is computed **once per forward** and broadcast over the batch
(the reference recomputes it for every sample, ≈9.9 GFLOP per video at ViT-B/32;
docs/reference/stop.md, "Reference bugs" item 22).

- ``transformer`` mode (default): ``unified_prompt_embedding`` (``N_txt + N_loc·T`` tokens, each a
  ``layers × D_v`` vector, N(0, 1) init) → one pre-LN ``prompt_transformer`` block (``D_v // 64`` heads) run on
  each layer's tokens as an independent sequence → text prompts through ``unified_prompt_mlp``
  (``D_v → 2·D_v → D_t``, QuickGELU), visual prompts as they are (frame-major: row ``t·N_loc + k``).
- ``linear`` mode: ``visual_prompt_embedding`` ``[1, N_loc, layers·D_v]`` (uniform ±√(6/(3·p²+D_v))) per
  layer → visual prompts tiled over the T frames; text prompts = ``[prefix_text_prompt_proj(V),
  postfix_text_prompt_proj(V)]`` (so ``N_txt = 2·N_loc``).

``layers = max(vision layers, text layers)``; text uses the first ``text layers`` rows, vision the first
``vision layers`` (the reference requires both to be 12). Every parameter name contains ``prompt``.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import nn

from tempme_composer.clip.towers import QuickGELU, ResidualAttentionBlock

__all__ = ['PromptGenerator', 'StopPrompts', 'uniform_prompt_bound']


class StopPrompts(NamedTuple):
    """Per-layer prompts, shared by every sample of a batch."""

    text: torch.Tensor  # [text_layers, N_txt, D_t]
    visual: torch.Tensor  # [vision_layers, T * N_loc, D_v], frame-major


def uniform_prompt_bound(patch_size: int, width: int) -> float:
    """VPT's uniform init bound ``sqrt(6 / (3·p² + width))`` (0.0395 for ViT-B/32)."""
    return math.sqrt(6.0 / (3 * patch_size * patch_size + width))


class PromptGenerator(nn.Module):
    """Deep text prompts and per-frame visual prompts for every layer (see module doc).

    Args:
        mode: ``transformer`` or ``linear``.
        vision_width / text_width: ``D_v`` / ``D_t``.
        vision_layers / text_layers: blocks of each tower.
        patch_size: for the linear-mode init bound.
        num_frames: ``T`` (the visual prompt count is ``N_loc·T``).
        text_prompts: ``N_txt`` (transformer mode; linear mode uses ``2·N_loc``).
        local_prompts: ``N_loc`` per frame.
    """

    def __init__(
        self,
        mode: Literal['transformer', 'linear'],
        *,
        vision_width: int,
        text_width: int,
        vision_layers: int,
        text_layers: int,
        patch_size: int,
        num_frames: int,
        text_prompts: int,
        local_prompts: int,
    ) -> None:
        super().__init__()
        if mode not in ('transformer', 'linear'):
            raise ValueError(f"prompt generator mode must be 'transformer' or 'linear', got {mode!r}")
        self.mode = mode
        self.vision_width, self.text_width = vision_width, text_width
        self.vision_layers, self.text_layers = vision_layers, text_layers
        self.layers = max(vision_layers, text_layers)
        self.num_frames = num_frames
        self.local_prompts = local_prompts
        if mode == 'transformer':
            self.text_prompts = text_prompts
            num = text_prompts + local_prompts * num_frames
            self.unified_prompt_embedding = nn.Embedding(num, self.layers * vision_width)
            self.prompt_transformer = ResidualAttentionBlock(vision_width, max(1, vision_width // 64))
            self._init_prompt_transformer()
            self.unified_prompt_mlp = nn.Sequential()
            self.unified_prompt_mlp.add_module('c_fc', nn.Linear(vision_width, 2 * vision_width))
            self.unified_prompt_mlp.add_module('gelu', QuickGELU())
            self.unified_prompt_mlp.add_module('c_proj', nn.Linear(2 * vision_width, text_width))
        else:
            self.text_prompts = 2 * local_prompts
            bound = uniform_prompt_bound(patch_size, vision_width)
            self.visual_prompt_embedding = nn.Parameter(
                torch.empty(1, local_prompts, self.layers * vision_width).uniform_(-bound, bound)
            )
            self.prefix_text_prompt_proj = nn.Linear(vision_width, text_width)
            self.postfix_text_prompt_proj = nn.Linear(vision_width, text_width)

    def _init_prompt_transformer(self) -> None:
        """PyTorch defaults of ``nn.MultiheadAttention``/``nn.Linear``/``LayerNorm`` (the reference's init)."""
        block = self.prompt_transformer
        nn.init.xavier_uniform_(block.attn.in_proj_weight)
        nn.init.zeros_(block.attn.in_proj_bias)
        block.attn.out_proj.reset_parameters()
        nn.init.zeros_(block.attn.out_proj.bias)
        block.mlp.c_fc.reset_parameters()
        block.mlp.c_proj.reset_parameters()

    def forward(self) -> StopPrompts:
        """Prompts for every layer (no batch dimension: broadcast them)."""
        if self.mode == 'transformer':
            emb = self.unified_prompt_embedding.weight  # [N_u, layers * D_v]
            emb = emb.view(-1, self.layers, self.vision_width).transpose(0, 1)  # [layers, N_u, D_v]
            z = self.prompt_transformer(emb)  # each layer's prompts attend among themselves
            text = self.unified_prompt_mlp(z[:, : self.text_prompts])  # [layers, N_txt, D_t]
            visual = z[:, self.text_prompts :]  # [layers, N_loc * T, D_v]
        else:
            v = self.visual_prompt_embedding.view(self.local_prompts, self.layers, self.vision_width)
            v = v.transpose(0, 1)  # [layers, N_loc, D_v]
            text = torch.cat([self.prefix_text_prompt_proj(v), self.postfix_text_prompt_proj(v)], dim=1)
            visual = v.repeat(1, self.num_frames, 1)  # every frame starts from the same N_loc prompts
        return StopPrompts(text=text[: self.text_layers], visual=visual[: self.vision_layers])
