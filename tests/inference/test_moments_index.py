"""Long videos indexed as moments: overlapping windows (or shots split into windows), one row each, decoded in
one pass that holds only the frames of the windows still open; a video no longer than a window is its
whole-file row exactly."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from video_fixtures import _codec, write_numbered_video, write_video

from tempme_composer.clip.preprocess import CLIP_MEAN, CLIP_STD
from tempme_composer.data.frame_layout import pack_jpeg_frames
from tempme_composer.data.video import RuleFrames, decode_video, encode_jpeg
from tempme_composer.inference import load_exported
from tempme_composer.inference import moments as moments_module
from tempme_composer.inference.exported import FrameRule, Preprocessing
from tempme_composer.inference.index import index_mds_split, index_videos
from tempme_composer.inference.index import main as index_main
from tempme_composer.inference.moments import (
    TIME_TOLERANCE_S,
    Moment,
    MomentCutter,
    MomentSettings,
    VideoEnd,
    file_moments,
    moment_settings,
    plan_windows,
    stored_moments,
)
from tempme_composer.inference.preprocess import VideoInput, video_from_file, video_from_frames
from tempme_composer.inference.store import THUMB_NAME, IndexFolderError, IndexStore

REPO = Path(__file__).resolve().parents[2]
RESOLUTION = 16
VFR_MS = [0, 100, 150, 700, 720, 1500, 1510, 1520, 2600, 2700, 2950, 3300, 3310, 4100, 4900, 4950]
SHOT_COLOURS = [(220, 40, 40)] * 3 + [(40, 190, 60)] * 3 + [(40, 80, 230)] * 3  # three 3-second shots
ROW_KEYS = {'path', 'key', 'thumb', 'frames', 'used_frames', 'duration', 'model_hash', 'start', 'end', 'moment'}
FILE_KEYS = ROW_KEYS | {'size', 'mtime_ns'}
SPLIT_KEYS = ROW_KEYS | {'video_id', 'sample'}


def _prep(fps: float | None, short_side: int | None, max_frames: int, slice_framepos: int = 2) -> Preprocessing:
    return Preprocessing(max_frames=max_frames, max_words=16, slice_framepos=slice_framepos,
                         image_resolution=RESOLUTION, mean=CLIP_MEAN, std=CLIP_STD,
                         frames=FrameRule(fps=fps, short_side=short_side))


def _assert_same(got: VideoInput, want: VideoInput) -> None:
    assert torch.equal(got.video, want.video) and torch.equal(got.mask, want.mask)
    assert (got.duration, got.num_frames, got.warnings) == (want.duration, want.num_frames, want.warnings)
    assert got.thumbnail == want.thumbnail


def _split(items: list[Moment | VideoEnd]) -> tuple[list[Moment], VideoEnd]:
    *moments, end = items
    assert isinstance(end, VideoEnd) and all(isinstance(m, Moment) for m in moments)
    assert [m.index for m in moments] == list(range(len(moments))) == list(range(end.moments))
    return moments, end


def _cut(path: Path, fraction: float) -> Path:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])
    return path


@pytest.fixture(scope='module')
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('clips')
    out = {
        'mp4': write_numbered_video(root / 'a.mp4'),
        'mkv': write_numbered_video(root / 'a.mkv', container_format='matroska'),
        'rotated': write_numbered_video(root / 'r.mp4', rotation=90),
        'vfr': write_numbered_video(root / 'vfr.mkv', frames=len(VFR_MS), pts_ms=VFR_MS, container_format='matroska'),
        'cut_mp4': _cut(write_numbered_video(root / 'cut.mp4', frames=100, faststart=True), 0.5),
        'cut_mkv': _cut(write_numbered_video(root / 'cut.mkv', frames=100, container_format='matroska'), 0.77),
    }
    if _codec() == 'libx264':  # packets without timestamps
        out['raw_h264'] = write_numbered_video(root / 'a.h264', container_format='h264')
    return out


@pytest.fixture(scope='module')
def model(tiny_export):
    """The tiny export: max_frames 4, tempme-convert's default rule (1 fps): default window 4 s, stride 2 s."""
    return load_exported(tiny_export)


# ---- planning ----------------------------------------------------------------------------------------------


