"""Optimizers of the recipe: the references' parameter groups, torch AdamW and BertAdam."""

from tempme_composer.optim.bert_adam import SCHEDULES, BertAdam, warmup_constant, warmup_cosine, warmup_linear
from tempme_composer.optim.param_groups import build_optimizer, param_groups

__all__ = [
    'SCHEDULES',
    'BertAdam',
    'build_optimizer',
    'param_groups',
    'warmup_constant',
    'warmup_cosine',
    'warmup_linear',
]
