"""TempMe's LoRA on the fused QKV input projection of every CLIP attention layer (both towers).

Per attention layer (docs/reference/tempme.md#trainable-parameters):
``[q | k | v] = x W_inᵀ + b_in + (x LoRA_aᵀ) LoRA_bᵀ`` with
``LoRA_a`` ``[rank, C]`` (Kaiming-uniform, a=√5, i.e. U(−1/√C, 1/√C)) and ``LoRA_b`` ``[3C, rank]``
(zeros), no α/r scaling and no dropout, so the patched model starts equal to CLIP. Parameter names are
``...attn.LoRA_a`` / ``...attn.LoRA_b``: they contain ``LoRA``, so ``freeze_clip`` keeps them trainable
(`tempme_composer.algorithms.freeze.NEW_MODULE_SUBSTRINGS`). For ViT-B/32 and rank 8 that is 491,520 elements.

`apply_lora` swaps each plain `Attention` to `LoRAAttention` in place (only ``project_qkv`` differs, the
seam the CLIP module exposes); `fold_lora` adds ``LoRA_b @ LoRA_a`` into ``in_proj_weight`` and swaps back.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from tempme_composer.clip.towers import Attention

__all__ = ['LoRAAttention', 'apply_lora', 'fold_lora', 'lora_parameter_count']

log = logging.getLogger(__name__)


class LoRAAttention(Attention):
    """`Attention` whose fused QKV projection adds a rank-``r`` update; built only by `apply_lora`."""

    LoRA_a: nn.Parameter  # [rank, C]
    LoRA_b: nn.Parameter  # [3C, rank]

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, L, C] -> [N, L, 3C]``: frozen projection plus ``(x Aᵀ) Bᵀ`` (scale 1)."""
        base = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        return base + F.linear(F.linear(x, self.LoRA_a.to(x.dtype)), self.LoRA_b.to(x.dtype))


def apply_lora(model: nn.Module, rank: int = 8) -> int:
    """Add LoRA (rank ``rank``) to every plain `Attention` in ``model``; returns how many were patched.

    Raises:
        ValueError: ``rank`` is not positive, or ``model`` has no un-patched `Attention` (nothing to do).
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f'LoRA rank must be a positive int, got {rank!r}')
    patched = 0
    for module in model.modules():
        if type(module) is not Attention:
            continue
        weight = module.in_proj_weight  # [3C, C]
        dd = {'device': weight.device, 'dtype': weight.dtype}
        a = torch.empty(rank, module.width, **dd)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # U(-1/sqrt(C), 1/sqrt(C)), like nn.Linear
        module.__class__ = LoRAAttention
        module.LoRA_a = nn.Parameter(a)
        module.LoRA_b = nn.Parameter(torch.zeros(3 * module.width, rank, **dd))  # zero: starts equal to CLIP
        patched += 1
    if not patched:
        raise ValueError(
            'apply_lora found no CLIP Attention layer to patch (already patched, or not a CLIP model)'
        )
    log.info(
        'LoRA rank %d added to %d attention layers (%d parameters)',
        rank,
        patched,
        lora_parameter_count(model),
    )
    return patched


@torch.no_grad()
def fold_lora(model: nn.Module) -> int:
    """Merge every LoRA update into its frozen ``in_proj_weight`` and remove the LoRA parameters (inference).

    Returns the number of layers folded (0 if the model has no LoRA).
    """
    folded = 0
    for module in model.modules():
        if not isinstance(module, LoRAAttention):
            continue
        delta = module.LoRA_b.float() @ module.LoRA_a.float()  # [3C, C]
        module.in_proj_weight.add_(delta.to(module.in_proj_weight.dtype))
        del module.LoRA_a
        del module.LoRA_b
        module.__class__ = Attention
        folded += 1
    return folded


def lora_parameter_count(model: nn.Module) -> int:
    """Elements in the LoRA parameters of ``model``."""
    return sum(p.numel() for n, p in model.named_parameters() if 'LoRA' in n)