def test_windows_start_every_stride_and_the_last_ends_at_the_end():
    assert plan_windows(10.0, 4.0, 2.0) == [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (6.0, 10.0)]
    assert plan_windows(11.0, 4.0, 2.0)[-2:] == [(6.0, 10.0), (8.0, 11.0)]
    assert plan_windows(10.0, 4.0, 4.0) == [(0.0, 4.0), (4.0, 8.0), (8.0, 10.0)]
    assert plan_windows(3.9, 4.0, 2.0) == [(0.0, 3.9)]  # no longer than a window: one window
    assert plan_windows(4.0, 4.0, 2.0) == [(0.0, 4.0)]
    # a clip of exactly max_frames frames whose float duration rounds an ulp past the window is one window
    rounded = math.nextafter(12 / 25, 1.0)
    assert plan_windows(rounded, 12 / 25, 6 / 25) == [(0.0, rounded)]
    for duration in (0.5, 7.3, 3600.0):
        spans = plan_windows(duration, 4.0, 1.5)
        assert spans[0][0] == 0.0 and spans[-1][1] == duration
        assert all(b[0] - a[0] == pytest.approx(1.5) for a, b in zip(spans, spans[1:], strict=False))
        assert all(e - s <= 4.0 + TIME_TOLERANCE_S for s, e in spans)
        assert len(spans) == 1 or spans[-2][1] < duration  # stops at the first window that reaches the end


def test_the_cutter_holds_only_the_frames_of_open_windows():
    window, stride, rate = 6.0, 2.0, 5.0
    cutter, got, most = MomentCutter(window, stride), [], 0
    for i in range(3000):  # ten minutes at 5 frames per second
        got += cutter.add(i / rate, i)
        most = max(most, cutter.held)
    got += cutter.finish(3000 / rate)
    assert most <= window * rate + 1  # one window's frames (plus the one that closes it), whatever the length
    assert [(m.start, m.end) for m in got] == plan_windows(3000 / rate, window, stride)
    for m in got:
        assert m.items == [i for i in range(3000) if m.start - TIME_TOLERANCE_S <= i / rate < m.end - TIME_TOLERANCE_S]


def test_shots_are_cut_into_windows_each():
    cutter, got = MomentCutter(4.0, 2.0, cuts=[3.0, 12.5]), []
    for i in range(16):
        got += cutter.add(float(i), i)
    got += cutter.finish(15.5)
    assert [(m.start, m.end) for m in got] == [(0.0, 3.0), (3.0, 7.0), (5.0, 9.0), (7.0, 11.0), (9.0, 12.5),
                                               (12.5, 15.5)]
    assert [m.items for m in got][-2:] == [[9, 10, 11, 12], [13, 14, 15]]
    # a shot no frame falls in has no moment; a cut past the end of decoding ends the moment there
    cutter, got = MomentCutter(4.0, 2.0, cuts=[2.2, 2.6, 30.0]), []
    for i in range(6):
        got += cutter.add(float(i), i)
    got += cutter.finish(6.0)
    assert [(m.start, m.end, m.items) for m in got] == [(0.0, 2.2, [0, 1, 2]), (2.6, 6.0, [3, 4, 5])]


def test_bad_window_flags_are_refused_naming_the_flag(model, tmp_path, capsys):
    prep = model.preprocessing
    assert moment_settings(prep) == MomentSettings('whole', None, None)
    assert moment_settings(prep, window=None, segments='windows') == MomentSettings('windows', 4.0, 2.0)
    assert moment_settings(prep, stride=1.0) == MomentSettings('windows', 4.0, 1.0)
    demo = _prep(None, None, 8)
    assert moment_settings(demo, segments='windows') == MomentSettings('windows', None, None)
    for kwargs, message in [({'window': 0.0}, '--window 0.0: expected a positive number of seconds'),
                            ({'window': -2.0}, '--window -2.0: expected a positive'),
                            ({'window': math.nan}, '--window nan: expected a positive'),
                            ({'stride': 0.0}, '--stride 0.0: expected a positive'),
                            ({'window': 2.0, 'stride': 3.0}, r'--stride 3: expected at most the window \(2 s\)'),
                            ({'stride': 5.0}, r'--stride 5: expected at most the window \(4 s\)'),
                            ({'segments': 'scenes'}, "--segments 'scenes': expected one of windows, shots")]:
        with pytest.raises(IndexFolderError, match=message):
            moment_settings(prep, **kwargs)
    with pytest.raises(IndexFolderError, match='--stride 1 needs --window SECONDS'):
        moment_settings(demo, stride=1.0)
    videos = tmp_path / 'videos'
    write_video(videos / 'a.mp4')
    for flags, message in [(['--window', '0'], 'error: --window 0.0: expected a positive number of seconds'),
                           (['--stride', '-1'], 'error: --stride -1.0: expected a positive number of seconds'),
                           (['--window', '2', '--stride', '3'], 'error: --stride 3: expected at most the window')]:
        code = index_main(['--model', str(model.directory), '--videos', str(videos), '--out', str(tmp_path / 'i'),
                           '--device', 'cpu', '--workers', '0', '--no-progress', *flags])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / 'i').exists()
    # --window without a value: the export's window (max_frames frames at its 1 fps), stride half of it
    assert index_main(['--model', str(model.directory), '--videos', str(videos), '--out', str(tmp_path / 'i'),
                       '--device', 'cpu', '--workers', '0', '--no-progress', '--window']) == 0
    assert 'moments (windows) of 1 videos indexed' in capsys.readouterr().out
    manifest = json.loads((tmp_path / 'i' / 'index.json').read_text())
    assert manifest['moments'] == {'mode': 'windows', 'window': 4.0, 'stride': 2.0}


