"""The kinds of real broken video that once got past tempme-convert silently, each encoded here with PyAV.

A download cut at 30 % whose index is at the front (decodes to its first seconds: truncated, kept by
default with the decoded duration, or skipped with --skip-truncated), the same cut with the index at the
end, a zero-byte file, a text and an HTML page named .mp4, an id without a file, a short video; on real
MSR-VTT 1k-A test ids, so the test-split banner, the kept report and the absolute paths are checked too.
"""

from __future__ import annotations

import csv
import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from real_annotations import ANNOTATIONS
from streaming import StreamingDataset
from video_fixtures import PALETTE, write_video

from tempme_composer.data.annotations.common import read_id_list
from tempme_composer.data.annotations.msrvtt import read_jsfusion_rows
from tempme_composer.data.convert import main
from tempme_composer.data.format import REPORT_FILE
from tempme_composer.data.frame_layout import StoredFrames
from tempme_composer.data.gallery import read_gallery
from tempme_composer.data.media_probe import diagnose_file
from tempme_composer.data.video import decode_video

SIZE = 32


def write_noisy_h264(path: Path, *, seconds: int = 10, fps: int = 10, faststart: bool = False) -> Path:
    """H.264 mp4 of textured frames (so the frame data, not the index, dominates the file size); with
    ``faststart`` the index (moov) is at the front, as web downloads have it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    options = {'movflags': 'faststart'} if faststart else {}
    with av.open(str(path), mode='w', format='mp4', options=options) as container:
        stream = container.add_stream('libx264', rate=Fraction(fps), options={'threads': '1'})
        stream.width, stream.height, stream.pix_fmt = 64, 48, 'yuv420p'
        for _ in range(seconds * fps):
            frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) // 2 + np.uint8(100)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def test_decode_detects_a_cut_tail_the_threaded_decoder_swallows(tmp_path):
    full = write_noisy_h264(tmp_path / 'full.mp4', faststart=True)
    whole = decode_video(full, fps=1, short_side=SIZE)
    assert not whole.truncated and whole.duration_s == pytest.approx(10.0) and len(whole.frames) == 10
    assert whole.declared_duration_s == pytest.approx(10.0) and whole.warnings == []
    part = tmp_path / 'part.mp4'
    part.write_bytes(full.read_bytes())
    cut(part, 0.3)
    got = decode_video(part, fps=1, short_side=SIZE)
    assert got.truncated and got.declared_duration_s == pytest.approx(10.0)
    assert 1.5 < got.duration_s < 3.5 and len(got.frames) == int(got.duration_s + 0.99)  # what was decoded
    assert got.warnings[0].startswith(f'truncated: decoded {got.duration_s:.1f} s of the 10.0 s the file declares')


def test_diagnose_tells_a_cut_download_from_a_non_video(tmp_path):
    mp4 = cut(write_noisy_h264(tmp_path / 'end.mp4', seconds=3), 0.3)  # index at the end: never arrived
    reason, detail = diagnose_file(mp4)
    assert reason == 'incomplete_download' and "box 'mdat'" in detail and 'moov' in detail and 'again' in detail
    avi = cut(write_video(tmp_path / 'a.avi', seconds=3, container_format='avi'), 0.5)
    reason, detail = diagnose_file(avi)
    assert reason == 'incomplete_download' and 'the AVI header declares' in detail
    (tmp_path / 'empty.mp4').write_bytes(b'')
    assert diagnose_file(tmp_path / 'empty.mp4')[0] == 'empty_file'
    (tmp_path / 'page.mp4').write_text('<!DOCTYPE html><html><body>403 Forbidden</body></html>')
    reason, detail = diagnose_file(tmp_path / 'page.mp4')
    assert reason == 'not_media' and detail.startswith('not a media file: an HTML page')
    (tmp_path / 'notes.mp4').write_text('these are my notes\n' * 10)
    assert diagnose_file(tmp_path / 'notes.mp4')[1].startswith("not a media file: text, starting 'these are")
    from PIL import Image

    Image.new('RGB', (8, 8)).save(tmp_path / 'photo.mp4', format='JPEG')
    assert diagnose_file(tmp_path / 'photo.mp4')[1].startswith('not a media file: a JPEG image')
    mkv = cut(write_video(tmp_path / 'v.mkv', seconds=2, container_format='matroska'), 0.05)
    assert diagnose_file(mkv)[0] == 'unreadable'  # a known container we do not walk: damaged or cut off
    assert diagnose_file(write_noisy_h264(tmp_path / 'ok.mp4', seconds=2)) is None  # intact: FFmpeg's word


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    """8 real MSR-VTT test ids (one bad input each) + 2 train ids, converted from another working folder."""
    root = tmp_path_factory.mktemp('bad_videos')
    ann, videos = root / 'ann', root / 'videos'
    ann.mkdir()
    lines = (ANNOTATIONS / 'msrvtt' / 'MSRVTT_JSFUSION_test.csv').read_bytes().split(b'\r\n')
    (ann / 'MSRVTT_JSFUSION_test.csv').write_bytes(b'\r\n'.join(lines[:9]) + b'\r\n')
    lines = (ANNOTATIONS / 'msrvtt' / 'MSRVTT_train.9k.csv').read_bytes().split(b'\r\n')
    (ann / 'MSRVTT_train.9k.csv').write_bytes(b'\r\n'.join(lines[:3]) + b'\r\n')
    test = [r['video_id'] for r in read_jsfusion_rows(ann / 'MSRVTT_JSFUSION_test.csv')]
    train = read_id_list(ann / 'MSRVTT_train.9k.csv', header='video_id')
    sentences = [{'video_id': v, 'caption': f'train clip {v}', 'sen_id': i} for i, v in enumerate(train)]
    (ann / 'MSRVTT_data.json').write_text(json.dumps({'videos': [], 'sentences': sentences}))
    write_video(videos / f'{test[0]}.mp4', seconds=4, colours=[PALETTE[0]])
    cut(write_noisy_h264(videos / f'{test[1]}.mp4', faststart=True), 0.3)  # index at the front, cut at 30 %
    cut(write_noisy_h264(videos / f'{test[2]}.mp4'), 0.3)  # index at the end, cut at 30 %
    (videos / f'{test[3]}.mp4').write_bytes(b'')
    (videos / f'{test[4]}.mp4').write_text('this is not a video\n' * 20)
    (videos / f'{test[5]}.mp4').write_text('<!DOCTYPE html>\n<html><head><title>Error 404</title></head></html>\n')
    # test[6]: listed, no file
    write_video(videos / f'{test[7]}.mp4', seconds=1, colours=[PALETTE[1]])  # 1 frame at 1 fps
    for i, v in enumerate(train):
        write_video(videos / 'train' / f'{v}.mp4', seconds=3, colours=[PALETTE[2 + i]])
    # Relative --videos/--out, run from ROOT: skipped.csv must still hold absolute paths.
    base = ['msrvtt', '--annotations', 'ann', '--videos', 'videos', '--out', 'out', '--size', str(SIZE),
            '--workers', '1', '--no-progress', '--keep-work', '--warn-frames', '4']
    rc = run_in(root, [*base, '--max-failed-fraction', '1.0'])
    return {'root': root, 'out': root / 'out', 'test': test, 'train': train, 'rc': rc, 'base': base}


def run_in(folder: Path, args: list[str]) -> int:
    """``tempme-convert ARGS`` run from ``folder``."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return main(args)
    finally:
        os.chdir(cwd)


