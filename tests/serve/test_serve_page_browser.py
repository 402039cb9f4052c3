"""The page of ``tempme-serve`` in a real headless Chromium, against the real server on an ephemeral
loopback port: a typed query gives the API's cards (rank, score, path, time range), a file name that looks
like HTML is shown as text and runs nothing, a clicked card plays its moment in the page's player, "more like
this" searches from a card, and an error of the API is shown as a message. Needs ``selenium`` (the ``dev``
extra) and a Chromium with its chromedriver; skipped where either is missing."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from tempme_composer.inference.index import main as index_main
from tempme_composer.inference.search import clock

REPO = Path(__file__).resolve().parents[2]
#: A file name that runs a script if a page ever parses it as HTML.
HOSTILE = '<img src=x onerror=alert(1)>.webm'
QUERY = 'a red square'


def _chromium() -> tuple[str, str] | None:
    browser = next(
        (p for p in map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome')) if p), None
    )
    driver = shutil.which('chromedriver') or (
        '/usr/bin/chromedriver' if Path('/usr/bin/chromedriver').is_file() else None
    )
    return (browser, driver) if browser and driver else None


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        importlib.util.find_spec('selenium') is None, reason='needs selenium (pip install selenium)'
    ),
    pytest.mark.skipif(_chromium() is None, reason='needs chromium and chromedriver'),
]


def _webm(path: Path, seconds: int, colours: tuple[tuple[int, int, int], ...], fps: int = 5) -> None:
    """A VP9 WebM (every Chromium plays it, also builds without H.264): second s is ``colours[s % len]``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), 'w', format='webm') as container:
        stream = container.add_stream('libvpx-vp9', rate=Fraction(fps), options={'threads': '1'})
        stream.width, stream.height, stream.pix_fmt = 64, 48, 'yuv420p'
        for i in range(seconds * fps):
            rgb = np.full((48, 64, 3), colours[(i // fps) % len(colours)], np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope='module')
def indexed(tmp_path_factory, tiny_export) -> dict:
    """A folder of three videos (one named like HTML; one of 61 s, which gives two moments to a search, so at
    least one starts after 0 s) and its moment index."""
    root = tmp_path_factory.mktemp('serve_page')
    videos = root / 'videos'
    _webm(videos / HOSTILE, 8, ((40, 190, 60), (235, 215, 40)))
    _webm(videos / 'red then blue.webm', 8, ((220, 40, 40),) * 4 + ((40, 80, 230),) * 4)
    _webm(videos / 'long take.webm', 61, tuple((4 * s, 120, 240 - 3 * s) for s in range(61)))  # no two alike
    index = root / 'index'
    source = ['--model', str(tiny_export), '--videos', str(videos), '--out', str(index)]
    flags = '--window 4 --stride 2 --workers 1 --dtype float32 --no-progress'.split()
    assert index_main([*source, *flags]) == 0
    return {'root': root, 'videos': videos, 'index': index}


@contextlib.contextmanager
def serving(index: Path, log: Path, *args: str) -> Iterator[str]:
    """``tempme-serve INDEX --port 0 ARGS`` running: its URL, read from the line it prints once listening.
    Stopped with SIGTERM after, which it answers with exit status 0."""
    env = {
        **os.environ,
        'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
        'OMP_NUM_THREADS': '1',
    }
    command = [sys.executable, '-m', 'tempme_composer.serve', str(index), '--port', '0', *args]
    with open(log, 'w') as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=REPO)
    try:
        line = ''
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 45
            while not line and proc.poll() is None and time.monotonic() < deadline:
                if sel.select(timeout=0.5):
                    line = proc.stdout.readline()
        m = re.fullmatch(r'serving .+ on (http://127\.0\.0\.1:\d+)', line.strip())
        assert m, f'tempme-serve did not print its address: {line!r}\n{log.read_text()[-3000:]}'
        yield m.group(1)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == 0, log.read_text()[-3000:]


@pytest.fixture(scope='module')
def server(indexed) -> Iterator[dict]:
    """``tempme-serve`` on the module's index, as a team on one machine runs it (loopback, no token)."""
    with serving(indexed['index'], indexed['root'] / 'server.log') as url:
        yield {**indexed, 'url': url}


@pytest.fixture(scope='module')
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        '--headless=new',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-dev-shm-usage',
        '--autoplay-policy=no-user-gesture-required',
        '--window-size=1280,900',
    ):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(chromedriver), options=options)
    # every alert() (the hostile name's payload, or a page showing errors in a dialog) is recorded
    chrome.execute_cdp_cmd(
        'Page.addScriptToEvaluateOnNewDocument',
        {
            'source': (
                'window.__alerts = []; for (const f of ["alert", "confirm", "prompt"]) '
                'window[f] = (m) => { window.__alerts.push(f + ": " + m); };'
            )
        },
    )
    chrome.set_script_timeout(20)
    yield chrome
    chrome.quit()


