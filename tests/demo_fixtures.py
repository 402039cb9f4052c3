"""One small demo run trained per test session, for the tests that only need *a* trained run (and one
``composer -n 2`` run of it, for the tests that need the same run on two ranks).

Training the demo costs tens of seconds on a 2-core CPU; the tests that read a trained run folder, its
checkpoints or its numbers share this one instead of training their own. It is trained with the real Composer
Trainer through the recipe's own entry (``train(load_config(yamls/demo.yaml, overrides))``), like the tests
that test the training itself. Its folder is checked when the session ends: a test that changed it fails
then, naming the files; a test that needs to change a run copies it first (``shutil.copytree``).

tests/conftest.py registers the fixtures: take ``demo_run`` or ``ddp_demo_run`` as a test argument.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from folder_guard import check_unchanged, snapshot
from process_helpers import composer_launcher

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / 'yamls' / 'demo.yaml'


def small_demo(output_dir: Path, data_root: Path, *extra: str) -> list[str]:
    """Overrides that shrink the demo to seconds: 24 train / 12 eval videos, 3 batches of 8 per epoch, 2 epochs."""
    return [
        f'output_dir={output_dir}',
        f'data.demo.root={data_root}',
        'data.demo.num_train=24',
        'data.demo.num_eval=12',
        'epochs=2',
        'batch_size=8',
        'batch_size_val=6',
        'data.num_workers=0',
        'n_display=1',
        *extra,
    ]


@dataclass(frozen=True)
class DemoRun:
    """A finished ``small_demo`` run: treat every path as read-only."""

    run: Path  # output_dir: config.yaml, checkpoints/{latest-rank0,best}.pt, best.json, tensorboard/, eval-demo.json
    data: Path  # data.demo.root: videos/{train,eval} and the MDS splits mds/{train,eval}
    results: dict[str, float] = field(
        default_factory=dict
    )  # the last evaluation, as RetrievalLogger reported it
    step_lines: tuple[str, ...] = ()  # the recipe's per-step lines ('Epoch: e/E, Step: s/S, ..., Loss: ...')

    def overrides(self, output_dir: Path, *extra: str) -> list[str]:
        """``small_demo`` overrides for another run on this run's data (reused, never generated again)."""
        return small_demo(output_dir, self.data, *extra)


class RecordedLines(logging.Handler):
    """Keeps the message of every record (the stdout lines without their time and rank prefix)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory) -> Iterator[Path]:
    """The ``small_demo`` dataset (24 train / 12 eval videos, seed 0), generated once for the session: its root
    (``data.demo.root``). Checked unchanged at the end."""
    from tempme_composer.data.synthetic import generate_demo_dataset

    root = tmp_path_factory.mktemp('demo_data') / 'data'
    generate_demo_dataset(root, num_train=24, num_eval=12, seed=0)
    before = snapshot(root)
    yield root
    check_unchanged(root, before, 'demo dataset')


@pytest.fixture(scope='session')
def demo_run(tmp_path_factory, demo_data: Path) -> Iterator[DemoRun]:
    """The demo trained once for the session (2 epochs on ``demo_data``); checked unchanged at the end."""
    from tempme_composer.callbacks import RetrievalLogger
    from tempme_composer.config import load_config
    from tempme_composer.train import train

    root = tmp_path_factory.mktemp('demo_run')
    lines = RecordedLines()
    # train() replaces the handlers of the package logger, not those of the callback's own logger.
    step_log = logging.getLogger('tempme_composer.callbacks.train_log_line')
    step_log.addHandler(lines)
    try:
        trainer = train(load_config(DEMO, small_demo(root / 'run', demo_data)))
    finally:
        step_log.removeHandler(lines)
    try:
        (logger,) = [cb for cb in trainer.state.callbacks if isinstance(cb, RetrievalLogger)]
        shared = DemoRun(
            run=root / 'run',
            data=demo_data,
            results=dict(logger.last_results['demo']),
            step_lines=tuple(lines.messages),
        )
    finally:
        trainer.close()
    before = snapshot(shared.run)
    yield shared
    check_unchanged(shared.run, before, 'demo run')


def ddp_demo(output_dir: Path, data_root: Path, *extra: str) -> list[str]:
    """``small_demo`` as a resumable run: a run name (autoresume needs one), a checkpoint every 2 batches (two of
    them inside epoch 2, where the kill/resume tests stop a run), autoresume on."""
    return small_demo(output_dir, data_root, 'run_name=ddp', 'save_interval=2ba', 'autoresume=true', *extra)


def launch_demo(logs: Path, nproc: int, overrides: list[str], **popen) -> subprocess.Popen:
    """``composer -n nproc recipes/train.py yamls/demo.yaml overrides``, its stdout (local rank 0) piped; every
    rank's output also goes to ``logs/rank{rank}.out`` and ``.err``."""
    logs.mkdir(parents=True, exist_ok=True)
    cmd = composer_launcher(nproc, str(REPO / 'recipes' / 'train.py'), str(DEMO), *overrides, logs=logs)
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def finish(proc: subprocess.Popen, logs: Path, timeout: float = 400) -> str:
    """Wait for a ``launch_demo`` run; fail with the tail of every rank's log unless it exits 0. Its stdout."""
    out, _ = proc.communicate(timeout=timeout)
    text = out + ''.join(p.read_text() for p in sorted(logs.glob('rank*.*')))
    assert proc.returncode == 0, text[-4000:]
    return out


def resolved_config(run: Path, *ignored: str) -> dict:
    """A run's resolved config (its config.yaml) as plain data, less the dotted keys ``ignored`` (the paths in
    which two runs of one command line differ): equal results mean the runs were configured alike."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(run / 'config.yaml'))
    for key in ignored:
        *parents, last = key.split('.')
        node = config
        for part in parents:
            node = node[part]
        del node[last]
    return config


@dataclass(frozen=True)
class DdpDemoRun:
    """A finished ``ddp_demo`` run on 2 ranks (2 epochs on ``demo_data``): treat every path as read-only."""

    run: Path  # output_dir: config.yaml, checkpoints/{latest-rank0,best,ep1-ba4-rank0,...}.pt, best.json
    logs: Path  # rank0.out, rank0.err, rank1.out, rank1.err (what each rank printed)
    stdout: str  # what the launcher printed (local rank 0's lines)


@pytest.fixture(scope='session')
def ddp_demo_run(tmp_path_factory, demo_data: Path) -> Iterator[DdpDemoRun]:
    """The uninterrupted ``composer -n 2`` demo run, launched once for the session: the 2-rank end-to-end test,
    the 2-ranks-like-1-rank test and the kill/resume references (local and remote data) all need exactly this
    run. Checked unchanged at the end."""
    root = tmp_path_factory.mktemp('ddp_demo_run')
    logs = root / 'logs'
    stdout = finish(launch_demo(logs, 2, ddp_demo(root / 'run', demo_data)), logs)
    shared = DdpDemoRun(run=root / 'run', logs=logs, stdout=stdout)
    before = snapshot(root)
    yield shared
    check_unchanged(root, before, 'two-rank demo run')
