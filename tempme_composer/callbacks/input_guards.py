"""Guards against bad inputs that only show while training: a NaN/inf loss, and more frames asked than stored.

- `FiniteLossGuard` (AFTER_LOSS): a non-finite loss stops training *before* the optimizer step, with a
  `NonFiniteLossError` naming the batch and the checkpoints that are kept (nothing saved is touched).
- `FramePaddingNotice` (first train and eval batch): when ``data.max_frames`` exceeds every video of the
  batch, says once that the extra frames are zero padding masked out of the pooling (results unaffected).

YAML: both always on in training runs (no key).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from tempme_composer.checkpointing.disk import kept_checkpoints
from tempme_composer.errors import NonFiniteLossError

__all__ = ['FiniteLossGuard', 'FramePaddingNotice']

log = logging.getLogger(__name__)


def _loss_value(loss) -> float:
    if isinstance(loss, dict):
        loss = loss.get('total', sum(v for v in loss.values() if isinstance(v, torch.Tensor)))
    if isinstance(loss, list | tuple):
        loss = sum(loss)
    return float(loss.detach().float().sum()) if isinstance(loss, torch.Tensor) else float(loss)


class FiniteLossGuard(Callback):
    """Stop training with a clear error when the loss is NaN or ±inf (checked on every microbatch).

    The loss is computed over the all-gathered global batch, so every rank sees the same value and raises
    together (no rank is left waiting in a collective).
    """

    def __init__(self, checkpoint_folder: str | Path) -> None:
        self.folder = Path(checkpoint_folder)

    def after_loss(self, state: State, logger: Logger) -> None:
        value = _loss_value(state.loss)
        if math.isfinite(value):
            return
        ts = state.timestamp
        raise NonFiniteLossError(
            f'the training loss is {value} at epoch {int(ts.epoch)}, batch {int(ts.batch_in_epoch)} of the epoch '
            f'(global batch {int(ts.batch)}, 0-based): training stopped before the optimizer step, so no weights '
            f'were updated with it. Kept, untouched: {kept_checkpoints(self.folder)}. Usual causes: a learning '
            'rate too high for this batch size (lower optimizer.lr or raise optimizer.warmup_proportion), no '
            'gradient clipping (set optimizer.clip_grad_norm=1.0), logit_scale_clamp=null, or amp_fp16 overflow '
            '(use precision=amp_bf16 or fp32). Fix the config and rerun with autoresume=true to continue from '
            'the latest checkpoint.'
        )


class FramePaddingNotice(Callback):
    """Log once per loader kind when ``max_frames`` is larger than every video of the first batch."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def _check(self, kind: str, batch) -> None:
        if kind in self._seen or not isinstance(batch, dict) or 'video_mask' not in batch:
            return
        self._seen.add(kind)
        mask = batch['video_mask']
        longest, max_frames = int(mask.sum(dim=1).max()), int(mask.shape[1])
        if longest < max_frames and dist.get_global_rank() == 0:
            log.info(
                'data.max_frames=%d but the longest video of the first %s batch has %d frames stored: the '
                'missing frames are zero padding, masked out of the mean pooling (results are unaffected, '
                'the compute is wasted; data.max_frames=%d would do the same work faster)',
                max_frames,
                kind,
                longest,
                longest,
            )

    def before_forward(self, state: State, logger: Logger) -> None:
        self._check('train', state.batch)

    def eval_before_forward(self, state: State, logger: Logger) -> None:
        self._check('eval', state.batch)
