"""The ``algorithms:`` registry: the recipe's algorithms beside Composer's own, in the order a run builds them.

Default training run (no section): ``freeze_parameters`` (the seed keys freeze_clip, freeze_substrings,
keep_substrings), ``clamp_logit_scale`` (logit_scale_clamp, null: off), ``grad_cache``
(gradient_accumulation_steps > 1) and ``gradient_clipping`` (optimizer.clip_grad_norm with AdamW; BertAdam
clips itself). Evaluation-only runs have none. The others are added by name.
"""

from __future__ import annotations

from typing import Any

from composer.algorithms import EMA, SAM, SWA, GradientClipping, LowPrecisionLayerNorm

from tempme_composer.algorithms import ClampLogitScale, FreezeParameters, GradCache
from tempme_composer.recipe.context import RunContext
from tempme_composer.recipe.registry import Component, Registry

__all__ = ['ALGORITHMS', 'build_algorithms']


def _freeze(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    gradient_free = any(p.requires_grad for p in ctx.model.model.gradient_free_parameters())
    return {
        'freeze_clip': cfg.freeze_clip,
        'freeze_substrings': cfg.freeze_substrings,
        'keep_substrings': cfg.keep_substrings,
        'warn_absent': False,
        'gradient_free_trainables': gradient_free,
    }


def _clamp(ctx: RunContext) -> dict[str, Any]:
    clamp = ctx.cfg.logit_scale_clamp
    return {} if clamp is None else {'min': clamp.min, 'max': clamp.max}


def _clipping(ctx: RunContext) -> dict[str, Any]:
    threshold = ctx.cfg.optimizer.clip_grad_norm
    return {'clipping_type': 'norm', **({} if threshold is None else {'clipping_threshold': threshold})}


ALGORITHMS: Registry[RunContext] = Registry(
    'algorithms',
    {
        'freeze_parameters': Component.of_class(
            FreezeParameters,
            _freeze,
            in_default_run=lambda ctx: ctx.cfg.do_train,
            required='the optimizer is built over the parameters it leaves trainable (set freeze_clip, '
            'freeze_substrings or keep_substrings instead)',
        ),
        'clamp_logit_scale': Component.of_class(
            ClampLogitScale,
            _clamp,
            in_default_run=lambda ctx: ctx.cfg.do_train and ctx.cfg.logit_scale_clamp is not None,
        ),
        'grad_cache': Component.of_class(
            GradCache,
            in_default_run=lambda ctx: ctx.cfg.do_train and ctx.accumulation_steps > 1,
            required='with gradient_accumulation_steps > 1 it keeps the contrastive loss over the whole batch '
            '(set gradient_accumulation_steps=1 instead)',
        ),
        'gradient_clipping': Component.of_class(
            GradientClipping,
            _clipping,
            in_default_run=lambda ctx: (
                ctx.cfg.do_train
                and ctx.cfg.optimizer.clip_grad_norm is not None
                and ctx.cfg.optimizer.optim == 'AdamW'
            ),
        ),
        # Composer's, added by name only
        'ema': Component.of_class(EMA),
        'sam': Component.of_class(SAM),
        'swa': Component.of_class(SWA),
        'low_precision_layernorm': Component.of_class(LowPrecisionLayerNorm),
    },
)


def build_algorithms(ctx: RunContext) -> list[Any]:
    """This run's algorithms: the default set with the YAML ``algorithms:`` section applied."""
    return ALGORITHMS.build(ctx, ctx.cfg.algorithms)
