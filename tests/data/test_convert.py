"""tempme-convert end to end: real ids, small PyAV videos, conversion, reading back, bad inputs, resume."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from real_annotations import ANNOTATIONS, load_activitynet
from streaming import StreamingDataset
from video_fixtures import PALETTE, write_audio_only, write_video

from tempme_composer.clip.preprocess import CLIP_MEAN, CLIP_STD, normalize_frames
from tempme_composer.data import LoaderOptions, build_video_text_dataloader
from tempme_composer.data.annotations.common import read_id_list
from tempme_composer.data.annotations.lsmdc import read_lsmdc_rows
from tempme_composer.data.annotations.msrvtt import read_jsfusion_rows
from tempme_composer.data.convert import main
from tempme_composer.data.format import META_FILE, pairs_split
from tempme_composer.data.frame_layout import StoredFrames, write_format1_copy

SIZE = 32  # --size for the tests (short side); the loader crops to RES
RES = 32
JPEG_TOL = 14  # max abs difference per channel of a solid colour after yuv420p + JPEG


def _lines_crlf(path: Path, keep: int, header: bool) -> bytes:
    lines = path.read_bytes().split(b'\r\n')
    return b'\r\n'.join(lines[: keep + int(header)]) + b'\r\n'


def _read_split(folder: Path) -> list[dict]:
    """Every sample, its stored frames decoded to a list of images (whatever the frame layout)."""
    ds = StreamingDataset(local=str(folder), batch_size=1)
    samples = [ds[i] for i in range(ds.size)]
    for i, s in enumerate(samples):
        frames = StoredFrames(s['frames'], f'{folder} sample {i}')
        s['frames'] = frames.select(range(len(frames)))
    return samples


def _colour(frame) -> np.ndarray:
    return np.asarray(frame.convert('RGB'), dtype=np.float64).reshape(-1, 3).mean(0)


def _unnormalise(video: torch.Tensor) -> np.ndarray:
    """[3, R, R] CLIP-normalised frame -> mean RGB in 0..255."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((video * std + mean) * 255).mean(dim=(1, 2)).numpy()


@pytest.fixture(scope='module')
def msrvtt(tmp_path_factory):
    """Subsets of the REAL MSR-VTT files + a tiny MSRVTT_data.json, videos, one conversion (2 workers)."""
    root = tmp_path_factory.mktemp('msrvtt')
    ann, videos = root / 'ann', root / 'videos'
    ann.mkdir()
    real_test_csv = ANNOTATIONS / 'msrvtt' / 'MSRVTT_JSFUSION_test.csv'
    (ann / 'MSRVTT_JSFUSION_test.csv').write_bytes(_lines_crlf(real_test_csv, 4, True))
    real_9k_csv = ANNOTATIONS / 'msrvtt' / 'MSRVTT_train.9k.csv'
    (ann / 'MSRVTT_train.9k.csv').write_bytes(_lines_crlf(real_9k_csv, 3, True))
    test_rows = read_jsfusion_rows(ann / 'MSRVTT_JSFUSION_test.csv')
    train_ids = read_id_list(ann / 'MSRVTT_train.9k.csv', header='video_id')
    real_7k = set(read_id_list(ANNOTATIONS / 'msrvtt' / 'MSRVTT_train.7k.csv', header='video_id'))
    ids_7k = [v for v in train_ids if v in real_7k][:2]  # a 7k file with the (real) ids we have videos for
    (ann / 'MSRVTT_train.7k.csv').write_bytes(b'video_id\r\n' + b''.join(f'{v}\r\n'.encode() for v in ids_7k))
    sentences = [{'video_id': v, 'caption': f'clip {v} shows scene {k}', 'sen_id': 3 * i + k}
                 for i, v in enumerate(train_ids) for k in range(3)]
    (ann / 'MSRVTT_data.json').write_text(json.dumps({'videos': [], 'sentences': sentences}))
    colours = {}
    shapes = [(32, 24), (24, 40), (34, 26)]  # landscape, portrait, odd output width (41)
    all_ids = [r['video_id'] for r in test_rows[:3]] + train_ids  # test row 4's video stays missing
    for i, vid in enumerate(all_ids):
        colours[vid] = PALETTE[i % len(PALETTE)]
        w, h = shapes[i % 3]
        write_video(videos / f'{vid}.mp4', seconds=3 + i % 3, fps=5, width=w, height=h, colours=[colours[vid]])
    out = root / 'out'
    rc = main(['msrvtt', '--annotations', str(ann), '--videos', str(videos), '--out', str(out), '--size',
               str(SIZE), '--workers', '2', '--no-progress', '--keep-work', '--max-failed-fraction', '0.3'])
    return {'root': root, 'ann': ann, 'videos': videos, 'out': out, 'rc': rc, 'test_rows': test_rows,
            'train_ids': train_ids, 'colours': colours, 'sentences': sentences}


