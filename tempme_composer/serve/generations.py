"""The index generation searches run on: the committed one, switched when ``tempme-index`` commits a new one.

A snapshot is a `VideoIndex` opened through the store's committed-read API (`IndexStore.open_committed`): its
embeddings are memory-mapped and its metadata database held open, so a commit that deletes the old
generation's files does not break a search holding the old snapshot (an open file stays readable after it is
unlinked); the next search takes the new one. ``index.json`` is replaced by a rename as the commit
(``docs/using-models.md``, the index folder), so a snapshot is never half-written.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from tempme_composer.inference.search import VideoIndex
from tempme_composer.inference.store import MANIFEST, IndexFolderError

__all__ = ['Generations']

log = logging.getLogger(__name__)


class Generations:
    """The current snapshot of one index folder, refreshed by `refresh` (polled by the app)."""

    def __init__(
        self,
        folder: str | os.PathLike,
        model_hash: str | None = None,
        prepare: Callable[[VideoIndex], object] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.model_hash = model_hash
        self.prepare = prepare  # run on a new snapshot before it is served (e.g. building its HNSW graph)
        self._lock = threading.Lock()
        self._stamp = self._manifest_stamp()
        self._index = VideoIndex(self.folder)
        self.switches = 0

    def _manifest_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.folder / MANIFEST)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def current(self) -> VideoIndex:
        """The snapshot to run one search (or one batch) on: keep it for the whole search."""
        return self._index

    @property
    def generation(self) -> int:
        return int(self._index.manifest['generation'])

    def refresh(self) -> bool:
        """Open the committed generation when ``index.json`` changed; True when the snapshot was switched.

        A generation that cannot be used (damaged, or built by another model) is logged and the current one kept.
        """
        with self._lock:
            stamp = self._manifest_stamp()
            if stamp is None or stamp == self._stamp:
                return False
            try:
                fresh = VideoIndex(self.folder)
                if self.model_hash is not None and fresh.model_hash != self.model_hash:
                    raise IndexFolderError(
                        f'{self.folder} now holds an index of model {fresh.model_hash[:12]}, not '
                        f'{self.model_hash[:12]} that this server loaded: restart it with that model'
                    )
            except (IndexFolderError, OSError) as e:
                log.warning('keeping generation %s: %s', self.generation, e)
                self._stamp = stamp
                return False
            self._stamp = stamp
            if fresh.manifest['generation'] == self._index.manifest['generation']:
                return False
            if self.prepare is not None:
                self.prepare(fresh)
            self._index = fresh  # searches holding the old snapshot finish on it
            self.switches += 1
            return True
