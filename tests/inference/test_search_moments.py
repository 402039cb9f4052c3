"""Search over moments: temporal suppression and the per-video quota, candidate fetching equal to suppressing the
whole ranking, queries by image, video and stored moment, the results page's players, snippet files, and the
image-query check. Moment indexes are written here with `IndexStore.commit`, rows carrying start/end/moment."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from video_fixtures import write_video

from tempme_composer.data.video_files import find_video_files
from tempme_composer.inference import load_exported
from tempme_composer.inference.index import encode_videos, index_videos
from tempme_composer.inference.preprocess import QueryError, video_from_frames
from tempme_composer.inference.search import (
    PER_VIDEO_AUTO,
    VideoIndex,
    check_moment_options,
    clock,
    exact_topk,
    media_fragment,
    moment_of,
    search,
    search_vectors,
    suppress,
    temporal_iou,
    video_quota,
)
from tempme_composer.inference.search_cli import main as search_main
from tempme_composer.inference.store import IndexStore

RED, GREEN, BLUE, YELLOW, PURPLE = (220, 40, 40), (40, 190, 60), (40, 80, 230), (235, 215, 40), (150, 50, 210)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith('error: '), err
    assert 'Traceback' not in err, err
    return lines[-1]


def _base(model, source: dict, moments: dict | None = None) -> dict:
    """The manifest entries an index of ``model`` carries besides its files."""
    base = {'model_hash': model.model_hash, 'model_dir': str(model.directory.resolve()), 'source': source,
            'preprocessing': model.config['preprocessing'], 'evaluation': model.config.get('evaluation', {})}
    return base | ({'moments': moments} if moments else {})


def _windows(duration: float, window: float, stride: float) -> list[tuple[float, float]]:
    spans, s = [], 0.0
    while True:
        spans.append((s, min(s + window, duration)))
        if s + window >= duration:
            return spans
        s += stride


def moment_index(model, videos: Path, out: Path, window: float = 4.0, stride: float = 2.0) -> Path:
    """An index of ``videos`` whose rows are overlapping windows, each encoded from its own frames."""
    from tempme_composer.data.video import decode_video

    store = IndexStore(out)
    out.mkdir(parents=True)
    rule, prep = model.preprocessing.frames, model.preprocessing
    rows, inputs = [], []
    for path in find_video_files(videos):
        rel, st = str(path.relative_to(videos)), path.stat()
        decoded = decode_video(path, fps=rule.fps, short_side=rule.short_side, apply_rotation=rule.apply_rotation)
        for m, (s, e) in enumerate(_windows(decoded.duration_s, window, stride)):
            first = int(round(s * rule.fps))
            frames = decoded.frames[first : max(int(round(e * rule.fps)), first + 1)]
            x = video_from_frames(frames, prep, duration=e - s)
            key = f'{path.stem}-{m}'
            rows.append({'path': rel, 'size': st.st_size, 'mtime_ns': st.st_mtime_ns, 'key': key,
                         'duration': round(decoded.duration_s, 3), 'frames': x.num_frames,
                         'used_frames': int(x.mask.sum()), 'thumb': store.write_thumbnail(key, x.thumbnail),
                         'start': s, 'end': e, 'moment': m})
            inputs.append(x)
    base = _base(model, {'kind': 'videos', 'root': str(videos.resolve())},
                 {'mode': 'windows', 'window': window, 'stride': stride})
    store.commit(base, encode_videos(model, inputs).astype('float32'), rows, None, [])
    return out


@pytest.fixture(scope='module')
def built(tmp_path_factory, tiny_export) -> dict:
    """A tiny model, a folder (an 8 s video red then blue, three 3 s clips of other colours) and its moment
    index."""
    root = tmp_path_factory.mktemp('moments')
    export = tiny_export  # the session's (read-only)
    model = load_exported(export)
    videos = root / 'videos'
    write_video(videos / 'long.mp4', seconds=8, colours=(RED,) * 4 + (BLUE,) * 4)
    for name, colour in (('green', GREEN), ('yellow', YELLOW), ('purple', PURPLE)):
        write_video(videos / f'{name}.mp4', seconds=3, colours=(colour,))
    index = moment_index(model, videos, root / 'index')
    return {'root': root, 'export': export, 'model': model, 'videos': videos, 'index': index}


# ---- suppression, quota, candidate fetching ---------------------------------------------------------------------
def test_temporal_iou_suppression_and_the_per_video_quota():
    assert temporal_iou((0, 4), (2, 6)) == pytest.approx(2 / 6)
    assert temporal_iou((0, 4), (0, 4)) == 1.0 and temporal_iou((0, 2), (2, 4)) == 0.0
    assert temporal_iou((3, 3), (3, 3)) == 1.0 and temporal_iou((3, 3), (5, 5)) == 0.0
    film = [{'path': 'film.mp4', 'duration': 300.0, 'start': s, 'end': e, 'moment': m}
            for m, (s, e) in enumerate([(0, 10), (2, 12), (10, 20), (100, 110)])]
    clip = [{'path': 'clip.mp4', 'duration': 30.0, 'start': s, 'end': e, 'moment': m}
            for m, (s, e) in enumerate([(0, 10), (10, 20), (20, 30)])]
    rows = film + clip
    ranking = [0, 1, 5, 3, -1, 4, 2, 6]  # film0, film1, clip1, film3, (none), clip0, film2, clip2
    # auto: the 5-minute film may give 5, the 30 s clip 1; film1 overlaps film0 by IoU 8/12
    assert suppress(ranking, rows, 10) == [0, 2, 3, 6]
    assert suppress(ranking, rows, 10, per_video=0) == [0, 2, 3, 5, 6, 7]
    assert suppress(ranking, rows, 10, per_video=1) == [0, 2]
    assert suppress(ranking, rows, 10, nms_iou=1.0, per_video=0) == [0, 1, 2, 3, 5, 6, 7]
    assert suppress(ranking, rows, 2) == [0, 2]
    assert [video_quota(d, PER_VIDEO_AUTO) for d in (0, 3, 60, 61, 7200)] == [1, 1, 1, 2, 120]
    assert video_quota(7200, 0) is None and video_quota(5, 3) == 3
    assert moment_of({'path': 'old.mp4', 'duration': 3.5}) == (0.0, 3.5, 0)  # an index built before moments
    assert moment_of(film[3]) == (100.0, 110.0, 3)
    for bad, flag in (({'nms_iou': 1.5}, '--nms-iou 1.5'), ({'nms_iou': float('nan')}, '--nms-iou nan'),
                      ({'per_video': -1}, '--per-video -1'), ({'per_video': 'some'}, '--per-video some')):
        with pytest.raises(QueryError, match=flag):
            check_moment_options(**({'nms_iou': 0.5, 'per_video': 'auto'} | bad))
    assert clock(12) == '0:12' and clock(75.5) == '1:15.5' and clock(3600) == '1:00:00'
    assert media_fragment(12, 24.5) == '#t=12,24.5' and media_fragment(0, 1 / 3) == '#t=0,0.333'


def _synthetic_index(folder: Path, rows: list[dict], embeddings: np.ndarray) -> VideoIndex:
    folder.mkdir()
    base = {'model_hash': 'f' * 64, 'model_dir': str(folder), 'source': {'kind': 'videos', 'root': str(folder)},
            'preprocessing': {}, 'evaluation': {}}
    IndexStore(folder).commit(base, embeddings, rows, None, [])
    return VideoIndex(folder)


def _brute_force(index: VideoIndex, q: np.ndarray, k: int, **options) -> list[list[tuple[float, int]]]:
    scores, rows = exact_topk(q, index.embeddings, len(index.rows))
    return [[(float(scores[i, p]), int(rows[i, p])) for p in suppress(rows[i], index.rows, k, **options)]
            for i in range(len(q))]


def test_search_fetches_candidates_until_k_moments_survive(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    # one long video of 200 heavily overlapping windows that all answer the query, and 30 one-row clips
    spans = [(float(s), float(s + 4)) for s in range(200)]
    rows = [{'path': 'long.mp4', 'duration': 203.0, 'start': s, 'end': e, 'moment': m}
            for m, (s, e) in enumerate(spans)]
    rows += [{'path': f'clip{i}.mp4', 'duration': 5.0, 'start': 0.0, 'end': 5.0, 'moment': 0} for i in range(30)]
    direction = rng.standard_normal(32)
    emb = rng.standard_normal((230, 32)) * 0.3
    emb[:200] += 3 * direction
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = _synthetic_index(tmp_path / 'index', rows, emb.astype(np.float16))
    q = np.stack([direction / np.linalg.norm(direction), rng.standard_normal(32)]).astype(np.float32)
    calls = []
    original = VideoIndex.search_embeddings
    monkeypatch.setattr(VideoIndex, 'search_embeddings',
                        lambda self, queries, k, **kw: calls.append(k) or original(self, queries, k, **kw))
    for options in ({}, {'per_video': 0}, {'per_video': 1}, {'per_video': 0, 'nms_iou': 1.0}, {'nms_iou': 0.0}):
        calls.clear()
        results = search_vectors(index, q, ['long', 'random'], 10, **options)
        want = _brute_force(index, q, 10, **options)
        for r, w in zip(results, want, strict=True):
            assert [h.row for h in r.hits] == [row for _, row in w]
            np.testing.assert_allclose([h.score for h in r.hits], [s for s, _ in w], rtol=1e-6)
            assert [h.rank for h in r.hits] == list(range(1, len(w) + 1))
        # k x 4 candidates; more when long.mp4's quota leaves fewer than k of them (its 40 best are all it)
        assert calls[0] == 40 and (len(calls) >= 2 or options.get('per_video') == 0), (options, calls)
        if options.get('per_video') != 0:
            assert len(calls) >= 2 and calls[1] == 160, (options, calls)
    (long_first, _) = search_vectors(index, q, ['long', 'random'], 10)
    assert sum(h.path == 'long.mp4' for h in long_first.hits) == 4  # 203 s: one per started minute
    assert all(h.start == h.end - 4 for h in long_first.hits if h.path == 'long.mp4')
    # fewer moments than k survive: the index is exhausted, not an endless loop
    calls.clear()
    (few,) = search_vectors(index, q[:1], ['long'], 50, per_video=1)
    assert len(few.hits) == 31 and calls[-1] == 230
    if importlib.util.find_spec('usearch') is not None:
        # the graph is built on every core, so which near neighbours it finds may vary from build to build:
        # the approximate mode suppresses the same way, with recall against exact search, not equality
        approx = search_vectors(index, q, ['long', 'random'], 10, approximate=True)
        exact = search_vectors(index, q, ['long', 'random'], 10)
        for a, e in zip(approx, exact, strict=True):
            assert len(a.hits) == 10
            assert len({h.row for h in a.hits} & {h.row for h in e.hits}) >= 8
            assert all(sum(h.path == g.path for g in a.hits) <= 4 for h in a.hits)  # one per started minute


def test_an_index_of_whole_files_fetches_k_once_and_reads_as_before(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    rows = [{'path': f'v{i}.mp4', 'duration': 3.0} for i in range(50)]  # rows written before moments existed
    emb = rng.standard_normal((50, 16)).astype(np.float32)
    index = _synthetic_index(tmp_path / 'index', rows, emb)
    calls = []
    original = VideoIndex.search_embeddings
    monkeypatch.setattr(VideoIndex, 'search_embeddings',
                        lambda self, queries, k, **kw: calls.append(k) or original(self, queries, k, **kw))
    q = rng.standard_normal((3, 16)).astype(np.float32)
    results = search_vectors(index, q, ['a', 'b', 'c'], 7)
    assert calls == [7]
    scores, top = exact_topk(q, emb, 7)
    assert [[h.row for h in r.hits] for r in results] == top.tolist()
    assert all((h.start, h.end, h.moment) == (0.0, 3.0, 0) for r in results for h in r.hits)


def _annotated_index(model, folder: Path, moments: int) -> tuple[VideoIndex, np.ndarray]:
    """An MDS-kind index of four solid-colour videos, ``moments`` rows each, captions at each video's first row."""
    colours = (RED, GREEN, BLUE, YELLOW)
    inputs = [video_from_frames([np.full((24, 32, 3), c, np.uint8)] * 4, model.preprocessing, duration=4.0)
              for c in colours for _ in range(moments)]
    emb = encode_videos(model, inputs).astype('float32')
    emb += np.random.default_rng(3).standard_normal(emb.shape).astype('float32') * 0.01  # moments differ a little
    span = 4.0 / moments
    rows = [{'path': f'vid{v}', 'video_id': f'vid{v}', 'key': f'k{v}-{m}', 'duration': 4.0, 'start': m * span,
             'end': (m + 1) * span, 'moment': m} for v in range(4) for m in range(moments)]
    captions = [{'row': v * moments, 'caption_index': 0, 'text': f'a {name} square'}
                for v, name in enumerate(['red', 'green', 'blue', 'yellow'])]
    folder.mkdir()
    IndexStore(folder).commit(_base(model, {'kind': 'mds', 'root': str(folder), 'batch_size': 4}), emb, rows,
                              captions, [])
    return VideoIndex(folder), emb