# ---- one decoding pass -------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['mp4', 'mkv', 'rotated', 'vfr', 'cut_mp4', 'cut_mkv', 'raw_h264'])
def test_a_video_no_longer_than_a_window_is_its_whole_file_input(clips, name):
    if name not in clips:
        pytest.skip('no H.264 encoder in this PyAV build')
    path = clips[name]
    for fps, short_side in [(None, None), (1.0, 16), (3.0, None)]:
        for max_frames, pos in [(4, 2), (40, 0), (6, 1)]:
            prep = _prep(fps, short_side, max_frames, pos)
            settings = MomentSettings('windows', 1000.0, 500.0)
            (moment,), end = _split(list(file_moments(path, prep, settings)))
            want = video_from_file(path, prep)
            _assert_same(moment.input, want)
            assert (moment.start, moment.end, end.duration, end.warnings) == (0.0, want.duration, want.duration,
                                                                              want.warnings)


def test_the_default_window_of_an_every_frame_rule_is_max_frames_source_frames(tmp_path):
    for count, rate in [(12, 25), (8, 30), (7, 10)]:
        path = write_numbered_video(tmp_path / f'{count}.mp4', frames=count, fps=rate)
        prep = _prep(None, None, count)  # the demo rule: every frame at the file's own rate
        settings = moment_settings(prep, segments='windows')
        (moment,), _ = _split(list(file_moments(path, prep, settings)))  # exactly one window long
        _assert_same(moment.input, video_from_file(path, prep))
        longer = write_numbered_video(tmp_path / f'{count}-long.mp4', frames=3 * count, fps=rate)
        moments, end = _split(list(file_moments(longer, prep, settings)))
        assert [m.input.num_frames for m in moments] == [count] * 5  # windows of count frames, every count/2
        assert [(m.start, m.end) for m in moments] == plan_windows(end.duration, count / rate, count / rate / 2)


def test_windows_take_the_frames_of_their_span_and_hold_no_more(tmp_path, monkeypatch):
    path = write_numbered_video(tmp_path / 'long.mkv', frames=300, fps=10, container_format='matroska')  # 30 s
    prep = _prep(2.0, None, 4)  # 60 frames kept by the rule, 2 per second
    window, stride = 4.0, 1.5
    most = []

    class Counting(MomentCutter):
        def add(self, time, item):
            closed = super().add(time, item)
            most.append(self.held)
            return closed

    monkeypatch.setattr(moments_module, 'MomentCutter', Counting)
    moments, end = _split(list(file_moments(path, prep, MomentSettings('windows', window, stride))))
    assert max(most) <= window * 2.0 + 1
    assert [(m.start, m.end) for m in moments] == plan_windows(end.duration, window, stride)
    assert end.duration == pytest.approx(30.0) and end.num_frames == 60
    frames = decode_video(path, fps=2.0, short_side=None).frames  # frame i of the rule at i / 2 seconds
    for m in moments:
        span = [f for i, f in enumerate(frames) if m.start - TIME_TOLERANCE_S <= i / 2.0 < m.end - TIME_TOLERANCE_S]
        want = video_from_frames(span, prep, duration=m.end - m.start)
        assert torch.equal(m.input.video, want.video) and m.input.thumbnail == want.thumbnail


