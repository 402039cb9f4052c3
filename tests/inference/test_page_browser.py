"""The results page in a real headless Chromium: it renders its cards and thumbnails, and each card's ``<video>``
starts at its moment's start and pauses at its end (W3C media fragments). Needs ``selenium`` (the ``dev`` extra)
and a Chromium with its chromedriver; skipped where either is missing."""

from __future__ import annotations

import importlib.util
import io
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from test_search_moments import moment_index
from video_fixtures import write_video

from tempme_composer.inference import load_exported
from tempme_composer.inference.search_cli import main as search_main


def _chromium() -> tuple[str, str] | None:
    browser = next((p for p in map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome')) if p), None)
    driver = shutil.which('chromedriver') or ('/usr/bin/chromedriver' if Path('/usr/bin/chromedriver').is_file() else None)
    return (browser, driver) if browser and driver else None


pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec('selenium') is None, reason='needs selenium (pip install selenium)'),
    pytest.mark.skipif(_chromium() is None, reason='needs chromium and chromedriver'),
]


def _webm(path: Path, seconds: int = 8, fps: int = 5) -> Path:
    """A VP9 WebM (every Chromium plays it, also builds without H.264): second s is grey level 30 s."""
    with av.open(str(path), 'w', format='webm') as container:
        stream = container.add_stream('libvpx-vp9', rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = 32, 24, 'yuv420p'
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 30 * (i // fps), np.uint8), format='rgb24')
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope='module')
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                '--autoplay-policy=no-user-gesture-required', '--window-size=1280,900'):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(chromedriver), options=options)
    chrome.set_script_timeout(30)
    yield chrome
    chrome.quit()


_LOAD = '''
const [src, done] = [arguments[0], arguments[arguments.length - 1]];
const v = [...document.querySelectorAll('video')].find(e => e.getAttribute('src') === src);
if (!v) { done({missing: true}); return; }
v.addEventListener('error', () => done({error: v.error ? v.error.code : -1}), {once: true});
v.addEventListener('loadedmetadata', () => done({start: v.currentTime, duration: v.duration}), {once: true});
v.preload = 'metadata';
v.load();
'''
_PLAY = '''
const [src, done] = [arguments[0], arguments[arguments.length - 1]];
const v = [...document.querySelectorAll('video')].find(e => e.getAttribute('src') === src);
v.muted = true;
v.addEventListener('pause', () => done({paused_at: v.currentTime}), {once: true});
v.play().catch(e => done({error: String(e)}));
'''


def test_the_page_renders_and_each_player_starts_at_its_moment(tiny_export, tmp_path, driver):
    from PIL import Image

    model = load_exported(tiny_export)
    videos = tmp_path / 'videos'
    write_video(videos / 'film.mp4', seconds=8, colours=((220, 40, 40), (40, 80, 230)))
    _webm(videos / 'scene.webm')
    index = moment_index(model, videos, tmp_path / 'index')
    page = tmp_path / 'page.html'
    assert search_main([str(index), 'a red square', '--per-video', '0', '--top-k', '10', '--html', str(page)]) == 0
    driver.get(page.as_uri())
    assert driver.title == 'Video search results'
    cards = driver.execute_script('return document.querySelectorAll(".hit").length')
    sources = driver.execute_script('return [...document.querySelectorAll("video")].map(v => v.getAttribute("src"))')
    assert cards == len(sources) == 6  # three 4 s windows (stride 2) of each 8 s video
    thumbs = driver.execute_script('return [...document.querySelectorAll(".th")].map('
                                   'e => [getComputedStyle(e).backgroundImage.slice(0, 27), e.offsetHeight])')
    assert all(image == 'url("data:image/jpeg;base64' and height > 10 for image, height in thumbs), thumbs
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert('L')
    assert np.asarray(shot).std() > 5  # something was drawn, not a blank page

    h264 = driver.execute_script('return document.createElement("video").canPlayType(\'video/mp4; codecs="avc1.42E01E"\')')
    playable = [s for s in sources if s.split('#')[0].endswith('.webm') or (h264 and s.split('#')[0].endswith('.mp4'))]
    assert any('.webm#t=' in s for s in playable)
    for src in playable:
        start, end = (float(x) for x in src.split('#t=')[1].split(','))
        loaded = driver.execute_async_script(_LOAD, src)
        assert 'error' not in loaded and 'missing' not in loaded, (src, loaded)
        assert loaded['start'] == pytest.approx(start, abs=0.05), (src, loaded)
        assert loaded['duration'] == pytest.approx(8.0, abs=0.3)
    # played, it pauses at the fragment's end
    src = next(s for s in playable if s.endswith('#t=2,6') and '.webm' in s)
    played = driver.execute_async_script(_PLAY, src)
    assert played.get('paused_at', 0) == pytest.approx(6.0, abs=0.35), played
