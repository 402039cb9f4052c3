"""Approximate search (HNSW, faiss) for galleries where exact search stops being interactive.

Built on first use from the index's embeddings and cached beside them, tied to the index generation (an
updated index rebuilds it). Its recall against exact search is measured by the search benchmark.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ['hnsw_index', 'HNSW_M', 'HNSW_EF_CONSTRUCTION']

HNSW_M = 32  # links per node
HNSW_EF_CONSTRUCTION = 128  # candidate list while building
_BUILD_ROWS = 1 << 16


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # an optional extra
        raise ImportError("approximate search needs faiss: pip install -e '.[search]' (faiss-cpu)") from e
    return faiss


def hnsw_index(index: Any) -> Any:
    """The cached faiss ``IndexHNSWFlat`` (inner product) of ``index`` (a `VideoIndex`: its ``folder``,
    ``manifest`` and ``embeddings``), built if missing or stale."""
    faiss = _faiss()
    path = index.folder / f'ann-hnsw-g{index.manifest["generation"]}.faiss'
    if path.is_file():
        return faiss.read_index(str(path))
    ann = faiss.IndexHNSWFlat(int(index.manifest['embed_dim']), HNSW_M, faiss.METRIC_INNER_PRODUCT)
    ann.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    for s in range(0, len(index.embeddings), _BUILD_ROWS):
        ann.add(np.ascontiguousarray(index.embeddings[s : s + _BUILD_ROWS], dtype=np.float32))
    tmp = path.with_name(f'.tmp-{path.name}')
    faiss.write_index(ann, str(tmp))
    tmp.replace(path)
    for old in index.folder.glob('ann-hnsw-g*.faiss'):
        if old != path:
            old.unlink(missing_ok=True)
    return ann
