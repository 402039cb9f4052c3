"""The references' parameter groups and the optimizer built over them (trainable parameters only).

Groups (docs/reference/stop.md#optimisation item 1, CLIP4Clip): pretrained CLIP parameters train at
``lr × coef_lr``, new modules (LoRA, prompts, TemporalPrompt; see `is_new_module`) at ``lr``; no weight
decay on biases, LayerNorm weights (every
tensor with fewer than 2 dimensions, which also covers ``class_embedding`` and the 0-d ``logit_scale``),
embeddings (a name containing ``embedding``) and ``logit_scale``. Frozen parameters (``requires_grad=False``)
are left out, so freeze before building the optimizer.
"""

from __future__ import annotations

from typing import Any

import torch

from tempme_composer.algorithms.freeze import is_clip_backbone

__all__ = ['build_optimizer', 'param_groups']


def param_groups(
    model: torch.nn.Module, lr: float, coef_lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Up to four groups, ordered (new, decay), (new, no decay), (CLIP, decay), (CLIP, no decay); empty
    groups are left out."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or 'embedding' in name or 'logit_scale' in name
        groups.setdefault((is_clip_backbone(name), no_decay), []).append(param)
    return [
        {
            'params': params,
            'lr': lr * (coef_lr if pretrained else 1.0),
            'weight_decay': 0.0 if no_decay else weight_decay,
        }
        for (pretrained, no_decay), params in sorted(groups.items())
    ]


def build_optimizer(
    model: torch.nn.Module,
    optim: str,
    lr: float,
    coef_lr: float = 1.0,
    weight_decay: float = 0.2,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
    warmup_proportion: float = 0.1,
    t_total: int = -1,
    max_grad_norm: float | None = None,
) -> torch.optim.Optimizer:
    """``AdamW``: torch AdamW (decoupled weight decay multiplied by lr; the warmup-cosine schedule is
    Composer's, built by the caller). ``BertAdam``: `BertAdam` with its internal ``warmup_cosine`` over
    ``t_total`` optimizer steps and per-tensor clipping at ``max_grad_norm`` (None: off)."""
    groups = param_groups(model, lr, coef_lr, weight_decay)
    if not groups:
        raise ValueError('the model has no trainable parameter to optimize')
    if optim == 'AdamW':
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    if optim == 'BertAdam':
        from tempme_composer.optim.bert_adam import BertAdam

        return BertAdam(
            groups,
            lr=lr,
            warmup=warmup_proportion,
            t_total=t_total,
            schedule='warmup_cosine',
            betas=tuple(betas),
            eps=eps,
            max_grad_norm=max_grad_norm or 0.0,
        )
    raise ValueError(f"unknown optimizer {optim!r}; expected 'AdamW' or 'BertAdam'")
