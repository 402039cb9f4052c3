"""The on-disk video index: one folder, committed atomically, readable with memory maps.

Layout (``FORMAT_VERSION`` 2; version 1, with ``metadata-g<N>.jsonl``, is still read)::

    index.json               manifest: model hash, dtype, row count, the generation's file names (commit point)
    embeddings-g<N>.npy      [rows, D] float16 (default) or float32, memory-mapped for search
    metadata-g<N>.sqlite     one row per embedding (`metadata_db`): path or video_id, size, mtime_ns, duration,
                             frames, thumb, and a moment's start / end
    captions-g<N>.jsonl      (an MDS split only) one line per caption: row, caption_index, text
    thumbs/<key>.jpg         a strip of a few frames per video
    pending/batch-*.npy|.jsonl  batches encoded by a run that has not committed yet (a crash keeps them)
    skipped.jsonl            the videos the last run could not index, with the reason

A run writes each encoded batch to ``pending/`` (the ``.jsonl`` last, renamed into place: it marks the batch
complete), then writes the next generation's files and replaces ``index.json``; only then are the previous
generation and the pending batches deleted. So a crash at any point loses at most the batch being encoded,
and what the index already held stays readable. No Composer import.

Nothing read from the folder is trusted (see ``docs/using-models.md``): every name the manifest, a metadata row
or a pending batch gives must be a plain file name of its expected form inside the folder, every value has its
expected type, and a commit deletes only the files it finds by its own name patterns. One writer at a time:
``tempme-index`` holds an exclusive ``fcntl.flock`` on ``.lock`` (released by the kernel when the process ends,
so a crash never leaves the index locked); readers take no lock and keep reading the generation they opened.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from tempme_composer.inference.folders import UnsafeNameError, confined
from tempme_composer.inference.metadata_db import MetadataRows, write_metadata_db

__all__ = [
    'INDEX_FORMAT',
    'FORMAT_VERSION',
    'MANIFEST',
    'IndexFolderError',
    'IndexLockedError',
    'IndexStore',
    'PendingBatch',
    'atomic_write_bytes',
]

INDEX_FORMAT = 'tempme-video-index'
FORMAT_VERSION = 2
#: Versions this code reads: 1 kept its metadata as JSON lines, 2 in SQLite.
READABLE_VERSIONS = (1, 2)
MANIFEST = 'index.json'
PENDING = 'pending'
THUMBS = 'thumbs'
SKIPPED = 'skipped.jsonl'
LOCK = '.lock'
DTYPES = ('float16', 'float32')
#: The file names an index holds, per manifest entry: generation files are found by these patterns only.
GENERATION_FILES = {
    'embeddings': re.compile(r'embeddings-g([0-9]{1,12})\.npy'),
    'metadata': re.compile(r'metadata-g([0-9]{1,12})\.(?:jsonl|sqlite)'),
    'captions': re.compile(r'captions-g([0-9]{1,12})\.jsonl'),
}
THUMB_NAME = re.compile(r'[A-Za-z0-9_-]{1,64}\.jpg')
_INSIDE = 'a file name inside the index'
_PENDING_NAME = re.compile(r'batch-[0-9]{8,12}\.jsonl')
#: Manifest entries and the types they must have (bool is not an int here).
_MANIFEST_TYPES: dict[str, tuple[type, ...]] = {
    'model_hash': (str,), 'count': (int,), 'embed_dim': (int,), 'dtype': (str,), 'generation': (int,),
    'source': (dict,), 'preprocessing': (dict,),
}
#: numpy parses a .npy header with ``ast.literal_eval``, which CPython 3.11 cannot run in two threads at once
#: (``SystemError: AST constructor recursion depth mismatch``): readers in threads open arrays one at a time.
_NPY_HEADER_LOCK = threading.Lock()
#: Readers retry this often when a writer commits between their reading index.json and opening its files.
_OPEN_ATTEMPTS = 5


class IndexFolderError(ValueError):
    """An index folder that cannot be used as asked (another model, half-written, corrupt)."""


class IndexLockedError(IndexFolderError):
    """Another process is updating the index."""


def _tmp_name(path: Path) -> Path:
    """A temporary name in the same folder, unique per process: two writers never share one."""
    return path.with_name(f'.tmp-{os.getpid()}-{path.name}')


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename: readers never see a torn file."""
    tmp = _tmp_name(path)
    with open(tmp, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = _tmp_name(path)
    with open(tmp, 'wb') as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonl(rows: Sequence[dict[str, Any]]) -> bytes:
    return ''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows).encode('utf-8')


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a line that is not a JSON object is an error naming the file and line."""
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError as e:
        raise IndexFolderError(f'{path} is not UTF-8 text ({e}): the index is damaged; rebuild it with '
                          'tempme-index --rebuild') from e
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise IndexFolderError(f'{path}, line {n}: not JSON ({e.msg}): the index is damaged; rebuild it with '
                              'tempme-index --rebuild') from e
        if not isinstance(row, dict):
            raise IndexFolderError(f'{path}, line {n}: expected a JSON object, got {type(row).__name__}')
        rows.append(row)
    return rows


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_row(row: dict[str, Any], where: str) -> None:
    """A metadata (or pending) row as the index writes it: ``path`` text, numbers where numbers go, and a
    thumbnail that is a plain file name of the form ``<key>.jpg``.

    Raises:
        IndexFolderError: naming ``where`` (file and line) and the entry.
    """
    path = row.get('path')
    if not isinstance(path, str) or not path:
        raise IndexFolderError(f'{where}: row has no "path" (got {path!r}), expected the video\'s path relative to the '
                          'indexed folder: the index is damaged; rebuild it with tempme-index --rebuild')
    parts = PurePosixPath(path).parts
    if PurePosixPath(path).is_absolute() or '..' in parts or '\x00' in path:
        raise IndexFolderError(f'{where}: "path" is {path!r}, expected a path inside the indexed folder (relative, no "..")')
    for key in ('duration', 'start', 'end'):
        if row.get(key) is not None and not _is_number(row[key]):
            raise IndexFolderError(f'{where}: "{key}" is {row[key]!r}, expected a number')
    for key in ('size', 'mtime_ns', 'frames', 'used_frames', 'sample', 'row', 'moment'):
        if key in row and not _is_int(row[key]):
            raise IndexFolderError(f'{where}: "{key}" is {row[key]!r}, expected an integer')
    thumb = row.get('thumb')
    if thumb is not None and (not isinstance(thumb, str) or not THUMB_NAME.fullmatch(thumb)):
        raise IndexFolderError(f'{where}: "thumb" is {thumb!r}, expected a file name <key>.jpg inside the index\'s '
                          f'{THUMBS}/ folder')


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
        """The committed manifest, checked entry by entry and against the files it names.

        Raises:
            IndexFolderError: no committed index (possibly an interrupted first run), or a manifest that is not
                this format, names files outside the index, or names files that are missing.
        """
        if not self.folder.is_dir():
            raise IndexFolderError(f'index folder {self.folder} does not exist (build it with tempme-index --out {self.folder})')
        if not self.manifest_path.is_file():
            if self.pending_batches():
                raise IndexFolderError(
                    f'{self.folder} holds batches of a tempme-index run that stopped before its first commit '
                    f'(no {MANIFEST}): re-run the same tempme-index command to finish it (the encoded batches are kept)')
            raise IndexFolderError(f'{self.folder} is not a video index (no {MANIFEST}); build one with tempme-index')
        m = self._read_manifest()
        for key in ('embeddings', 'metadata') + (('captions',) if m.get('captions') else ()):
            if not (self.folder / m[key]).is_file():
                raise IndexFolderError(f'{self.manifest_path} names {m[key]}, which is missing: the index is damaged; '
                                  'rebuild it with tempme-index --rebuild')
        return m

    def _read_manifest(self) -> dict[str, Any]:
        try:
            m = json.loads(self.manifest_path.read_text(encoding='utf-8'))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IndexFolderError(f'{self.manifest_path} is not valid JSON ({e}): the index is damaged; rebuild it '
                              'with tempme-index --rebuild') from e
        if not isinstance(m, dict):
            raise IndexFolderError(f'{self.manifest_path}: expected a JSON object, got {type(m).__name__}')
        if m.get('format') != INDEX_FORMAT or m.get('format_version') not in READABLE_VERSIONS:
            raise IndexFolderError(f'{self.manifest_path}: format {m.get("format")!r} version {m.get("format_version")!r}; '
                              f'this tempme_composer reads {INDEX_FORMAT} versions '
                              f'{", ".join(map(str, READABLE_VERSIONS))}')
        self._check_manifest(m)
        return m

    def _check_manifest(self, m: dict[str, Any]) -> None:
        """Every entry of the expected type, every file name of its own form inside the folder."""
        where = str(self.manifest_path)
        for key, types in _MANIFEST_TYPES.items():
            value = m.get(key)
            if not isinstance(value, types) or isinstance(value, bool):
                want = ' or '.join('an integer' if t is int else 'text' if t is str else 'an object' for t in types)
                raise IndexFolderError(f'{where}: {key!r} is {value!r}, expected {want}: the index is damaged; '
                                  'rebuild it with tempme-index --rebuild')
        if m['generation'] < 1 or m['count'] < 0 or m['embed_dim'] < 1:
            raise IndexFolderError(f'{where}: generation {m["generation"]}, count {m["count"]}, embed_dim '
                              f'{m["embed_dim"]}: expected generation >= 1, count >= 0, embed_dim >= 1')
        source = m['source']
        if source.get('kind') not in ('videos', 'mds') or not isinstance(source.get('root'), str):
            raise IndexFolderError(f'{where}: \'source\' is {source!r:.120}, expected {{"kind": "videos" or "mds", "root": '
                              'the indexed folder}')
        if m['dtype'] not in DTYPES:
            raise IndexFolderError(f'{where}: \'dtype\' is {m["dtype"]!r}, expected one of {", ".join(DTYPES)}')
        for key, pattern in GENERATION_FILES.items():
            if key == 'captions' and m.get(key) is None:
                continue
            try:
                confined(self.folder, m.get(key), pattern, source=where, entry=repr(key), expected=_INSIDE)
            except UnsafeNameError as e:
                raise IndexFolderError(str(e)) from e

    def embeddings(self, manifest: dict[str, Any] | None = None) -> np.ndarray:
        """``[rows, D]`` memory map (read-only) of the committed embeddings."""
        m = manifest or self.manifest()
        path = self.folder / m['embeddings']
        try:
            with _NPY_HEADER_LOCK:
                emb = np.load(path, mmap_mode='r', allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise IndexFolderError(f'{path} is not a readable .npy array ({e}): the index is damaged; rebuild it with '
                              'tempme-index --rebuild') from e
        want = (m['count'], m['embed_dim'])
        if emb.ndim != 2 or emb.shape != want or str(emb.dtype) != m['dtype']:
            raise IndexFolderError(f'{path} holds an array of shape {tuple(emb.shape)} and dtype {emb.dtype}, but '
                              f'{MANIFEST} says shape {want} and dtype {m["dtype"]}: the index is damaged; rebuild it')
        return emb

    def rows(self, manifest: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every committed row, read and checked (an update needs them all; a search uses `rows_view`)."""
        return list(self.rows_view(manifest))

    def rows_view(self, manifest: dict[str, Any] | None = None) -> Sequence[dict[str, Any]]:
        """The committed rows as a sequence: an SQLite file is read a row at a time, on demand (a search opens
        a million-row index without parsing it); a version-1 JSON-lines file is parsed and checked whole."""
        m = manifest or self.manifest()
        path = self.folder / m['metadata']
        if path.suffix == '.sqlite':
            return MetadataRows(path, m['count'], check_row, IndexFolderError)
        rows = _read_jsonl(path)
        if len(rows) != m['count']:
            raise IndexFolderError(f'{path} has {len(rows)} rows but {MANIFEST} says {m["count"]}: '
                              'the index is damaged; rebuild it')
        for n, row in enumerate(rows, 1):
            check_row(row, f'{path}, line {n}')
        return rows

    def captions(self, manifest: dict[str, Any] | None = None) -> list[dict[str, Any]] | None:
        m = manifest or self.manifest()
        if not m.get('captions'):
            return None
        path = self.folder / m['captions']
        rows = _read_jsonl(path)
        for n, c in enumerate(rows, 1):
            if not _is_int(c.get('row')) or not 0 <= c['row'] < m['count'] or not isinstance(c.get('text'), str):
                raise IndexFolderError(f'{path}, line {n}: expected "row" (an integer below {m["count"]}) and "text" '
                                  f'(a caption), got row={c.get("row")!r}, text={c.get("text")!r:.60}')
        return rows

    def open_committed(self) -> tuple[dict[str, Any], np.ndarray, Sequence[dict[str, Any]]]:
        """Manifest, embeddings and rows of one committed generation, as a set.

        A writer may commit between our reading ``index.json`` and opening the files it names, then delete them;
        the memory map keeps an opened file readable, and a file gone before it was opened means a newer
        generation exists: read its manifest and try again.
        """
        for attempt in range(_OPEN_ATTEMPTS):
            before = self._raw_generation()
            try:
                manifest = self.manifest()
                return manifest, self.embeddings(manifest), self.rows_view(manifest)
            except (FileNotFoundError, IndexFolderError) as e:
                if attempt < _OPEN_ATTEMPTS - 1 and self._raw_generation() != before:
                    continue  # a commit happened meanwhile: read the new generation
                if isinstance(e, FileNotFoundError):
                    raise IndexFolderError(f'{e.filename} is missing: the index is damaged; rebuild it with '
                                      'tempme-index --rebuild') from e
                raise
        raise AssertionError('unreachable')

    def _raw_generation(self) -> Any:
        """The generation ``index.json`` names now (None when unreadable): tells a commit from damage."""
        try:
            now = json.loads(self.manifest_path.read_text(encoding='utf-8'))
        except (OSError, ValueError):
            return None
        return now.get('generation') if isinstance(now, dict) else None

    def thumbnail_path(self, row: dict[str, Any]) -> Path | None:
        """The row's thumbnail inside ``thumbs/``, or None (no thumbnail, or a name that is not one of ours)."""
        thumb = row.get('thumb')
        if not thumb:
            return None
        try:
            return confined(self.folder / THUMBS, thumb, THUMB_NAME, source=MANIFEST, entry='thumb', expected=_INSIDE)
        except UnsafeNameError:
            return None

    # ---- writing -------------------------------------------------------------------------------------------
    def _own_dir(self, name: str) -> Path:
        """A sub-folder the index writes and deletes in: a real folder, never a link to somewhere else."""
        path = self.folder / name
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise IndexFolderError(f'{path} is a link or a file, expected the index\'s own {name}/ folder: the index '
                              f'will not write or delete through it; remove it (or use a new --out folder)')
        return path

    def pending_batches(self) -> list[Path]:
        """Complete pending batches (their ``.jsonl`` exists), oldest first."""
        folder = self._own_dir(PENDING)
        return sorted(p for p in folder.glob('batch-*.jsonl') if _PENDING_NAME.fullmatch(p.name)) \
            if folder.is_dir() else []

    def read_pending(self, embed_dim: int) -> Iterator[PendingBatch]:
        """The complete pending batches, each checked like committed rows.

        Raises:
            IndexFolderError: a batch that is not what ``write_pending`` writes, naming the file and the way out.
        """
        for marker in self.pending_batches():
            emb_path = marker.with_suffix('.npy')
            if not emb_path.is_file():
                continue
            fix = f'delete {self.folder / PENDING} to drop the interrupted run\'s batches, then re-run'
            try:
                payload = json.loads(marker.read_text(encoding='utf-8'))
                embeddings = np.load(emb_path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise IndexFolderError(f'{marker.with_suffix("")}.*: not a pending batch of tempme-index ({e}); {fix}') from e
            rows = payload.get('rows') if isinstance(payload, dict) else None
            if not isinstance(rows, list) or embeddings.shape != (len(rows), embed_dim):
                raise IndexFolderError(f'{marker}: expected {{"rows": [...]}} with one row per embedding of size {embed_dim} '
                                  f'in {emb_path.name} (found {embeddings.shape}); {fix}')
            for n, row in enumerate(rows, 1):
                if not isinstance(row, dict):
                    raise IndexFolderError(f'{marker}, row {n}: expected an object; {fix}')
                check_row(row, f'{marker}, row {n}')
            captions = payload.get('captions', [])
            yield PendingBatch(rows, embeddings, captions if isinstance(captions, list) else [])

    def write_pending(self, number: int, batch: PendingBatch) -> None:
        folder = self._own_dir(PENDING)
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_save_npy(folder / f'batch-{number:08d}.npy', batch.embeddings)
        atomic_write_bytes(folder / f'batch-{number:08d}.jsonl',
                           json.dumps({'rows': batch.rows, 'captions': batch.captions}).encode('utf-8'))

    def next_pending_number(self) -> int:
        """One past the newest pending batch: a run's batches sort after the interrupted run's they recover."""
        batches = self.pending_batches()
        return int(batches[-1].stem.split('-')[1]) + 1 if batches else 0

    def pending_numbers(self, first: int | None = None, rank: int = 0, world_size: int = 1) -> Iterator[int]:
        """The batch numbers one writer of ``world_size`` uses: ``first + rank``, then every ``world_size``-th.

        Ranks that share one ``first`` (default: `next_pending_number`) interleave and never write the same name.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f'rank {rank} of {world_size} writers: expected 0 <= rank < world_size')
        start = self.next_pending_number() if first is None else first
        return itertools.count(start + rank, world_size)

    def write_thumbnail(self, key: str, jpeg: bytes) -> str:
        folder = self._own_dir(THUMBS)
        folder.mkdir(parents=True, exist_ok=True)
        name = f'{key}.jpg'
        atomic_write_bytes(folder / name, jpeg)
        return name

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the index's exclusive writer lock, or refuse at once naming the process that holds it.

        ``fcntl.flock`` on ``.lock``: the kernel releases it when the process ends, however it ends, so a crash
        never leaves the index locked (the file itself stays; it is not the lock).

        Raises:
            IndexLockedError: another ``tempme-index`` is updating this folder.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise IndexFolderError(f'cannot open the lock file {path} ({e.strerror}); expected a plain file') from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(fd, 64, 0).decode('ascii', 'replace').strip() or '?'
                raise IndexLockedError(
                    f'{self.folder} is being updated by another tempme-index run (pid {holder}); wait for it to '
                    'finish and run again (it will only encode what is still new), or use another --out folder') from e
            os.ftruncate(fd, 0)
            os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _next_generation(self) -> int:
        """One past every generation the folder holds a file of (a damaged manifest cannot make it reuse one)."""
        seen = [int(m.group(1)) for p in self.folder.iterdir() for pat in GENERATION_FILES.values()
                if (m := pat.fullmatch(p.name))]
        with contextlib.suppress(IndexFolderError):
            if self.manifest_path.is_file():
                seen.append(self._read_manifest()['generation'])
        return max(seen, default=0) + 1

    def commit(self, base: dict[str, Any], embeddings: np.ndarray, rows: list[dict[str, Any]],
               captions: list[dict[str, Any]] | None, skipped: list[dict[str, Any]]) -> dict[str, Any]:
        """Write generation N+1 and switch ``index.json`` to it; then remove what it replaced.

        What is removed is found by our own name patterns inside the folder, never by names read from a file.
        """
        try:
            old = self._read_manifest() if self.manifest_path.is_file() else None
        except IndexFolderError:
            old = None  # a damaged manifest being rebuilt: its names are not trusted, its files are found below
        generation = self._next_generation()
        names = {'embeddings': f'embeddings-g{generation}.npy', 'metadata': f'metadata-g{generation}.sqlite',
                 'captions': f'captions-g{generation}.jsonl' if captions is not None else None}
        _atomic_save_npy(self.folder / names['embeddings'], embeddings)
        write_metadata_db(self.folder / names['metadata'], rows)
        if captions is not None:
            atomic_write_bytes(self.folder / names['captions'], _jsonl(captions))
        atomic_write_bytes(self.folder / SKIPPED, _jsonl(skipped))
        now = time.strftime('%Y-%m-%dT%H:%M:%S')
        created = old.get('created') if old and isinstance(old.get('created'), str) else now
        manifest = {
            'format': INDEX_FORMAT,
            'format_version': FORMAT_VERSION,
            **base,
            'count': int(embeddings.shape[0]),
            'videos': len({r.get('path') for r in rows}),
            'embed_dim': int(embeddings.shape[1]),
            'dtype': str(embeddings.dtype),
            'generation': generation,
            **names,
            'created': created,
            'updated': now,
            'skipped': len(skipped),
        }
        atomic_write_bytes(self.manifest_path, (json.dumps(manifest, indent=2) + '\n').encode())  # the commit
        current = set(names.values())
        for path in self.folder.iterdir():
            if path.name not in current and any(p.fullmatch(path.name) for p in GENERATION_FILES.values()):
                path.unlink(missing_ok=True)
        for marker in self.pending_batches():
            marker.with_suffix('.npy').unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
        pending = self._own_dir(PENDING)
        for stray in pending.glob('batch-*') if pending.is_dir() else []:
            stray.unlink(missing_ok=True)  # an un-marked .npy of the batch a crash interrupted
        for stray in pending.glob('.tmp-*') if pending.is_dir() else []:
            stray.unlink(missing_ok=True)
        keep = {r.get('thumb') for r in rows}
        thumbs = self._own_dir(THUMBS)
        for thumb in thumbs.glob('*.jpg') if thumbs.is_dir() else []:
            if thumb.name not in keep and THUMB_NAME.fullmatch(thumb.name):
                thumb.unlink(missing_ok=True)
        return manifest
