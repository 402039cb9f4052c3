"""An index's row metadata in SQLite: opened in milliseconds at any size, read a row at a time.

A JSON-lines file has to be parsed whole before the first search (≈ 30 s for a million moments on a 2-core CPU,
``python -m tempme_composer.bench search-startup``); an SQLite file (the standard library's ``sqlite3``) is
opened without reading it, and a search then reads only the rows it shows. Each generation's file is written
once (to a temporary name, then renamed) and never changed, so readers open it read-only and ``immutable``:
no locks, no journal. Every row is checked like a JSON-lines row (`check_row`) when it is read.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

__all__ = ['MetadataRows', 'write_metadata_db', 'METADATA_SCHEMA']

#: One table: the row number, its path (indexed, for "more like this" lookups) and the row as JSON.
METADATA_SCHEMA = ('CREATE TABLE rows (id INTEGER PRIMARY KEY, path TEXT NOT NULL, row TEXT NOT NULL);'
                   'CREATE INDEX rows_path ON rows (path);')
_BATCH = 4096


def write_metadata_db(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` (numbered from 0) to a new SQLite file at ``path``, atomically (temporary name, rename)."""
    tmp = path.with_name(f'.tmp-{os.getpid()}-{path.name}')
    tmp.unlink(missing_ok=True)
    db = sqlite3.connect(tmp)
    try:
        db.execute('PRAGMA journal_mode=OFF')
        db.execute('PRAGMA synchronous=OFF')  # the file is fsynced below before it is renamed into place
        db.executescript(METADATA_SCHEMA)
        db.executemany('INSERT INTO rows (id, path, row) VALUES (?, ?, ?)',
                       ((i, str(r.get('path', '')), json.dumps(r, ensure_ascii=False)) for i, r in enumerate(rows)))
        db.commit()
    finally:
        db.close()
    with open(tmp, 'rb') as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetadataRows(Sequence[dict[str, Any]]):
    """The rows of one committed metadata file, as a read-only sequence of dicts fetched on demand.

    ``check`` validates each row as it is read (it raises the index's own error naming file and row).
    """

    def __init__(self, path: Path, count: int, check: Callable[[dict[str, Any], str], None],
                 error: Callable[[str], Exception]) -> None:
        self.path, self._count, self._check, self._error = path, count, check, error
        uri = 'file:' + urllib.parse.quote(str(path.resolve())) + '?mode=ro&immutable=1'
        try:
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            (stored,) = self._db.execute('SELECT COUNT(*) FROM rows').fetchone()
        except sqlite3.Error as e:
            raise error(f'{path} is not a readable metadata database ({e}): the index is damaged; rebuild it '
                        'with tempme-index --rebuild') from e
        if stored != count:
            raise error(f'{path} has {stored} rows but index.json says {count}: the index is damaged; rebuild it')
        self._lock = threading.Lock()  # one connection shared by threads: one statement at a time

    def __len__(self) -> int:
        return self._count

    def _fetch(self, start: int, stop: int) -> list[dict[str, Any]]:
        try:
            with self._lock:
                found = self._db.execute('SELECT id, row FROM rows WHERE id >= ? AND id < ? ORDER BY id',
                                         (start, stop)).fetchall()
        except sqlite3.Error as e:
            raise self._error(f'{self.path}: cannot read rows {start}-{stop - 1} ({e}): the index is damaged; '
                              'rebuild it with tempme-index --rebuild') from e
        if [i for i, _ in found] != list(range(start, stop)):
            raise self._error(f'{self.path}: rows {start}-{stop - 1} are not numbered 0..{self._count - 1} in '
                              'order: the index is damaged; rebuild it')
        out = []
        for i, text in found:
            where = f'{self.path}, row {i}'
            try:
                row = json.loads(text)
            except (TypeError, json.JSONDecodeError) as e:
                raise self._error(f'{where}: not JSON ({e}): the index is damaged; rebuild it') from e
            if not isinstance(row, dict):
                raise self._error(f'{where}: expected a JSON object, got {type(row).__name__}')
            self._check(row, where)
            out.append(row)
        return out

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            start, stop, step = i.indices(self._count)
            rows = self._fetch(start, stop) if stop > start else []
            return rows[::step]
        i = int(i)
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError(i)
        return self._fetch(i, i + 1)[0]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, self._count, _BATCH):
            yield from self._fetch(start, min(start + _BATCH, self._count))

    def positions_of(self, path: str) -> list[int]:
        """Row numbers whose ``path`` is ``path`` (an index lookup, not a scan)."""
        with self._lock:
            return [i for (i,) in self._db.execute('SELECT id FROM rows WHERE path = ? ORDER BY id', (path,))]

    def close(self) -> None:
        self._db.close()
