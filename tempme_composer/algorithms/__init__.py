"""Composer Algorithms of the recipe: freezing by name, logit_scale clamping, exact contrastive accumulation."""

from tempme_composer.algorithms.clamp_logit_scale import ClampLogitScale, find_logit_scale
from tempme_composer.algorithms.freeze import (
    NEW_MODULE_SUBSTRINGS,
    FreezeParameters,
    FreezeReport,
    freeze_parameters,
    is_clip_backbone,
    is_new_module,
)
from tempme_composer.algorithms.grad_cache import GradCache, contrastive_embedding_grads, surrogate_loss

__all__ = [
    'NEW_MODULE_SUBSTRINGS',
    'ClampLogitScale',
    'FreezeParameters',
    'FreezeReport',
    'GradCache',
    'contrastive_embedding_grads',
    'find_logit_scale',
    'freeze_parameters',
    'is_clip_backbone',
    'is_new_module',
    'surrogate_loss',
]
