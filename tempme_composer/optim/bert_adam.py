"""BertAdam: Adam without bias correction, with an internal warmup schedule (the research codebases' default).

Behaviour as described in docs/reference/stop.md#optimisation item 3 (own implementation): per parameter
tensor, optionally clip the gradient to ``max_grad_norm``; ``m = β1·m + (1-β1)·g``,
``v = β2·v + (1-β2)·g²`` (no bias correction);
``update = m / (√v + eps) + weight_decay·p``; ``p -= lr · schedule(step / t_total, warmup) · update`` where
``step`` counts the optimizer steps already taken by that tensor (so the first step uses factor 0 under
warmup). ``warmup_cosine``: ``x / warmup`` for ``x < warmup``, else ``½(1 + cos(π x))`` (no re-scaling after
warmup, so there is a small drop at ``x = warmup``, as in the reference).

Composer integration: ``step(closure=None)`` (Composer passes a closure under fp32/bf16); the schedule lives
inside the optimizer, so the Trainer gets ``schedulers=None``; ``t_total`` counts optimizer steps (batches),
not microbatches. ``group['lr']`` stays the base learning rate (what torch's checkpoint code zeroes to make a
no-op step); the scheduled value of the last step is written to ``group['scheduled_lr']``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ['BertAdam', 'SCHEDULES', 'warmup_constant', 'warmup_cosine', 'warmup_linear']

log = logging.getLogger(__name__)


def warmup_cosine(x: float, warmup: float = 0.002) -> float:
    """Linear warmup to 1 over the first ``warmup`` fraction, then ``½(1 + cos(π x))`` of the progress x."""
    if x < warmup:  # never true for warmup <= 0
        return x / warmup
    return 0.5 * (1.0 + math.cos(math.pi * x))


def warmup_constant(x: float, warmup: float = 0.002) -> float:
    """Linear warmup, then 1."""
    return x / warmup if x < warmup else 1.0


def warmup_linear(x: float, warmup: float = 0.002) -> float:
    """Linear warmup, then linear decay ``1 - x`` (clamped at 0)."""
    return x / warmup if x < warmup else max(1.0 - x, 0.0)


SCHEDULES: dict[str, Callable[[float, float], float]] = {
    'warmup_cosine': warmup_cosine,
    'warmup_constant': warmup_constant,
    'warmup_linear': warmup_linear,
}


class BertAdam(Optimizer):
    """Adam (no bias correction) with decoupled-style weight decay and an internal warmup schedule.

    Args:
        params: parameters or param groups (groups may override ``lr`` and ``weight_decay``).
        lr: base learning rate.
        warmup: warmup fraction of ``t_total`` (``-1``: none).
        t_total: total optimizer steps (``-1``: constant lr, no schedule).
        schedule: a key of `SCHEDULES`.
        betas, eps: Adam coefficients.
        weight_decay: added to the update as ``weight_decay · p`` (multiplied by the scheduled lr).
        max_grad_norm: per-tensor gradient clipping threshold (``<= 0``: off).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        warmup: float = -1,
        t_total: int = -1,
        schedule: str = 'warmup_cosine',
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        max_grad_norm: float = 1.0,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f'invalid learning rate {lr}')
        if schedule not in SCHEDULES:
            raise ValueError(f'invalid schedule {schedule!r}; expected one of {sorted(SCHEDULES)}')
        if not (0.0 <= warmup < 1.0 or warmup == -1):
            raise ValueError(f'invalid warmup {warmup}; expected a fraction in [0, 1) or -1')
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f'invalid betas {betas}')
        if eps < 0.0:
            raise ValueError(f'invalid eps {eps}')
        defaults = dict(
            lr=lr,
            warmup=warmup,
            t_total=t_total,
            schedule=schedule,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
        )
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load moments, step counts and lrs, but keep this run's schedule (``t_total``, ``warmup``,
        ``schedule``): resuming with more epochs must stretch the schedule, not replay the old one."""
        keys = ('t_total', 'warmup', 'schedule')
        current = [{k: g[k] for k in keys} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, keep in zip(self.param_groups, current, strict=True):
            if any(group.get(k) != v for k, v in keep.items()):
                log.info('BertAdam: checkpoint schedule %s replaced by this run\'s %s',
                         {k: group.get(k) for k in keys}, keep)
            group.update(keep)

    def lr_factor(self, group: dict[str, Any], step: int) -> float:
        """The schedule's multiplier of ``group['lr']`` for a tensor that has taken ``step`` steps."""
        if group['t_total'] == -1:
            return 1.0
        return SCHEDULES[group['schedule']](step / group['t_total'], group['warmup'])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group['betas']
            for p in group['params']:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError('BertAdam does not support sparse gradients')
                state = self.state[p]
                if not state:
                    state['step'] = torch.tensor(0.0)
                    state['exp_avg'] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state['exp_avg_sq'] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group['max_grad_norm'] > 0:
                    torch.nn.utils.clip_grad_norm_(p, group['max_grad_norm'])
                grad = p.grad
                exp_avg, exp_avg_sq = state['exp_avg'], state['exp_avg_sq']
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                update = exp_avg / (exp_avg_sq.sqrt() + group['eps'])
                if group['weight_decay'] > 0.0:
                    update.add_(p, alpha=group['weight_decay'])
                lr = group['lr'] * self.lr_factor(group, int(state['step']))
                group['scheduled_lr'] = lr
                p.add_(update, alpha=-lr)
                state['step'] += 1
        return loss
