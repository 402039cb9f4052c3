"""uint8 frames from the loader, normalised on the device: bit-identical to the float path they replace.

Also the JPEG decoder (simplejpeg, PIL's pixels exactly), the channels-last layout, the per-sample shortcuts
of the dataset (caption token cache, single-caption draw, shard check) and the frame layouts: format 2 (one JPEG blob, only the used frames decoded) and format 1 (``jpegarray``),
which the loader keeps reading. Every StreamingDataset here reads its own ``tmp_path`` folder (see
test_data.py).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from streaming import MDSWriter

from tempme_composer.clip import CLIP
from tempme_composer.clip.config import clip_config_from_dict
from tempme_composer.clip.preprocess import clip_lookup_table, frames_to_tensor, normalize_frames
from tempme_composer.composer_wrapper import RetrievalModel
from tempme_composer.data import encode_jpeg
from tempme_composer.data.collate import collate_eval
from tempme_composer.data.format import DEMO_COLUMNS
from tempme_composer.data.frame_layout import StoredFrames, pack_jpeg_frames, write_format1_copy
from tempme_composer.data.loader import LoaderOptions, build_video_text_dataloader
from tempme_composer.data.synthetic import generate_demo_dataset
from tempme_composer.data.uint8_frames import decode_jpeg, frames_to_uint8
from tempme_composer.model import UnifiedModel
from tempme_composer.model.config import LoRAConfig, ModelConfig, StopConfig, TempMeConfig

R = 32


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return generate_demo_dataset(tmp_path_factory.mktemp('demo') / 'ds', num_train=8, num_eval=6, seed=2)


def _normalised(frames: list, resolution: int, max_frames: int | None = None) -> torch.Tensor:
    """The new path for one video: uint8 crops, padded to ``max_frames``, normalised 'on the device'."""
    clip = frames_to_uint8(frames, resolution)
    t = max_frames or len(frames)
    video = clip.new_zeros(1, t, resolution, resolution, 3)
    video[0, : len(frames)] = clip
    mask = (torch.arange(t) < len(frames)).long()[None]
    return normalize_frames(video, mask)[0]


def test_every_uint8_level_normalises_exactly_like_frames_to_tensor():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    frame = np.stack([levels, levels[::-1], levels.T], axis=-1)  # [16, 16, 3]: every level in every channel
    old = frames_to_tensor([frame], 16)
    assert torch.equal(_normalised([frame], 16), old)
    lut = clip_lookup_table()
    assert lut.shape == (3, 256) and lut.dtype == torch.float32
    assert torch.equal(lut[0][torch.from_numpy(levels).long()], old[0, 0])


def test_random_frames_resize_crop_and_modes_are_bit_identical():
    rng = np.random.default_rng(0)
    frames = [
        rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),  # landscape, resized (bicubic) then cropped
        rng.integers(0, 256, (50, 30, 3), dtype=np.uint8),  # portrait, upscaled
        rng.integers(0, 256, (R, 45, 3), dtype=np.uint8),  # short side already R: crop only
        Image.fromarray(rng.integers(0, 256, (R, R + 7), dtype=np.uint8)),  # grey ('L') PIL image
        Image.open(__import__('io').BytesIO(encode_jpeg(rng.integers(0, 256, (40, R, 3), dtype=np.uint8)))),
    ]
    old = frames_to_tensor(frames, R)
    new = _normalised(frames, R)
    assert new.dtype == torch.float32 and torch.equal(new, old)


def test_padding_is_positive_zero_and_float_input_passes_through():
    frame = np.full((R, R, 3), 7, np.uint8)
    out = _normalised([frame, frame], R, max_frames=5)
    assert out[2:].eq(0).all() and not torch.signbit(out[2:]).any()  # +0.0 like the old zero padding
    assert torch.equal(out[:2], frames_to_tensor([frame, frame], R))
    floats = torch.randn(1, 2, 3, R, R)
    assert normalize_frames(floats, torch.ones(1, 2)) is floats
    with pytest.raises(ValueError, match=r'\[B, T, R, R, 3\]'):
        normalize_frames(torch.zeros(2, R, R, 3, dtype=torch.uint8), torch.ones(2, R))
    with pytest.raises(ValueError, match=r'\[B, T, R, R, 3\] \(channels last\)'):
        normalize_frames(torch.zeros(1, 2, 3, R, R, dtype=torch.uint8), torch.ones(1, 2))  # the old layout
    with pytest.raises(ValueError, match='video_mask'):
        normalize_frames(torch.zeros(1, 2, R, R, 3, dtype=torch.uint8), torch.ones(1, 3))
    padded = torch.full((3, R, R, 3), 9, dtype=torch.uint8)
    frames_to_uint8([frame, frame], R, out=padded[:2])  # the loader writes into its padded sample
    assert torch.equal(padded[:2], frames_to_uint8([frame, frame], R)) and padded[2].eq(9).all()
    with pytest.raises(ValueError, match='contiguous uint8'):
        frames_to_uint8([frame], R, out=torch.empty(2, R, R, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match='contiguous uint8'):
        frames_to_uint8([frame], R, out=torch.empty(1, 3, R, R, dtype=torch.uint8))  # channels first


def _jpeg(image: np.ndarray | Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(buf, format='JPEG', **save)
    return buf.getvalue()


def test_jpeg_decode_is_pils_bit_for_bit():
    """simplejpeg with the accurate IDCT and fancy upsampling decodes exactly what PIL decodes: odd sizes, every
    chroma subsampling, the converter's own encoder, grey and CMYK (the PIL fallback)."""
    rng = np.random.default_rng(4)
    cases = []
    for height, width in ((224, 298), (224, 224), (37, 53), (300, 224), (9, 17)):
        noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        smooth = np.cumsum(noise.astype(np.int64), axis=1) // np.arange(1, width + 1)[None, :, None]
        for array in (noise, smooth.astype(np.uint8)):
            cases.append(encode_jpeg(array, quality=85))  # what tempme-convert writes
            cases += [_jpeg(array, quality=q, subsampling=sub) for q in (75, 95) for sub in (0, 1, 2)]
            cases.append(_jpeg(array[..., 1], quality=85))  # grey
            cases.append(_jpeg(Image.fromarray(array).convert('CMYK'), quality=85))
    for data in cases:
        image = Image.open(io.BytesIO(data))
        expected = np.asarray(image.convert('RGB'))
        decoded = decode_jpeg(data)
        assert decoded.dtype == np.uint8 and decoded.shape == expected.shape and np.array_equal(decoded, expected), \
            (image.mode, image.size)
    assert {Image.open(io.BytesIO(d)).mode for d in cases} == {'RGB', 'L', 'CMYK'}