def test_msrvtt_conversion_layout_and_samples(msrvtt):
    out = msrvtt['out']
    assert msrvtt['rc'] == 0
    for split in ('train_9k', 'train_7k', 'test'):
        assert (out / split / 'index.json').is_file() and (out / pairs_split(split) / 'index.json').is_file()
        meta = json.loads((out / split / META_FILE).read_text())
        assert meta['format_version'] == 2 and meta['settings']['fps'] == 1.0 and meta['settings']['size'] == SIZE
    assert not [p for p in out.iterdir() if p.name.startswith('.') and 'tmp' in p.name]
    test = _read_split(out / 'test')
    assert [s['video_id'] for s in test] == [r['video_id'] for r in msrvtt['test_rows'][:3]]
    assert [s['captions'] for s in test] == [[r['sentence']] for r in msrvtt['test_rows'][:3]]
    for i, s in enumerate(test):
        assert s['num_frames'] == len(s['frames']) == 3 + i % 3  # 1 fps of a (3 + i) s video
        w, h = s['frames'][0].size
        assert min(w, h) == SIZE  # short side, aspect kept: portrait stays portrait
        assert (h > w) == (i % 3 == 1)
        assert np.abs(_colour(s['frames'][0]) - msrvtt['colours'][s['video_id']]).max() < JPEG_TOL
    train = _read_split(out / 'train_9k')
    assert [s['video_id'] for s in train] == msrvtt['train_ids']
    assert train[0]['captions'] == [f'clip {msrvtt["train_ids"][0]} shows scene {k}' for k in range(3)]
    skipped = list(csv.DictReader(open(out / 'test' / 'skipped.csv')))
    assert [(r['video_id'], r['reason']) for r in skipped] == [(msrvtt['test_rows'][3]['video_id'], 'missing')]
    report = json.loads((out / 'conversion_report.json').read_text())
    assert report['splits']['test']['skipped'] == {'missing': 1}


def test_msrvtt_missing_test_video_banner_and_threshold(msrvtt, capsys, tmp_path):
    args = ['msrvtt', '--annotations', str(msrvtt['ann']), '--videos', str(msrvtt['videos']), '--out',
            str(tmp_path / 'out'), '--size', str(SIZE), '--workers', '1', '--no-progress', '--splits', 'test',
            '--work-dir', str(msrvtt['out'] / '.tempme_work')]
    assert main(args) == 1  # 1 of 4 missing > 5 %
    err = capsys.readouterr().err
    assert 'official TEST split msrvtt/test are MISSING' in err and msrvtt['test_rows'][3]['video_id'] in err
    assert main(args + ['--max-failed-fraction', '0.5']) == 0


def test_resume_reuses_finished_work(msrvtt, tmp_path, capsys):
    out = tmp_path / 'out'
    shutil.copytree(msrvtt['out'], out)
    base = ['msrvtt', '--annotations', str(msrvtt['ann']), '--videos', str(msrvtt['videos']), '--out', str(out),
            '--size', str(SIZE), '--workers', '1', '--no-progress', '--keep-work', '--max-failed-fraction', '0.3']
    capsys.readouterr()
    assert main(base) == 0
    report = json.loads((out / 'conversion_report.json').read_text())
    assert all(s['reused'] and s['decoded_now'] == 0 for s in report['splits'].values())
    # An interrupted run: a split never finished (only a temp folder left) and one video's cache is gone.
    shutil.rmtree(out / 'test')
    (out / '.test.tmp-1-deadbeef').mkdir()
    (out / '.test.tmp-1-deadbeef' / 'index.json').write_text('{}')
    cache = next((out / '.tempme_work').iterdir())
    victim = sorted(cache.glob(f'{msrvtt["test_rows"][0]["video_id"]}-*.bin'))
    assert len(victim) == 1
    victim[0].unlink()
    assert main(base) == 0
    report = json.loads((out / 'conversion_report.json').read_text())
    assert report['splits']['test']['decoded_now'] == 1 and not report['splits']['test']['reused']
    assert report['splits']['train_9k']['reused']
    assert len(_read_split(out / 'test')) == 3


