"""STOP's bottleneck adapters (called ``LoRA`` in STOP/DGL code, but not low-rank weight updates).

Per CLIP block (docs/reference/stop.md#adapters): ``x_attn = x + attn(ln_1(x))``, then
``x_out = x_attn + mlp(ln_2(x_attn)) + scale * LoRA(x_attn)`` with
``LoRA = Sequential(Linear(d, bottleneck), PReLU(), Linear(bottleneck, d))`` reading the **un-normalised**
residual stream, PyTorch default init (active from step 0), scale 0.1, bottleneck 32, in both towers.
Parameter names are ``...resblocks.N.LoRA.{0,1,2}.*`` so ``freeze_clip`` keeps them trainable.

`apply_adapters` swaps each `ResidualAttentionBlock` to `AdapterBlock` in place: only the ``mlp_residual``
seam differs, so prompts, token merging and TempMe's QKV LoRA compose with it.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from tempme_composer.clip.towers import ResidualAttentionBlock

__all__ = ['AdapterBlock', 'apply_adapters']

log = logging.getLogger(__name__)


class AdapterBlock(ResidualAttentionBlock):
    """`ResidualAttentionBlock` plus a bottleneck adapter on the MLP residual; built only by `apply_adapters`."""

    LoRA: nn.Sequential
    adapter_scale: float

    def mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        """``x + mlp(ln_2(x)) + scale * LoRA(x)``."""
        return x + self.mlp(self.ln_2(x)) + self.adapter_scale * self.LoRA(x)


def apply_adapters(towers: nn.Module, bottleneck: int = 32, scale: float = 0.1) -> int:
    """Add an adapter to every plain `ResidualAttentionBlock` under ``towers``; returns how many.

    Raises:
        ValueError: ``bottleneck`` is not positive, or there is no un-patched block.
    """
    if isinstance(bottleneck, bool) or not isinstance(bottleneck, int) or bottleneck <= 0:
        raise ValueError(f'adapter bottleneck must be a positive int, got {bottleneck!r}')
    patched = 0
    for block in towers.modules():
        if type(block) is not ResidualAttentionBlock:
            continue
        width = block.ln_1.normalized_shape[0]
        ref = block.mlp.c_fc.weight
        adapter = nn.Sequential(nn.Linear(width, bottleneck), nn.PReLU(), nn.Linear(bottleneck, width))
        block.__class__ = AdapterBlock
        block.LoRA = adapter.to(device=ref.device, dtype=ref.dtype)
        block.adapter_scale = float(scale)
        patched += 1
    if not patched:
        raise ValueError('apply_adapters found no CLIP block to patch (already patched, or not a CLIP model)')
    count = sum(p.numel() for n, p in towers.named_parameters() if '.LoRA.' in n)
    log.info('STOP adapters (bottleneck %d, scale %g) in %d blocks (%d parameters)', bottleneck, scale, patched, count)
    return patched
