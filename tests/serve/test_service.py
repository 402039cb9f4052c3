"""``tempme-serve`` as a real process on a loopback port, talked to over HTTP with httpx: the same results as
``tempme-search --json`` (text, image, video, "more like this"), thumbnails and Range requests on the media,
health and statistics, micro-batching under 32 concurrent clients, a new index generation picked up under
load, a deleted video, the limits and the refusals, the token, CORS, and SIGTERM draining a request in flight.
The tests that change the indexed folder run last."""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image
from video_fixtures import write_video

from tempme_composer.inference.search_cli import main as search_main

QUERIES = ['a red square', 'something blue', 'green grass', 'a yellow light', 'purple rain']
ORANGE = (245, 140, 20)
TOKEN = 'a-long-shared-secret'
ORIGIN = 'http://team.example'


def _cli(capsys, index, *args: str) -> list[dict]:
    """``tempme-search INDEX ARGS --json``: its results."""
    capsys.readouterr()
    assert search_main([str(index), *args, '--json']) == 0
    return json.loads(capsys.readouterr().out)


def _same(served: list[dict], cli: list[dict]) -> None:
    """The same hits in the same order with the same scores (fp32 encodings of batches of other sizes may
    differ in the last bits)."""
    assert [(h['rank'], h['path'], h['start'], h['end'], h['duration'], h['moment']) for h in served] == [
        (h['rank'], h['path'], h['start'], h['end'], h['duration'], h['moment']) for h in cli
    ]
    assert [h['score'] for h in served] == pytest.approx([h['score'] for h in cli], abs=1e-5)