@pytest.mark.parametrize('moments', [1, 3])
def test_ground_truth_stays_marked_on_an_annotated_index(built, tmp_path, capsys, moments):
    from tempme_composer.inference.html_page import results_page
    from tempme_composer.inference.index import encode_texts
    from tempme_composer.inference.preprocess import tokenize_queries

    model = built['model']
    index, emb = _annotated_index(model, tmp_path / 'mds-index', moments)
    results = search(index, model, ['a blue square', 'not a caption'], top_k=4 * moments, per_video=0)
    blue = list(range(2 * moments, 3 * moments))
    assert sorted(results[0].ground_truth) == blue and results[1].ground_truth == []
    q = encode_texts(model, tokenize_queries(['a blue square'], model.preprocessing)[0])[0]
    scores = emb @ q
    assert results[0].ground_truth[0] == blue[int(np.argmax(scores[blue]))]  # the best moment first
    best = scores[blue].max()
    videos_above = {index.rows[r]['path'] for r in np.flatnonzero(scores >= best)}
    assert results[0].ground_truth_rank == len(videos_above)  # among videos, each by its best moment
    marked = [h for h in results[0].hits if h.row in results[0].ground_truth]
    assert marked and all(h.path == 'vid2' for h in marked)
    assert search_main([str(index.folder), 'a blue square', '--per-video', '0', '--top-k', str(4 * moments)]) == 0
    out = capsys.readouterr().out
    assert out.count('<- ground truth') == len(marked)
    assert search_main([str(index.folder), 'a blue square', '--json']) == 0
    assert json.loads(capsys.readouterr().out)[0]['ground_truth'] == ['vid2']
    assert 'ground truth' in results_page(results, index) and 'R@1' in results_page(results, index)