def test_train_and_eval_loaders_read_converted_data(msrvtt):
    out = str(msrvtt['out'])
    common = dict(local=out, max_frames=4, image_resolution=RES, max_words=16, num_workers=0)
    spec = build_video_text_dataloader(LoaderOptions(split='test', batch_size=2, train=False, **common))
    batches = list(spec.dataloader)
    video_index = torch.cat([b['video_index'] for b in batches]).tolist()
    assert video_index == [0, 1, 2]
    masks = torch.cat([b['video_mask'] for b in batches])
    assert masks.sum(1).tolist() == [3, 4, 4]  # 3, 4, 5 frames at 1 fps; max_frames 4
    assert torch.cat([b['text_video_index'] for b in batches]).tolist() == [0, 1, 2]
    first = normalize_frames(batches[0]['video'], batches[0]['video_mask'])[0, 0]  # uint8 -> as the model sees it
    assert np.abs(_unnormalise(first) - msrvtt['colours'][msrvtt['test_rows'][0]['video_id']]).max() < JPEG_TOL
    assert batches[0]['video'][0, 3].abs().sum() == 0  # padding frame

    spec = build_video_text_dataloader(LoaderOptions(split='train_9k', batch_size=3, train=True, **common))
    (batch,) = list(spec.dataloader)
    assert sorted(batch['video_index'].tolist()) == [0, 1, 2]


def test_expand_sentences_visits_every_pair_once(msrvtt):
    from tempme_composer.clip.tokenizer import tokenize

    spec = build_video_text_dataloader(LoaderOptions(local=str(msrvtt['out']), split='train_9k', batch_size=3, train=True,
                                       max_frames=4, image_resolution=RES, max_words=16, expand_sentences=True))
    assert len(spec.dataloader.dataset) == 9  # 3 videos x 3 captions
    seen = []
    for batch in spec.dataloader:
        for v, ids in zip(batch['video_index'].tolist(), batch['text_ids'], strict=True):
            seen.append((v, tuple(ids.tolist())))
    expected = []
    for s in msrvtt['sentences']:
        v = msrvtt['train_ids'].index(s['video_id'])
        expected.append((9 + v, tuple(tokenize(s['caption'], 16)[0][0].tolist())))  # videos follow the 9 pairs
    assert sorted(seen) == sorted(expected)


def test_mixed_streams_with_repeat(msrvtt):
    out = str(msrvtt['out'])
    spec = build_video_text_dataloader(LoaderOptions(
        local=None, streams=[{'local': out, 'split': 'train_9k'}, {'local': out, 'split': 'train_7k', 'repeat': 2}],
        batch_size=1, train=True, max_frames=4, image_resolution=RES, max_words=16))
    assert len(spec.dataloader.dataset) == 3 + 2 * 2
    with pytest.raises(ValueError, match='either `streams` or'):
        build_video_text_dataloader(LoaderOptions(local=out, split='test', streams=[{'local': out, 'split': 'test'}],
                                    batch_size=1, train=True, max_frames=4, image_resolution=RES, max_words=16))