def _report(out: Path) -> dict:
    return json.loads((out / REPORT_FILE).read_text())


def _skipped(folder: Path) -> dict[str, dict]:
    with open(folder / 'skipped.csv', newline='') as f:
        return {row['video_id']: row for row in csv.DictReader(f)}


def test_each_bad_video_has_its_own_reason(converted):
    out, test = converted['out'], converted['test']
    assert converted['rc'] == 0  # --max-failed-fraction 1.0: the exit code allows it, the banner still shows
    skipped = _skipped(out / 'test')
    assert {v: r['reason'] for v, r in skipped.items()} == {
        test[2]: 'incomplete_download', test[3]: 'empty_file', test[4]: 'not_media', test[5]: 'not_media',
        test[6]: 'missing'}
    assert 'download (or copy) it again' in skipped[test[2]]['detail']
    assert 'text, starting' in skipped[test[4]]['detail'] and 'an HTML page' in skipped[test[5]]['detail']
    for video_id in (test[2], test[3], test[4], test[5]):
        path = skipped[video_id]['path']
        assert os.path.isabs(path) and Path(path) == converted['root'] / 'videos' / f'{video_id}.mp4'
    assert skipped[test[6]]['path'] == ''


def test_truncated_tail_is_kept_with_its_decoded_duration_and_reported(converted, capsys):
    out, test = converted['out'], converted['test']
    samples = {s['video_id']: s for s in (StreamingDataset(local=str(out / 'test'), batch_size=1)[i]
                                          for i in range(3))}
    assert set(samples) == {test[0], test[1], test[7]}
    cut_tail = samples[test[1]]
    assert 1.5 < cut_tail['duration'] < 3.5 and cut_tail['num_frames'] == len(StoredFrames(cut_tail['frames'], 'cut_tail')) <= 3  # not 10 s
    assert samples[test[0]]['duration'] == pytest.approx(4.0)
    split = _report(out)['splits']['test']
    (entry,) = split['truncated_videos']
    assert entry['video_id'] == test[1] and entry['kept'] and entry['declared_s'] == pytest.approx(10.0)
    assert entry['decoded_s'] == pytest.approx(cut_tail['duration'], abs=0.01)
    assert split['warnings'] == {'truncated': 1}
    assert split['short_list'] == [[test[1], cut_tail['num_frames']], [test[7], 1]]
    assert split['short_videos'] == 2
    assert sorted(split['unwritten']) == sorted([[test[2], 'incomplete_download'], [test[3], 'empty_file'],
                                                 [test[4], 'not_media'], [test[5], 'not_media'],
                                                 [test[6], 'missing']])


