"""TrainLogLine: the research codebases' periodic training line (epoch, step, lr, loss, time per step)."""

from __future__ import annotations

import logging
import time

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from tempme_composer.callbacks.training_scalars import logit_scale_value

__all__ = ['TrainLogLine']

log = logging.getLogger(__name__)


class TrainLogLine(Callback):
    """Every ``n_display`` batches (``BATCH_END``), write one line to the Python log on rank 0:
    ``Epoch: e (of E), Step: s/S, Lr: ..., Loss: ..., logit_scale: ..., Time/step: ...``. Logs nothing to loggers.

    ``e`` counts from 0, as Composer's progress bar above the line does (``train Epoch   0``), so the two
    always name the same epoch; ``E`` is the number of epochs of the run.
    """

    def __init__(self, n_display: int) -> None:
        self.n_display = n_display
        self._window_start = time.perf_counter()

    def epoch_start(self, state: State, logger: Logger) -> None:
        del state, logger  # unused
        self._window_start = time.perf_counter()

    def batch_end(self, state: State, logger: Logger) -> None:
        del logger  # unused
        step = int(state.timestamp.batch_in_epoch)
        if step % self.n_display != 0 or dist.get_global_rank() != 0:
            return
        now = time.perf_counter()
        seconds = (now - self._window_start) / self.n_display
        self._window_start = now
        lrs = [group['lr'] for opt in state.optimizers for group in opt.param_groups]
        loss = state.loss
        loss_value = float(loss.detach()) if hasattr(loss, 'detach') else float('nan')
        max_epochs = state.max_duration.value if state.max_duration is not None else '?'
        steps = state.dataloader_len.value if state.dataloader_len is not None else '?'
        model = state.model.module if state.is_model_ddp else state.model
        scale = logit_scale_value(model, state.outputs)
        log.info(
            'Epoch: %d (of %s), Step: %d/%s, Lr: %s, Loss: %.6f, logit_scale: %.2f, Time/step: %.3fs',
            int(state.timestamp.epoch),
            max_epochs,
            step,
            steps,
            ', '.join(f'{lr:.3g}' for lr in lrs),
            loss_value,
            scale,
            seconds,
        )
