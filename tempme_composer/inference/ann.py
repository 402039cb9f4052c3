"""Approximate search (HNSW, usearch) for galleries where exact search stops being interactive.

The graph is built on first use from the index's embeddings, in their stored precision (float16 by default),
and cached beside them, tied to the index generation (an updated index rebuilds it). It only proposes the
top-k: their scores are recomputed in fp32 over the stored vectors, as exact search computes them, and sorted
the same way (ties by row). Recall against exact search is measured by ``python -m tempme_composer.bench search``.

usearch over faiss: at 100k videos it built the graph 4-9× faster on the same (shared, 2-core) CPU — 155-377 s
against 1,449 s for faiss ``IndexHNSWFlat`` with the same links per node —, which is what makes a million-video
index buildable on a workstation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ['ann_index', 'ann_search', 'build_ann', 'CONNECTIVITY', 'EXPANSION_ADD', 'EXPANSION_SEARCH']

CONNECTIVITY = 32  # links per node (faiss HNSW32; 16 reaches recall@10 0.97 only at 10k videos)
EXPANSION_ADD = 128  # candidate list while building
#: Candidate list while searching: the smallest measured to keep recall@10 >= 0.99 up to 1M videos (docs/benchmarks.md#search).
EXPANSION_SEARCH = 512
_BUILD_ROWS = 1 << 16


def _usearch_index() -> Any:
    try:
        from usearch.index import Index
    except ImportError as e:  # an optional extra
        raise ImportError("approximate search needs usearch: pip install -e '.[search]'") from e
    return Index


def build_ann(embeddings: np.ndarray, threads: int = 0) -> Any:
    """An inner-product HNSW graph over ``embeddings`` (``[n, d]``, float16 or float32), keys = row numbers."""
    Index = _usearch_index()
    dtype = 'f16' if embeddings.dtype == np.float16 else 'f32'
    ann = Index(ndim=int(embeddings.shape[1]), metric='ip', dtype=dtype, connectivity=CONNECTIVITY,
                expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
    for s in range(0, len(embeddings), _BUILD_ROWS):
        chunk = np.ascontiguousarray(embeddings[s : s + _BUILD_ROWS])
        ann.add(np.arange(s, s + len(chunk), dtype=np.uint64), chunk, threads=threads)
    return ann


def ann_index(index: Any) -> Any:
    """The cached graph of ``index`` (a `VideoIndex`: its ``folder``, ``manifest`` and ``embeddings``), built
    if missing or stale; memory-mapped when read back."""
    Index = _usearch_index()
    path = Path(index.folder) / f'ann-usearch-g{index.manifest["generation"]}.usearch'
    if path.is_file() and not path.is_symlink():
        cached = _restore(Index, path, index.embeddings)
        if cached is not None:
            return cached
        log.warning('note: the cached search graph %s is damaged (not a usearch graph of this index\'s %d rows); '
                    'rebuilding it', path, len(index.embeddings))
    ann = build_ann(index.embeddings)
    tmp = path.with_name(f'.tmp-{os.getpid()}-{path.name}')
    ann.save(str(tmp))
    tmp.replace(path)
    for old in Path(index.folder).glob('ann-usearch-g*.usearch'):
        if old != path:
            old.unlink(missing_ok=True)
    return ann


def _restore(Index: Any, path: Path, embeddings: np.ndarray) -> Any | None:
    """The graph at ``path`` memory-mapped, or None when it is not a graph of ``embeddings`` (same rows and size)."""
    try:
        ann = Index.restore(str(path), view=True)
    except Exception:  # usearch raises plain RuntimeError/ValueError on a damaged file
        return None
    if ann is None or len(ann) != len(embeddings) or ann.ndim != embeddings.shape[1]:
        return None
    return ann


def _padded_keys(found: Any, queries: int, k: int) -> np.ndarray:
    """``[queries, k]`` row numbers, -1 where the graph found fewer than ``k`` (usearch returns a single query's
    matches as a 1-d array of the found count)."""
    found = np.asarray(found, dtype=np.int64)
    keys = np.full((queries, k), -1, dtype=np.int64)
    if found.ndim == 1:
        found = found[None, :]
    keys[:, : found.shape[1]] = found[:, :k]
    return keys


def ann_search(ann: Any, embeddings: np.ndarray, queries: np.ndarray, k: int,
               expansion_search: int = EXPANSION_SEARCH) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(scores, rows)`` per query, rows proposed by the graph, scores exact fp32 and sorted
    descending (ties by row, as exact search breaks them). Fewer than ``k`` found: row -1, score -inf."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(embeddings))
    ann.expansion_search = max(expansion_search, k)
    keys = _padded_keys(ann.search(queries, k).keys, len(queries), k)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    for i, found in enumerate(keys):
        found = np.unique(found[(found >= 0) & (found < len(embeddings))])  # sorted: ties by row
        s = np.asarray(embeddings[found], dtype=np.float32) @ queries[i]
        order = np.argsort(-s, kind='stable')
        scores[i, : len(found)], rows[i, : len(found)] = s[order], found[order]
    return scores, rows