# ---- queries by text, image, video and stored moment ------------------------------------------------------------
def _json(capsys) -> list[dict]:
    return json.loads(capsys.readouterr().out)


def test_text_search_returns_moments_without_overlaps(built, capsys):
    index = str(built['index'])
    assert search_main([index, 'a red square', '--json', '--per-video', '0', '--top-k', '20']) == 0
    (result,) = _json(capsys)
    hits = result['results']
    assert list(hits[0]) == ['rank', 'score', 'path', 'start', 'end', 'duration', 'moment']
    for i, a in enumerate(hits):
        for b in hits[i + 1 :]:
            if a['path'] == b['path']:
                assert temporal_iou((a['start'], a['end']), (b['start'], b['end'])) <= 0.5
    # windows at half-window strides overlap by IoU 1/3: kept at 0.5, dropped at 0.3
    assert sorted((h['start'], h['end']) for h in hits if h['path'].endswith('long.mp4')) == \
        [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0)]
    assert search_main([index, 'a red square', '--json', '--per-video', '0', '--nms-iou', '0.3']) == 0
    (tighter,) = _json(capsys)
    long = [(h['start'], h['end']) for h in tighter['results'] if h['path'].endswith('long.mp4')]
    assert sorted(long) in ([(0.0, 4.0), (4.0, 8.0)], [(2.0, 6.0)])
    # default quota: every video here is under a minute, so one result per video, its best moment
    assert search_main([index, 'a red square', '--json']) == 0
    (default,) = _json(capsys)
    paths = [h['path'] for h in default['results']]
    assert len(paths) == len(set(paths)) == 4
    best_long = next(h for h in hits if h['path'].endswith('long.mp4'))
    kept_long = next(h for h in default['results'] if h['path'].endswith('long.mp4'))
    assert kept_long == {**best_long, 'rank': paths.index(best_long['path']) + 1}
    assert search_main([index, 'a red square', '--per-video', 'many']) == 1
    assert '--per-video many: expected auto or a whole number >= 0' in _error_line(capsys)
    assert search_main([index, 'a red square', '--nms-iou', '2']) == 1
    assert '--nms-iou 2.0: expected a number from 0 to 1' in _error_line(capsys)
    assert search_main([index, 'a red square', '--per-video', '0', '--top-k', '20']) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == len(hits)
    for line, h in zip(lines, hits, strict=True):  # a moment shows its time range, a whole clip does not
        span = f'  {clock(h["start"])}-{clock(h["end"])}  ' if h['path'].endswith('long.mp4') else '  ('
        assert f'{h["path"]}{span}' in line, line


