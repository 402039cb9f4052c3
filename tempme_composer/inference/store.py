"""The on-disk video index: one folder, committed atomically, readable with memory maps.

Layout (``FORMAT_VERSION`` 1)::

    index.json               manifest: model hash, dtype, row count, the generation's file names (commit point)
    embeddings-g<N>.npy      [rows, D] float16 (default) or float32, memory-mapped for search
    metadata-g<N>.jsonl      one JSON object per row: path or video_id, size, mtime_ns, duration, frames, thumb
    captions-g<N>.jsonl      (an MDS split only) one line per caption: row, caption_index, text
    thumbs/<key>.jpg         a strip of a few frames per video
    pending/batch-*.npy|.jsonl  batches encoded by a run that has not committed yet (a crash keeps them)
    skipped.jsonl            the videos the last run could not index, with the reason

A run writes each encoded batch to ``pending/`` (the ``.jsonl`` last, renamed into place: it marks the batch
complete), then writes the next generation's files and replaces ``index.json``; only then are the previous
generation and the pending batches deleted. So a crash at any point loses at most the batch being encoded,
and what the index already held stays readable. No Composer import.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    'INDEX_FORMAT',
    'FORMAT_VERSION',
    'MANIFEST',
    'IndexError_',
    'IndexStore',
    'PendingBatch',
    'atomic_write_bytes',
]

INDEX_FORMAT = 'tempme-video-index'
FORMAT_VERSION = 1
MANIFEST = 'index.json'
PENDING = 'pending'
THUMBS = 'thumbs'
SKIPPED = 'skipped.jsonl'
DTYPES = ('float16', 'float32')


class IndexError_(ValueError):  # noqa: N801 - IndexError is a builtin with another meaning
    """An index folder that cannot be used as asked (another model, half-written, corrupt)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename: readers never see a torn file."""
    tmp = path.with_name(f'.tmp-{path.name}')
    with open(tmp, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f'.tmp-{path.name}')
    with open(tmp, 'wb') as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonl(rows: Sequence[dict[str, Any]]) -> bytes:
    return ''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows).encode('utf-8')


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]


@dataclass
class PendingBatch:
    """A batch a run encoded but has not committed: its rows and embeddings."""

    rows: list[dict[str, Any]]
    embeddings: np.ndarray
    captions: list[dict[str, Any]]


class IndexStore:
    """Read and write one index folder (see the module docstring for the layout)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    # ---- reading -------------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        """The committed manifest, checked against the files it names.

        Raises:
            IndexError_: no committed index (possibly an interrupted first run), or files that do not match.
        """
        if not self.folder.is_dir():
            raise IndexError_(f'index folder {self.folder} does not exist (build it with tempme-index --out {self.folder})')
        if not self.manifest_path.is_file():
            if self.pending_batches():
                raise IndexError_(
                    f'{self.folder} holds batches of a tempme-index run that stopped before its first commit '
                    f'(no {MANIFEST}): re-run the same tempme-index command to finish it (the encoded batches are kept)')
            raise IndexError_(f'{self.folder} is not a video index (no {MANIFEST}); build one with tempme-index')
        try:
            m = json.loads(self.manifest_path.read_text(encoding='utf-8'))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IndexError_(f'{self.manifest_path} is not valid JSON ({e}): the index is damaged; rebuild it '
                              'with tempme-index --rebuild') from e
        if m.get('format') != INDEX_FORMAT or m.get('format_version') != FORMAT_VERSION:
            raise IndexError_(f'{self.manifest_path}: format {m.get("format")!r} version {m.get("format_version")!r}; '
                              f'this tempme_composer reads {INDEX_FORMAT} version {FORMAT_VERSION}')
        for key in ('embeddings', 'metadata'):
            if not (self.folder / m[key]).is_file():
                raise IndexError_(f'{self.manifest_path} names {m[key]}, which is missing: the index is damaged; '
                                  'rebuild it with tempme-index --rebuild')
        return m

    def embeddings(self, manifest: dict[str, Any] | None = None) -> np.ndarray:
        """``[rows, D]`` memory map (read-only) of the committed embeddings."""
        m = manifest or self.manifest()
        emb = np.load(self.folder / m['embeddings'], mmap_mode='r')
        if emb.shape != (m['count'], m['embed_dim']) or str(emb.dtype) != m['dtype']:
            raise IndexError_(f'{self.folder / m["embeddings"]} holds {emb.shape} {emb.dtype} but {MANIFEST} says '
                              f'({m["count"]}, {m["embed_dim"]}) {m["dtype"]}: the index is damaged; rebuild it')
        return emb

    def rows(self, manifest: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        m = manifest or self.manifest()
        rows = _read_jsonl(self.folder / m['metadata'])
        if len(rows) != m['count']:
            raise IndexError_(f'{self.folder / m["metadata"]} has {len(rows)} rows but {MANIFEST} says {m["count"]}: '
                              'the index is damaged; rebuild it')
        return rows

    def captions(self, manifest: dict[str, Any] | None = None) -> list[dict[str, Any]] | None:
        m = manifest or self.manifest()
        return _read_jsonl(self.folder / m['captions']) if m.get('captions') else None

    def thumbnail_path(self, row: dict[str, Any]) -> Path | None:
        thumb = row.get('thumb')
        return self.folder / THUMBS / thumb if thumb else None

    # ---- writing -------------------------------------------------------------------------------------------
    def pending_batches(self) -> list[Path]:
        """Complete pending batches (their ``.jsonl`` exists), oldest first."""
        folder = self.folder / PENDING
        return sorted(folder.glob('batch-*.jsonl')) if folder.is_dir() else []

    def read_pending(self) -> Iterator[PendingBatch]:
        for marker in self.pending_batches():
            payload = json.loads(marker.read_text(encoding='utf-8'))
            emb_path = marker.with_suffix('.npy')
            if not emb_path.is_file():
                continue
            yield PendingBatch(payload['rows'], np.load(emb_path), payload.get('captions', []))

    def write_pending(self, number: int, batch: PendingBatch) -> None:
        folder = self.folder / PENDING
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_save_npy(folder / f'batch-{number:08d}.npy', batch.embeddings)
        atomic_write_bytes(folder / f'batch-{number:08d}.jsonl',
                           json.dumps({'rows': batch.rows, 'captions': batch.captions}).encode('utf-8'))

    def next_pending_number(self) -> int:
        batches = self.pending_batches()
        return int(batches[-1].stem.split('-')[1]) + 1 if batches else 0

    def write_thumbnail(self, key: str, jpeg: bytes) -> str:
        folder = self.folder / THUMBS
        folder.mkdir(parents=True, exist_ok=True)
        name = f'{key}.jpg'
        atomic_write_bytes(folder / name, jpeg)
        return name

    def commit(self, base: dict[str, Any], embeddings: np.ndarray, rows: list[dict[str, Any]],
               captions: list[dict[str, Any]] | None, skipped: list[dict[str, Any]]) -> dict[str, Any]:
        """Write generation N+1 and switch ``index.json`` to it; then remove what it replaced."""
        old = json.loads(self.manifest_path.read_text()) if self.manifest_path.is_file() else None
        generation = (old['generation'] + 1) if old else 1
        names = {'embeddings': f'embeddings-g{generation}.npy', 'metadata': f'metadata-g{generation}.jsonl',
                 'captions': f'captions-g{generation}.jsonl' if captions is not None else None}
        _atomic_save_npy(self.folder / names['embeddings'], embeddings)
        atomic_write_bytes(self.folder / names['metadata'], _jsonl(rows))
        if captions is not None:
            atomic_write_bytes(self.folder / names['captions'], _jsonl(captions))
        atomic_write_bytes(self.folder / SKIPPED, _jsonl(skipped))
        now = time.strftime('%Y-%m-%dT%H:%M:%S')
        manifest = {
            'format': INDEX_FORMAT,
            'format_version': FORMAT_VERSION,
            **base,
            'count': int(embeddings.shape[0]),
            'embed_dim': int(embeddings.shape[1]),
            'dtype': str(embeddings.dtype),
            'generation': generation,
            **names,
            'created': old['created'] if old else now,
            'updated': now,
            'skipped': len(skipped),
        }
        atomic_write_bytes(self.manifest_path, (json.dumps(manifest, indent=2) + '\n').encode())  # the commit
        if old:
            for key in ('embeddings', 'metadata', 'captions'):
                if old.get(key) and old[key] != manifest.get(key):
                    (self.folder / old[key]).unlink(missing_ok=True)
        for marker in self.pending_batches():
            marker.with_suffix('.npy').unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
        for stray in (self.folder / PENDING).glob('*') if (self.folder / PENDING).is_dir() else []:
            stray.unlink(missing_ok=True)  # an un-marked .npy of the batch a crash interrupted
        keep = {r.get('thumb') for r in rows}
        for thumb in (self.folder / THUMBS).glob('*.jpg') if (self.folder / THUMBS).is_dir() else []:
            if thumb.name not in keep:
                thumb.unlink(missing_ok=True)
        return manifest