def test_channels_last_frames_normalise_to_channels_first_old_values():
    """The loader's ``uint8 [B, T, R, R, 3]`` becomes the float ``[B, T, 3, R, R]`` (contiguous) that
    ``frames_to_tensor`` made, for JPEG bytes, arrays and images alike, padding +0.0."""
    rng = np.random.default_rng(5)
    videos = [[encode_jpeg(rng.integers(0, 256, (R, 43, 3), dtype=np.uint8), quality=85) for _ in range(3)],
              [rng.integers(0, 256, (50, 41, 3), dtype=np.uint8), Image.fromarray(rng.integers(0, 256, (R, R, 3),
                                                                                           dtype=np.uint8))]]
    video = torch.zeros(2, 4, R, R, 3, dtype=torch.uint8)
    mask = torch.zeros(2, 4, dtype=torch.long)
    for b, frames in enumerate(videos):
        out = frames_to_uint8(frames, R, out=video[b, : len(frames)])
        assert out.shape == (len(frames), R, R, 3) and out.data_ptr() == video[b].data_ptr()
        mask[b, : len(frames)] = 1
    new = normalize_frames(video, mask)
    assert new.shape == (2, 4, 3, R, R) and new.dtype == torch.float32 and new.is_contiguous()
    for b, frames in enumerate(videos):
        decoded = [Image.open(io.BytesIO(f)) if isinstance(f, bytes) else f for f in frames]  # PIL, as before
        old = torch.zeros(4, 3, R, R)
        old[: len(frames)] = frames_to_tensor(decoded, R)
        assert torch.equal(new[b], old) and not torch.signbit(new[b, len(frames):]).any()
    # The same levels laid out channels first, through the table directly: the move is only a permutation.
    lut = clip_lookup_table()
    by_channel = torch.stack([lut[c][video[..., c].long()] for c in range(3)], dim=2)  # [B, T, 3, R, R]
    assert torch.equal(new, by_channel * mask[:, :, None, None, None])