def _blue_png(built, tmp_path) -> Path:
    from tempme_composer.inference.demo_check import frame_at

    png = tmp_path / 'blue frame.png'
    Image.fromarray(frame_at(built['videos'] / 'long.mp4', 0.75)).save(png)  # 6 s: the blue half
    return png


def test_an_image_or_a_video_finds_the_moment_it_shows(built, tmp_path, capsys):
    from tempme_composer.inference.queries import image_input, image_query, search_by, video_query

    model, index = built['model'], VideoIndex(built['index'])
    png = _blue_png(built, tmp_path)
    assert image_input(png, model).mask.tolist() == [1, 0, 0, 0]  # a one-frame video
    clip = write_video(tmp_path / 'blue clip.mp4', seconds=2, colours=(BLUE,))
    for query in (image_query(model, png), video_query(model, clip)):
        (result,) = search_by(index, [query], top_k=3, per_video=0)
        top = result.hits[0]
        assert (top.path, top.start, top.end) == ('long.mp4', 4.0, 8.0), result
        assert top.score > 0.99
    assert search_main([str(built['index']), '--image', str(png), '--video', str(clip), '--json']) == 0
    image, video = _json(capsys)
    assert image['query'] == f'image: {png}' and video['query'] == f'video: {clip}'
    assert (image['results'][0]['start'], image['results'][0]['end']) == (4.0, 8.0)
    # an image that does not decode, a missing one, a video that does not decode: one line naming the file
    bad = tmp_path / 'photo.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 40)
    assert search_main([str(built['index']), '--image', str(bad)]) == 1
    line = _error_line(capsys)
    assert f'--image {bad}: not a readable image' in line
    assert search_main([str(built['index']), '--image', str(tmp_path / 'gone.png')]) == 1
    assert f'--image {tmp_path / "gone.png"}: no such file' in _error_line(capsys)
    assert search_main([str(built['index']), '--video', str(bad)]) == 1
    assert f'--video {bad}' in _error_line(capsys)


