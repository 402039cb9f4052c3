"""Data path tests: frame selection, real PyAV decoding, the demo dataset, MDS streaming and collation.

Every StreamingDataset here reads its own ``tmp_path`` folder (unique ``local``), so streaming's shared-memory
registry never sees a reused directory and no global ``clean_stale_shared_memory()`` call is needed. That
call is deliberately avoided: it would also delete the segments of any other streaming job running on the
same machine. Run these tests serially (plain pytest), never with pytest-xdist.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from fractions import Fraction
from multiprocessing.shared_memory import SharedMemory as OsSharedMemory
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from streaming import MDSWriter, StreamingDataset
from streaming.base.shared import prefix as shm_prefix

from tempme_composer.clip.preprocess import CLIP_MEAN, CLIP_STD, frames_to_tensor, normalize_frames
from tempme_composer.clip.tokenizer import tokenize
from tempme_composer.data import (
    VideoDecodeError,
    decode_video,
    encode_jpeg,
    select_frame_indices,
)
from tempme_composer.data.collate import collate_eval, split_eval_batch, split_eval_batch_by_size
from tempme_composer.data.dataset import VideoTextDataset
from tempme_composer.data.format import DEMO_COLUMNS
from tempme_composer.data.frame_layout import StoredFrames, pack_jpeg_frames
from tempme_composer.data.loader import LoaderOptions, build_video_text_dataloader
from tempme_composer.data.shared_memory import SHM_NAME_ATTEMPTS, SharedMemoryNameError, construct_streaming
from tempme_composer.data.synthetic import generate_demo_dataset, main
from tempme_composer.errors import RecipeError

R = 32  # small CLIP resolution keeps the streaming tests fast
L = 16  # max_words

# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------


def write_video(path: Path, frames: list[np.ndarray], fps: float, codec: str = 'mpeg4') -> Path:
    """Encode RGB uint8 frames with PyAV (mpeg4 is in every PyAV wheel)."""
    with av.open(str(path), mode='w') as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = 'yuv420p'
        stream.bit_rate = 4_000_000
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def counter_frames(n: int, height: int, width: int) -> list[np.ndarray]:
    """Frame i: grey 8*i on the left quarter, white elsewhere (the edge checks aspect-preserving resizes)."""
    frames = []
    for i in range(n):
        f = np.full((height, width, 3), 255, np.uint8)
        f[:, : width // 4] = 8 * i
        frames.append(f)
    return frames


def loader_kwargs(**over):
    kw = dict(max_frames=12, image_resolution=R, max_words=L, num_workers=0, shuffle_seed=3)
    kw.update(over)
    return kw


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return generate_demo_dataset(tmp_path_factory.mktemp('demo') / 'ds', num_train=12, num_eval=8, seed=5)


# ------------------------------------------------------------------------------------------------------------
# video.py
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('num_frames, max_frames, expected', [
    (20, 12, [0, 1, 3, 5, 6, 8, 10, 12, 13, 15, 17, 19]),
    (13, 12, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]),
    (31, 12, [0, 2, 5, 8, 10, 13, 16, 19, 21, 24, 27, 30]),
    (100, 12, [0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99]),
    (65, 64, list(range(63)) + [64]),
    (12, 12, list(range(12))),
    (5, 12, [0, 1, 2, 3, 4]),
    (0, 12, []),
])
def test_select_frame_indices_linspace_worked_examples(num_frames, max_frames, expected):
    idx = select_frame_indices(num_frames, max_frames, slice_framepos=2)
    assert idx.dtype == np.int64
    assert idx.tolist() == expected


def test_select_frame_indices_181_64():
    idx = select_frame_indices(181, 64).tolist()
    assert idx[:5] == [0, 2, 5, 8, 11] and idx[-2:] == [177, 180]
    assert len(set(idx)) == 64 and idx == sorted(idx)


def test_select_frame_indices_head_tail_and_invalid():
    assert select_frame_indices(20, 4, 0).tolist() == [0, 1, 2, 3]
    assert select_frame_indices(20, 4, 1).tolist() == [16, 17, 18, 19]
    assert select_frame_indices(3, 4, 1).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r'0 .*1 .*2 '):
        select_frame_indices(20, 4, 3)


def test_frames_to_tensor_matches_torchvision_pipeline():
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    landscape = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    portrait = rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)
    reference = T.Compose([
        T.Resize(R, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(R), T.ToTensor(),
        T.Normalize(CLIP_MEAN, CLIP_STD)])
    out = frames_to_tensor([landscape, Image.fromarray(portrait)], R)
    assert out.shape == (2, 3, R, R) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], reference(Image.fromarray(landscape)))
    torch.testing.assert_close(out[1], reference(Image.fromarray(portrait)))
    # A mean-coloured frame normalises to ~0.
    mean_px = np.full((R, R, 3), np.round(np.array(CLIP_MEAN) * 255), np.uint8)
    assert frames_to_tensor([mean_px], R).abs().max() < 0.01


def test_encode_jpeg_roundtrip():
    frame = np.zeros((24, 40, 3), np.uint8)
    frame[..., 0] = 200
    data = encode_jpeg(frame, quality=95)
    back = np.asarray(Image.open(__import__('io').BytesIO(data)).convert('RGB'))
    assert data[:2] == b'\xff\xd8' and back.shape == (24, 40, 3)
    assert np.abs(back.astype(int) - frame).max() <= 4


@pytest.mark.parametrize('height, width, expected_hw',
                         [(48, 64, (24, 32)), (64, 48, (32, 24)), (40, 40, (24, 24))])
def test_decode_video_short_side_keeps_aspect(tmp_path, height, width, expected_hw):
    path = write_video(tmp_path / 'v.mp4', counter_frames(6, height, width), fps=10)
    out = decode_video(path, fps=None, short_side=24)
    assert len(out.frames) == 6
    for f in out.frames:
        assert f.shape == (*expected_hw, 3) and f.dtype == np.uint8
    # The grey/white edge sits at a quarter of the width after resizing too (no squashing).
    last = out.frames[-1].astype(int)
    edge = expected_hw[1] // 4
    assert abs(last[:, edge - 2].mean() - 40) < 12 and last[:, edge + 2].mean() > 230
    assert out.source_fps == pytest.approx(10.0)


def test_decode_video_fps_keeps_first_frame_of_each_interval(tmp_path):
    path = write_video(tmp_path / 'v.mp4', counter_frames(30, 32, 32), fps=15)  # 2 s
    every = decode_video(path, fps=None, short_side=None)
    assert len(every.frames) == 30 and every.frames[0].shape == (32, 32, 3)
    assert every.duration_s == pytest.approx(2.0, abs=0.1)
    sub = decode_video(path, fps=5, short_side=None)  # keeps source frames 0, 3, 6, ..., 27
    assert len(sub.frames) == 10
    levels = [int(np.median(f[:, :6, 0])) for f in sub.frames]
    assert np.allclose(levels, [8 * i for i in range(0, 30, 3)], atol=6), levels
    assert len(decode_video(path, fps=1, short_side=None).frames) == 2
    assert len(decode_video(path, fps=60, short_side=None).frames) == 30  # never duplicates frames


def test_decode_video_errors_name_the_path(tmp_path):
    missing = tmp_path / 'nope.mp4'
    with pytest.raises(VideoDecodeError, match='nope.mp4.*does not exist'):
        decode_video(missing, fps=None, short_side=None)
    garbage = tmp_path / 'garbage.mp4'
    garbage.write_bytes(b'this is not a video' * 100)
    with pytest.raises(VideoDecodeError, match='garbage.mp4'):
        decode_video(garbage, fps=1, short_side=224)
    assert issubclass(VideoDecodeError, ValueError)


def test_decode_video_zero_frames_raises(tmp_path):
    path = tmp_path / 'empty.mp4'
    with av.open(str(path), mode='w') as container:
        stream = container.add_stream('mpeg4', rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, 'yuv420p'
    with pytest.raises(VideoDecodeError, match='empty.mp4'):
        decode_video(path, fps=None, short_side=None)


# ------------------------------------------------------------------------------------------------------------
# synthetic.py
# ------------------------------------------------------------------------------------------------------------


def test_demo_dataset_files_on_disk(demo):
    assert (demo.train_dir / 'index.json').is_file() and (demo.eval_dir / 'index.json').is_file()
    assert list(demo.train_dir.glob('shard.*.mds')) and list(demo.eval_dir.glob('shard.*.mds'))
    assert len(list((demo.videos_dir / 'train').glob('*.mp4'))) == 12
    assert len(list((demo.videos_dir / 'eval').glob('*.mp4'))) == 8
    index = json.loads((demo.train_dir / 'index.json').read_text())
    shard = index['shards'][0]
    assert dict(zip(shard['column_names'], shard['column_encodings'], strict=True)) == DEMO_COLUMNS
    assert sum(s['samples'] for s in index['shards']) == 12
    assert not demo.reused
    # The stored videos decode through the real path.
    clip = decode_video(next((demo.videos_dir / 'eval').glob('*.mp4')), fps=None, short_side=None)
    assert len(clip.frames) == 16 and clip.frames[0].shape == (48, 48, 3)


def test_demo_dataset_is_deterministic_and_idempotent(tmp_path, demo):
    again = generate_demo_dataset(tmp_path / 'a', num_train=12, num_eval=8, seed=5)
    for split in ('train', 'eval'):
        for ref in sorted(getattr(demo, f'{split}_dir').iterdir()):
            assert (getattr(again, f'{split}_dir') / ref.name).read_bytes() == ref.read_bytes(), ref.name
    other = generate_demo_dataset(tmp_path / 'b', num_train=12, num_eval=8, seed=6)
    shard_name = 'shard.00000.mds'
    assert (other.train_dir / shard_name).read_bytes() != (demo.train_dir / shard_name).read_bytes()

    shard = again.train_dir / 'shard.00000.mds'
    mtime = shard.stat().st_mtime_ns
    reused = generate_demo_dataset(tmp_path / 'a', num_train=12, num_eval=8, seed=5)
    assert reused.reused and shard.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match='overwrite'):
        generate_demo_dataset(tmp_path / 'a', num_train=12, num_eval=8, seed=7)
    redone = generate_demo_dataset(tmp_path / 'a', num_train=4, num_eval=4, seed=7, overwrite=True)
    assert not redone.reused and len(list((redone.videos_dir / 'train').glob('*.mp4'))) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no temp/trash dirs left behind

    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'keep.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='foreign'):
        generate_demo_dataset(foreign, num_train=4, num_eval=4, overwrite=True)
    assert (foreign / 'keep.txt').read_text() == 'mine'


def test_demo_validation_split_adds_videos_and_leaves_train_and_eval_unchanged(tmp_path, demo):
    """num_val adds further videos from their own random stream: the train and eval shards stay byte-identical."""
    with_val = generate_demo_dataset(tmp_path / 'v', num_train=12, num_eval=8, seed=5, num_val=3)
    for split in ('train', 'eval'):
        for ref in sorted(getattr(demo, f'{split}_dir').iterdir()):
            assert (getattr(with_val, f'{split}_dir') / ref.name).read_bytes() == ref.read_bytes(), ref.name
    assert with_val.val_dir == with_val.mds_dir / 'val' and with_val.num_val == 3
    val = StreamingDataset(local=str(with_val.val_dir), batch_size=1)
    assert [val[i]['video_id'] for i in range(val.size)] == [f'demo_val_{i:05d}' for i in range(3)]
    evaluation = StreamingDataset(local=str(demo.eval_dir), batch_size=1)
    assert all(val[i]['captions'] for i in range(val.size))
    assert {val[i]['frames'] for i in range(val.size)}.isdisjoint(evaluation[i]['frames'] for i in range(evaluation.size))
    # the dataset without a validation split is reused by a run that needs none
    assert generate_demo_dataset(tmp_path / 'v', num_train=12, num_eval=8, seed=5).reused
    with pytest.raises(ValueError, match='num_val must be >= 0'):
        generate_demo_dataset(tmp_path / 'w', num_train=12, num_eval=8, seed=5, num_val=-1)


def test_demo_eval_set_has_distinct_classes_and_varied_captions(demo):
    ds = StreamingDataset(local=str(demo.eval_dir), batch_size=1)
    first_captions = [ds[i]['captions'][0] for i in range(ds.size)]
    assert len(set(first_captions)) == ds.size  # one (colour, shape, direction) class per eval video
    for i in range(ds.size):
        caps = ds[i]['captions']
        assert 3 <= len(caps) <= 5 and len(set(caps)) == len(caps)
        assert ds[i]['num_frames'] == len(StoredFrames(ds[i]['frames'], f'sample {i}')) == 16


def test_synthetic_cli(tmp_path, capsys):
    main(['--out', str(tmp_path / 'cli'), '--num-train', '3', '--num-eval', '2', '--seed', '1'])
    printed = json.loads(capsys.readouterr().out)
    assert printed['num_train'] == 3 and Path(printed['train_dir'], 'index.json').is_file()


# ------------------------------------------------------------------------------------------------------------
# dataset.py, collate.py, loader.py
# ------------------------------------------------------------------------------------------------------------


def test_train_loader_contract(demo):
    spec = build_video_text_dataloader(LoaderOptions(local=str(demo.train_dir), batch_size=4, train=True, **loader_kwargs()))
    batches = list(spec.dataloader)
    assert len(batches) == 3
    b = batches[0]
    assert b['video'].shape == (4, 12, R, R, 3) and b['video'].dtype == torch.uint8  # normalised on the device
    assert b['video_mask'].shape == (4, 12) and b['video_mask'].dtype == torch.int64
    assert b['video_mask'].all()  # 16 stored frames >= 12
    assert b['video_index'].shape == (4,) and b['video_index'].dtype == torch.int64
    assert b['text_ids'].shape == (4, L) and b['text_ids'].dtype == torch.int64
    assert b['text_mask'].shape == (4, L) and b['text_mask'].dtype == torch.int64
    assert sorted(torch.cat([x['video_index'] for x in batches]).tolist()) == list(range(12))
    assert spec.get_num_samples_in_batch(b) == 4
    assert len(spec.split_batch(b, 2)) == 2  # composer's default split works for train batches


def test_eval_loader_contract_and_caption_mapping(demo):
    spec = build_video_text_dataloader(LoaderOptions(local=str(demo.eval_dir), batch_size=3, train=False, **loader_kwargs()))
    batches = list(spec.dataloader)
    assert [x['video'].shape[0] for x in batches] == [3, 3, 2]  # drop_last=False
    raw = StreamingDataset(local=str(demo.eval_dir), batch_size=1)
    seen = []
    for b in batches:
        k_total = b['text_ids'].shape[0]
        assert b['text_mask'].shape == (k_total, L)
        assert b['text_video_index'].shape == b['text_caption_index'].shape == (k_total,)
        assert spec.get_num_samples_in_batch(b) == b['video'].shape[0]
        for j, vid in enumerate(b['video_index'].tolist()):
            seen.append(vid)
            rows = b['text_video_index'] == vid
            captions = raw[vid]['captions']
            ids, mask = tokenize(captions, L)
            assert torch.equal(b['text_ids'][rows], ids) and torch.equal(b['text_mask'][rows], mask)
            assert b['text_caption_index'][rows].tolist() == list(range(len(captions)))
            frames = StoredFrames(raw[vid]['frames'], f'sample {vid}').select(select_frame_indices(16, 12))
            new = normalize_frames(b['video'][j:j + 1], b['video_mask'][j:j + 1])[0]
            assert torch.equal(new, frames_to_tensor(frames, R))
    assert seen == list(range(8))  # eval is not shuffled


def test_mask_and_padding_when_video_is_shorter_than_max_frames(demo):
    spec = build_video_text_dataloader(LoaderOptions(local=str(demo.eval_dir), batch_size=2, train=False,
                                       **loader_kwargs(max_frames=20)))
    b = next(iter(spec.dataloader))
    assert b['video'].shape == (2, 20, R, R, 3)
    assert b['video_mask'].sum(1).tolist() == [16, 16]
    assert b['video_mask'][:, :16].all() and not b['video_mask'][:, 16:].any()
    assert not b['video'][:, 16:].any() and b['video'][:, :16].abs().sum((2, 3, 4)).gt(0).all()


def _captions_per_epoch(loader, epochs):
    out = []
    for _ in range(epochs):
        out.append({int(v): tuple(t.tolist()) for b in loader for v, t in zip(b['video_index'], b['text_ids'],
                                                                             strict=True)})
    return out


@pytest.mark.parametrize('num_workers', [0, 2])
def test_train_caption_changes_per_epoch_and_is_reproducible(demo, num_workers):
    kw = loader_kwargs(num_workers=num_workers)
    first = build_video_text_dataloader(LoaderOptions(local=str(demo.train_dir), batch_size=4, train=True, **kw)).dataloader
    e0, e1, e2 = _captions_per_epoch(first, 3)
    assert set(e0) == set(e1) == set(range(12))
    assert sum(e0[i] != e1[i] for i in e0) >= 3 and sum(e1[i] != e2[i] for i in e1) >= 3

    ds: VideoTextDataset = first.dataset
    raw = StreamingDataset(local=str(demo.train_dir), batch_size=1)
    for i in range(12):  # the draw is the documented function of (caption_seed, epoch, idx)
        caps = raw[i]['captions']
        assert e1[i] == tuple(tokenize(caps[ds.caption_choice(i, len(caps), epoch=1)], L)[0][0].tolist())

    # A fresh run reproduces epoch 0; one resumed into epoch 1 reproduces epoch 1.
    fresh = build_video_text_dataloader(LoaderOptions(local=str(demo.train_dir), batch_size=4, train=True, **kw)).dataloader
    assert _captions_per_epoch(fresh, 1)[0] == e0
    resumed = build_video_text_dataloader(LoaderOptions(local=str(demo.train_dir), batch_size=4, train=True,
                                          **kw)).dataloader
    resumed.dataset.load_state_dict({'epoch': 1, 'sample_in_epoch': 0, 'num_canonical_nodes': 1,
                                     'shuffle_seed': kw['shuffle_seed'], 'initial_physical_nodes': 1})
    assert _captions_per_epoch(resumed, 1)[0] == e1


def _fake_eval_samples(counts):
    samples = []
    for vid, k in enumerate(counts):
        samples.append({
            'video': torch.full((2, 3, 4, 4), float(vid)),
            'video_mask': torch.ones(2, dtype=torch.long),
            'video_index': torch.tensor(100 + vid),
            'text_ids': torch.full((k, L), vid, dtype=torch.long),
            'text_mask': torch.ones(k, L, dtype=torch.long),
        })
    return samples


def test_collate_eval_and_split_keep_captions_with_videos():
    batch = collate_eval(_fake_eval_samples([3, 1, 5, 2, 4]))
    assert batch['text_ids'].shape == (15, L)
    assert batch['text_video_index'].tolist() == [100] * 3 + [101] + [102] * 5 + [103] * 2 + [104] * 4
    assert batch['text_caption_index'].tolist() == [0, 1, 2, 0, 0, 1, 2, 3, 4, 0, 1, 0, 1, 2, 3]
    for parts in (split_eval_batch(batch, 2), split_eval_batch(batch, 3), split_eval_batch_by_size(batch, 2),
                  split_eval_batch(batch, 9)):
        for p in parts:
            vids = p['video_index'].tolist()
            assert set(p['text_video_index'].tolist()) == set(vids)
            assert torch.equal(p['text_ids'][:, 0] + 100, p['text_video_index'])  # rows carry their own video
            assert torch.equal(p['video'][:, 0, 0, 0, 0].long() + 100, p['video_index'])
        for key in batch:
            assert torch.equal(torch.cat([p[key] for p in parts]), batch[key])
    assert [p['video'].shape[0] for p in split_eval_batch(batch, 3)] == [2, 1, 2]
    assert [p['video'].shape[0] for p in split_eval_batch_by_size(batch, 2)] == [2, 2, 1]
    assert len(split_eval_batch(batch, 9)) == 5
    with pytest.raises(ValueError):
        split_eval_batch_by_size(batch, 1.5)


def test_split_eval_batch_with_duplicate_padding_video():
    samples = _fake_eval_samples([2, 3])
    batch = collate_eval([samples[0], samples[1], samples[1]])  # streaming pads with repeats
    parts = split_eval_batch(batch, 3)
    assert [p['text_ids'].shape[0] for p in parts] == [2, 3, 3]
    assert [p['text_caption_index'].tolist() for p in parts] == [[0, 1], [0, 1, 2], [0, 1, 2]]


def test_bad_samples_raise_naming_the_video(tmp_path):
    frame = pack_jpeg_frames([encode_jpeg(np.zeros((8, 8, 3), np.uint8))])
    rows = [
        {'video_id': 'ok', 'captions': ['fine'], 'frames': frame, 'num_frames': 1, 'fps': 1.0},
        {'video_id': 'no_captions', 'captions': [], 'frames': frame, 'num_frames': 1, 'fps': 1.0},
        {'video_id': 'no_frames', 'captions': ['x'], 'frames': np.uint32(0).tobytes(), 'num_frames': 0, 'fps': 1.0},
    ]
    with MDSWriter(out=str(tmp_path / 'bad'), columns=DEMO_COLUMNS) as writer:
        for row in rows:
            writer.write(row)
    ds = VideoTextDataset(local=str(tmp_path / 'bad'), batch_size=1, max_frames=4, image_resolution=8,
                          max_words=L, train=False)
    assert ds[0]['video_mask'].tolist() == [1, 0, 0, 0]
    with pytest.raises(ValueError, match='no_captions'):
        ds[1]
    with pytest.raises(ValueError, match='no_frames'):
        ds[2]


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'nothing_here.*tempme_composer\.data\.synthetic'):
        build_video_text_dataloader(LoaderOptions(local=str(tmp_path / 'nothing_here'), batch_size=2, train=True,
                                    **loader_kwargs()))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='index.json'):
        build_video_text_dataloader(LoaderOptions(local=str(tmp_path / 'empty'), batch_size=2, train=False,
                                    **loader_kwargs()))


class OtherJob:
    """A second streaming job on this machine, starting at the same moment: it registers the shared-memory
    name streaming just picked, after streaming's scan and before its create, for the first ``times`` creates.

    It wraps the create streaming's prefix registration makes (only the timing of the third-party library is
    steered); the segment itself is a real POSIX shared-memory block holding another job's locals.
    """

    def __init__(self, times: int) -> None:
        self.times = times
        self.taken: list[tuple[OsSharedMemory, bytes]] = []
        self._streaming_shared_memory = shm_prefix.SharedMemory

    def shared_memory(self, name: str | None = None, create: bool | None = None, size: int = 0,
                      auto_cleanup: bool = True):  # -> streaming's SharedMemory
        if create is True and len(self.taken) < self.times:
            data = shm_prefix._pack_locals([f'/elsewhere/other-job-{len(self.taken)}'], int(name[:6]))
            segment = OsSharedMemory(name=name, create=True, size=len(data))
            segment.buf[:len(data)] = data
            self.taken.append((segment, data))
        return self._streaming_shared_memory(name, create, size, auto_cleanup)

    def prefixes(self) -> list[int]:
        """The shared-memory prefixes this job holds."""
        return [int(segment.name.lstrip('/')[:6]) for segment, _ in self.taken]

    def untouched(self) -> bool:
        """Every segment still holds what this job wrote (the dataset never wrote into another job's name)."""
        return all(bytes(segment.buf[:len(data)]) == data for segment, data in self.taken)

    def release(self) -> None:
        for segment, _ in self.taken:
            segment.close()
            segment.unlink()


@pytest.fixture
def other_job(monkeypatch) -> Iterator[Callable[[int], OtherJob]]:
    """``other_job(times)`` starts racing streaming's registrations; its segments are removed afterwards."""
    jobs: list[OtherJob] = []

    def start(times: int) -> OtherJob:
        job = OtherJob(times)
        monkeypatch.setattr(shm_prefix, 'SharedMemory', job.shared_memory)
        jobs.append(job)
        return job

    yield start
    monkeypatch.undo()
    for job in jobs:
        job.release()


def test_a_shared_memory_name_taken_by_another_job_is_built_again(demo, other_job):
    expected = _eval_videos(demo)
    job = other_job(1)
    spec = build_video_text_dataloader(LoaderOptions(local=str(demo.eval_dir), batch_size=3, train=False,
                                       **loader_kwargs(max_frames=6)))
    assert len(job.taken) == 1  # the race happened: the first create found the name taken
    dataset = spec.dataloader.dataset
    assert dataset._shm_prefix_int not in job.prefixes()
    batch = next(iter(spec.dataloader))
    assert batch.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(batch[key], value), key
    assert job.untouched()


def test_a_shared_memory_name_taken_every_time_is_one_clear_error(demo, other_job):
    job = other_job(SHM_NAME_ATTEMPTS)
    with pytest.raises(SharedMemoryNameError) as info:
        build_video_text_dataloader(LoaderOptions(local=str(demo.eval_dir), batch_size=3, train=False,
                                    **loader_kwargs(max_frames=6)))
    assert len(job.taken) == SHM_NAME_ATTEMPTS
    message = str(info.value)
    last = job.taken[-1][0].name.lstrip('/')
    assert isinstance(info.value, RecipeError) and '\n' not in message  # main(): one `error: ...` paragraph
    assert f"streaming picked the free name '/{last}'" in message, message
    assert 'another process on this machine' in message
    assert f'built {SHM_NAME_ATTEMPTS} times' in message
    assert message.endswith('Rerun, and start jobs that share this machine a few seconds apart.')
    assert job.untouched()


def test_other_file_exists_errors_are_not_retried():
    calls = []

    def init() -> None:
        calls.append(1)
        raise FileExistsError(17, 'File exists', '/tmp/run/index.json')

    with pytest.raises(FileExistsError):
        construct_streaming(init)
    assert len(calls) == 1


# ------------------------------------------------------------------------------------------------------------
# Loader options added with the converter: frame order, paragraph mode, streams, format version
# ------------------------------------------------------------------------------------------------------------


def _eval_videos(demo, **kwargs):
    spec = build_video_text_dataloader(LoaderOptions(local=str(demo.eval_dir), batch_size=3, train=False,
                                       **loader_kwargs(max_frames=6, **kwargs)))
    return next(iter(spec.dataloader))


def test_frame_order_reversed_and_random(demo):
    base = _eval_videos(demo)
    rev = _eval_videos(demo, frame_order=1)
    torch.testing.assert_close(rev['video'], base['video'].flip(1))  # 16 frames -> 6 kept, reversed
    rnd = _eval_videos(demo, frame_order=2)
    again = _eval_videos(demo, frame_order=2)
    torch.testing.assert_close(rnd['video'], again['video'])  # reproducible for a seed/epoch/sample
    for i in range(3):
        frames = [base['video'][i, t] for t in range(6)]
        perm = [next(t for t in range(6) if torch.equal(rnd['video'][i, k], frames[t])) for k in range(6)]
        assert sorted(perm) == list(range(6))
    assert not torch.equal(rnd['video'], base['video'])
    with pytest.raises(ValueError, match='frame_order'):
        _eval_videos(demo, frame_order=3)


def test_paragraph_mode_joins_captions(demo):
    b = _eval_videos(demo, paragraph=True)
    assert b['text_ids'].shape[0] == 3 and b['text_video_index'].tolist() == b['video_index'].tolist()
    ds = StreamingDataset(local=str(demo.eval_dir), batch_size=1)
    caps = ds[int(b['video_index'][0])]['captions']
    torch.testing.assert_close(b['text_ids'][0], tokenize(' '.join(caps), 16)[0][0])


def test_streams_option_mixes_datasets(demo):
    spec = build_video_text_dataloader(LoaderOptions(
        local=None, streams=[{'local': str(demo.train_dir)}, {'local': str(demo.eval_dir), 'choose': 10}],
        batch_size=2, train=True, **loader_kwargs()))
    assert len(spec.dataloader.dataset) == demo.num_train + 10
    with pytest.raises(ValueError, match='unknown stream keys'):
        build_video_text_dataloader(LoaderOptions(local=None, streams=[{'local': str(demo.train_dir), 'weight': 2}],
                                    batch_size=2, train=True, **loader_kwargs()))
    with pytest.raises(FileNotFoundError, match='caption index'):  # demo data has no <split>_pairs
        build_video_text_dataloader(LoaderOptions(local=str(demo.mds_dir), split='train', batch_size=2, train=True,
                                    expand_sentences=True, **loader_kwargs()))