def test_format_1_conversions_are_still_read(msrvtt, tmp_path):
    """A split written by the format-1 converter (jpegarray frames) loads exactly like its format-2 twin."""
    v1 = write_format1_copy(msrvtt['out'] / 'test', tmp_path / 'out' / 'test')
    assert json.loads((v1 / META_FILE).read_text())['format_version'] == 1
    kw = dict(split='test', batch_size=2, train=False, max_frames=4, image_resolution=RES, max_words=16)
    new = list(build_video_text_dataloader(LoaderOptions(local=str(msrvtt['out']), **kw)).dataloader)
    old = list(build_video_text_dataloader(LoaderOptions(local=str(tmp_path / 'out'), **kw)).dataloader)
    assert len(new) == len(old) == 2
    for a, b in zip(new, old, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_format_version_fails_clearly(msrvtt, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(msrvtt['out'] / 'test', out / 'test')
    meta = json.loads((out / 'test' / META_FILE).read_text())
    (out / 'test' / META_FILE).write_text(json.dumps({**meta, 'format_version': 99}))
    with pytest.raises(ValueError, match='format version 99 is not supported'):
        build_video_text_dataloader(LoaderOptions(local=str(out), split='test', batch_size=1, train=False, max_frames=4,
                                    image_resolution=RES, max_words=16))


def test_lsmdc_activitynet_msvd_round_trip(tmp_path):
    """Real ids of the other benchmarks; ActivityNet read back in paragraph mode."""
    videos = tmp_path / 'videos'
    # LSMDC: first 2 lines of the real public test, videos in a per-movie sub-folder.
    real_lsmdc_csv = ANNOTATIONS / 'lsmdc' / 'LSMDC16_challenge_1000_publictect.csv'
    (tmp_path / 'lsmdc.csv').write_bytes(_lines_crlf(real_lsmdc_csv, 2, False))
    rows = read_lsmdc_rows(tmp_path / 'lsmdc.csv')
    for i, row in enumerate(rows):
        write_video(videos / row[0].split('_')[0] / f'{row[0]}.avi', seconds=2, colours=[PALETTE[i]],
                    container_format='avi')
    out = tmp_path / 'out'
    assert main(['lsmdc', '--test-csv', str(tmp_path / 'lsmdc.csv'), '--videos', str(videos), '--out',
                 str(out / 'lsmdc'), '--size', str(SIZE), '--workers', '1', '--no-progress']) == 0
    got = _read_split(out / 'lsmdc' / 'test')
    assert [(s['video_id'], s['captions']) for s in got] == [(r[0], [r[5].strip()]) for r in rows]

    # ActivityNet: 2 real val_1 entries; files named without the v_ prefix.
    val = load_activitynet('val_1')
    keys = list(val)[:2]
    (tmp_path / 'val_1.json').write_text(json.dumps({k: val[k] for k in keys}))
    for i, k in enumerate(keys):
        write_video(videos / 'anet' / f'{k[2:]}.mp4', seconds=2, colours=[PALETTE[i]])
    assert main(['activitynet', '--val-json', str(tmp_path / 'val_1.json'), '--videos', str(videos / 'anet'),
                 '--out', str(out / 'anet'), '--size', str(SIZE), '--workers', '1', '--no-progress']) == 0
    got = _read_split(out / 'anet' / 'val_1')
    assert [s['video_id'] for s in got] == keys
    assert got[0]['timestamps'] == val[keys[0]]['timestamps']
    spec = build_video_text_dataloader(LoaderOptions(local=str(out / 'anet'), split='val_1', batch_size=2, train=False,
                                       max_frames=4, image_resolution=RES, max_words=64, paragraph=True))
    (batch,) = list(spec.dataloader)
    assert batch['text_ids'].shape[0] == 2  # one paragraph per video
    from tempme_composer.clip.tokenizer import tokenize

    paragraph = ' '.join(s.strip() for s in val[keys[0]]['sentences'])
    assert torch.equal(batch['text_ids'][0], tokenize(paragraph, 64)[0][0])

    # MSVD: 2 real test ids, multi-sentence.
    import pickle

    ids = read_id_list(ANNOTATIONS / 'msvd' / 'test_list.txt')[:2]
    (tmp_path / 'test_list.txt').write_bytes(b'\r\n'.join(i.encode() for i in ids))
    (tmp_path / 'raw-captions.pkl').write_bytes(pickle.dumps({ids[0]: [['a', 'cat'], ['a', 'kitten']],
                                                              ids[1]: [['a', 'car']]}))
    for i, v in enumerate(ids):
        write_video(videos / 'msvd' / f'{v}.avi', seconds=2, colours=[PALETTE[i]], container_format='avi')
    assert main(['msvd', '--captions-pkl', str(tmp_path / 'raw-captions.pkl'), '--test-list',
                 str(tmp_path / 'test_list.txt'), '--videos', str(videos / 'msvd'), '--out', str(out / 'msvd'),
                 '--size', str(SIZE), '--workers', '1', '--no-progress']) == 0
    spec = build_video_text_dataloader(LoaderOptions(local=str(out / 'msvd'), split='test', batch_size=2, train=False,
                                       max_frames=4, image_resolution=RES, max_words=16))
    (batch,) = list(spec.dataloader)
    assert batch['text_video_index'].tolist() == [0, 0, 1]


def test_bad_inputs_are_reported_never_zero_filled(tmp_path, capsys):
    """missing, zero-length, unreadable, truncated, audio-only, rotated, portrait, short videos; bad captions."""
    ids = read_id_list(ANNOTATIONS / 'msvd' / 'test_list.txt')[:10]
    videos = tmp_path / 'videos'
    videos.mkdir()
    good = write_video(videos / f'{ids[0]}.mp4', seconds=3, colours=[PALETTE[0]])
    (videos / f'{ids[1]}.mp4').write_bytes(b'')  # zero-length
    (videos / f'{ids[2]}.mp4').write_bytes(b'this is not a video' * 50)  # unreadable
    data = good.read_bytes()
    (videos / f'{ids[3]}.mp4').write_bytes(data[: len(data) // 2])  # truncated mp4
    write_audio_only(videos / f'{ids[4]}.mp4')
    write_video(videos / f'{ids[5]}.mp4', seconds=2, width=32, height=16, colours=[PALETTE[1]], rotation=90,
                left_right=True)  # rotated: displayed as 16 x 32 portrait
    write_video(videos / f'{ids[6]}.mp4', seconds=2, width=24, height=48, colours=[PALETTE[2]])  # portrait
    write_video(videos / f'{ids[7]}.mp4', seconds=1, colours=[PALETTE[3]])  # 1 frame < max_frames
    ts = write_video(videos / f'{ids[8]}.ts', seconds=4, colours=[PALETTE[4]], container_format='mpegts')
    ts.write_bytes(ts.read_bytes()[: len(ts.read_bytes()) // 2])  # truncated stream with usable frames
    # ids[9] has no file at all
    import pickle

    caps = {i: [['a', 'clip', str(n)]] for n, i in enumerate(ids)}
    caps[ids[0]] = [['ok'], ['   '], []]  # empty captions dropped
    (tmp_path / 'caps.pkl').write_bytes(pickle.dumps(caps))
    (tmp_path / 'test_list.txt').write_bytes(b'\r\n'.join([i.encode() for i in ids] + [ids[0].encode()]) + b'\r\n')
    out = tmp_path / 'out'
    args = ['msvd', '--captions-pkl', str(tmp_path / 'caps.pkl'), '--test-list', str(tmp_path / 'test_list.txt'),
            '--videos', str(videos), '--out', str(out), '--size', str(SIZE), '--workers', '1', '--no-progress',
            '--keep-work']
    assert main(args) == 1  # far more than 5 % failed
    captured = capsys.readouterr()
    assert 'official TEST split msvd/test are MISSING' in captured.err
    skipped = {r['video_id']: r['reason'] for r in csv.DictReader(open(out / 'test' / 'skipped.csv'))}
    # An incomplete download and a file that is no video at all are told apart.
    assert skipped[ids[1]] == 'empty_file' and skipped[ids[2]] == 'not_media'
    assert skipped[ids[3]] == 'incomplete_download'  # cut in half: the index (moov, at the end) never arrived
    assert skipped[ids[4]] == 'no_video_stream'
    assert skipped[ids[9]] == 'missing'
    assert skipped[ids[0]] == 'duplicate_id'  # the repeated last line; the first listing is converted
    got = {s['video_id']: s for s in _read_split(out / 'test')}
    assert set(got) == {ids[0], ids[5], ids[6], ids[7], ids[8]}
    assert got[ids[0]]['captions'] == ['ok']
    rotated = got[ids[5]]['frames'][0]
    assert rotated.size == (SIZE, 2 * SIZE)  # width 32, height 64: turned to portrait
    # 90 degrees counter-clockwise, as ffmpeg displays it: the coloured left half ends up at the bottom.
    pixels = np.asarray(rotated.convert('RGB')).astype(np.float64)
    assert np.abs(pixels[SIZE + 4:].reshape(-1, 3).mean(0) - PALETTE[1]).max() < JPEG_TOL
    assert pixels[: SIZE - 4].max() < 40
    assert got[ids[6]]['frames'][0].size == (SIZE, 2 * SIZE)
    assert got[ids[7]]['num_frames'] == 1
    assert 1 <= got[ids[8]]['num_frames'] <= 4
    for s in got.values():
        for frame in s['frames']:
            assert np.asarray(frame.convert('RGB')).max() > 100  # never an all-black (zero-filled) frame
    report = json.loads((out / 'conversion_report.json').read_text())
    assert report['splits']['test']['warnings'].get('rotated') == 1
    assert report['splits']['test']['short_videos'] == 5
    # Re-running with a lenient threshold reuses every decode (failures included) and succeeds.
    assert main(args + ['--max-failed-fraction', '0.9']) == 0
    report = json.loads((out / 'conversion_report.json').read_text())
    assert report['splits']['test']['decoded_now'] == 0


def test_bench_smoke(tmp_path, capsys):
    from tempme_composer.bench.data import main as bench_main

    result = bench_main(['--msrvtt-videos', '2', '--msrvtt-seconds', '2,3', '--anet-videos', '1', '--anet-seconds',
                         '4', '--width', '64', '--height', '48', '--fps', '10', '--workers', '1', '--loader-workers',
                         '0', '--batch-size', '2', '--replicas', '2', '--seconds-per-path', '0.05', '--repeats', '1',
                         '--storage', '--work', str(tmp_path)])
    assert result['conversion_videos_per_s'] > 0
    assert [r['format'] for r in result['storage']] == ['jpeg q75', 'jpeg q85', 'jpeg q95', 'raw uint8']
    for kind, used in (('msrvtt', 12), ('anet', 64)):
        row = result['kinds'][kind]
        assert row['frames_used'] == used and row['mds_over_today'] > 0 and row['mds_over_fly'] > 0
        assert set(row['samples_per_s_per_worker']) == set(row['samples_per_cpu_s']) == {'today', 'mds', 'fly'}
    assert result['h100_loader_cores']['forward'] >= result['h100_loader_cores']['train'] >= 1
    out = capsys.readouterr().out
    assert 'samples/s per loader core' in out and 'videos/s' in out


def test_val_from_train_holds_out_videos_deterministically(msrvtt, tmp_path, capsys):
    """--val-from-train moves whole training videos (all captions) into val/, chosen by --val-seed alone."""
    base = ['msrvtt', '--annotations', str(msrvtt['ann']), '--videos', str(msrvtt['videos']), '--size', str(SIZE),
            '--workers', '1', '--no-progress', '--max-failed-fraction', '0.3',
            '--work-dir', str(msrvtt['out'] / '.tempme_work')]
    out = tmp_path / 'out'
    assert main([*base, '--out', str(out), '--val-from-train', '1', '--val-seed', '3']) == 0
    assert 'val: 1 videos held out of train_7k, train_9k (--val-seed 3)' in capsys.readouterr().out
    report = json.loads((out / 'conversion_report.json').read_text())
    held = report['val_from_train']
    assert held['count'] == 1 and held['seed'] == 3 and held['from_splits'] == {'train_7k': 2, 'train_9k': 3}
    val = _read_split(out / 'val')
    assert [s['video_id'] for s in val] == held['video_ids']
    assert val[0]['captions'] == [f'clip {held["video_ids"][0]} shows scene {k}' for k in range(3)]
    train = [s['video_id'] for s in _read_split(out / 'train_9k')]
    assert train == [v for v in msrvtt['train_ids'] if v not in held['video_ids']]
    assert not set(held['video_ids']) & {s['video_id'] for s in _read_split(out / 'train_7k')}
    again = tmp_path / 'again'  # the same seed holds out the same videos
    assert main([*base, '--out', str(again), '--splits', 'val,train_9k,train_7k', '--val-from-train', '1',
                 '--val-seed', '3']) == 0
    assert json.loads((again / 'conversion_report.json').read_text())['val_from_train'] == held
    capsys.readouterr()
    # rewriting the training split without the same hold-out would make val and train overlap
    assert main([*base, '--out', str(out), '--splits', 'train_9k']) == 2
    err = capsys.readouterr().err
    assert 'holds a val split of 1 videos' in err and '--val-from-train 1 --val-seed 3' in err
    assert 'Traceback' not in err


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (['--val-from-train', '3'], 'expected at least 1 and fewer than the 3 training videos of msrvtt'),
        (['--val-from-train', '0'], 'expected at least 1 and fewer than the 3 training videos'),
        (['--val-from-train', '1', '--splits', 'test'], '--splits leaves out train_7k, train_9k, val'),
    ],
)
def test_val_from_train_refuses_bad_counts(msrvtt, tmp_path, capsys, args, message):
    rc = main(['msrvtt', '--annotations', str(msrvtt['ann']), '--videos', str(msrvtt['videos']), '--out',
               str(tmp_path / 'out'), '--no-progress', *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and 'Traceback' not in err
    assert not (tmp_path / 'out').exists()


def test_val_from_train_refused_where_an_official_val_split_exists(tmp_path, capsys):
    (tmp_path / 'val_list.txt').write_text('a\n')
    (tmp_path / 'test_list.txt').write_text('b\n')
    (tmp_path / 'raw-captions.pkl').write_bytes(pickle.dumps({'a': [['a', 'cat']], 'b': [['a', 'dog']]}))
    rc = main(['msvd', '--annotations', str(tmp_path), '--videos', str(tmp_path), '--out', str(tmp_path / 'out'),
               '--val-from-train', '1'])
    err = capsys.readouterr().err
    assert rc == 2 and "msvd has an official validation split ('val')" in err and 'OUT/val' in err
