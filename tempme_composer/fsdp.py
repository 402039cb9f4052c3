"""What FSDP needs from the model before Composer wraps it: its FSDP units, and no 0-d parameter.

Units. Composer wraps ``RetrievalModel.model`` (the `UnifiedModel`) as one FSDP unit, plus every submodule
flagged ``_fsdp_wrap``; a unit gathers its sharded parameters only around its own ``forward``. The baseline
runs each residual block through ``block.forward``, so each block is its own unit (one block's parameters
gathered at a time) and may be activation-checkpointed. TempMe and STOP run the blocks piece by piece, which a
per-block unit would not see (it would read shards), so with them the whole model is one unit: parameters,
gradients and optimizer state stay sharded between steps, the parameters are gathered for each forward and
backward (0.9 GB in bf16 even for ViT-L/14).

Scalars. torch's FullyShardedDataParallel refuses 0-d parameters ("FSDP doesn't support scalar parameters"),
and CLIP's learned temperature ``clip.logit_scale`` is one (OpenAI's checkpoints store it 0-d). Under FSDP the
recipe turns it into a 1-element vector; ``CLIP`` loads either shape (``CLIP._accept_either_logit_scale``)
and the checkpoint preflight treats ``[]`` and ``[1]`` as the same shape, so checkpoints of FSDP and DDP runs
resume, evaluate and fine-tune interchangeably.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

__all__ = [
    'mark_fsdp_units',
    'parallelism_config',
    'prepare_for_fsdp',
    'same_shape_up_to_scalar',
    'vectorise_scalar_parameters',
]


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


def mark_fsdp_units(model: nn.Module, activation_checkpointing: bool) -> None:
    """Flag each residual block (``*.resblocks.<i>``) for Composer's auto-wrap."""
    for name, module in model.named_modules():
        parent, _, last = name.rpartition('.')
        if parent.endswith('.resblocks') and last.isdigit():  # one ResidualAttentionBlock
            module._fsdp_wrap = True  # Composer's auto_wrap wraps modules flagged like this
            module._activation_checkpointing = activation_checkpointing


def prepare_for_fsdp(model: nn.Module, activation_checkpointing: bool, per_block_units: bool) -> None:
    """In place, what ``train`` does when the config has an ``fsdp`` section: vectorise the scalar parameters
    and, with ``per_block_units`` (the model calls every block whole), flag each block as its own unit."""
    if activation_checkpointing and not per_block_units:
        raise ValueError(
            'activation checkpointing needs per-block units (a model that calls every block whole)'
        )
    vectorise_scalar_parameters(model)
    if per_block_units:
        mark_fsdp_units(model, activation_checkpointing)


def same_shape_up_to_scalar(a: torch.Size | tuple, b: torch.Size | tuple) -> bool:
    """``[]`` and ``[1]`` count as the same shape (a 0-d parameter vectorised for FSDP); otherwise exact."""
    a, b = tuple(a), tuple(b)
    return a == b or {a, b} == {(), (1,)}


def parallelism_config(fsdp: Any | None) -> dict[str, Any] | None:
    """Composer's ``parallelism_config`` for the ``fsdp`` config section (None: DDP). Full state dicts and
    original parameters, so checkpoints load into a DDP run and the optimizer sees the named parameters."""
    if fsdp is None:
        return None
    return {'fsdp': {**dataclasses.asdict(fsdp), 'state_dict_type': 'full', 'use_orig_params': True}}