def test_like_uses_a_stored_moment_as_the_query(built, capsys, monkeypatch):
    from tempme_composer.inference.queries import like_query

    index = VideoIndex(built['index'])
    long_rows = [i for i, r in enumerate(index.rows) if r['path'] == 'long.mp4']
    at7 = like_query(index, 'long.mp4@7')
    assert moment_of(index.rows[at7.row])[:2] == (4.0, 8.0)
    np.testing.assert_array_equal(at7.vector, np.asarray(index.embeddings[at7.row], np.float32))
    assert moment_of(index.rows[like_query(index, 'long.mp4@0:01').row])[:2] == (0.0, 4.0)
    full = str(built['videos'] / 'long.mp4')
    assert like_query(index, full).row == long_rows[0]  # as results show it; no time: the first moment
    monkeypatch.chdir(built['videos'])
    assert like_query(index, './long.mp4@7').row == at7.row  # a path relative to here
    # no model needed: the CLI answers --like from the stored embeddings
    assert search_main([str(built['index']), '--like', 'long.mp4@7', '--json', '--model', '/nonexistent']) == 0
    (result,) = _json(capsys)
    assert result['query'] == f'like: {full} 0:04-0:08'
    top = result['results'][0]
    assert (top['path'], top['start'], top['end']) == (full, 4.0, 8.0) and top['score'] > 0.999
    for spec, expected in (('lng.mp4', '--like lng.mp4: not a video of the index'),
                           ('lng.mp4@3', 'did you mean long.mp4?'),
                           ('long.mp4@99', '--like long.mp4@99: 99 s is outside'),
                           ('long.mp4@-1', '-1 s is outside'),
                           ('long.mp4@soon', "'soon' after @ is not a time")):
        assert search_main([str(built['index']), '--like', spec]) == 1
        assert expected in _error_line(capsys), spec


