"""Fixtures shared by several test modules.

The tests sit in folders that mirror the package (tests/clip, tests/data, ...) with no ``__init__.py``: pytest
puts this folder on ``sys.path`` when it loads this file, so the helper modules next to it (``video_fixtures``,
``export_fixtures``, ...) import by their plain names from every folder.
"""

import atexit
import gc
import os
import sys
import weakref
from pathlib import Path

import pytest
import wandb_first  # noqa: F401  (before the heavy libraries: see its docstring)
from demo_fixtures import ddp_demo_run, demo_data, demo_run  # noqa: F401  (one demo dataset and runs per session)
from export_fixtures import tiny_export  # noqa: F401  (one tiny export per session)
from s3_fixtures import s3_bucket, s3_server  # noqa: F401  (a real S3 endpoint on loopback)

_SHARED_MEMORY = Path('/dev/shm')


def _shared_memory_blocks() -> set[tuple[str, int]]:
    """Name and inode of every block: one made again under an old name has a new inode."""
    if not _SHARED_MEMORY.is_dir():
        return set()
    with os.scandir(_SHARED_MEMORY) as entries:
        return {(entry.name, entry.inode()) for entry in entries}


#: Blocks still in use when the last search ended: looked at again by the next (they are frozen, see below).
_UNSETTLED: list[weakref.ref] = []


@pytest.fixture(autouse=True, scope='module')
def _release_streaming_shared_memory():
    """Close the shared-memory blocks of StreamingDatasets a test module left behind.

    streaming registers every block's cleanup with ``atexit``, which keeps each block (and its file descriptor)
    alive until the process exits: one pytest process building hundreds of datasets runs into the open-file
    limit (20,000 here) before the suite ends. A block that nothing but its atexit handler still references is
    released here, as it would be at exit.

    The blocks are POSIX shared memory, listed in /dev/shm until released: a module after which no new block
    is there left none behind, and the search is skipped. The search collects garbage and goes through the
    objects of the process; what outlives it is then frozen (``gc.freeze``), so the next search, and every
    collection in between, goes only through what later modules made, not again through Composer, torch and
    everything earlier modules kept (a second or more each time once the suite has loaded them). Blocks still
    in use are kept by weak reference and looked at again by the next search.
    """
    before = _shared_memory_blocks()
    yield
    if _SHARED_MEMORY.is_dir() and _shared_memory_blocks() <= before:
        return
    from streaming.base.shared.memory import SharedMemory

    gc.collect()
    orphans = [o for o in gc.get_objects() if isinstance(o, SharedMemory)]
    orphans += [ref() for ref in _UNSETTLED if ref() is not None]  # frozen: not in gc.get_objects()
    in_use = []
    for shm in orphans:
        # References: the atexit-registered bound method, ``orphans``, ``shm`` and getrefcount's argument.
        # Anything more is a live dataset still using the block.
        if sys.getrefcount(shm) <= 4:
            atexit.unregister(shm.cleanup)
            try:
                shm.cleanup()
            except BufferError:  # a view into the block is still alive: leave it to exit
                atexit.register(shm.cleanup)
                in_use.append(weakref.ref(shm))
        else:
            in_use.append(weakref.ref(shm))
    _UNSETTLED[:] = in_use
    del orphans
    gc.freeze()