@pytest.mark.parametrize('name', ['vfr', 'cut_mp4', 'cut_mkv'])
def test_moments_end_where_decoding_ended(clips, name):
    path = clips[name]
    prep = _prep(None, None, 4)
    whole = decode_video(path, fps=None, short_side=None)
    moments, end = _split(list(file_moments(path, prep, MomentSettings('windows', 1.0, 0.5))))
    assert end.duration == whole.duration_s == moments[-1].end and moments[-1].start < end.duration
    assert end.warnings == whole.warnings and end.num_frames == len(whole.frames)
    assert [(m.start, m.end) for m in moments] == [
        s for s in plan_windows(end.duration, 1.0, 0.5) if any(
            s[0] - TIME_TOLERANCE_S <= t < s[1] - TIME_TOLERANCE_S or (s[1] == end.duration and t >= s[0])
            for t in _times(path))]
    if name.startswith('cut'):
        assert end.warnings[0].startswith('truncated: decoded') and end.duration < 9.0  # 100 frames at 10 fps
    else:  # frames fall in windows by their own time: a gap leaves windows empty and out
        times = _times(path)
        for m in moments:
            last = m is moments[-1]
            assert m.input.num_frames == sum(m.start - TIME_TOLERANCE_S <= t and (last or t < m.end - TIME_TOLERANCE_S)
                                             for t in times)


def _times(path: Path) -> list[float]:
    stream = RuleFrames(path, fps=None, short_side=None)
    return [t for t, _ in stream]


def test_rule_frames_stream_what_decode_video_keeps(clips):
    for name in ('mp4', 'rotated', 'cut_mkv'):
        for fps in (None, 3.0):
            stream = RuleFrames(clips[name], fps=fps, short_side=16)
            got = list(stream)
            whole = decode_video(clips[name], fps=fps, short_side=16)
            assert len(got) == len(whole.frames) == stream.result.num_frames
            assert all(np.array_equal(a, b) for (_, a), b in zip(got, whole.frames, strict=True))
            assert [t for t, _ in got] == sorted(t for t, _ in got) and got[0][0] == 0.0
            assert (stream.result.duration_s, stream.result.warnings) == (whole.duration_s, whole.warnings)
            assert stream.declared_fps == pytest.approx(10.0)


# ---- index ---------------------------------------------------------------------------------------------------


def _rows(out: Path) -> list[dict]:
    return IndexStore(out).rows()


def _embeddings(out: Path) -> np.ndarray:
    return np.asarray(IndexStore(out).embeddings())


def _check_contract(out: Path, keys: set[str] = FILE_KEYS) -> None:
    rows = _rows(out)
    seen: list[str] = []
    for row in rows:
        assert keys <= row.keys() and 'moments' not in row
        assert isinstance(row['start'], float) and isinstance(row['end'], float) and isinstance(row['moment'], int)
        assert THUMB_NAME.fullmatch(row['thumb']) and (out / 'thumbs' / row['thumb']).is_file()
        if not seen or seen[-1] != row['path']:
            assert row['path'] not in seen and row['moment'] == 0 and row['start'] == 0.0  # consecutive, in order
            seen.append(row['path'])
    for path in seen:
        mine = [r for r in rows if r['path'] == path]
        assert [r['moment'] for r in mine] == list(range(len(mine)))
        assert mine[-1]['end'] == mine[0]['duration'] and all(r['duration'] == mine[0]['duration'] for r in mine)


