"""`RunContext`: what the registered components of one run are built from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tempme_composer.checkpointing.plan import CheckpointPlan
from tempme_composer.config import TrainConfig
from tempme_composer.data.gallery import Gallery

__all__ = ['RunContext']


@dataclass(frozen=True)
class RunContext:
    """The resolved config and the run-level facts its components need (decided once, in `train`)."""

    cfg: TrainConfig
    model: torch.nn.Module  # the Composer model, frozen as the config asks
    output_dir: Path
    device: str  # 'gpu' or 'cpu'
    eval_label: str  # metrics are logged as metrics/<eval_label>/...
    gallery: Gallery | None  # the eval gallery when it is smaller than listed
    checkpoints: CheckpointPlan

    @property
    def accumulation_steps(self) -> int:
        return self.cfg.gradient_accumulation_steps