def test_banner_lists_every_unwritten_test_video_and_report_survives_reruns(converted, capsys):
    out, test, base = converted['out'], converted['test'], converted['base']
    first = _report(out)
    capsys.readouterr()
    assert run_in(converted['root'], [*base, '--max-failed-fraction', '1.0']) == 0  # unchanged: all reused
    captured = capsys.readouterr()
    assert 'official TEST split msrvtt/test are MISSING from the gallery, not written (3 of 8 listed' in captured.err
    for video_id, reason in [(test[2], 'incomplete_download'), (test[3], 'empty_file'), (test[6], 'missing')]:
        assert f'{reason} (' in captured.err and video_id in captured.err
    assert f'not_media (2): {test[4]}, {test[5]}' in captured.err
    assert '1 truncated video(s), kept with the frames before the cut' in captured.out and test[1] in captured.out
    assert f'{test[7]} (1 frames)' in captured.out
    assert 'already converted by the run of ' + first['splits']['test']['written_at'] in captured.out
    again = _report(out)
    for split in ('test', 'train_9k'):
        old, new = first['splits'][split], again['splits'][split]
        assert new['reused'] and not old['reused'] and new['decoded_now'] == 0
        assert {k: v for k, v in new.items() if k not in ('reused', 'decoded_now', 'seconds')} == \
            {k: v for k, v in old.items() if k not in ('reused', 'decoded_now', 'seconds')}
    assert again['splits']['test']['skipped'] == first['splits']['test']['skipped'] != {}
    # A run of one split keeps the other split's figures and date.
    assert run_in(converted['root'], [*base, '--splits', 'train_9k', '--max-failed-fraction', '1.0']) == 0
    third = _report(out)
    assert third['splits']['test'] == again['splits']['test']  # untouched by this run: kept as it was


def test_skip_truncated_drops_it_and_the_banner_says_why(converted, capsys, tmp_path):
    base, test = converted['base'], converted['test']
    args = [str(tmp_path / 'out2') if a == 'out' else a for a in base]
    args += ['--work-dir', str(converted['out'] / '.tempme_work'), '--splits', 'test', '--skip-truncated']
    capsys.readouterr()
    assert run_in(converted['root'], args) == 1  # 6 of 8 skipped > 5 %
    err = capsys.readouterr().err
    assert f'truncated (1): {test[1]}' in err
    skipped = _skipped(tmp_path / 'out2' / 'test')
    assert skipped[test[1]]['reason'] == 'truncated' and 'decoded' in skipped[test[1]]['detail']
    assert _report(tmp_path / 'out2')['splits']['test']['decoded_now'] == 0  # the decode cache is reused
    gallery = read_gallery(tmp_path / 'out2' / 'test')
    assert (gallery.listed, gallery.written, gallery.is_test) == (8, 2, True)
    assert gallery.note(2).startswith('gallery: 2 of 8 test videos of msrvtt/test (6 not converted, reasons in ')
    assert 'NOT comparable with published tables, which rank against all 8' in gallery.note(2)
    assert gallery.note(8) is None