def test_dataset_shortcuts_return_what_the_full_path_returns(demo, monkeypatch):
    """Token cache (bounded, oldest evicted), single-caption draw and the shard-check shortcut change nothing."""
    import tempme_composer.data.dataset as dataset_module
    from tempme_composer.clip.tokenizer import tokenize
    from tempme_composer.data.dataset import VideoTextDataset
    from tempme_composer.data.remote_shards import ShardErrors

    monkeypatch.setattr(dataset_module, 'TOKEN_CACHE_SIZE', 3)
    ds = VideoTextDataset(local=str(demo.train_dir), batch_size=1, max_frames=4, image_resolution=R,
                          max_words=8, train=True)
    captions = ['a dog runs', 'a cat', 'a dog runs', 'one two three four five six seven eight nine', 'a cat', 'x']
    for caption in captions * 2:
        ids, mask = ds.caption_tokens(caption)
        expected_ids, expected_mask = tokenize(caption, 8)
        assert torch.equal(ids, expected_ids[0]) and torch.equal(mask, expected_mask[0])
        assert ids.dtype == mask.dtype == torch.long and ids.shape == (8,)
        assert len(ds._token_cache) <= 3
    assert list(ds._token_cache) == ['a cat', 'one two three four five six seven eight nine', 'x']  # first in, out
    for idx in range(5):
        for epoch in range(3):  # one caption: the draw is always 0, as the generator would say
            assert ds.caption_choice(idx, 1, epoch) == 0 == int(np.random.default_rng([0, epoch, idx]).integers(1))

    calls = []
    monkeypatch.setattr(ShardErrors, 'prepare_shard',
                        lambda self, shard_id, blocking=True: calls.append(shard_id))
    ds._ready_shards.clear()
    ds.prepare_shard(0)
    assert calls == [0] and 0 in ds._ready_shards  # the first check goes through streaming (shard is local)
    ds.prepare_shard(0)
    assert calls == [0]  # later ones are skipped: nothing can evict it
    monkeypatch.setattr(ds, 'cache_limit', 10**9)
    ds.prepare_shard(0)
    assert calls == [0, 0]  # with a cache limit every check goes through streaming's lock


def test_loader_batches_are_uint8_and_normalise_to_the_old_values(demo):
    from streaming import StreamingDataset

    spec = build_video_text_dataloader(LoaderOptions(local=str(demo.eval_dir), batch_size=3, train=False, max_frames=20,
                                       image_resolution=R, max_words=16))
    batch = next(iter(spec.dataloader))
    assert batch['video'].dtype == torch.uint8 and batch['video'].shape == (3, 20, R, R, 3)
    new = normalize_frames(batch['video'], batch['video_mask'])
    raw = StreamingDataset(local=str(demo.eval_dir), batch_size=1)
    for j, vid in enumerate(batch['video_index'].tolist()):
        stored = StoredFrames(raw[vid]['frames'], f'sample {vid}')
        old = torch.zeros(20, 3, R, R)  # what the loader handed the model before: float, zero padding
        old[:16] = frames_to_tensor(stored.select(range(16)), R)
        assert torch.equal(new[j], old)


def test_format_1_copy_reads_identically(demo, tmp_path):
    v1 = write_format1_copy(demo.eval_dir, tmp_path / 'v1')
    index = json.loads((v1 / 'index.json').read_text())
    encodings = dict(zip(index['shards'][0]['column_names'], index['shards'][0]['column_encodings'], strict=True))
    assert encodings['frames'] == 'jpegarray' and DEMO_COLUMNS['frames'] == 'bytes'
    (v1 / 'tempme_dataset.json').write_text(json.dumps({'format_version': 1}))
    kw = dict(batch_size=4, train=False, max_frames=6, image_resolution=R, max_words=16, frame_order=1)
    new = list(build_video_text_dataloader(LoaderOptions(local=str(demo.eval_dir), **kw)).dataloader)
    old = list(build_video_text_dataloader(LoaderOptions(local=str(v1), **kw)).dataloader)
    assert len(new) == len(old) == 2
    for a, b in zip(new, old, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stored_frames_select_and_bad_blobs():
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (8, 12, 3), dtype=np.uint8) for _ in range(5)]
    blobs = [encode_jpeg(a, quality=95) for a in arrays]
    frames = StoredFrames(pack_jpeg_frames(blobs), 'sample 0')
    assert len(frames) == 5 and frames.jpeg_bytes(3) == blobs[3] and frames.jpeg_bytes(-1) == blobs[4]
    picked = frames.select([1, 4])
    assert [np.asarray(p).tobytes() for p in picked] == [np.asarray(Image.open(__import__('io').BytesIO(b))).tobytes()
                                                        for b in (blobs[1], blobs[4])]
    assert frames.select_stored([1, 4]) == [blobs[1], blobs[4]]  # the loader's input: bytes, decoded later
    assert torch.equal(frames_to_uint8(frames.select_stored([1, 4]), 8), frames_to_uint8(picked, 8))
    raw = StoredFrames(np.stack(arrays), 'sample 1')
    assert len(raw) == 5 and raw.select([2])[0] is not None and np.array_equal(raw.select([2])[0], arrays[2])
    assert np.array_equal(raw.select_stored([2])[0], arrays[2])
    with pytest.raises(ValueError, match=r"sample 7 .*truncated"):
        StoredFrames(pack_jpeg_frames(blobs)[:-3], "sample 7 (video_id 'v')")
    with pytest.raises(ValueError, match='0 frames'):
        StoredFrames(np.uint32(0).tobytes(), 'sample 2')
    with pytest.raises(ValueError, match='expected bytes'):
        StoredFrames({'x': 1}, 'sample 3')
    with pytest.raises(ValueError, match='at least one'):
        pack_jpeg_frames([])


