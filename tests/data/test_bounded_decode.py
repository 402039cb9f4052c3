"""`video_from_file` holds only the frames a model input needs (`decode_video_frames`), yet gives exactly what
decoding every frame with `decode_video` and selecting from the list gave; frames over the pixel budget are
decoded smaller, with a warning."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from video_fixtures import _codec, write_numbered_video

from tempme_composer.clip.preprocess import CLIP_MEAN, CLIP_STD
from tempme_composer.data.video import (
    MAX_FRAME_PIXELS,
    VideoDecodeError,
    decode_video,
    decode_video_frames,
)
from tempme_composer.inference.exported import FrameRule, Preprocessing
from tempme_composer.inference.preprocess import (
    THUMBNAILS_PER_VIDEO,
    VideoInput,
    frames_needed,
    video_from_file,
    video_from_frames,
)

RESOLUTION = 16
RULES = [(fps, short_side) for fps in (None, 1.0, 3.0) for short_side in (None, 16)]
SELECTIONS = [(max_frames, pos) for max_frames in (4, 40) for pos in (0, 1, 2)]  # fewer and more than L
VFR_MS = [0, 100, 150, 700, 720, 1500, 1510, 1520, 2600, 2700, 2950, 3300, 3310, 4100, 4900, 4950]


def _prep(fps: float | None, short_side: int | None, max_frames: int, slice_framepos: int = 2) -> Preprocessing:
    return Preprocessing(max_frames=max_frames, max_words=16, slice_framepos=slice_framepos,
                         image_resolution=RESOLUTION, mean=CLIP_MEAN, std=CLIP_STD,
                         frames=FrameRule(fps=fps, short_side=short_side))


def _whole_video(path: Path, prep: Preprocessing) -> VideoInput:
    """The full-decode path: every frame the rule keeps in a list, then the selection."""
    rule = prep.frames
    decoded = decode_video(path, fps=rule.fps, short_side=rule.short_side, apply_rotation=rule.apply_rotation)
    return video_from_frames(decoded.frames, prep, duration=decoded.duration_s, warnings=decoded.warnings)


def _assert_same(got: VideoInput, want: VideoInput) -> None:
    assert got.video.dtype == want.video.dtype and torch.equal(got.video, want.video)
    assert torch.equal(got.mask, want.mask)
    assert (got.duration, got.num_frames, got.warnings) == (want.duration, want.num_frames, want.warnings)
    assert got.thumbnail == want.thumbnail


def _cut(path: Path, fraction: float) -> Path:
    """Drop the end of the file, as an incomplete download does."""
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])
    return path


@pytest.fixture(scope='module')
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('videos')
    out = {
        'mp4': write_numbered_video(root / 'a.mp4'),
        'mkv': write_numbered_video(root / 'a.mkv', container_format='matroska'),
        'rotated': write_numbered_video(root / 'r.mp4', rotation=90),
        'vfr': write_numbered_video(root / 'vfr.mkv', frames=len(VFR_MS), pts_ms=VFR_MS,
                                    container_format='matroska'),
        'cut_mp4': _cut(write_numbered_video(root / 'cut.mp4', frames=100, faststart=True), 0.5),
        'cut_mkv': _cut(write_numbered_video(root / 'cut.mkv', frames=100, container_format='matroska'), 0.77),
    }
    if _codec() == 'libx264':  # a raw H.264 stream: packets carry no timestamps
        out['raw_h264'] = write_numbered_video(root / 'a.h264', container_format='h264')
    return out


def test_fixture_frames_all_differ(videos):
    """The identity test below can only catch a wrong frame if no two frames look alike."""
    for path in videos.values():
        frames = decode_video(path, fps=None, short_side=None).frames
        assert len({f.tobytes() for f in frames}) == len(frames) > 10


@pytest.mark.parametrize('name', ['mp4', 'mkv', 'rotated', 'vfr', 'cut_mp4', 'cut_mkv', 'raw_h264'])
def test_bounded_decode_equals_decoding_every_frame(videos, name):
    if name not in videos:
        pytest.skip('no H.264 encoder in this PyAV build')
    path = videos[name]
    passes = set()
    for fps, short_side in RULES:
        for max_frames, pos in SELECTIONS:
            prep = _prep(fps, short_side, max_frames, pos)
            _assert_same(video_from_file(path, prep), _whole_video(path, prep))
            picked = decode_video_frames(path, fps=fps, short_side=short_side,
                                         pick=lambda n, p=prep: frames_needed(n, p))
            passes.add(picked.decode_passes)
    if name == 'rotated':
        assert 'rotated: display matrix 90 degrees applied' in video_from_file(path, _prep(None, None, 4)).warnings
    if name.startswith('cut'):
        assert video_from_file(path, _prep(None, None, 4)).warnings[0].startswith('truncated: decoded')
    if name == 'cut_mp4':  # the packets promise frames the cut decoder never gives: the exact pass runs
        assert passes == {1, 2}
    else:
        assert passes == {1}


def test_only_the_needed_frames_are_ever_converted(tmp_path):
    path = write_numbered_video(tmp_path / 'long.mkv', frames=120, container_format='matroska')
    for max_frames, pos in SELECTIONS:
        prep = _prep(None, None, max_frames, pos)
        got = decode_video_frames(path, fps=None, short_side=None, pick=lambda n, p=prep: frames_needed(n, p))
        assert len(got.frames) == 120 and got.decode_passes == 1
        assert got.frames_converted == len(got.frames.picked) <= max_frames + THUMBNAILS_PER_VIDEO
        with pytest.raises(IndexError, match='was not picked'):
            got.frames[next(i for i in range(120) if i not in got.frames.picked)]
    cut = _cut(write_numbered_video(tmp_path / 'cut.mp4', frames=100, faststart=True), 0.5)
    prep = _prep(None, None, 4)
    got = decode_video_frames(cut, fps=None, short_side=None, pick=lambda n: frames_needed(n, prep))
    assert got.decode_passes == 2  # one pass with the packet count, one with the count decoding found
    assert len(got.frames.picked) <= 4 + THUMBNAILS_PER_VIDEO
    assert got.frames_converted <= got.decode_passes * (4 + THUMBNAILS_PER_VIDEO)


def test_frames_over_the_pixel_budget_are_decoded_smaller(tmp_path):
    path = write_numbered_video(tmp_path / 'big.mp4', width=64, height=48)
    budget = 600  # fits 28x21 (588 pixels), the largest 4:3 size with a whole short side
    got = decode_video_frames(path, fps=None, short_side=None, pick=range, max_pixels=budget)
    assert {got.frames[i].shape for i in range(len(got.frames))} == {(21, 28, 3)}
    assert re.fullmatch(r'resized: frames are 64x48 \([\d.]+ MP\), over the [\d.]+ MP budget; decoded at 28x21',
                        got.warnings[-1])
    # the same frames decode_video gives when asked for that short side
    want = decode_video(path, fps=None, short_side=21).frames
    assert all(np.array_equal(got.frames[i], w) for i, w in enumerate(want))

    prep = _prep(None, None, 4)
    x = video_from_file(path, prep, max_pixels=budget)
    assert x.video.shape == (prep.max_frames, prep.image_resolution, prep.image_resolution, 3)
    assert x.mask.tolist() == [1] * prep.max_frames and x.warnings == got.warnings
    rule_21 = _prep(None, 21, 4)
    assert torch.equal(x.video, _whole_video(path, rule_21).video)
    assert video_from_file(path, prep).warnings == []  # within the default budget: untouched

    portrait = write_numbered_video(tmp_path / 'portrait.mp4', width=64, height=48, rotation=90)
    turned = decode_video_frames(portrait, fps=None, short_side=None, pick=range, max_pixels=budget)
    assert turned.frames[0].shape == (28, 21, 3)  # shown upright: 21 wide, 28 high
    assert turned.warnings[-1].startswith('resized: frames are 48x64 (')
    assert turned.warnings[-1].endswith('decoded at 21x28')


def test_the_budget_is_4k_uhd_and_fits_a_huge_square_frame():
    from tempme_composer.data.video import _resize_warning, _thread_type, fit_pixels

    assert MAX_FRAME_PIXELS == 3840 * 2160
    assert fit_pixels(8000, 8000, MAX_FRAME_PIXELS) == (2880, 2880)
    assert fit_pixels(7680, 4320, MAX_FRAME_PIXELS) == (3840, 2160)
    w, h = fit_pixels(10000, 3000, MAX_FRAME_PIXELS)
    assert w * h <= MAX_FRAME_PIXELS and abs(w / h - 10 / 3) < 0.01
    assert (_resize_warning((8000, 8000), (2880, 2880), MAX_FRAME_PIXELS, 0)
            == 'resized: frames are 8000x8000 (64.0 MP), over the 8.3 MP budget; decoded at 2880x2880')
    # the decoder holds one frame per frame thread: streams over the budget decode with slice threads only
    huge, uhd = (SimpleNamespace(codec_context=SimpleNamespace(width=s, height=s)) for s in (8000, 2160))
    assert (_thread_type(huge, MAX_FRAME_PIXELS), _thread_type(uhd, MAX_FRAME_PIXELS)) == ('SLICE', 'AUTO')
    assert _thread_type(huge, None) == 'AUTO'  # decode_video keeps FFmpeg's automatic threading


def test_bad_files_fail_as_with_the_full_decode(tmp_path):
    prep = _prep(1.0, 16, 4)
    (tmp_path / 'text.mp4').write_text('not a video')
    for path, message in [(tmp_path / 'missing.mp4', 'file does not exist'),
                          (tmp_path / 'text.mp4', 'cannot open container')]:
        with pytest.raises(VideoDecodeError, match=message):
            video_from_file(path, prep)
    with pytest.raises(ValueError, match='max_pixels'):
        decode_video_frames(tmp_path / 'text.mp4', fps=None, short_side=None, pick=range, max_pixels=0)
