"""The inference-only install (``pip install tempme-composer``, no extras; docs/installs.md#inference-only).

Skipped where Composer is installed; `.ci/run` builds the inference-only environment and runs this module
there with ``TEMPME_INFERENCE_ONLY=1`` (which turns the skip off) and ``--noconftest`` (the shared fixtures
need the training stack). It checks that Composer, streaming, omegaconf and torchmetrics are not installed,
that a run folder goes through ``tempme-export`` -> ``tempme-index`` -> ``tempme-search`` -> ``tempme-serve``
(one real HTTP query on loopback) as installed console scripts, and that the commands needing streaming name
the extra in one line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from clip_fixtures import tiny_clip
from video_fixtures import write_video

from tempme_composer.extras import EXTRA_OF_MODULE
from tempme_composer.inference.run_config import read_run_config
from tempme_composer.model import UnifiedModel

TRAINING_STACK = ('composer', 'streaming', 'omegaconf', 'torchmetrics')
#: Set by `.ci/run` in the inference-only environment: there the module runs, never skips.
EXPECTED = os.environ.get('TEMPME_INFERENCE_ONLY') == '1'
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec('composer') is not None and not EXPECTED,
    reason='the training stack is installed: this module checks the inference-only install',
)
FRAMES = 4
COLOURS = {'red': (220, 40, 40), 'green': (40, 190, 60), 'blue': (40, 80, 230)}
SERVING = re.compile(r'serving (.+) on (http://127\.0\.0\.1:\d+)')


def _script(name: str) -> str:
    """The console script installed next to this interpreter (the install under test, not one on PATH)."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f'{name} is not installed next to {sys.executable}'
    return str(path)


def _run(*command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd, env=env, check=False)


def _run_folder(root: Path) -> Path:
    """A run folder as training leaves it (config.yaml, checkpoints/best.pt in Composer's layout), written with
    plain YAML and ``torch.save``: nothing of the training stack."""
    run = root / 'run'
    (run / 'checkpoints').mkdir(parents=True)
    raw = {
        'output_dir': str(run),
        'model': {'clip': {'checkpoint': None, 'preset': 'tiny'}},
        'data': {
            'datatype': 'msrvtt',
            'max_frames': FRAMES,
            'max_words': 16,
            'eval': {'local': str(root / 'data'), 'split': 'test'},
        },
    }
    (run / 'config.yaml').write_text(yaml.safe_dump(raw))
    cfg = read_run_config(run / 'config.yaml')
    model = UnifiedModel.from_config(tiny_clip(seed=1), cfg.model, num_frames=cfg.data.max_frames)
    state = {'state': {'model': {f'model.{k}': v for k, v in model.state_dict().items()}}, 'rng': None}
    torch.save(state, run / 'checkpoints' / 'best.pt')
    return run


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if selector.select(timeout=0.5):
                return proc.stdout.readline()
        return ''
    finally:
        selector.close()


@pytest.mark.parametrize('module', TRAINING_STACK)
def test_the_training_stack_is_absent(module):
    assert importlib.util.find_spec(module) is None, (
        f'{module} is installed in the inference-only environment'
    )


def test_export_index_search_serve_end_to_end(tmp_path):
    run = _run_folder(tmp_path)
    export = tmp_path / 'export'
    done = _run(
        _script('tempme-export'), str(run / 'checkpoints' / 'best.pt'), '--out', str(export), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((export / 'config.json').read_text())
    assert config['weights']['contents'] == 'full'  # a random-init run: every tensor exported

    videos = tmp_path / 'videos'
    for name, colour in COLOURS.items():
        write_video(videos / f'{name}.mp4', seconds=2, colours=(colour,))
    index = tmp_path / 'index'
    done = _run(
        _script('tempme-index'),
        '--model',
        str(export),
        '--videos',
        str(videos),
        '--out',
        str(index),
        '--workers',
        '1',
        '--dtype',
        'float32',
        '--no-progress',
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    done = _run(_script('tempme-search'), str(index), 'a red square', '--top-k', '3', '--json', cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    names = {Path(hit['path']).name for query in found for hit in query['results']}
    assert names == {f'{name}.mp4' for name in COLOURS}, found

    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    proc = subprocess.Popen(
        [_script('tempme-serve'), str(index), '--port', '0'],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        line = _first_line(proc, timeout=120)
        m = SERVING.fullmatch(line.strip())
        assert m, f'tempme-serve did not print its address: {line!r}'
        url = f'{m.group(2)}/search?' + urllib.parse.urlencode({'q': 'a blue square', 'k': 2})
        with urllib.request.urlopen(url, timeout=60) as response:
            assert response.status == 200
            answer = json.loads(response.read())
        assert len(answer['results']) == 2, answer
        assert {Path(hit['path']).name for hit in answer['results']} <= {f'{name}.mp4' for name in COLOURS}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()[-3000:]


@pytest.mark.parametrize(
    'command',
    [
        ('tempme-convert', 'msrvtt', '--annotations', '{tmp}', '--videos', '{tmp}', '--out', '{tmp}/out'),
        ('tempme-index', '--model', '{tmp}', '--mds', '{tmp}', '--out', '{tmp}/index'),
        ('tempme-export', 's3://bucket/run/checkpoints/best.pt', '--out', '{tmp}/export'),
    ],
    ids=['convert', 'index-mds', 'export-remote'],
)
def test_a_command_needing_streaming_names_the_extra(tmp_path, command):
    done = _run(_script(command[0]), *(part.format(tmp=tmp_path) for part in command[1:]), cwd=tmp_path)
    dist, extra = EXTRA_OF_MODULE['streaming']
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f'{command[0]}: ')
    assert lines[0].endswith(
        f"needs {dist}, which this install lacks: pip install 'tempme-composer[{extra}]'"
    )
    assert 'Traceback' not in done.stderr
    # No Composer launcher either.
    assert shutil.which('composer', path=str(Path(sys.executable).parent)) is None
