"""SelectionReport: with ``evaluation.select_on: val``, keep every test evaluation and report the three numbers.

`BestCheckpoint` chooses ``best.pt`` on the validation split; this callback records the test split's results of
each evaluation (the test evaluator runs before the validation one, on the same weights) and, after every round
of evaluations, adds the three labelled test numbers of `tempme_composer.metrics.selection` to ``best.json``,
``eval-<test>.json`` and ``eval-val.json``; at the end of training it logs them
(docs/evaluation.md#selecting-on-a-validation-split).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from tempme_composer.checkpointing.best_checkpoint import BEST_RECORD, BestCheckpoint
from tempme_composer.metrics.retrieval import RetrievalMetrics
from tempme_composer.metrics.selection import format_selection_lines, selection_summary

__all__ = ['SelectionReport', 'SELECTION_KEY']

log = logging.getLogger(__name__)

#: The key the three labelled numbers are stored under in best.json and the eval-*.json files.
SELECTION_KEY = 'selection'


class SelectionReport(Callback):
    """Records the ``test_label`` results at each ``EVAL_END``; at ``EVAL_AFTER_ALL`` (rank 0) writes the
    selection summary into ``best.json`` (re-uploaded with it when the run has a ``save_folder``) and the eval
    JSON files of ``test_label`` and ``val_label``; at ``FIT_END`` logs it. The history is part of the
    callback's state, so autoresume keeps the evaluations made before the restart.

    YAML: on in training runs with ``evaluation.select_on: val`` (``callbacks.selection_report``).
    """

    def __init__(
        self, best: BestCheckpoint, test_label: str, val_label: str, metric_name: str, results_dir: str | Path
    ) -> None:
        self.best = best
        self.test_label = test_label
        self.val_label = val_label
        self.metric_name = metric_name
        self.results_dir = Path(results_dir)
        self.test_history: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {'test_history': self.test_history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.test_history = list(state['test_history'])

    def eval_end(self, state: State, logger: Logger) -> None:
        del logger  # unused
        if state.dataloader_label != self.test_label:
            return
        metric = state.eval_metrics[self.test_label][self.metric_name]
        if not isinstance(metric, RetrievalMetrics):
            return
        metric.compute()  # cached by torchmetrics: no new gather
        epoch, batch = int(state.timestamp.epoch), int(state.timestamp.batch)
        # an evaluation repeated at the same batch (a resumed run) replaces the earlier record
        self.test_history = [r for r in self.test_history if (r['epoch'], r['batch']) != (epoch, batch)]
        self.test_history.append({'epoch': epoch, 'batch': batch, 'results': dict(metric.results)})

    def summary(self) -> dict[str, Any] | None:
        """The three labelled test numbers so far (None before the first test evaluation)."""
        if not self.test_history:
            return None
        selected_at = (
            (self.best.best_epoch, self.best.best_batch) if self.best.best_epoch is not None else None
        )
        return selection_summary(self.test_history, selected_at, self.metric_name)

    def eval_after_all(self, state: State, logger: Logger) -> None:
        del state  # unused
        summary = self.summary()
        if summary is None or dist.get_global_rank() != 0:
            return
        best_json = self.best.folder / BEST_RECORD
        if best_json.is_file():
            _add_to_record(best_json, summary)
            self.best.upload(logger)
        for label in (self.test_label, self.val_label):
            path = self.results_dir / f'eval-{label}.json'
            if path.is_file():
                _add_to_record(path, summary)

    def fit_end(self, state: State, logger: Logger) -> None:
        del state, logger  # unused
        summary = self.summary()
        if summary is None or dist.get_global_rank() != 0:
            return
        for line in format_selection_lines(summary):
            log.info(line)


def _add_to_record(path: Path, summary: dict[str, Any]) -> None:
    """Add the summary to a JSON record this run wrote, through a temporary file renamed into place."""
    record = json.loads(path.read_text())
    record[SELECTION_KEY] = summary
    tmp = path.with_name(f'.tmp-{path.name}')
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)