def _raw_get(url: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A GET whose path is sent exactly as written (no client normalizes ``..`` away)."""
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        conn.request('GET', path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _error(response) -> str:
    assert response.headers['content-type'].startswith('application/json'), response.text[:200]
    body = response.json()
    assert set(body) == {'error'} and body['error'], body
    assert 'Traceback' not in body['error']
    return body['error']


# ---- the same results as tempme-search ----------------------------------------------------------------------
def test_text_search_scores_equal_tempme_search(server, indexed, capsys):
    cli = _cli(capsys, indexed['index'], *QUERIES, '--top-k', '5')
    with server.client() as client:
        for query, expected in zip(QUERIES, cli, strict=True):
            got = client.get('/search', params={'q': query, 'k': 5})
            assert got.status_code == 200, got.text
            body = got.json()
            assert body['query'] == query and body['generation'] == 1
            _same(body['results'], expected['results'])
            for hit in body['results']:
                assert hit['thumbnail'] == f'/thumbnail/{hit["row"]}'
                start, end = (f'{x:.3f}'.rstrip('0').rstrip('.') for x in (hit['start'], hit['end']))
                assert hit['media'] == f'/media/{hit["row"]}#t={start},{end}'
        posted = client.post('/search', json={'queries': QUERIES, 'k': 5})
        assert posted.status_code == 200, posted.text
        assert posted.json()['generation'] == 1
        assert [q['query'] for q in posted.json()['queries']] == QUERIES
        for got, expected in zip(posted.json()['queries'], cli, strict=True):
            _same(got['results'], expected['results'])
    assert any(h['end'] - h['start'] < h['duration'] for q in cli for h in q['results'])  # moments, not files


def test_image_video_and_more_like_this_equal_tempme_search(server, indexed, capsys, tmp_path):
    picture = tmp_path / 'red.png'
    Image.new('RGB', (40, 30), (220, 40, 40)).save(picture)
    clip = indexed['videos'] / 'green.mp4'
    cli = _cli(
        capsys,
        indexed['index'],
        '--image',
        str(picture),
        '--video',
        str(clip),
        '--like',
        f'{indexed["videos"] / "long.mp4"}@4',
        '--top-k',
        '4',
    )
    with server.client() as client:
        image = client.post(
            '/search/image', files={'file': ('red.png', picture.read_bytes(), 'image/png')}, data={'k': '4'}
        )
        video = client.post(
            '/search/video?k=4', files={'file': ('green.mp4', clip.read_bytes(), 'video/mp4')}
        )
        for response in (image, video):
            assert response.status_code == 200, response.text
        assert image.json()['query'] == 'image: red.png' and video.json()['query'] == 'video: green.mp4'
        _same(image.json()['results'], cli[0]['results'])
        _same(video.json()['results'], cli[1]['results'])
        row = _row_of(client, 'long.mp4', 2.0)
        like = client.get(f'/similar/{row}', params={'k': 4})
        assert like.status_code == 200, like.text
        assert like.json()['query'] == cli[2]['query']
        _same(like.json()['results'], cli[2]['results'])
        assert like.json()['results'][0]['row'] == row and like.json()['results'][0][
            'score'
        ] == pytest.approx(1, abs=1e-5)
        assert 'row 999' in _error(client.get('/similar/999'))


def _row_of(client, name: str, start: float) -> int:
    """The index row of ``name``'s moment starting at ``start`` (asked of the service: "more like this" on each
    row names its own moment first)."""
    rows = client.get('/stats').json()['rows']
    for row in range(rows):
        top = client.get(f'/similar/{row}', params={'k': 1}).json()['results'][0]
        if top['path'].endswith('/' + name) and top['start'] == start:
            return row
    raise AssertionError(f'no row of {name} starts at {start}')


# ---- files by row ----------------------------------------------------------------------------------------------
def test_thumbnails_and_range_requests_on_the_media(server, indexed):
    with server.client() as client:
        hit = client.get('/search', params={'q': 'a red square', 'k': 10}).json()['results']
        long = next(h for h in hit if h['path'].endswith('/long.mp4'))
        thumb = client.get(long['thumbnail'])
        assert thumb.status_code == 200 and thumb.headers['content-type'] == 'image/jpeg'
        assert thumb.content[:2] == b'\xff\xd8'
        data = (indexed['videos'] / 'long.mp4').read_bytes()
        url = long['media'].split('#')[0]
        part = client.get(url, headers={'Range': 'bytes=100-599'})
        assert part.status_code == 206
        assert part.content == data[100:600]
        assert part.headers['content-range'] == f'bytes 100-599/{len(data)}'
        assert part.headers['content-type'] == 'video/mp4' and part.headers['accept-ranges'] == 'bytes'
        whole = client.get(url)
        assert whole.status_code == 200 and whole.content == data
        assert 'row 4000' in _error(client.get('/media/4000'))
        assert 'row 4000' in _error(client.get('/thumbnail/4000'))


def test_healthz_and_stats(server):
    with server.client() as client:
        assert client.get('/healthz').json() == {'status': 'ok'}
        stats = client.get('/stats').json()
        assert set(stats) == {
            'rows',
            'videos',
            'model_hash',
            'generation',
            'uptime_s',
            'queries_served',
            'batches',
            'mean_batch',
        }
        assert (
            stats['videos'] == 4 and stats['rows'] == 3 + 3 and stats['generation'] == 1
        )  # 3 windows + 3 clips
        assert len(stats['model_hash']) == 64 and stats['uptime_s'] > 0
        before = stats['queries_served']
        client.get('/search', params={'q': 'one more'})
        assert client.get('/stats').json()['queries_served'] == before + 1


# ---- micro-batching ------------------------------------------------------------------------------------------
def test_32_concurrent_queries_take_fewer_forwards_and_score_as_one_at_a_time(server):
    queries = [
        f'{colour} thing number {i}' for i, colour in enumerate(['red', 'green', 'blue', 'yellow'] * 8)
    ]
    with server.client() as client:
        alone = [client.get('/search', params={'q': q, 'k': 3}).json()['results'] for q in queries]
        before = client.get('/stats').json()
    start = threading.Barrier(len(queries))

    def ask(q: str) -> list[dict]:
        with server.client() as c:
            start.wait(timeout=30)
            response = c.get('/search', params={'q': q, 'k': 3})
            assert response.status_code == 200, response.text
            return response.json()['results']

    with ThreadPoolExecutor(len(queries)) as pool:
        together = list(pool.map(ask, queries))
    with server.client() as client:
        after = client.get('/stats').json()
    assert after['queries_served'] - before['queries_served'] == 32
    forwards = after['batches'] - before['batches']
    assert 1 <= forwards < 32, forwards
    for a, b in zip(alone, together, strict=True):
        _same(b, a)


# ---- limits and refusals -------------------------------------------------------------------------------------
def test_bad_requests_are_4xx_json_naming_the_field(server, tmp_path):
    with server.client() as client:
        cases = [
            (client.get('/search', params={'q': 'x' * 1001}), 400, 'q is 1001 characters'),
            (client.get('/search', params={'q': 'x', 'k': 1001}), 400, 'k=1001'),
            (client.get('/search', params={'q': 'x', 'k': 'ten'}), 400, 'k='),
            (client.get('/search'), 400, 'q is missing'),
            (client.get('/search', params={'q': '   '}), 400, 'q is empty'),
            (client.post('/search', json={'queries': ['x'] * 65}), 400, 'at most 64'),
            (client.post('/search', json={'queries': 'x'}), 400, 'queries'),
            (client.post('/search', json={'queries': ['x'], 'k': True}), 400, 'k is true'),
            (client.post('/search', json={'queries': [3]}), 400, 'queries[0]'),
            (
                client.post(
                    '/search', content=b'{"queries": ["x"', headers={'content-type': 'application/json'}
                ),
                400,
                'not valid JSON',
            ),
            (
                client.post('/search', content=b'\xff\xfe', headers={'content-type': 'application/json'}),
                400,
                'not valid JSON',
            ),
            (client.post('/search', content=b'[' + b' ' * (2 << 20) + b']'), 413, 'at most 1048576 bytes'),
            (
                client.post('/search/image', files={'file': ('notes.txt', b'hello', 'text/plain')}),
                415,
                'notes.txt',
            ),
            (
                client.post('/search/image', files={'file': ('fake.png', b'not a picture', 'image/png')}),
                400,
                "'fake.png': not a readable image",
            ),
            (
                client.post('/search/video', files={'file': ('fake.mp4', b'\x00' * 64, 'video/mp4')}),
                400,
                'fake.mp4',
            ),
            (client.post('/search/video', data={'k': '3'}), 400, 'file'),
            (
                client.post(
                    '/search/image', files={'file': ('big.png', b'\x00' * ((64 << 20) + 1), 'image/png')}
                ),
                413,
                'at most 67108864 bytes',
            ),
            (
                client.post('/search', content=iter([b' ' * (1 << 19)] * 3)),
                413,
                'at most 1048576 bytes',
            ),  # chunked
            (client.get('/similar/-1'), 404, 'ROW'),
            (client.delete('/search'), 405, 'not allowed'),
        ]
        for response, status, words in cases:
            assert response.status_code == status, (words, response.status_code, response.text[:300])
            assert words in _error(response), (words, response.text[:300])
        assert client.get('/healthz').status_code == 200  # and it still serves


def test_media_is_served_by_row_only(server, indexed):
    secret = indexed['root'] / 'secret.txt'
    secret.write_text('not for you')
    video = str(indexed['videos'] / 'long.mp4')
    paths = [
        '/media/../secret.txt',
        '/media/../../../etc/passwd',
        '/media/..%2f..%2fsecret.txt',
        '/media/%2e%2e/%2e%2e/secret.txt',
        '/media/%2e%2e',
        '/media/..',
        '/media/' + str(secret),
        '/media/' + urllib.parse.quote(str(secret), safe=''),
        '/media/' + video,
        '/media//etc/passwd',
        '/media/1%2f..%2f..%2fsecret.txt',
        '/media/0x1',
        '/media/+1',
        '/media/1.0',
        '/media/%31%2e',
        '/thumbnail/../index.json',
        '/thumbnail/%2e%2e%2findex.json',
        '/static/../../index.json',
        '/static/%2e%2e/%2e%2e/index.json',
    ]
    for path in paths:
        status, headers, body = _raw_get(server.url, path)
        assert status == 404, (path, status, body[:200])
        assert headers['content-type'].startswith('application/json') and b'error' in body, (path, body[:200])
        assert b'not for you' not in body and b'ftyp' not in body


def test_no_cors_unless_asked(server):
    with server.client() as client:
        response = client.get('/search', params={'q': 'x'}, headers={'Origin': ORIGIN})
        preflight = client.options(
            '/search', headers={'Origin': ORIGIN, 'Access-Control-Request-Method': 'POST'}
        )
    assert response.status_code == 200
    assert not any(h.lower().startswith('access-control-') for h in response.headers)
    assert not any(h.lower().startswith('access-control-') for h in preflight.headers)


def test_a_non_loopback_bind_without_a_token_is_refused(indexed, command):
    done = subprocess.run(
        command(indexed['index'], '--host', '0.0.0.0'), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and done.stdout == ''
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and '--token' in lines[0] and '0.0.0.0' in lines[0], done.stderr


def test_token_cors_and_sigterm_drains_a_request_in_flight(indexed, launch):
    guarded = launch(indexed['index'], '--token', TOKEN, '--cors', ORIGIN, '--max-wait-ms', '1000')
    try:
        with guarded.client() as client:
            assert client.get('/healthz').status_code == 200  # a health check carries no token
            assert 'no Authorization' in _error(client.get('/stats'))
            assert client.get('/stats').status_code == 401
            wrong = client.get('/stats', headers={'Authorization': 'Bearer ' + TOKEN[:-1] + 'X'})
            assert wrong.status_code == 401 and 'wrong token' in _error(wrong)
            assert client.get('/media/0').status_code == 401
            assert client.get('/search', params={'q': 'x'}).status_code == 401
            assert client.post('/search', json={'queries': ['x']}).status_code == 401
            # the page and its assets hold nothing of the index: they load, and the page asks for the token
            assert client.get('/').status_code == 200
        auth = {'Authorization': f'Bearer {TOKEN}'}
        with guarded.client(headers=auth) as client:
            assert client.get('/stats').status_code == 200
            allowed = client.get('/stats', headers={'Origin': ORIGIN})
            assert allowed.headers['access-control-allow-origin'] == ORIGIN
            other = client.get('/stats', headers={'Origin': 'http://elsewhere.example'})
            assert 'access-control-allow-origin' not in other.headers

        answer: dict = {}

        def slow() -> None:  # waits up to --max-wait-ms for a batch to fill before its forward
            with guarded.client(headers=auth) as c:
                answer['response'] = c.get('/search', params={'q': 'in flight', 'k': 3})

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.4)
        t0 = time.monotonic()
        assert guarded.stop(timeout=30) == 0, guarded.output()
        thread.join(30)
        assert answer['response'].status_code == 200 and answer['response'].json()['results']
        assert time.monotonic() - t0 < 20
        with pytest.raises(OSError):
            _raw_get(guarded.url, '/healthz')
    finally:
        if guarded.proc.poll() is None:
            guarded.proc.kill()
            guarded.proc.wait()


def test_a_search_over_its_time_limit_is_a_503_naming_the_limit(indexed, launch):
    slow = launch(indexed['index'], '--max-wait-ms', '1000', '--timeout', '0.3')
    try:
        with slow.client() as client:
            late = client.get('/search', params={'q': 'waits for a batch longer than it may'})
            assert late.status_code == 503 and '0.3 s (--timeout)' in _error(late)
            assert client.get('/healthz').status_code == 200
    finally:
        assert slow.stop() == 0, slow.output()


# ---- the indexed folder changes (these run last) ---------------------------------------------------------------
def test_a_new_generation_is_served_without_a_restart_under_load(server, indexed, reindex):
    write_video(indexed['videos'] / 'orange.mp4', seconds=3, colours=(ORANGE,))
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def load() -> None:
        with server.client() as client:
            while not stop.is_set():
                response = client.get('/search', params={'q': 'an orange ball', 'k': 10})
                seen.append((response.status_code, response.json().get('generation', -1)))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        reindex(indexed['export'], indexed['videos'], indexed['index'])  # commits generation 2
        deadline = time.monotonic() + 15
        while not (seen and seen[-1][1] == 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert seen and all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:5]
    generations = [g for _, g in seen]
    assert generations[0] == 1 and generations[-1] == 2 and set(generations) == {1, 2}
    with server.client() as client:
        stats = client.get('/stats').json()
        assert stats['generation'] == 2 and stats['videos'] == 5 and stats['rows'] == 7
        paths = [h['path'] for h in client.get('/search', params={'q': 'an orange ball'}).json()['results']]
    assert any(p.endswith('/orange.mp4') for p in paths)


def test_a_deleted_or_swapped_video_is_a_404_naming_its_row_and_search_goes_on(server, indexed):
    with server.client() as client:
        hits = client.get('/search', params={'q': 'a yellow light', 'k': 10}).json()['results']
        rows = {h['path'].rsplit('/', 1)[1]: h['row'] for h in hits}
        (indexed['videos'] / 'yellow.mp4').unlink()
        gone = client.get(f'/media/{rows["yellow.mp4"]}')
        assert gone.status_code == 404
        assert f'row {rows["yellow.mp4"]}' in _error(gone) and 'deleted' in _error(gone)
        # a symbolic link put in place of an indexed file, pointing outside the folder, is never followed
        purple = indexed['videos'] / 'purple.mp4'
        outside = indexed['root'] / 'outside.mp4'
        outside.write_bytes(purple.read_bytes())  # same size: only where it points differs
        purple.unlink()
        purple.symlink_to(outside)
        linked = client.get(f'/media/{rows["purple.mp4"]}')
        assert linked.status_code == 404 and 'outside the indexed folder' in _error(linked)
        again = client.get('/search', params={'q': 'a yellow light', 'k': 10})
        assert again.status_code == 200 and any(
            h['path'].endswith('/yellow.mp4') for h in again.json()['results']
        )
        assert client.get(f'/media/{rows["green.mp4"]}').status_code == 200
        assert client.get('/healthz').status_code == 200