def test_a_folder_indexed_as_windows(model, tmp_path):
    videos = tmp_path / 'videos'
    write_video(videos / 'short.mp4', seconds=3, fps=5, colours=((220, 40, 40),))
    write_video(videos / 'long.mp4', seconds=11, fps=5, colours=SHOT_COLOURS)
    out = tmp_path / 'index'
    report = index_videos(model, videos, out, dtype='float32', batch_size=3, progress=False, window=4.0)
    assert (report.indexed, report.videos, report.encoded, report.mode) == (6, 2, 2, 'windows')
    _check_contract(out)
    manifest = json.loads((out / 'index.json').read_text())
    assert manifest['moments'] == {'mode': 'windows', 'window': 4.0, 'stride': 2.0}
    rows = _rows(out)
    assert [(r['path'], r['start'], r['end']) for r in rows] == [('long.mp4', *s) for s in plan_windows(11.0, 4, 2)] \
        + [('short.mp4', 0.0, 3.0)]
    assert all(re.fullmatch(rf'{r["key"]}-m{r["moment"]}\.jpg', r['thumb']) for r in rows)

    # the short video is one moment, its embedding bit for bit the whole-file row's (both a batch of one)
    alone = tmp_path / 'alone'
    write_video(alone / 'short.mp4', seconds=3, fps=5, colours=((220, 40, 40),))
    index_videos(model, alone, tmp_path / 'whole', dtype='float32', progress=False)
    index_videos(model, alone, tmp_path / 'win', dtype='float32', progress=False, segments='windows')
    whole, win = _rows(tmp_path / 'whole'), _rows(tmp_path / 'win')
    assert np.array_equal(_embeddings(tmp_path / 'whole'), _embeddings(tmp_path / 'win'))
    assert [(r['start'], r['end'], r['moment'], r['frames'], r['duration']) for r in whole] == \
        [(r['start'], r['end'], r['moment'], r['frames'], r['duration']) for r in win] == [(0.0, 3.0, 0, 3, 3.0)]
    assert json.loads((tmp_path / 'whole' / 'index.json').read_text())['moments'] == \
        {'mode': 'whole', 'window': None, 'stride': None}

    # incremental: unchanged reused; a changed file replaces all its moments; a deleted one drops all
    again = index_videos(model, videos, out, dtype='float32', progress=False, window=4.0)
    assert (again.encoded, again.reused, again.indexed) == (0, 2, 6)
    write_video(videos / 'long.mp4', seconds=7, fps=5, colours=SHOT_COLOURS)
    os.utime(videos / 'long.mp4', ns=(1, 1))
    third = index_videos(model, videos, out, dtype='float32', progress=False, window=4.0)
    assert (third.encoded, third.reused, third.removed) == (1, 1, 1)
    assert [(r['path'], r['end']) for r in _rows(out)] == [('short.mp4', 3.0), ('long.mp4', 4.0), ('long.mp4', 6.0),
                                                           ('long.mp4', 7.0)]
    _check_contract(out)
    assert len(list((out / 'thumbs').glob('*.jpg'))) == 4  # the old moments' thumbnails are gone
    (videos / 'long.mp4').unlink()
    assert index_videos(model, videos, out, dtype='float32', progress=False, window=4.0).indexed == 1

    # other settings: refused naming both, with the way out
    for kwargs, asks in [({'window': 6.0}, 'windows, window 6 s, stride 3 s'), ({}, 'whole videos'),
                         ({'segments': 'windows', 'stride': 1.0}, 'windows, window 4 s, stride 1 s')]:
        with pytest.raises(IndexFolderError, match=f'indexed as windows, window 4 s, stride 2 s; this run asks for {asks}'
                                              '.*--rebuild.*another --out'):
            index_videos(model, videos, out, dtype='float32', progress=False, **kwargs)
    rebuilt = index_videos(model, videos, out, dtype='float32', progress=False, window=6.0, rebuild=True)
    assert rebuilt.indexed == 1 and json.loads((out / 'index.json').read_text())['moments']['window'] == 6.0
    with pytest.raises(IndexFolderError, match='indexed as whole videos'):
        index_videos(model, alone, tmp_path / 'whole', dtype='float32', progress=False, window=4.0)


