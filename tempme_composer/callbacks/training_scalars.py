"""TrainingScalars: per-batch scalars Composer does not log itself (logit_scale, peak host memory, BertAdam lr)."""

from __future__ import annotations

import logging
import math
import resource
import sys
from collections.abc import Mapping

import torch
from composer.core import Callback, State
from composer.loggers import Logger

__all__ = ['TrainingScalars', 'logit_scale_value', 'peak_rss_mib']

log = logging.getLogger(__name__)


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == 'darwin' else rss / 1024


def logit_scale_value(model: torch.nn.Module, outputs: object = None) -> float:
    """``exp(clip.logit_scale)`` as a float; NaN for a model without one.

    Read from the parameter (the value after the last step and clamp). Under sharded FSDP the parameter outside
    forward is only this rank's shard, which may be empty; then the forward's ``outputs['logit_scale']`` (the
    value the last microbatch's loss used, whole on every rank) is the fallback.
    """
    clip = getattr(getattr(model, 'model', None), 'clip', None)
    param = getattr(clip, 'logit_scale', None)
    if isinstance(param, torch.Tensor) and param.numel() == 1:
        return float(param.detach().exp())
    scale = outputs.get('logit_scale') if isinstance(outputs, Mapping) else None
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        return float(scale.detach())
    return math.nan


class TrainingScalars(Callback):
    """At ``Event.BATCH_END`` (after the optimizer step) log to every logger:

    - ``train/logit_scale``: ``exp(clip.logit_scale)``, the softmax temperature multiplier;
    - ``memory/peak_rss_mib``: peak host RSS of this process (GPU memory comes from Composer's MemoryMonitor);
    - ``lr-BertAdam/group{i}/scheduled``: the lr BertAdam actually used (its ``group['lr']``, which LRMonitor
      logs, is the base lr; only with ``optimizer.optim: BertAdam``).

    Added by the recipe to every training run.
    """

    def batch_end(self, state: State, logger: Logger) -> None:
        model = state.model.module if state.is_model_ddp else state.model
        metrics = {'memory/peak_rss_mib': peak_rss_mib()}
        scale = logit_scale_value(model, state.outputs)
        if not math.isnan(scale):
            metrics['train/logit_scale'] = scale
        for optimizer in state.optimizers:
            for i, group in enumerate(optimizer.param_groups):
                if 'scheduled_lr' in group:
                    metrics[f'lr-{type(optimizer).__name__}/group{i}/scheduled'] = float(group['scheduled_lr'])
        logger.log_metrics(metrics)