# ---- the page and the snippets ----------------------------------------------------------------------------------
def test_the_page_plays_each_moment_from_its_start(built, tmp_path):
    page = tmp_path / 'page.html'
    assert search_main([str(built['index']), 'a blue square', 'a red square', '--per-video', '0', '--top-k', '6',
                        '--html', str(page)]) == 0
    text = page.read_text()
    uri = (built['videos'] / 'long.mp4').resolve().as_uri()
    assert f'<video controls preload="none" src="{uri}#t=4,8"' in text
    assert '<span class="span">0:04–0:08</span> of 8.0 s' in text
    assert text.count(f'href="{uri}"') == text.count(f'src="{uri}#t=')
    cards = re.findall(r'class="th (t\d+)".*?src="([^"]+)"', text)
    assert len(cards) == 12  # two queries, six moments each
    # each moment shows its own thumbnail, inlined once however many cards show it
    assert len({c for c, _ in cards}) == len({src for _, src in cards}) == text.count('data:image/jpeg;base64,') == 6
    assert '6 moments of 4 videos' in text


def _gop_video(path: Path, seconds: int = 8, fps: int = 10, gop: int | None = 10, fmt: str = 'mp4',
               codec: str = 'libx264') -> Path:
    """Frame i is grey level 3*i (to tell frames apart); a keyframe every ``gop`` frames."""
    with av.open(str(path), 'w', format=fmt) as c:
        s = c.add_stream(codec, rate=Fraction(fps), options={'threads': '1'})
        s.width, s.height, s.pix_fmt = 64, 48, 'yuv420p'
        if gop:
            s.codec_context.gop_size = gop
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 3 * i, np.uint8), format='rgb24')
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _frames(path: Path) -> list[tuple[float, int]]:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return [(round(float(f.time), 3), int(f.to_ndarray(format='rgb24')[0, 0, 0])) for f in c.decode(v)]


