"""RetrievalAnalysis: per-caption ranks and the similarity matrix of an evaluation, on request."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist
from streaming import StreamingDataset

from tempme_composer.metrics.retrieval import RetrievalMetrics

__all__ = ['RetrievalAnalysis']

log = logging.getLogger(__name__)


class RetrievalAnalysis(Callback):
    """At ``EVAL_END``, rank 0 writes into ``folder``:

    - ``<label>-ep<E>-ranks.jsonl`` (``save_ranks``): one line per caption with its text, true video id, rank
      (1-based, the run's tie mode) and the top-``topk`` video ids;
    - ``<label>-ep<E>-similarity.npy`` + ``-similarity-index.json`` (``save_similarity``): the fp32 caption ×
      video cosine matrix and which (video id, caption number) each row and video id each column is.

    YAML: ``evaluation: {save_ranks: true, save_similarity: true}``. Logs nothing to loggers.
    """

    def __init__(self, folder: str | Path, save_ranks: bool, save_similarity: bool, topk: int = 5) -> None:
        self.folder = Path(folder)
        self.save_ranks = save_ranks
        self.save_similarity = save_similarity
        self.topk = topk

    def eval_end(self, state: State, logger: Logger) -> None:
        del logger  # unused
        if dist.get_global_rank() != 0:
            return
        label = state.dataloader_label
        metrics = [m for m in state.eval_metrics.get(label, {}).values() if isinstance(m, RetrievalMetrics)]
        if not metrics:
            return
        metric = metrics[0]
        metric.compute()  # cached
        dataset = getattr(state.dataloader, 'dataset', None)
        names = _SampleNames(dataset)
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = f'{label}-ep{int(state.timestamp.epoch)}'
        if self.save_ranks:
            rows = metric.per_query(self.topk)
            lines = []
            for i in range(len(rows['rank'])):
                vid, cap = int(rows['video_index'][i]), int(rows['caption_index'][i])
                lines.append(json.dumps({
                    'caption': names.caption(vid, cap),
                    'video_id': names.video_id(vid),
                    'video_index': vid,
                    'caption_index': cap,
                    'rank': int(rows['rank'][i]),
                    'top_videos': [names.video_id(int(v)) for v in rows['topk_video_index'][i]],
                }))
            _atomic_write(self.folder / f'{stem}-ranks.jsonl', '\n'.join(lines) + '\n')
            log.info('wrote per-caption ranks to %s', self.folder / f'{stem}-ranks.jsonl')
        if self.save_similarity:
            sim = metric.similarity_matrix().numpy()
            tmp = self.folder / f'.tmp-{stem}-similarity.npy'
            np.save(tmp, sim)
            os.replace(tmp, self.folder / f'{stem}-similarity.npy')
            index = {
                'rows': [[names.video_id(int(v)), int(c)] for v, c in metric.text_ids.tolist()],
                'columns': [names.video_id(int(v)) for v in metric.video_ids.tolist()],
            }
            _atomic_write(self.folder / f'{stem}-similarity-index.json', json.dumps(index))
            log.info('wrote the %d x %d similarity matrix to %s', *sim.shape, self.folder / f'{stem}-similarity.npy')


class _SampleNames:
    """Video ids and caption texts of eval samples, read from the MDS dataset (cached per video)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset if isinstance(dataset, StreamingDataset) else None
        self._cache: dict[int, tuple[str, list[str]]] = {}

    def _sample(self, index: int) -> tuple[str, list[str]]:
        if index not in self._cache:
            if self.dataset is None:
                self._cache[index] = (str(index), [])
            else:
                raw = StreamingDataset.get_item(self.dataset, index)  # raw columns, no frame decoding
                captions = raw['captions']
                self._cache[index] = (str(raw['video_id']), [captions] if isinstance(captions, str) else list(captions))
        return self._cache[index]

    def video_id(self, index: int) -> str:
        return self._sample(index)[0]

    def caption(self, index: int, caption_index: int) -> str | None:
        captions = self._sample(index)[1]
        return captions[caption_index] if caption_index < len(captions) else None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f'.tmp-{path.name}')
    tmp.write_text(text)
    os.replace(tmp, path)
