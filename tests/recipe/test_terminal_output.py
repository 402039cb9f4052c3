"""On a terminal, the recipe's log lines never start inside one of Composer's progress bars, and the training
line and the bar above it name the same epoch (both count from 0)."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from tqdm import tqdm

from tempme_composer.recipe.terminal import TqdmWriteHandler

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / 'yamls' / 'demo.yaml'
ANSI = re.compile(r'\x1b\[[0-9;?]*[A-Za-z]')
LOG_START = re.compile(r'^\d\d:\d\d:\d\d rank0 tempme_composer')
TRAIN_BAR = re.compile(r'^train\s+Epoch\s+(\d+):')
LOG_EPOCH = re.compile(r'Epoch: (\d+) \(of (\d+)\), Step: ')


def _run_on_a_terminal(args: list[str], cwd: Path) -> str:
    """Run ``args`` with stdout and stderr on one pseudo-terminal, as a user sees them; return what it showed."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 160, 0, 0))  # a 0x0 terminal shows no bar
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'COLUMNS': '160'}
    process = subprocess.Popen(args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=child, stderr=child, env=env)
    os.close(child)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    assert process.wait(timeout=600) == 0, shown.decode(errors='replace')[-3000:]
    return shown.decode(errors='replace')


def _segments(shown: str) -> list[str]:
    """What each carriage return or newline starts, escapes removed: a bar redraw, a log line, ..."""
    return [
        ANSI.sub('', part) for line in shown.replace('\r\n', '\n').split('\n') for part in line.split('\r')
    ]


def test_a_log_record_clears_the_bar_and_redraws_it(tmp_path):
    stream = io.StringIO()
    handler = TqdmWriteHandler(stream)
    handler.setFormatter(logging.Formatter('%(message)s'))
    record = logging.LogRecord('tempme_composer', logging.INFO, __file__, 1, 'a line', None, None)
    with tqdm(total=4, file=stream, desc='train', mininterval=0) as bar:
        bar.update(1)
        drawn = stream.tell()
        handler.emit(record)
    after = stream.getvalue()[drawn:]
    # Bars other tests left open in this process move ours down a few lines (cursor moves), so look at the
    # order of what is written, not at the first byte.
    before, found, rest = after.partition('a line\n')
    assert found
    assert re.search(r'\r {10,}\r', before)  # the bar's line is blanked first...
    assert 'train' in rest  # ...and the bar redrawn after the line


@pytest.mark.e2e
def test_log_lines_never_start_inside_a_progress_bar_and_epochs_agree(tmp_path):
    shown = _run_on_a_terminal(
        [
            sys.executable,
            str(REPO / 'recipes' / 'train.py'),
            str(DEMO),
            f'output_dir={tmp_path / "run"}',
            f'data.demo.root={tmp_path / "demo"}',
            'data.demo.num_train=24',
            'data.demo.num_eval=12',
            'epochs=2',
            'batch_size=8',
            'batch_size_val=6',
            'data.num_workers=0',
            'n_display=1',
            'loggers.tensorboard=null',
        ],
        cwd=tmp_path,
    )
    segments = _segments(shown)
    logs = [s for s in segments if 'rank0 tempme_composer' in s]
    assert logs, shown[-2000:]
    for segment in logs:
        assert LOG_START.match(segment), f'a log line starts inside another line: {segment!r}'
    epochs_seen = []
    bar_epoch = None
    for segment in segments:
        bar = TRAIN_BAR.match(segment.strip())
        if bar:
            bar_epoch = int(bar.group(1))
        line = LOG_EPOCH.search(segment)
        if line:
            assert bar_epoch is not None, 'a training line before any progress bar'
            assert int(line.group(1)) == bar_epoch, f'{segment!r} under the bar of epoch {bar_epoch}'
            assert int(line.group(2)) == 2
            epochs_seen.append(bar_epoch)
    assert sorted(set(epochs_seen)) == [0, 1]  # both epochs trained, each with its training lines