def test_snippets_copy_from_a_keyframe_or_reencode(tmp_path):
    from tempme_composer.inference.snippets import cut_moment

    out = tmp_path / 'out'
    out.mkdir()
    gop = _gop_video(tmp_path / 'gop.mp4')
    single = _gop_video(tmp_path / 'single.mp4', gop=1000)
    webm = _gop_video(tmp_path / 'clip.webm', fmt='webm', codec='libvpx-vp9')
    for source, start, end, mode, first_frame in ((gop, 2.0, 4.0, 'copy', 20), (gop, 2.3, 4.0, 'copy', 20),
                                                  (single, 2.5, 4.0, 'encode', 25), (single, 0.0, 8.0, 'copy', 0)):
        snippet = cut_moment(source, start, end, out, 1)
        assert snippet.mode == mode, (source, start)
        frames = _frames(snippet.path)
        assert frames[0][0] == 0.0 and abs(frames[0][1] - 3 * first_frame) <= 3
        assert len(frames) == round((end - snippet.start) * 10)  # ends at the moment's end, not the next keyframe
    vp9 = cut_moment(webm, 0.0, 3.0, out, 2)
    assert vp9.path.suffix == '.webm' and len(_frames(vp9.path)) == 30
    # a taken name is never replaced
    again = cut_moment(gop, 2.0, 4.0, out, 1)
    assert again.path.name == '1-gop-2.0-4.0-2.mp4'
    assert sorted(p.name for p in out.iterdir()) == ['1-gop-2.0-4.0-2.mp4', '1-gop-2.0-4.0.mp4', '1-gop-2.3-4.0.mp4',
                                                     '1-single-0.0-8.0.mp4', '1-single-2.5-4.0.mp4', '2-clip-0.0-3.0.webm']


def _snippet_name(hit: dict) -> str:
    return f'{hit["rank"]}-{Path(hit["path"]).stem}-{hit["start"]:.1f}-{hit["end"]:.1f}.mp4'


def test_snippets_from_the_command_line(built, tmp_path, capsys):
    folder = tmp_path / 'new' / 'snippets'
    args = [str(built['index']), 'a blue square', '--per-video', '0', '--top-k', '3', '--snippets', str(folder)]
    assert search_main([*args, '--json']) == 0
    hits = _json(capsys)[0]['results']
    names = sorted(p.name for p in folder.iterdir())
    want = sorted(_snippet_name(h) for h in hits)
    assert names == want
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert search_main(args) == 0
    assert len(list(folder.iterdir())) == 2 * len(want)
    assert all((folder / name).read_bytes() == data for name, data in before.items())
    for h in hits:  # 5 fps: a moment's frames within a frame of its length
        assert abs(len(_frames(folder / _snippet_name(h))) / 5 - (h['end'] - h['start'])) <= 0.2 + 1e-9
    several = tmp_path / 'several'
    assert search_main([str(built['index']), 'a blue square', 'a green square', '--top-k', '2', '--snippets',
                        str(several)]) == 0
    assert sorted(p.name for p in several.iterdir()) == ['q1', 'q2']
    assert [len(list((several / q).iterdir())) for q in ('q1', 'q2')] == [2, 2]
    (tmp_path / 'afile').write_text('x')
    assert search_main([str(built['index']), 'a blue square', '--snippets', str(tmp_path / 'afile')]) == 1
    assert f'--snippets {tmp_path / "afile"} is a file, expected a folder' in _error_line(capsys)
    # a file changed since it was indexed is not cut at the old times
    videos = tmp_path / 'videos'
    shutil.copytree(built['videos'], videos)
    index = moment_index(built['model'], videos, tmp_path / 'index')
    write_video(videos / 'long.mp4', seconds=2, colours=(GREEN,))
    assert search_main([str(index), 'a blue square', '--per-video', '1', '--snippets', str(tmp_path / 's2')]) == 1
    assert 'changed since it was indexed' in _error_line(capsys)


# ---- the image-query check -----------------------------------------------------------------------------------------
def test_image_query_check_on_a_tiny_index(built, tmp_path, capsys):
    from tempme_composer.inference.demo_check import image_query_top1
    from tempme_composer.inference.demo_check import main as check_main

    whole = tmp_path / 'whole'
    index_videos(built['model'], built['videos'], whole, dtype='float32', progress=False)
    check = image_query_top1(VideoIndex(whole), built['model'])
    assert (check.hits, check.videos) == (4, 4) and check.share == 100.0
    moments = image_query_top1(VideoIndex(built['index']), built['model'], fraction=0.25)
    assert moments.videos == 4 and moments.hits == 4, moments.misses
    assert check_main([str(built['index']), '--image-queries', '--at', '0.75']) == 100.0
    assert 'retrieves the video at top-1 for 4 of 4 videos (100.0 %)' in capsys.readouterr().out
