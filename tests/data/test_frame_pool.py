"""Loader workers refill shared-memory frame buffers: batches stay exact and are never overwritten while held."""

from __future__ import annotations

import gc

import pytest
import torch

from tempme_composer.data.frame_pool import FramePoolDataLoader, PooledFrames, SharedFramePool
from tempme_composer.data.loader import LoaderOptions, build_video_text_dataloader
from tempme_composer.data.synthetic import generate_demo_dataset


class _Frames(torch.utils.data.Dataset):
    """Sample i: uint8 frames filled with i (every byte says which sample it came from)."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {'video': torch.full((3, 8, 8, 3), i, dtype=torch.uint8), 'index': torch.tensor(i)}


def _recording_collate(samples, stack_frames):
    video = stack_frames([s['video'] for s in samples])
    slot = video.slot if isinstance(video, PooledFrames) else -1
    return {'video': video, 'slot_seen': torch.tensor(slot), 'index': torch.stack([s['index'] for s in samples])}


def _loader(**kw) -> FramePoolDataLoader:
    return FramePoolDataLoader(_Frames(), collate_fn=_recording_collate, batch_size=2, num_workers=2,
                               persistent_workers=True, **kw)


def _check(batch) -> None:
    expected = batch['index'].view(-1, 1, 1, 1, 1).to(torch.uint8).expand_as(batch['video'])
    assert torch.equal(batch['video'], expected)


def test_held_batches_stay_intact_and_workers_reuse_released_buffers():
    loader = _loader()
    pool = loader.frame_pool
    held = [b for _ in range(3) for b in loader]  # 36 batches kept; each worker has 5 slots
    assert len(held) == 36
    for b in held:
        _check(b)  # no worker refilled a buffer whose batch the caller still holds
        assert type(b['video']) is torch.Tensor
    slots = [int(b['slot_seen']) for b in held]
    assert sorted(s for s in slots if s >= 0) == list(range(2 * pool.slots_per_worker))  # then fresh segments
    del held, b
    gc.collect()
    assert pool.claimed() == 0  # the last tensor over a batch's frames released its slot

    views = []
    for i, batch in enumerate(loader):  # batches dropped as training drops them: the same few buffers again
        _check(batch)
        assert int(batch['slot_seen']) >= 0, 'a worker fell back to a fresh segment with free slots left'
        if i < 2:
            views.append(batch['video'][:1])  # a view keeps its batch's slot
    del batch
    assert pool.claimed() == len(views) == 2
    for v in views:
        assert torch.equal(v, v.flatten()[0].expand_as(v))
    del views, v
    assert pool.claimed() == 0
def test_an_abandoned_iteration_does_not_exhaust_the_pool():
    loader = _loader()
    for _ in range(3):  # stop early three times: queued batches are dropped without being released
        next(iter(loader))
    indices, slots = [], []
    for batch in loader:
        _check(batch)
        indices += batch['index'].tolist()
        slots.append(int(batch['slot_seen']))
    assert indices == list(range(24))
    assert min(slots) >= 0


def test_pool_stack_outside_a_worker_is_a_plain_stack():
    pool = SharedFramePool(num_workers=1, slots_per_worker=2)
    out = pool.stack([torch.ones(2, 2), torch.zeros(2, 2)])
    assert type(out) is torch.Tensor and torch.equal(out, torch.stack([torch.ones(2, 2), torch.zeros(2, 2)]))


def test_receive_takes_the_pinned_copy_else_lends_the_frames_until_freed():
    pool = SharedFramePool(num_workers=1, slots_per_worker=2)
    frames = torch.arange(24, dtype=torch.uint8).view(2, 3, 4).share_memory_()
    pool._claims[0, 1] = int(pool._generation)  # as a worker claims it
    copy = frames.clone()
    assert pool.receive(PooledFrames(frames, 1, pinned=copy)) is copy  # pin_memory's copy, not a second one
    assert pool.claimed() == 0

    pool._claims[0, 1] = int(pool._generation)
    lent = pool.receive(PooledFrames(frames, 1))
    assert torch.equal(lent, frames) and lent.data_ptr() == frames.data_ptr()  # no copy
    part = lent[1:]
    del lent
    pool.begin_iteration()  # a new epoch does not take back frames the caller holds
    assert pool.claimed() == 1
    del part
    assert pool.claimed() == 0


@pytest.mark.gpu
def test_pinned_batches_from_the_pool_are_exact():
    if not torch.cuda.is_available():
        pytest.skip('needs CUDA for pinned memory')
    loader = _loader(pin_memory=True)
    held = [b for _ in range(2) for b in loader]
    for b in held:
        _check(b)
        assert b['video'].is_pinned()
    assert min(int(b['slot_seen']) for b in held) >= 0 and loader.frame_pool.claimed() == 0


def test_pool_needs_persistent_workers():
    with pytest.raises(ValueError, match='persistent_workers=True'):
        FramePoolDataLoader(_Frames(), collate_fn=_recording_collate, batch_size=2, num_workers=2)


@pytest.mark.parametrize('train', [True, False])
def test_pooled_video_loader_equals_the_in_process_loader(tmp_path, train):
    demo = generate_demo_dataset(tmp_path / 'ds', num_train=12, num_eval=8, seed=5)
    local = str(demo.train_dir if train else demo.eval_dir)
    kw = dict(local=local, batch_size=3 if train else 5, train=train, max_frames=6, image_resolution=32,
              max_words=16, shuffle_seed=3)
    pooled = build_video_text_dataloader(LoaderOptions(num_workers=2, **kw)).dataloader
    assert isinstance(pooled, FramePoolDataLoader)
    reference = build_video_text_dataloader(LoaderOptions(num_workers=0, **kw)).dataloader

    def by_video(loader):
        out = {}
        for batch in loader:
            assert type(batch['video']) is torch.Tensor
            for j, v in enumerate(batch['video_index'].tolist()):
                out.setdefault(v, batch['video'][j])
        return out

    for _ in range(2):  # the second epoch refills the first epoch's buffers
        got, want = by_video(pooled), by_video(reference)
        assert got.keys() == want.keys()
        for v in want:
            assert torch.equal(got[v], want[v]), v
