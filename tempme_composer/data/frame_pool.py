"""Shared-memory frame buffers that loader workers refill instead of allocating a fresh one per batch.

Why: torch's DataLoader stacks every batch of a worker into a *new* shared-memory segment, and the kernel zero-fills
and maps each 4-KiB page of it on first touch. On the 2-core VMs we measure on that costs a few us per page: 2.1-3.3 ms
of a loader core per 12-frame 224-px sample, a third of the sample's whole cost (decoding its JPEGs is 3.3 ms), against
0.15-0.44 ms into an already mapped segment (``python -m tempme_composer.bench data`` times both). A worker that
refills the same few segments touches no new pages.

The main process gains too: it keeps each segment mapped, so receiving a batch maps no new pages either (a first
read of a freshly mapped segment cost ~2 ms per sample there: the model's first read, or pin-memory's copy).

Why it is safe: a worker refills a segment only after the main process has released it, and the main process
releases it only when nothing can read the batch's frames any more:
- with ``pin_memory`` (GPU runs) right after the pin-memory thread's copy into pinned memory;
- without, the loader yields the frames in place, over the segment, and releases it when the last tensor sharing
  their memory is freed (a lease object that every such tensor keeps alive; views, slices and microbatches
  included). A caller that keeps batches keeps their segments; the worker then stacks into fresh ones.
The claims live in a small shared table, one row per worker. A batch that never reached the caller (an iteration
abandoned mid-epoch: torch drains and drops its queued batches) frees its segment when the loader starts its next
iteration, through a generation counter. When all of a worker's segments are busy it stacks into a fresh segment,
exactly as torch does: it never waits and never overwrites.

Only the frames (``uint8 [B, T, R, R, 3]``, >99.9 % of a batch's bytes) use the pool; the pool needs persistent
workers (one worker process per row for the loader's life).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate, get_worker_info

__all__ = ['FramePoolDataLoader', 'PooledFrames', 'SharedFramePool']

_FREE = -1  # claims table: free
_LEASED = -2  # claims table: yielded in place, held by the caller (only its lease frees it)


class PooledFrames:
    """A batch's frames in a worker's pool slot, on their way to the main process (the value of the frames key).

    ``pin_memory`` (called by the DataLoader's pin-memory thread) copies them into pinned memory and keeps the
    slot's tensor, so that the loader can keep its mapping and release the slot at once.
    """

    def __init__(self, frames: torch.Tensor, slot: int, pinned: torch.Tensor | None = None):
        self.frames, self.slot, self.pinned = frames, slot, pinned

    def pin_memory(self) -> PooledFrames:
        return PooledFrames(self.frames, self.slot, self.frames.pin_memory())


class SharedFramePool:
    """``slots_per_worker`` reusable shared-memory frame buffers per loader worker, and their claims table.

    Created in the main process before the workers start; the workers inherit (fork) or unpickle (spawn) the
    shared claims table and generation counter. Each worker allocates its own buffers lazily, sized by the
    largest batch it has stacked into that slot.
    """

    def __init__(self, num_workers: int, slots_per_worker: int):
        if num_workers < 1 or slots_per_worker < 1:
            raise ValueError(f'a frame pool needs num_workers >= 1 and slots_per_worker >= 1, got '
                             f'{num_workers} and {slots_per_worker}')
        self.num_workers, self.slots_per_worker = num_workers, slots_per_worker
        # claims[w, s]: the generation in which worker w's slot s was filled, or -1 when released.
        self._claims = torch.full((num_workers, slots_per_worker), _FREE, dtype=torch.int64).share_memory_()
        self._generation = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._buffers: dict[int, torch.Tensor] = {}  # a worker's own buffers, by slot
        self._mapped: dict[int, torch.UntypedStorage] = {}  # the main process's mappings of them, by global slot

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state['_buffers'], state['_mapped'] = {}, {}  # both belong to the process that holds them
        return state

    def begin_iteration(self) -> None:
        """Main process, before each new iteration: batches of earlier iterations that were never released no
        longer hold their segments (torch drops them before the new iteration's first task reaches a worker)."""
        self._generation += 1

    def stack(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor | PooledFrames:
        """``torch.stack(tensors)`` into a free buffer of this worker; a plain tensor in a fresh segment (as
        torch's collate makes) outside a worker or when every buffer of this worker is in use."""
        info = get_worker_info()
        s = None if info is None or info.id >= self.num_workers else self._claim_slot(info.id)
        if s is None:
            return default_collate(list(tensors))
        shape = (len(tensors), *tensors[0].shape)
        numel = math.prod(shape)
        buffer = self._buffers.get(s)
        if buffer is None or buffer.dtype != tensors[0].dtype or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=tensors[0].dtype).share_memory_()
            self._buffers[s] = buffer
        out = buffer[:numel].view(shape)
        torch.stack(list(tensors), out=out)
        return PooledFrames(out, info.id * self.slots_per_worker + s)

    def _claim_slot(self, worker: int) -> int | None:
        """A free slot of ``worker`` (released, or filled in an earlier generation and never yielded), now
        claimed for the current generation; None when all are in use."""
        generation = int(self._generation)
        row = self._claims[worker]
        for s in range(self.slots_per_worker):
            claim = int(row[s])
            if claim == _FREE or 0 <= claim < generation:
                row[s] = generation
                return s
        return None

    def receive(self, pooled: PooledFrames) -> torch.Tensor:
        """Main process: the frames for the caller; the slot is released once nothing can read them.

        The pinned copy when the pin-memory thread made one (released now), else the frames in place (released
        by their lease). The slot's segment stays mapped here, so torch's receiving side finds it in its cache
        next time instead of mapping (and page-faulting through) the segment again.
        """
        storage = pooled.frames.untyped_storage()
        self._mapped[pooled.slot] = storage
        if pooled.pinned is not None:
            self._claims.view(-1)[pooled.slot] = _FREE
            return pooled.pinned
        self._claims.view(-1)[pooled.slot] = _LEASED
        return torch.from_numpy(np.asarray(_SlotLease(pooled.frames, storage, self._claims, pooled.slot)))

    def claimed(self) -> int:
        """Slots in use: filled in the current generation, or yielded and still held (tests, diagnostics)."""
        return int(((self._claims == int(self._generation)) | (self._claims == _LEASED)).sum())


class _SlotLease:
    """The numpy base of frames yielded in place: alive while any tensor over them is; frees the slot after.

    It keeps the segment's storage alive too, so the mapping outlives every reader even if the pool remaps.
    """

    def __init__(self, frames: torch.Tensor, storage: torch.UntypedStorage, claims: torch.Tensor, slot: int):
        self.__array_interface__ = frames.numpy().__array_interface__
        self._storage, self._claims, self._slot = storage, claims, slot

    def __del__(self) -> None:
        try:
            self._claims.view(-1)[self._slot] = _FREE
        except Exception:  # interpreter shutdown: nothing left to refill it
            pass


class _ReleasingIterator:
    """Yields the loader's batches with the pooled frames handed over by :meth:`SharedFramePool.receive`."""

    def __init__(self, batches: Iterator[dict[str, torch.Tensor]], pool: SharedFramePool, key: str):
        self._batches, self._pool, self._key = batches, pool, key

    def __iter__(self) -> _ReleasingIterator:
        return self

    def __len__(self) -> int:
        return len(self._batches)  # type: ignore[arg-type]

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = next(self._batches)
        frames = batch[self._key]
        if isinstance(frames, PooledFrames):
            batch[self._key] = self._pool.receive(frames)
        return batch


class FramePoolDataLoader(DataLoader):
    """A DataLoader whose workers stack ``key`` (the frames) into a :class:`SharedFramePool`.

    ``collate_fn(samples, stack_frames)`` must put ``stack_frames(frames)`` (a :class:`PooledFrames` or a
    tensor) under ``key``; the loader yields plain tensors. Needs ``num_workers >= 1`` and persistent workers.
    """

    def __init__(self, dataset: Any, *, collate_fn: Callable[..., dict[str, torch.Tensor]], key: str = 'video',
                 slots_per_worker: int | None = None, **kwargs: Any):
        num_workers = kwargs.get('num_workers', 0)
        if num_workers < 1 or not kwargs.get('persistent_workers', False):
            raise ValueError('FramePoolDataLoader needs num_workers >= 1 and persistent_workers=True (got '
                             f"num_workers={num_workers}, persistent_workers={kwargs.get('persistent_workers')})")
        prefetch = kwargs.get('prefetch_factor') or 2
        # A worker has at most `prefetch` batches in flight (queued, or in the pin-memory thread) plus the one
        # it is filling; an abandoned iteration may leave `prefetch` more claimed until the next one starts.
        pool = SharedFramePool(num_workers, slots_per_worker or 2 * prefetch + 1)
        super().__init__(dataset, collate_fn=_PooledCollate(collate_fn, pool), **kwargs)
        self.frame_pool, self.frame_key = pool, key

    def __iter__(self) -> _ReleasingIterator:  # type: ignore[override]
        self.frame_pool.begin_iteration()
        return _ReleasingIterator(super().__iter__(), self.frame_pool, self.frame_key)


class _PooledCollate:
    """Picklable ``collate_fn(samples)`` that hands the pool's ``stack`` to the wrapped collate."""

    def __init__(self, collate_fn: Callable[..., dict[str, torch.Tensor]], pool: SharedFramePool):
        self.collate_fn, self.pool = collate_fn, pool

    def __call__(self, samples: Sequence[Any]) -> dict[str, torch.Tensor]:
        return self.collate_fn(samples, self.pool.stack)
