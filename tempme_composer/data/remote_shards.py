"""Clear, bounded failures for shards streamed from a remote (``data.train.remote: s3://...``).

streaming 0.13 downloads shards in background threads. When a shard object is missing or corrupt the thread
dies, the shard stays marked "being prepared" in shared memory (so other workers wait on it forever), and
the epoch silently ends early (the next one fails with ``Background thread failed. Check other
traceback.``). `ShardErrors` (mixed into the
dataset class) turns that into one `RemoteShardError` naming the object, the number of download attempts
(streaming's ``download_retry``) and the fix; it puts the shard back to "remote" and deletes a corrupt
download from the cache, so no worker waits forever and no corrupt copy is reused by a later run.

Remote shards are also checked against the xxh64 hash that ``tempme-convert`` recorded in ``index.json``
(``data.validate_hash``), which catches a truncated or altered object.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from tempme_composer.data.format import MDS_INDEX_FILE, SHARD_HASHES
from tempme_composer.errors import RecipeError

__all__ = ['RemoteShardError', 'ShardErrors']

log = logging.getLogger(__name__)

_HASH = SHARD_HASHES[0]  # the hash tempme-convert and the demo generator record per shard


class RemoteShardError(RecipeError):
    """A shard that cannot be downloaded or fails its hash check; one paragraph naming the object.

    A DataLoader worker re-raises it as ``RemoteShardError("Caught RemoteShardError in DataLoader worker
    process 0. Original Traceback ...")``; the paragraph is recovered from that text, so the error printed
    is the same with and without workers.
    """

    def __init__(self, message: str) -> None:
        marker = f'{type(self).__name__}: '
        if message.startswith('Caught ') and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class ShardErrors:
    """Mixin for a StreamingDataset subclass (listed before it): see the module docstring."""

    _shard_error: RemoteShardError | None = None

    def enable_remote_hash_checks(self) -> None:
        """Verify every download of a remote stream whose shards all carry an xxh64 hash."""
        for stream_id, stream in enumerate(self.streams):  # type: ignore[attr-defined]
            if stream.remote is None:
                continue
            shards = [s for s, sid in zip(self.shards, self.stream_per_shard, strict=True)  # type: ignore[attr-defined]
                      if int(sid) == stream_id]
            if shards and all(_HASH in ((pair[1] or pair[0]).hashes or {}) for s in shards for pair in s.file_pairs):
                stream.validate_hash = _HASH

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        try:
            super().prepare_shard(shard_id, blocking)  # type: ignore[misc]
        except Exception as e:
            error = RemoteShardError(self._shard_failure(shard_id, e))
            self._shard_error = error
            raise error from e

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from super().__iter__()  # type: ignore[misc]
        except RuntimeError as e:  # 'Background thread failed. Check other traceback.'
            if self._shard_error is not None and not isinstance(e, RemoteShardError):
                raise self._shard_error from e
            raise
        if self._shard_error is not None:  # streaming ends the epoch early, silently, when its thread died
            raise self._shard_error

    def _shard_failure(self, shard_id: int, error: BaseException) -> str:
        """Reset the shard so nobody waits on it, drop a corrupt download, and describe the failure."""
        from streaming.base.dataset import _ShardState

        stream = self.streams[int(self.stream_per_shard[shard_id])]  # type: ignore[attr-defined]
        shard = self.shards[shard_id]  # type: ignore[attr-defined]
        raw, zipped = shard.file_pairs[0]
        name = (zipped or raw).basename
        where = '/'.join(p.strip('/') for p in (stream.remote or stream.local, stream.split or '', name) if p)
        self._shard_states[shard_id] = _ShardState.REMOTE  # type: ignore[attr-defined]
        reason = str(error).split('\n')[0] or type(error).__name__
        if reason.startswith('Checksum failure'):
            for info in (raw, zipped):
                if info is not None:
                    path = os.path.join(stream.local, stream.split or '', info.basename)
                    if os.path.isfile(path):
                        os.remove(path)
            index = '/'.join(p.strip('/') for p in (stream.remote or stream.local, stream.split or '', MDS_INDEX_FILE) if p)
            return (f'shard {where} is corrupt: its {stream.validate_hash} hash does not match the one in '
                    f'{index} (the downloaded copy was deleted from the '
                    f'cache {stream.local}). Upload the dataset again (tempme-convert --out {stream.remote} ...), '
                    'or set data.validate_hash=false to skip the check.')
        attempts = stream.download_retry
        return (f'shard {where} could not be downloaded after {attempts} attempt{"s" * (attempts != 1)} '
                f'({type(error).__name__}: {reason}). Check that the object exists (re-upload the dataset if it '
                f'was deleted), the credentials and S3_ENDPOINT_URL; then rerun (autoresume=true continues '
                'from the last checkpoint).')
