"""Everything about a run's checkpoints: safe loading, the model check, remote copies, the best weights, a
full disk, and `plan_checkpoints`, which decides all of it for one run.

Submodules are imported on first use, so ``from tempme_composer.checkpointing.safe_load import ...`` (what
export and inference use) never imports Composer.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ['CheckpointPlan', 'plan_checkpoints']

_LAZY = {
    'CheckpointPlan': 'tempme_composer.checkpointing.plan',
    'plan_checkpoints': 'tempme_composer.checkpointing.plan',
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