def test_zero_frame_samples_of_both_formats_name_the_video(tmp_path):
    from tempme_composer.data.dataset import VideoTextDataset

    frame = encode_jpeg(np.zeros((8, 8, 3), np.uint8))
    for name, encoding, empty, one in (('v2', 'bytes', np.uint32(0).tobytes(), pack_jpeg_frames([frame])),
                                       ('v1', 'jpegarray', [], [frame])):
        columns = {**DEMO_COLUMNS, 'frames': encoding}
        with MDSWriter(out=str(tmp_path / name), columns=columns) as writer:
            writer.write({'video_id': 'ok', 'captions': ['x'], 'frames': one, 'num_frames': 1, 'fps': 1.0})
            writer.write({'video_id': 'no_frames', 'captions': ['x'], 'frames': empty, 'num_frames': 0, 'fps': 1.0})
        ds = VideoTextDataset(local=str(tmp_path / name), batch_size=1, max_frames=3, image_resolution=8,
                              max_words=16, train=False)
        assert ds[0]['video'].dtype == torch.uint8 and ds[0]['video_mask'].tolist() == [1, 0, 0]
        with pytest.raises(ValueError, match='no_frames'):
            ds[1]


def _tiny_model(tempme: bool, stop: bool) -> RetrievalModel:
    torch.manual_seed(0)
    clip = CLIP(clip_config_from_dict({'preset': 'tiny', 'vision_layers': 3}))
    cfg = ModelConfig()
    cfg.tempme = TempMeConfig(enabled=tempme, tome_r=1, merge_layers=[1, 2], merge_frame_num=[2, 2],
                              merge_token_proportion=[30, 10])
    cfg.lora = LoRAConfig(enabled=tempme)
    cfg.stop = StopConfig(enabled=stop)
    return RetrievalModel(UnifiedModel.from_config(clip, cfg, 4)).eval()


@pytest.mark.parametrize(('tempme', 'stop'), [(False, False), (True, True)])
def test_model_output_is_identical_for_uint8_and_float_batches(demo, tempme, stop):
    """Baseline (padding never encoded) and unified TempMe-STOP (padding encoded): same embeddings."""
    from tempme_composer.data.dataset import VideoTextDataset

    ds = VideoTextDataset(local=str(demo.eval_dir), batch_size=1, max_frames=4, image_resolution=R,
                          max_words=16, train=False)
    samples = [ds[i] for i in range(3)]
    samples[1]['video'][2:] = 0  # a shorter video: padded slots
    samples[1]['video_mask'][2:] = 0
    batch = collate_eval(samples)
    floats = {**batch, 'video': normalize_frames(batch['video'], batch['video_mask'])}
    model = _tiny_model(tempme, stop)
    with torch.no_grad():
        a, b = model(batch), model(floats)
        direct = model.model.encode_video(batch['video'], batch['video_mask'])  # callers outside Composer
    assert all(torch.equal(a[k], b[k]) for k in ('text', 'video', 'logit_scale'))
    assert torch.equal(direct, b['video'])


def test_a_format_1_demo_dataset_is_reused(tmp_path):
    """A demo dataset written before format 2 (jpegarray) stays usable: the loader reads both layouts."""
    first = generate_demo_dataset(tmp_path / 'ds', num_train=2, num_eval=2, seed=1)
    meta_path = first.root / 'demo_dataset.json'
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), 'format_version': 1}))
    assert generate_demo_dataset(tmp_path / 'ds', num_train=2, num_eval=2, seed=1).reused


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_normalisation_is_bit_identical_also_under_autocast():
    """Pinned uint8 -> non-blocking copy -> lookup on the GPU equals the CPU float path (CUDA divides by a
    scalar through its reciprocal, which is why the values are looked up, not recomputed)."""
    rng = np.random.default_rng(3)
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    frames = [np.stack([levels, levels.T, levels[::-1]], axis=-1).repeat(2, 0).repeat(2, 1)]  # [32, 32, 3]
    frames += [rng.integers(0, 256, (R, 40, 3), dtype=np.uint8) for _ in range(3)]
    video = frames_to_uint8(frames, R)[None].pin_memory()  # [1, 4, R, R, 3]
    mask = torch.tensor([[1, 1, 1, 0]])
    expected = frames_to_tensor(frames, R)
    expected[3] = 0
    for autocast in (False, True):
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
            out = normalize_frames(video.to('cuda', non_blocking=True), mask.cuda())
        assert out.dtype == torch.float32 and torch.equal(out.cpu()[0], expected)
