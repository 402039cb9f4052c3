"""What FSDP needs from the model before Composer wraps it: one FSDP unit per residual block, no 0-d parameter.

torch's FullyShardedDataParallel refuses scalar parameters ("FSDP doesn't support scalar parameters"), and
CLIP's learned temperature ``clip.logit_scale`` is one (OpenAI's checkpoints store it 0-d). Under FSDP the
recipe turns it into a 1-element vector; ``CLIP`` loads either shape (``CLIP._accept_either_logit_scale``)
and the checkpoint preflight treats ``[]`` and ``[1]`` as the same shape, so checkpoints of FSDP and DDP runs
resume, evaluate and fine-tune interchangeably.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ['mark_fsdp_units', 'prepare_for_fsdp', 'same_shape_up_to_scalar', 'vectorise_scalar_parameters']


def vectorise_scalar_parameters(model: nn.Module) -> list[str]:
    """Replace every 0-d parameter by a 1-element 1-d one (same value, dtype, ``requires_grad``); returns names.

    Call before the optimizer exists: the optimizer must hold the new parameter objects.
    """
    replaced = []
    for module_name, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.dim() == 0:
                vector = nn.Parameter(param.detach().reshape(1).clone(), requires_grad=param.requires_grad)
                setattr(module, name, vector)
                replaced.append(f'{module_name}.{name}' if module_name else name)
    return replaced


def mark_fsdp_units(model: nn.Module, activation_checkpointing: bool) -> int:
    """Flag each residual block (``*.resblocks.<i>``) for Composer's auto-wrap; returns how many were flagged."""
    count = 0
    for name, module in model.named_modules():
        parent, _, last = name.rpartition('.')
        if parent.endswith('.resblocks') and last.isdigit():  # one ResidualAttentionBlock
            module._fsdp_wrap = True  # Composer's auto_wrap wraps modules flagged like this
            module._activation_checkpointing = activation_checkpointing
            count += 1
    return count


def prepare_for_fsdp(model: nn.Module, activation_checkpointing: bool) -> None:
    """Both of the above, in place: what ``train`` does when the config has an ``fsdp`` section."""
    vectorise_scalar_parameters(model)
    mark_fsdp_units(model, activation_checkpointing)


def same_shape_up_to_scalar(a: torch.Size | tuple, b: torch.Size | tuple) -> bool:
    """``[]`` and ``[1]`` count as the same shape (a 0-d parameter vectorised for FSDP); otherwise exact."""
    a, b = tuple(a), tuple(b)
    return a == b or {a, b} == {(), (1,)}