def _wait(driver, script: str, *args, timeout: float = 15.0):
    """The first truthy value of ``script`` within ``timeout`` seconds."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.execute_script(script, *args)
    )


_CARDS = """
const title = document.getElementById('results-title').textContent;
const cards = [...document.querySelectorAll('#hits .hit')];
if (!cards.length || (arguments[0] && !title.startsWith(arguments[0]))) return null;
return {title, cards: cards.map(c => ({row: Number(c.dataset.row), media: c.dataset.media,
  rank: c.querySelector('.rank').textContent, score: c.querySelector('.score').textContent,
  path: c.querySelector('.path').textContent, span: c.querySelector('.span').textContent}))};
"""


def shown_span(hit: dict) -> str:
    """A moment's time range as the page shows it (as the static page does, ``search.clock``)."""
    return f'{clock(hit["start"])}–{clock(hit["end"])}'


def test_the_page_searches_plays_a_moment_and_shows_errors(server, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url = server['url']
    t0 = time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as api:
        expected = api.get('/search', params={'q': QUERY, 'k': 10}).json()['results']
        bad_k = api.get('/search', params={'q': QUERY, 'k': 0})
        rows = api.get('/stats').json()['rows']
    assert bad_k.status_code == 400 and bad_k.json()['error']
    assert len(expected) == 4  # one moment of each 8 s video, two of the 61 s one

    driver.get(url + '/')
    assert driver.title == 'Video search'
    stats = _wait(
        driver, 'const t = document.getElementById("stats").textContent; return t.includes("videos") && t'
    )
    assert stats.startswith(f'{rows} moments of 3 videos · model ') and 'generation 1' in stats, stats

    # a query typed and Enter pressed: the API's results as cards, in its order, with its scores
    box = driver.find_element(By.ID, 'q')
    box.send_keys(QUERY, Keys.ENTER)
    shown = _wait(driver, _CARDS, '“')
    assert shown['title'] == f'“{QUERY}”'
    assert [c['row'] for c in shown['cards']] == [h['row'] for h in expected]
    assert [c['score'] for c in shown['cards']] == [f'{h["score"]:.4f}' for h in expected]
    assert [c['rank'] for c in shown['cards']] == [f'#{h["rank"]}' for h in expected]
    assert [c['span'] for c in shown['cards']] == [shown_span(h) for h in expected]
    assert [c['media'] for c in shown['cards']] == [url + h['media'] for h in expected]
    thumbs = _wait(
        driver,
        'const t = [...document.querySelectorAll("#hits img.th")]; '
        'return t.length && t.every(i => i.complete && i.naturalWidth > 0) && t.length',
    )
    assert thumbs == len(expected)

    # the HTML-looking file name is text: shown literally, no element made from it, no script ran
    hostile = str(server['videos'] / HOSTILE)
    assert hostile in [c['path'] for c in shown['cards']]
    assert (
        driver.execute_script('return document.querySelectorAll("img[onerror], img[src=\'x\']").length') == 0
    )
    assert driver.execute_script('return window.__alerts') == []

    # a clicked card plays its moment in the page: the player's source is that row's media URL with the
    # fragment, it plays, from the moment's start
    hit = max(expected, key=lambda h: h['start'])
    assert hit['start'] > 0
    driver.find_element(By.CSS_SELECTOR, f'#hits .hit[data-row="{hit["row"]}"] .meta').click()
    playing = _wait(
        driver,
        """
        const v = document.getElementById('video');
        return !v.paused && v.currentTime > 0 && v.readyState >= 2 &&
               {src: v.currentSrc, time: v.currentTime, hidden: document.getElementById('player').hidden};""",
    )
    assert playing['src'] == url + hit['media'], playing
    assert hit['start'] - 0.05 <= playing['time'] <= hit['end'] + 0.5, (playing, hit)
    assert not playing['hidden']
    assert (
        driver.find_element(By.ID, 'now-playing').text
        == f'#{hit["rank"]} · {hit["path"]} · {shown_span(hit)}'
    )

    # Enter on another focused card plays that one
    other = next(h for h in expected if h['row'] != hit['row'])
    card = driver.find_element(By.CSS_SELECTOR, f'#hits .hit[data-row="{other["row"]}"]')
    driver.execute_script('arguments[0].focus()', card)
    card.send_keys(Keys.ENTER)
    assert _wait(
        driver,
        'const v = document.getElementById("video"); return v.currentSrc === arguments[0] && '
        '!v.paused && v.currentTime >= arguments[1] - 0.05',
        url + other['media'],
        other['start'],
    )

    # "more like this": the API's /similar/ROW as cards, the moment itself first
    driver.find_element(By.CSS_SELECTOR, f'#hits .hit[data-row="{hit["row"]}"] button.like').click()
    similar = _wait(driver, _CARDS, 'More like')
    with httpx.Client(base_url=url, timeout=30) as api:
        like = api.get(f'/similar/{hit["row"]}', params={'k': 10}).json()['results']
    assert [c['row'] for c in similar['cards']] == [h['row'] for h in like]
    assert similar['cards'][0]['row'] == hit['row']

    # a bad k from the k field: the API's error as a message in the page, not a dialog
    k = driver.find_element(By.ID, 'k')
    k.clear()
    k.send_keys('0', Keys.ENTER)
    message = _wait(driver, 'const e = document.getElementById("error"); return !e.hidden && e.textContent')
    assert message == bad_k.json()['error']

    # a video deleted since indexing: its card says why it does not play (the server's 404 for its row)
    gone = next(h for h in like if h['path'].endswith('red then blue.webm'))
    moved = server['root'] / 'moved.webm'
    Path(gone['path']).rename(moved)
    try:
        with httpx.Client(base_url=url, timeout=30) as api:
            missing = api.get(f'/media/{gone["row"]}')
        assert missing.status_code == 404
        driver.find_element(By.CSS_SELECTOR, f'#hits .hit[data-row="{gone["row"]}"] .meta').click()
        note = _wait(driver, 'return document.getElementById("player-note").textContent')
    finally:
        moved.rename(gone['path'])
    assert note == missing.json()['error']
    assert driver.execute_script('return window.__alerts') == []
    assert time.monotonic() - t0 < 60


def test_with_a_token_the_page_asks_for_it_and_sends_it(indexed, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    token = 'page-test-token'
    t0 = time.monotonic()
    with serving(indexed['index'], indexed['root'] / 'token-server.log', '--token', token) as url:
        with httpx.Client(base_url=url, timeout=30) as api:
            refused = api.get('/stats', headers={'Authorization': 'Bearer not-it'})
            expected = api.get('/search', params={'q': QUERY}, headers={'Authorization': f'Bearer {token}'})
        assert refused.status_code == 401 and expected.status_code == 200

        # the page itself loads; its first call is refused, so it asks for the token (focused)
        driver.get(url + '/')
        assert _wait(
            driver,
            'const f = document.getElementById("token-form"); return !f.hidden && '
            'document.activeElement === document.getElementById("token")',
        )
        field = driver.find_element(By.ID, 'token')
        field.send_keys('not-it', Keys.ENTER)
        message = _wait(
            driver, 'const e = document.getElementById("error"); return !e.hidden && e.textContent'
        )
        assert message == refused.json()['error']
        assert driver.execute_script('return sessionStorage.length') == 0  # a refused token is not kept

        field.send_keys(token, Keys.ENTER)
        assert _wait(
            driver,
            'return document.getElementById("token-form").hidden && '
            'document.getElementById("stats").textContent.includes("videos")',
        )
        assert driver.execute_script('return Object.values(sessionStorage)') == [token]

        # searches, thumbnails and the player all carry it (images and videos through blob: URLs)
        driver.find_element(By.ID, 'q').send_keys(QUERY, Keys.ENTER)
        shown = _wait(driver, _CARDS, '“')
        hits = expected.json()['results']
        assert [c['row'] for c in shown['cards']] == [h['row'] for h in hits]
        assert _wait(
            driver,
            'const t = [...document.querySelectorAll("#hits img.th")]; return t.length && '
            't.every(i => i.complete && i.naturalWidth > 0 && i.src.startsWith("blob:"))',
        )
        hit = max(hits, key=lambda h: h['start'])
        driver.find_element(By.CSS_SELECTOR, f'#hits .hit[data-row="{hit["row"]}"] .meta').click()
        playing = _wait(
            driver,
            """
            const v = document.getElementById('video');
            return !v.paused && v.currentTime > 0 && {src: v.currentSrc, time: v.currentTime};""",
        )
        assert playing['src'].startswith('blob:') and playing['src'].endswith(
            hit['media'][hit['media'].index('#') :]
        )
        assert hit['start'] - 0.05 <= playing['time'] <= hit['end'] + 0.5, (playing, hit)
        assert driver.execute_script('return window.__alerts') == []
    assert time.monotonic() - t0 < 60
