"""RetrievalLogger: log every retrieval number and print the research codebases' result lines."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from tempme_composer.data.gallery import Gallery
from tempme_composer.metrics import format_log_lines
from tempme_composer.metrics.retrieval import RetrievalMetrics

__all__ = ['RetrievalLogger']

log = logging.getLogger(__name__)


class RetrievalLogger(Callback):
    """At ``EVAL_END``, log ``metrics/<label>/{t2v,v2t}_{R@1,R@5,R@10,MdR,MnR}`` and the set sizes to every
    logger, and write the ``Text-to-Video:`` / ``Video-to-Text:`` lines to the Python log on rank 0. With
    ``results_dir``, rank 0 also writes the latest numbers to ``results_dir/eval-<label>.json``.

    Composer itself logs only what ``compute()`` returns (text→video R@1); the rest were computed in the same
    pass and are read from the metric without another collective.

    With ``gallery`` (the eval split as converted), a gallery smaller than the split's listed videos is said
    beside the metric lines and in the JSON (``gallery_note``): "987 of 1,000 test videos ...". With
    ``gallery_label``, only that evaluator's numbers are checked against it (the validation split is another
    set of videos).
    """

    def __init__(
        self,
        results_dir: str | Path | None = None,
        gallery: Gallery | None = None,
        gallery_label: str | None = None,
    ) -> None:
        self.results_dir = Path(results_dir) if results_dir is not None else None
        self.gallery = gallery
        self.gallery_label = gallery_label
        self.last_results: dict[str, dict[str, float]] = {}

    def eval_end(self, state: State, logger: Logger) -> None:
        label = state.dataloader_label
        for metric in state.eval_metrics.get(label, {}).values():
            if not isinstance(metric, RetrievalMetrics):
                continue
            metric.compute()  # cached by torchmetrics: no new gather
            results = dict(metric.results)
            self.last_results[label] = results
            logger.log_metrics({f'metrics/{label}/{k}': v for k, v in results.items()})
            if dist.get_global_rank() == 0:
                log.info(
                    'eval %s at %s: %d captions, %d videos',
                    label,
                    state.timestamp.epoch,
                    int(results['num_texts']),
                    int(results['num_videos']),
                )
                lines = format_log_lines(results)
                if 'dsl_t2v_R@1' in results:  # re-ranked numbers are shown beside the raw ones, never instead
                    lines += format_log_lines(results, prefix='dsl_')
                for line in lines:
                    log.info(line)
                note = (
                    self.gallery.note(int(results['num_videos']))
                    if self.gallery is not None and self.gallery_label in (None, label)
                    else None
                )
                if note:
                    log.warning(note)
                if self.results_dir is not None:
                    record = {'eval_label': label, 'epoch': int(state.timestamp.epoch),
                              'batch': int(state.timestamp.batch), 'results': results}
                    if note:
                        record['gallery_note'] = note
                    path = self.results_dir / f'eval-{label}.json'
                    tmp = path.with_name(f'.tmp-{path.name}')
                    tmp.write_text(json.dumps(record, indent=2))
                    os.replace(tmp, path)
