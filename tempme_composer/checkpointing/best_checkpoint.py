"""BestCheckpoint: keep the weights of the best evaluation so far (text→video R@1), written atomically.

Composer has no best-metric checkpointing, and a second CheckpointSaver would silently replace the
Trainer's own (docs/reference/composer.md#checkpoint-saving item 4), so this callback saves with
`composer.utils.checkpoint.save_checkpoint` — a collective that every rank calls.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import checkpoint, dist

from tempme_composer.checkpointing.disk import disk_full_message, is_disk_full
from tempme_composer.errors import RecipeError
from tempme_composer.metrics.retrieval import RetrievalMetrics
from tempme_composer.remote import split_uri

__all__ = ['BestCheckpoint', 'BEST_WEIGHTS', 'BEST_RECORD']

log = logging.getLogger(__name__)

BEST_WEIGHTS = 'best.pt'
BEST_RECORD = 'best.json'


class BestCheckpoint(Callback):
    """At ``EVAL_END`` of evaluator ``eval_label``: if ``metric_name`` improved, write ``folder/best.pt``
    (a Composer weights-only checkpoint: ``load_path`` + ``load_weights_only`` loads it) and
    ``folder/best.json`` (metric, value, epoch, batch, every retrieval number and the resolved config).

    Each file is written to a temporary name and renamed into place, so a crash never leaves a torn file;
    the JSON names the batch the weights come from. A full disk (ENOSPC) while writing removes the temporary
    files, leaves the previous best.pt/best.json untouched and raises a `RecipeError` saying so. The best value and when it
    was reached are part of the callback's state, so autoresume keeps comparing against the true best.
    Logs ``best/<label>/<metric_name>``. YAML: always on in training runs (``callbacks.best_checkpoint``, built
    by `plan_checkpoints`; it cannot be dropped).

    With ``remote_folder`` (the ``save_folder`` URI), rank 0 then uploads ``best.pt`` and ``best.json`` there
    through the run's RemoteUploaderDownloader (``logger.upload_file``, in that order, one at a time).
    """

    def __init__(
        self,
        folder: str | Path,
        eval_label: str,
        metric_name: str,
        config: dict[str, Any],
        remote_folder: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.remote_folder = remote_folder
        self.eval_label = eval_label
        self.metric_name = metric_name
        self.config = config
        self.best = -math.inf
        self.best_epoch: int | None = None
        self.best_batch: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {'best': self.best, 'best_epoch': self.best_epoch, 'best_batch': self.best_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state['best']
        self.best_epoch = state['best_epoch']
        self.best_batch = state['best_batch']

    def eval_end(self, state: State, logger: Logger) -> None:
        if state.dataloader_label != self.eval_label:
            return
        metric = state.eval_metrics[self.eval_label][self.metric_name]
        value = float(metric.compute())  # cached: the same number on every rank, no new collective
        if isinstance(metric, RetrievalMetrics):
            value = metric.results.get(self.metric_name, value)  # float64, as in the JSON record
        if not value > self.best:
            return
        epoch, batch = int(state.timestamp.epoch), int(state.timestamp.batch)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp_name = str(self.folder / f'.tmp-{BEST_WEIGHTS}')
        tmp_json = self.folder / f'.tmp-{BEST_RECORD}'
        try:
            written = checkpoint.save_checkpoint(state, filename=tmp_name, weights_only=True)  # collective
            if dist.get_global_rank() == 0:
                record = {
                    'metric': self.metric_name,
                    'value': value,
                    'eval_label': self.eval_label,
                    'epoch': epoch,
                    'batch': batch,
                    'results': dict(metric.results) if isinstance(metric, RetrievalMetrics) else {},
                    'config': self.config,
                }
                tmp_json.write_text(json.dumps(record, indent=2))  # both written before either is replaced
                os.replace(written, self.folder / BEST_WEIGHTS)
                os.replace(tmp_json, self.folder / BEST_RECORD)
                self.upload(logger)
        except OSError as e:
            for tmp in (Path(tmp_name), tmp_json):
                tmp.unlink(missing_ok=True)  # frees the space the partial file took
            if not is_disk_full(e):
                raise
            kept = (
                f'{self.folder / BEST_WEIGHTS} and {BEST_RECORD} still hold the previous best '
                f'({self.metric_name}={self.best:.2f}, epoch {self.best_epoch})'
                if self.best_epoch is not None
                else 'there was no earlier best checkpoint'
            )
            raise RecipeError(
                disk_full_message(
                    f'the best checkpoint ({self.metric_name}={value:.2f})', self.folder, e, kept
                )
            ) from e
        self.best, self.best_epoch, self.best_batch = value, epoch, batch  # only once both files are in place
        if dist.get_global_rank() == 0:
            log.info(
                'new best %s=%.2f at epoch %d, batch %d: %s',
                self.metric_name,
                value,
                self.best_epoch,
                self.best_batch,
                self.folder / BEST_WEIGHTS,
            )
        dist.barrier()
        logger.log_metrics({f'best/{self.eval_label}/{self.metric_name}': value})

    def upload(self, logger: Logger) -> None:
        """Queue best.pt then best.json for upload to ``remote_folder`` (copied now, so the next best cannot
        race them); nothing without one."""
        if self.remote_folder is None:
            return
        _, _, prefix = split_uri(self.remote_folder)
        for name in (BEST_WEIGHTS, BEST_RECORD):
            logger.upload_file(
                remote_file_name=f'{prefix}/{name}' if prefix else name,
                file_path=self.folder / name,
                overwrite=True,
            )
