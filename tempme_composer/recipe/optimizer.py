"""The optimizer and its schedule, as the optimizer section describes them."""

from __future__ import annotations

import torch
from composer.optim import CosineAnnealingWithWarmupScheduler

from tempme_composer import optim as recipe_optim
from tempme_composer.config import TrainConfig

__all__ = ['build_optimizer']


def build_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, CosineAnnealingWithWarmupScheduler | None]:
    """The optimizer over the trainable parameters (see `tempme_composer.optim.param_groups`) and its
    Composer scheduler: AdamW gets linear warmup over ``warmup_proportion`` of training then cosine decay to 0,
    stepped per batch; BertAdam schedules itself (``warmup_cosine`` over ``t_total = steps_per_epoch × epochs``
    optimizer steps), so the scheduler is None."""
    opt = cfg.optimizer
    optimizer = recipe_optim.build_optimizer(
        model,
        opt.optim,
        lr=opt.lr,
        coef_lr=opt.coef_lr,
        weight_decay=opt.weight_decay,
        betas=tuple(opt.betas),
        eps=opt.eps,
        warmup_proportion=opt.warmup_proportion,
        t_total=steps_per_epoch * cfg.epochs,
        max_grad_norm=opt.clip_grad_norm,
    )
    if opt.optim == 'BertAdam':
        return optimizer, None
    return optimizer, CosineAnnealingWithWarmupScheduler(t_warmup=f'{opt.warmup_proportion}dur', alpha_f=0.0)
