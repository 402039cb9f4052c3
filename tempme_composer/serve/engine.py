"""The loaded model and the searches the service runs, exactly as ``tempme-search`` runs them: queries
tokenized by `preprocess.tokenize_queries`, encoded by `index.encode_texts`, ranked by
`search.search_vectors` (exact fp32 scores, moments suppressed as ``docs/moments.md`` describes); uploads and
"more like this" through `queries`. Every method runs on the one worker thread that owns the model."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tempme_composer.inference.exported import ExportedModel
from tempme_composer.inference.queries import VectorQuery, image_query, search_by, video_query
from tempme_composer.inference.search import (
    QueryResult,
    VideoIndex,
    clock,
    display_path,
    full_path,
    media_fragment,
    moment_of,
    search_vectors,
)
from tempme_composer.serve.generations import Generations

__all__ = ['Engine', 'TextRequest', 'hit_dicts']


@dataclass
class TextRequest:
    """Text queries of one HTTP request, searched together on one generation."""

    texts: list[str]
    k: int


class Engine:
    """The model (loaded once) and the index generations it searches."""

    def __init__(
        self, model: ExportedModel, generations: Generations, max_batch: int = 64, approximate: bool = False
    ) -> None:
        self.model, self.generations = model, generations
        self.max_batch = max(1, max_batch)
        self.approximate = approximate
        self.forwards = 0  # text-encoder forwards
        self.text_queries = 0

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
        """``[Q, D]`` query vectors in ``ceil(Q / max_batch)`` text-encoder forwards, and the truncation notes."""
        from tempme_composer.inference.index import encode_texts
        from tempme_composer.inference.preprocess import tokenize_queries

        ids, notes = tokenize_queries(list(texts), self.model.preprocessing)
        vectors = encode_texts(self.model, ids, batch_size=self.max_batch)
        self.forwards += math.ceil(len(texts) / self.max_batch)
        self.text_queries += len(texts)
        return vectors, notes

    def search_texts(self, requests: Sequence[TextRequest]) -> tuple[VideoIndex, list[list[QueryResult]]]:
        """Every request's results, from one encoding of all their texts and one pass over one generation per
        distinct ``k`` (usually one)."""
        index = self.generations.current()
        texts = [t for r in requests for t in r.texts]
        vectors, notes = self.encode_texts(texts)
        starts = np.cumsum([0] + [len(r.texts) for r in requests])
        out: list[list[QueryResult]] = [[] for _ in requests]
        for k in sorted({r.k for r in requests}):
            members = [i for i, r in enumerate(requests) if r.k == k]
            rows = [j for i in members for j in range(starts[i], starts[i + 1])]
            results = search_vectors(
                index,
                vectors[rows],
                [texts[j] for j in rows],
                k,
                self.approximate,
                notes=[notes[j] for j in rows],
                captions=[texts[j] for j in rows],
            )
            at = 0
            for i in members:
                n = len(requests[i].texts)
                out[i] = results[at : at + n]
                at += n
        return index, out

    def search_example(
        self, kind: str, path: str | os.PathLike, label: str, k: int
    ) -> tuple[VideoIndex, QueryResult]:
        """An uploaded image or video (``kind``) as the query, labelled ``label``."""
        query = image_query(self.model, path) if kind == 'image' else video_query(self.model, path)
        query.label = label
        index = self.generations.current()
        return index, search_by(index, [query], k, self.approximate)[0]

    def similar(self, row: int, k: int) -> tuple[VideoIndex, QueryResult]:
        """ "More like this": the stored embedding of index row ``row`` as the query (``tempme-search --like``)."""
        index = self.generations.current()
        check_row(index, row)
        start, end, _ = moment_of(index.rows[row])
        label = f'like: {display_path(index, index.rows[row]["path"])} {clock(start)}-{clock(end)}'
        query = VectorQuery(label, np.asarray(index.embeddings[row], dtype=np.float32), row=row)
        return index, search_by(index, [query], k, self.approximate)[0]


def check_row(index: VideoIndex, row: int) -> None:
    from tempme_composer.serve.limits import ApiError

    if not 0 <= row < len(index.rows):
        raise ApiError(
            404,
            f'row {row}: not a row of the index (generation {index.manifest["generation"]} has rows '
            f'0 to {len(index.rows) - 1})',
        )


def hit_dicts(result: QueryResult, index: VideoIndex) -> list[dict[str, Any]]:
    """The hits of one query as ``tempme-search --json`` gives them, plus the row and its service URLs."""
    out = []
    for h in result.hits:
        media = None
        if full_path(index, h.path) is not None:
            media = f'/media/{h.row}{media_fragment(h.start, h.end)}'
        out.append(
            {
                'rank': h.rank,
                'score': h.score,
                'row': h.row,
                'path': display_path(index, h.path),
                'start': h.start,
                'end': h.end,
                'duration': h.duration,
                'moment': h.moment,
                'thumbnail': f'/thumbnail/{h.row}' if index.thumbnail(h.row) is not None else None,
                'media': media,
            }
        )
    return out


def upload_label(kind: str, filename: str) -> str:
    return f'{kind}: {Path(filename).name or "upload"}'
