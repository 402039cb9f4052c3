"""A tiny indexed folder and ``tempme-serve`` started on it as a real process on an ephemeral loopback port.

``served`` builds one folder of videos (an 8 s video red then blue, three 3 s clips) and indexes it with
``tempme-index --window 4`` (moments) from the session's tiny export; `start_server` launches
``python -m tempme_composer.serve`` on ``--port 0`` and reads the ``serving ... on http://HOST:PORT`` line.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from video_fixtures import write_video

from tempme_composer.inference.index import main as index_main

REPO = Path(__file__).resolve().parents[2]
RED, GREEN, BLUE, YELLOW, PURPLE = (
    (220, 40, 40),
    (40, 190, 60),
    (40, 80, 230),
    (235, 215, 40),
    (150, 50, 210),
)
LINE = re.compile(r'serving (.+) on (http://127\.0\.0\.1:(\d+))')
START_TIMEOUT = 60.0


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    index: Path

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status (SIGKILL after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def output(self) -> str:
        """What the process wrote to stderr (once it has ended)."""
        return self.proc.stderr.read() if self.proc.stderr else ''


def serve_command(index: Path, *args: str) -> list[str]:
    return [sys.executable, '-m', 'tempme_composer.serve', str(index), '--port', '0', *args]


def start_server(index: Path, *args: str) -> Server:
    """``tempme-serve INDEX --port 0 ARGS`` on loopback, once it has printed its address."""
    env = {
        **os.environ,
        'PYTHONPATH': str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''),
        'OMP_NUM_THREADS': '1',
    }
    proc = subprocess.Popen(
        serve_command(index, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT
    line = ''
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = proc.stdout.readline()
            if line:
                break
        if proc.poll() is not None:
            break
    selector.close()
    m = LINE.fullmatch(line.strip())
    if m is None:
        proc.kill()
        proc.wait()
        pytest.fail(
            f'tempme-serve did not print its address (rc {proc.returncode}): {line!r}\n{proc.stderr.read()[-3000:]}'
        )
    assert m.group(1) == str(index)
    return Server(proc, m.group(2), index)


def index_folder(export: Path, videos: Path, out: Path) -> None:
    assert (
        index_main(
            [
                '--model',
                str(export),
                '--videos',
                str(videos),
                '--out',
                str(out),
                '--window',
                '4',
                '--stride',
                '2',
                '--workers',
                '1',
                '--dtype',
                'float32',
                '--no-progress',
            ]
        )
        == 0
    )


@pytest.fixture(scope='module')
def indexed(tmp_path_factory, tiny_export) -> dict:
    """A folder of four videos and its moment index (this module's own: tests may change both)."""
    root = tmp_path_factory.mktemp('serve')
    videos = root / 'videos'
    write_video(videos / 'long.mp4', seconds=8, colours=(RED,) * 4 + (BLUE,) * 4)
    for name, colour in (('green', GREEN), ('yellow', YELLOW), ('purple', PURPLE)):
        write_video(videos / f'{name}.mp4', seconds=3, colours=(colour,))
    index_folder(tiny_export, videos, root / 'index')
    return {'root': root, 'videos': videos, 'index': root / 'index', 'export': tiny_export}


@pytest.fixture(scope='module')
def server(indexed) -> Iterator[Server]:
    """``tempme-serve`` on the module's index with the default batching."""
    s = start_server(indexed['index'])
    yield s
    assert s.stop() == 0, s.output()


@pytest.fixture(scope='module')
def launch():
    """`start_server`, for a test that needs a server of its own flags."""
    return start_server


@pytest.fixture(scope='module')
def reindex():
    """`index_folder`: ``tempme-index`` run again on a folder (commits its next generation)."""
    return index_folder


@pytest.fixture(scope='module')
def command():
    """`serve_command`: the ``tempme-serve`` command line."""
    return serve_command
