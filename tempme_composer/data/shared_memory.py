"""Building a StreamingDataset when another job on this machine races it for a shared-memory name.

streaming names each dataset's shared memory by scanning ``/dev/shm`` for a free prefix; two jobs starting
together can pick the same one. :func:`construct_streaming` builds the dataset again in that case (one rank),
or stops with one clear :class:`SharedMemoryNameError` (several ranks, or too many lost races).
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable

import torch

from tempme_composer.errors import RecipeError

__all__ = ['SHM_NAME_ATTEMPTS', 'SharedMemoryNameError', 'construct_streaming']

log = logging.getLogger(__name__)

#: Constructions of a StreamingDataset when another process on this machine takes the shared-memory name that
#: streaming picked before streaming creates it (each attempt scans again and picks the next free name).
SHM_NAME_ATTEMPTS = 5
# streaming's shared-memory names: '/<6-digit prefix>_<resource>', e.g. '/000047_locals'.
_SHM_NAME = re.compile(r'/?\d{6}_[a-z_]+')
_JITTER = random.Random()  # its own generator: a retry leaves the seeded global one untouched


class SharedMemoryNameError(RecipeError):
    """Another process on this machine kept taking the shared-memory name streaming picked for a dataset."""


def construct_streaming(init: Callable[[], None]) -> None:
    """Run a StreamingDataset constructor ``init``, again when another process took its shared-memory name.

    streaming registers a dataset by scanning /dev/shm for a free prefix, then creating ``/<prefix>_locals``;
    a second streaming job starting on the same machine can create that name in between, and the create then
    fails with FileExistsError. Nothing is left behind by such an attempt (the failing create is the first
    shared-memory object streaming creates, and no file lock exists yet), so in a single process the
    constructor is run again, and its new scan skips the taken name. With several ranks, streaming's
    registration runs barriers between them that one rank cannot replay alone, so there the error is reported
    at once.

    Raises:
        SharedMemoryNameError: the name race was lost ``SHM_NAME_ATTEMPTS`` times, or with several ranks.
    """
    for attempt in range(1, SHM_NAME_ATTEMPTS + 1):
        try:
            init()
            return
        except FileExistsError as e:
            name = _streaming_shm_name(e)
            if name is None:
                raise
            several_ranks = _ranks_synchronise()
            if several_ranks or attempt == SHM_NAME_ATTEMPTS:
                raise SharedMemoryNameError(_shm_race_message(name, attempt, several_ranks)) from e
            log.warning(
                'shared-memory name %s was taken by another process while streaming created it; '
                'building the dataset again (attempt %d of %d)',
                name,
                attempt + 1,
                SHM_NAME_ATTEMPTS,
            )
            time.sleep(_JITTER.uniform(0.0, 0.05 * attempt))  # two jobs retrying in step would collide again


def _streaming_shm_name(error: FileExistsError) -> str | None:
    """The shared-memory name of ``error`` if it is one of streaming's, else None (another file's error)."""
    name = error.filename
    return name if isinstance(name, str) and _SHM_NAME.fullmatch(name) else None


def _ranks_synchronise() -> bool:
    """Whether streaming's registration synchronises ranks (torch.distributed, or it would start it itself)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size() > 1  # one rank in a process group: nothing to keep in step
    return int(os.environ.get('WORLD_SIZE', '1')) > 1


def _shm_race_message(name: str, attempts: int, several_ranks: bool) -> str:
    """One paragraph: what was taken, why, and what to do."""
    if several_ranks:
        why = (
            'With several ranks the dataset cannot be built again in place (streaming synchronises the ranks '
            'around that name).'
        )
    else:
        why = f'The dataset was built {attempts} times and another process took the name each time.'
    return (
        f"cannot register the dataset's shared memory: streaming picked the free name {name!r}, and "
        'another process on this machine (another StreamingDataset job starting at the same time) created '
        f'it before streaming could. {why} Rerun, and start jobs that share this machine a few seconds '
        'apart.'
    )
