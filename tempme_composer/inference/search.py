"""Text → video search over an index: exact by default (fp32 scores over memory-mapped chunks, bounded memory),
an approximate HNSW mode (usearch) for galleries where exact search stops being interactive, and ``--eval``: the
recipe's retrieval metrics for an index built from an annotated MDS split, with the same ranking code.
No Composer import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tempme_composer.inference.exported import ExportedModel, load_exported
from tempme_composer.inference.store import IndexError_, IndexStore

__all__ = ['Hit', 'QueryResult', 'VideoIndex', 'exact_topk', 'search', 'evaluate_index', 'load_index_model',
           'full_path', 'display_path', 'result_dicts']

#: fp32 rows converted at once during exact search (64 MiB of scores' inputs per chunk at D = 512).
DEFAULT_CHUNK_ELEMENTS = 1 << 24


@dataclass
class Hit:
    rank: int  # 1-based
    score: float  # cosine similarity (fp32)
    row: int  # row in the index
    path: str
    duration: float
    thumb: str | None


@dataclass
class QueryResult:
    query: str
    hits: list[Hit]
    note: str | None = None  # e.g. "truncated to the model's max_words"
    ground_truth: list[int] = field(default_factory=list)  # rows whose captions equal the query (MDS index)
    ground_truth_rank: int | None = None  # pessimistic 1-based rank of the best ground-truth row


def exact_topk(queries: np.ndarray, embeddings: np.ndarray, k: int,
               chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product: ``(scores [Q, k] float32, rows [Q, k] int64)``, best first, ties by row.

    ``embeddings`` may be a float16 memory map: each chunk of rows is converted to fp32 on its own, so memory
    stays bounded by the chunk whatever the gallery size.
    """
    Q, (N, D) = len(queries), embeddings.shape
    k = min(k, N)
    chunk_rows = chunk_rows or max(1, DEFAULT_CHUNK_ELEMENTS // max(D, 1))
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best_s = torch.full((Q, 0), -float('inf'))
    best_i = torch.zeros((Q, 0), dtype=torch.long)
    for s in range(0, N, chunk_rows):
        # copy the stored rows as they are, then widen in torch: 5x faster than numpy's float16 -> float32
        block = torch.from_numpy(np.array(embeddings[s : s + chunk_rows])).float()
        scores = q @ block.T  # [Q, n] fp32
        top_s, top_i = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        best_s = torch.cat([best_s, top_s], dim=1)
        best_i = torch.cat([best_i, top_i + s], dim=1)
        if best_s.shape[1] > k:
            best_s, keep = torch.topk(best_s, k, dim=1)
            best_i = torch.gather(best_i, 1, keep)
    scores, rows = best_s.numpy(), best_i.numpy()
    order = np.lexsort((rows, -scores), axis=1)  # score descending, then row ascending: deterministic ties
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


class VideoIndex:
    """A committed index folder opened for search (embeddings memory-mapped)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.store = IndexStore(folder)
        self.manifest, self.embeddings, self.rows = self.store.open_committed()

    @property
    def folder(self) -> Path:
        return self.store.folder

    @property
    def model_hash(self) -> str:
        return self.manifest['model_hash']

    @property
    def is_annotated(self) -> bool:
        return bool(self.manifest.get('captions'))

    def check_model(self, model: ExportedModel) -> None:
        if model.model_hash != self.model_hash:
            raise IndexError_(
                f'{self.folder} was built by model {self.model_hash[:12]} ({self.manifest.get("model_dir")}) but '
                f'{model.directory} is {model.model_hash[:12]}: embeddings of two models are not comparable; '
                'search with the model that built the index, or rebuild it with tempme-index --rebuild')

    def thumbnail(self, row: int) -> Path | None:
        return self.store.thumbnail_path(self.rows[row])

    def search_embeddings(self, queries: np.ndarray, k: int, approximate: bool = False,
                          expansion_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        if approximate:
            from tempme_composer.inference.ann import EXPANSION_SEARCH, ann_index, ann_search

            return ann_search(ann_index(self), self.embeddings, queries, k, expansion_search or EXPANSION_SEARCH)
        return exact_topk(queries, self.embeddings, k)


def load_index_model(index: VideoIndex, model_dir: str | os.PathLike | None, clip_checkpoint: str | None,
                     device: str = 'cpu') -> ExportedModel:
    """The exported model an index was built with (its recorded folder unless ``model_dir``), hash-checked."""
    folder = model_dir or index.manifest.get('model_dir')
    model = load_exported(folder, clip_checkpoint, device=device)
    index.check_model(model)
    return model


def search(index: VideoIndex, model: ExportedModel, queries: list[str], top_k: int = 10,
           approximate: bool = False, expansion_search: int | None = None) -> list[QueryResult]:
    """Top-``k`` videos per query. On an annotated (MDS) index, queries equal to a caption get its video marked
    as ground truth with its exact (pessimistic) rank. ``expansion_search``: the HNSW candidate list of the
    approximate mode (default `ann.EXPANSION_SEARCH`; larger: slower, higher recall).

    Raises:
        QueryError: an empty query.
    """
    from tempme_composer.inference.index import encode_texts
    from tempme_composer.inference.preprocess import tokenize_queries

    ids, notes = tokenize_queries(queries, model.preprocessing)
    q = encode_texts(model, ids)
    scores, rows = index.search_embeddings(q, top_k, approximate=approximate, expansion_search=expansion_search)
    truth = _caption_owners(index) if index.is_annotated else {}
    results = []
    for i, query in enumerate(queries):
        hits = [Hit(rank=j + 1, score=float(scores[i, j]), row=int(r), path=index.rows[r]['path'],
                    duration=float(index.rows[r].get('duration') or 0.0), thumb=index.rows[r].get('thumb'))
                for j, r in enumerate(rows[i]) if r >= 0]
        gt = sorted(truth.get(query.strip(), ()))
        rank = None
        if gt:
            block = np.asarray(index.embeddings[gt], dtype=np.float32) @ q[i]
            best = float(block.max())
            rank = _count_at_least(index.embeddings, q[i], best)  # pessimistic: every tie ranks ahead
        results.append(QueryResult(query, hits, notes[i], gt, rank))
    return results


def _count_at_least(embeddings: np.ndarray, q: np.ndarray, value: float, chunk: int = 1 << 16) -> int:
    total = 0
    for s in range(0, len(embeddings), chunk):
        total += int((np.asarray(embeddings[s : s + chunk], dtype=np.float32) @ q >= value).sum())
    return total


def _caption_owners(index: VideoIndex) -> dict[str, set[int]]:
    owners: dict[str, set[int]] = {}
    for c in index.store.captions(index.manifest) or []:
        owners.setdefault(c['text'].strip(), set()).add(int(c['row']))
    return owners


def evaluate_index(index: VideoIndex, model: ExportedModel, tie_mode: str | None = None) -> dict[str, float]:
    """The recipe's retrieval metrics over an annotated index (captions encoded per video batch, as evaluation
    does), with `tempme_composer.metrics.embedding_metrics`.

    Raises:
        IndexError_: the index was built from a folder of videos (no captions).
    """
    from tempme_composer.clip.tokenizer import tokenize
    from tempme_composer.inference.index import encode_texts
    from tempme_composer.metrics.summary import embedding_metrics

    captions = index.store.captions(index.manifest)
    if not captions:
        raise IndexError_(f'{index.folder} was built from a folder of videos, which has no captions: --eval needs an '
                          'index built with tempme-index --mds SPLIT_FOLDER')
    batch = int(index.manifest['source'].get('batch_size') or len(index.rows))
    by_row: dict[int, list[str]] = {}
    for c in captions:
        by_row.setdefault(int(c['row']), []).append(c['text'])
    text, column = [], []
    for s in range(0, len(index.rows), batch):
        texts = [(r, t) for r in range(s, min(s + batch, len(index.rows))) for t in by_row.get(r, [])]
        ids, _ = tokenize([t for _, t in texts], model.preprocessing.max_words)
        text.append(torch.from_numpy(encode_texts(model, ids, batch_size=max(len(ids), 1))))
        column += [r for r, _ in texts]
    video = torch.from_numpy(np.array(index.embeddings, dtype=np.float32))
    mode = tie_mode or index.manifest.get('evaluation', {}).get('tie_mode', 'pessimistic')
    results = embedding_metrics(torch.cat(text), video, torch.tensor(column), mode)
    results.update({'num_texts': float(len(column)), 'num_videos': float(len(index.rows))})
    return results


def result_dicts(results: list[QueryResult], index: VideoIndex) -> list[dict[str, Any]]:
    """JSON-ready results (``--json``)."""
    return [{
        'query': r.query,
        'note': r.note,
        'ground_truth': [index.rows[g]['path'] for g in r.ground_truth] or None,
        'ground_truth_rank': r.ground_truth_rank,
        'results': [{'rank': h.rank, 'score': h.score, 'path': display_path(index, h.path), 'duration': h.duration}
                    for h in r.hits],
    } for r in results]


def full_path(index: VideoIndex, path: str) -> Path | None:
    """The video file of a row of a folder index (None for an MDS split, whose rows name video ids)."""
    source = index.manifest['source']
    return Path(source['root']) / path if source.get('kind') == 'videos' else None


def display_path(index: VideoIndex, path: str) -> str:
    """What a result shows: the video file's path, or the video id of an MDS split."""
    video = full_path(index, path)
    return str(video) if video is not None else path
