"""The per-video decode cache: one file per decoded video (or a failure marker), written atomically, so an
interrupted conversion resumes where it stopped and a finished video is never decoded again.

A cache file is valid while the video file keeps its size and mtime and the decoder's verdicts are unchanged
(:data:`DECODER_VERSION`); its layout is magic, ``uint32`` header size, JSON header, then the frame blobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import uuid
from pathlib import Path
from typing import Any

__all__ = [
    'CACHE_VERSION',
    'DECODER_VERSION',
    'WORK_DIR_NAME',
    'atomic_write',
    'cache_name',
    'cached_result',
    'file_signature',
    'read_cache',
    'write_cache',
]

#: Version of the per-video decode cache (its files did not change with the shard layout).
CACHE_VERSION = 1
_CACHE_MAGIC = b'TMVC1\n'
#: Bumped when the decoder's verdicts change (2: truncated tails by timestamp, decoded duration), so a cache
#: left by an older version is decoded again instead of reused.
DECODER_VERSION = 2
#: Default cache folder under the output root (hidden: never uploaded, deleted after a successful run).
WORK_DIR_NAME = '.tempme_work'


def cache_name(path: Path) -> str:
    """A video's cache file stem: readable (its own stem) and unique (a hash of its resolved path)."""
    digest = hashlib.sha1(str(path.resolve()).encode('utf-8', 'surrogatepass')).hexdigest()[:16]
    safe = re.sub(r'[^A-Za-z0-9._-]', '_', path.stem)[:48]
    return f'{safe}-{digest}'


def file_signature(path: Path) -> list[int]:
    """``[size, mtime_ns]``: a changed file no longer matches its cache entry."""
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary sibling renamed into place: an interrupted write leaves no partial file."""
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}')
    with open(tmp, 'wb') as f:
        f.write(data)
    os.replace(tmp, path)


def write_cache(path: Path, header: dict[str, Any], blobs: list[bytes]) -> None:
    """One cache file: magic, header size, JSON ``header`` (with the blob sizes), the blobs."""
    head = json.dumps(header).encode()
    atomic_write(path, b''.join([_CACHE_MAGIC, struct.pack('<I', len(head)), head, *blobs]))


def read_cache(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    """The header and blobs of a cache file; ValueError for a file that is not one or is cut off."""
    data = path.read_bytes()
    if not data.startswith(_CACHE_MAGIC):
        raise ValueError(f'{path} is not a converter cache file')
    offset = len(_CACHE_MAGIC)
    (n,) = struct.unpack_from('<I', data, offset)
    header = json.loads(data[offset + 4 : offset + 4 + n])
    offset += 4 + n
    blobs = []
    for size in header['blob_sizes']:
        blobs.append(data[offset : offset + size])
        offset += size
    if offset != len(data):
        raise ValueError(f'{path} is truncated or corrupt')
    return header, blobs


def cached_result(cache_dir: Path, path: Path) -> dict[str, Any] | None:
    """The cached outcome for ``path`` (ok or failed) if it is still valid for the file on disk."""
    name = cache_name(path)
    try:
        signature = file_signature(path)
    except OSError:
        return None
    ok = cache_dir / f'{name}.bin'
    if ok.is_file():
        try:
            header, _ = read_cache(ok)
            if header.get('signature') == signature and header.get('decoder') == DECODER_VERSION:
                return {
                    'status': 'ok',
                    **{k: header[k] for k in ('num_frames', 'warnings')},
                    'duration': header.get('duration'),
                    'declared_duration': header.get('declared_duration'),
                }
        except (ValueError, OSError, KeyError, json.JSONDecodeError):
            pass
    fail = cache_dir / f'{name}.fail.json'
    if fail.is_file():
        try:
            info = json.loads(fail.read_text())
            if info.get('signature') == signature and info.get('decoder') == DECODER_VERSION:
                return info
        except (OSError, json.JSONDecodeError):
            pass
    return None