def test_an_index_written_before_moments_holds_whole_videos(model, tmp_path):
    videos = tmp_path / 'videos'
    write_video(videos / 'a.mp4', seconds=3)
    out = tmp_path / 'index'
    index_videos(model, videos, out, dtype='float32', progress=False)
    manifest = json.loads((out / 'index.json').read_text())  # made as the first index format wrote it
    old = [{k: v for k, v in row.items() if k not in ('start', 'end', 'moment')} for row in _rows(out)]
    (out / manifest['metadata']).unlink()
    (out / 'metadata-g1.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in old))
    manifest.update(format_version=1, metadata='metadata-g1.jsonl')
    del manifest['moments']
    (out / 'index.json').write_text(json.dumps(manifest))
    assert _rows(out) == old
    with pytest.raises(IndexFolderError, match=r'indexed as whole videos \(one row each\); this run asks for windows'):
        index_videos(model, videos, out, dtype='float32', progress=False, window=4.0)
    write_video(videos / 'b.mp4', seconds=2)
    report = index_videos(model, videos, out, dtype='float32', progress=False)
    assert (report.reused, report.encoded) == (1, 1)
    assert [(r['path'], r['start'], r['end'], r['moment']) for r in _rows(out)] == [('a.mp4', 0.0, 3.0, 0),
                                                                                   ('b.mp4', 0.0, 2.0, 0)]


def test_an_interrupted_run_keeps_whole_videos_only(model, tmp_path):
    videos = tmp_path / 'videos'
    for i in range(3):
        write_video(videos / f'v{i}.mp4', seconds=9, fps=5, colours=SHOT_COLOURS[i:] + SHOT_COLOURS[:i])
    out = tmp_path / 'index'
    # the loader crashes at the third forward of two moments: v0's four moments are complete, v1's are not
    code = ('import sys, os; from tempme_composer.inference import load_exported; '
            'from tempme_composer.inference import index as ix; m = load_exported(sys.argv[1]); '
            'orig = ix.encode_videos; n = [0]\n'
            'def boom(*a, **k):\n    n[0] += 1\n    if n[0] == 4: os._exit(9)\n    return orig(*a, **k)\n'
            'ix.encode_videos = boom; ix.index_videos(m, sys.argv[2], sys.argv[3], dtype="float32", batch_size=2, '
            'progress=False, window=4.0)')
    proc = subprocess.run([sys.executable, '-c', code, str(model.directory), str(videos), str(out)],
                          env={**os.environ, 'PYTHONPATH': str(REPO)}, capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    pending = [json.loads(p.read_text())['rows'] for p in sorted((out / 'pending').glob('batch-*.jsonl'))]
    assert [[(r['path'], r['moment']) for r in rows] for rows in pending] == [[('v0.mp4', k) for k in range(4)]]
    # other settings never take the interrupted run's rows; the same settings recover them
    other = tmp_path / 'other'
    (other / 'pending').mkdir(parents=True)
    for p in (out / 'pending').glob('batch-*'):
        (other / 'pending' / p.name).write_bytes(p.read_bytes())
    assert index_videos(model, videos, other, dtype='float32', progress=False, window=3.0).recovered == 0
    report = index_videos(model, videos, out, dtype='float32', batch_size=2, progress=False, window=4.0)
    assert (report.recovered, report.encoded, report.indexed) == (1, 2, 12)
    _check_contract(out)
    clean = tmp_path / 'clean'
    index_videos(model, videos, clean, dtype='float32', batch_size=2, progress=False, window=4.0)
    assert [(r['path'], r['start'], r['end']) for r in _rows(out)] == \
        [(r['path'], r['start'], r['end']) for r in _rows(clean)]
    np.testing.assert_allclose(_embeddings(out), _embeddings(clean), rtol=0, atol=1e-6)


def test_shots_split_at_cuts_and_long_shots_into_windows(model, tmp_path):
    pytest.importorskip('scenedetect')
    videos = tmp_path / 'videos'
    write_video(videos / 'shots.mp4', seconds=9, fps=10, width=64, height=48, colours=SHOT_COLOURS)
    write_video(videos / 'one.mp4', seconds=5, fps=10, width=64, height=48, colours=((40, 80, 230),))
    out = tmp_path / 'shots'
    report = index_videos(model, videos, out, dtype='float32', progress=False, segments='shots', num_workers=2)
    assert (report.mode, report.videos) == ('shots', 2)
    _check_contract(out)
    assert [(r['path'], r['start'], r['end']) for r in _rows(out)] == [
        ('one.mp4', 0.0, 4.0), ('one.mp4', 2.0, 5.0),  # no cut: one shot, in windows
        ('shots.mp4', 0.0, 3.0), ('shots.mp4', 3.0, 6.0), ('shots.mp4', 6.0, 9.0)]  # shots shorter than a window
    assert json.loads((out / 'index.json').read_text())['moments'] == {'mode': 'shots', 'window': 4.0, 'stride': 2.0}
    narrow = tmp_path / 'narrow'
    index_videos(model, videos, narrow, dtype='float32', progress=False, segments='shots', window=2.0, stride=2.0)
    assert [(r['start'], r['end']) for r in _rows(narrow) if r['path'] == 'shots.mp4'] == [
        (0.0, 2.0), (2.0, 3.0), (3.0, 5.0), (5.0, 6.0), (6.0, 8.0), (8.0, 9.0)]


# ---- an MDS split ------------------------------------------------------------------------------------------


def _write_split(folder: Path) -> Path:
    """Two converted videos at 1 fps, as tempme-convert writes them: 10 s with a [start, end] per caption, and
    3 s without timestamps."""
    from streaming import MDSWriter

    from tempme_composer.data.format import video_columns

    rng = np.random.default_rng(0)
    samples = [('long', 10, 9.5, ['a dog runs', 'a dog sleeps'], [[0.0, 3.0], [5.0, 9.5]]),
               ('short', 3, 3.0, ['a cat'], None)]
    with MDSWriter(out=str(folder), columns=video_columns('jpeg'), compression=None, progress_bar=False) as writer:
        for video_id, count, duration, captions, timestamps in samples:
            frames = [rng.integers(0, 255, (24, 32, 3), dtype=np.uint8) for _ in range(count)]
            writer.write({'video_id': video_id, 'captions': captions, 'timestamps': timestamps,
                          'frames': pack_jpeg_frames([encode_jpeg(f) for f in frames]), 'num_frames': count,
                          'fps': 1.0, 'duration': duration})
    return folder


def test_an_mds_split_indexed_as_windows_keeps_its_captions_time_ranges(model, tmp_path):
    split = _write_split(tmp_path / 'split')
    whole = index_mds_split(model, split, tmp_path / 'whole', dtype='float32', batch_size=1, progress=False)
    assert (whole.indexed, whole.mode) == (2, 'whole')
    captions = IndexStore(tmp_path / 'whole').captions()
    assert captions == [
        {'row': 0, 'video_id': 'long', 'caption_index': 0, 'text': 'a dog runs', 'timestamps': [[0.0, 3.0]]},
        {'row': 0, 'video_id': 'long', 'caption_index': 1, 'text': 'a dog sleeps', 'timestamps': [[5.0, 9.5]]},
        {'row': 1, 'video_id': 'short', 'caption_index': 0, 'text': 'a cat', 'timestamps': None}]
    # windows no shorter than the videos: the same embeddings, bit for bit
    wide = index_mds_split(model, split, tmp_path / 'wide', dtype='float32', batch_size=1, progress=False,
                           window=60.0)
    assert wide.indexed == 2 and np.array_equal(_embeddings(tmp_path / 'wide'), _embeddings(tmp_path / 'whole'))

    out = tmp_path / 'windows'
    report = index_mds_split(model, split, out, dtype='float32', progress=False, window=None, segments='windows')
    rows = _rows(out)
    assert (report.indexed, report.videos) == (len(rows), 2)
    _check_contract(out, SPLIT_KEYS)
    assert [(r['path'], r['start'], r['end'], r['frames']) for r in rows] == \
        [('long', s, e, sum(i >= s and (i < e or e == 9.5) for i in range(10))) for s, e in
         plan_windows(9.5, 4.0, 2.0)] + [('short', 0.0, 3.0, 3)]
    assert [(c['row'], c['timestamps']) for c in IndexStore(out).captions()] == [
        (0, [[0.0, 3.0]]), (0, [[5.0, 9.5]]), (len(rows) - 1, None)]
    # each moment is its frames' input: the frames of [start, end) through the evaluation preprocessing
    from streaming import LocalDataset

    from tempme_composer.data.frame_layout import StoredFrames

    frames = StoredFrames(LocalDataset(local=str(split))[0]['frames'], 'long')
    emb = _embeddings(out)
    settings = MomentSettings('windows', 4.0, 2.0)
    for n, m in enumerate(stored_moments(frames, 1.0, 9.5, model.preprocessing, settings)):
        span = [frames[i] for i in range(10) if i >= m.start and (i < m.end or m.end == 9.5)]
        want = video_from_frames(span, model.preprocessing, duration=m.end - m.start)
        assert torch.equal(m.input.video, want.video)
        with torch.no_grad():
            one = model.model.encode_video(m.input.video[None], m.input.mask[None])[0].numpy()
        np.testing.assert_allclose(emb[n], one, rtol=0, atol=1e-6)
    with pytest.raises(IndexFolderError, match='indexed as windows.*this run asks for whole videos.*--rebuild'):
        index_mds_split(model, split, out, dtype='float32', progress=False)
    with pytest.raises(IndexFolderError, match='--segments shots needs video files'):
        index_mds_split(model, split, tmp_path / 'shots', progress=False, segments='shots')
