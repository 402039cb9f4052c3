"""STOP under DDP: Cal_Net is trainable but gets no gradient (hard top-k mask), so the recipe must make DDP look
for unused parameters; otherwise the second step fails with DDP's 'did not receive grad' error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.multiprocess
def test_stop_trains_under_ddp_with_two_ranks(tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    cmd = [sys.executable, '-m', 'composer.cli.launcher', '-n', '2', '--stdout', str(tmp_path / 'rank{rank}.out'),
           '--stderr', str(tmp_path / 'rank{rank}.err'), str(REPO / 'recipes' / 'train.py'),
           str(REPO / 'yamls' / 'demo_stop.yaml'), f'output_dir={tmp_path / "run"}', f'data.demo.root={tmp_path / "data"}',
           'data.demo.num_train=16', 'data.demo.num_eval=8', 'batch_size=4', 'batch_size_val=8', 'epochs=1',
           'data.num_workers=0', 'freeze_clip=true']
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    logs = proc.stdout + proc.stderr + ''.join(p.read_text() for p in sorted(tmp_path.glob('rank*.*')))
    assert proc.returncode == 0, logs[-4000:]
    result = json.loads((tmp_path / 'run' / 'eval-demo.json').read_text())
    assert 't2v_R@1' in json.dumps(result)
    assert 'TemporalPrompt.Cal_Net.weight' in (tmp_path / 'run' / 'trainable_parameters.txt').read_text()
