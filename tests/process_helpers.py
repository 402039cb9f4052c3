"""Launch scripts under Composer's launcher, and kill a launched training run at a chosen checkpoint (SIGKILL to
the launcher and every rank)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def composer_launcher(nproc: int, *args: str, logs: Path | None = None) -> list[str]:
    """``composer -n nproc ARGS`` as a command list, run with this interpreter (the venv under test); with
    ``logs``, every rank's stdout and stderr also go to ``logs/rank{rank}.out`` and ``.err``."""
    per_rank = ['--stdout', str(logs / 'rank{rank}.out'), '--stderr', str(logs / 'rank{rank}.err')] if logs else []
    return [sys.executable, '-m', 'composer.cli.launcher', '-n', str(nproc), *per_rank, *args]


def kill_when_latest_is(proc: subprocess.Popen, latest: Path, checkpoint: str, timeout: float) -> None:
    """Wait until ``latest`` (``latest-rank0.pt``) points at ``checkpoint``, then SIGKILL ``proc``'s session.

    ``proc`` must be started with ``start_new_session=True`` so its process group holds the launcher and ranks.
    """
    deadline = time.time() + timeout
    try:
        while not (latest.is_symlink() and os.readlink(latest) == checkpoint):
            if proc.poll() is not None:
                pytest.fail(f'the run ended before the {checkpoint} checkpoint:\n' + proc.stdout.read()[-4000:])
            assert time.time() < deadline
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
        proc.wait()
