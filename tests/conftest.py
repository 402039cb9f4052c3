"""Fixtures shared by several test modules."""

import atexit
import gc
import sys

import pytest
from s3_fixtures import s3_bucket, s3_server  # noqa: F401  (a real S3 endpoint on loopback)


@pytest.fixture(autouse=True, scope='module')
def _release_streaming_shared_memory():
    """Close the shared-memory blocks of StreamingDatasets a test module left behind.

    streaming registers every block's cleanup with ``atexit``, which keeps each block (and its file descriptor)
    alive until the process exits: one pytest process building hundreds of datasets runs into the open-file
    limit (20,000 here) before the suite ends. A block that nothing but its atexit handler still references is
    released here, as it would be at exit.
    """
    yield
    from streaming.base.shared.memory import SharedMemory

    gc.collect()
    orphans = [o for o in gc.get_objects() if isinstance(o, SharedMemory)]
    for shm in orphans:
        # References: the atexit-registered bound method, ``orphans``, ``shm`` and getrefcount's argument.
        # Anything more is a live dataset still using the block.
        if sys.getrefcount(shm) <= 4:
            atexit.unregister(shm.cleanup)
            try:
                shm.cleanup()
            except BufferError:  # a view into the block is still alive: leave it to exit
                atexit.register(shm.cleanup)
