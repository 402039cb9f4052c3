"""Contrastive loss: the formula, and global negatives under DDP (2 ranks × b == 1 rank × 2b)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tempme_composer.model.loss import symmetric_infonce

SCRIPT = Path(__file__).parents[1] / 'scripts' / 'loss_on_ranks.py'
sys.path.insert(0, str(SCRIPT.parent))
from loss_on_ranks import loss_and_grads  # noqa: E402
from process_helpers import composer_launcher  # noqa: E402


def test_symmetric_infonce_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    t = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    v = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    scale = torch.tensor(20.0)
    logits = scale * t @ v.T
    t2v = -torch.log_softmax(logits, dim=1).diag().mean()
    v2t = -torch.log_softmax(logits, dim=0).diag().mean()
    assert torch.allclose(symmetric_infonce(t, v, scale), (t2v + v2t) / 2)


def test_perfect_alignment_gives_low_loss_and_swaps_give_high_loss():
    v = torch.eye(4)
    assert symmetric_infonce(v, v, torch.tensor(100.0)) < 1e-6
    assert symmetric_infonce(v[[1, 0, 3, 2]], v, torch.tensor(100.0)) > 10


def _run(nproc: int, out: Path, global_batch: int) -> dict:
    """``loss_and_grads`` under ``composer -n nproc``: rank 0's result."""
    env = {**os.environ, 'PYTHONPATH': str(Path(__file__).resolve().parents[2])}
    cmd = composer_launcher(nproc, str(SCRIPT), str(out), str(global_batch))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out)


@pytest.mark.multiprocess
def test_two_ranks_match_one_rank_with_the_global_batch(tmp_path):
    single = loss_and_grads(6)  # one rank, in this process: the whole batch, no DDP wrapper
    double = _run(2, tmp_path / 'two.pt', 6)
    assert double['loss'] == pytest.approx(single['loss'], rel=1e-5)
    assert single['grads'].keys() == double['grads'].keys() and len(single['grads']) > 10
    for name, grad in single['grads'].items():
        torch.testing.assert_close(double['grads'][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # the gather's collectives (and everything else on the way) issue no warning of ours on this torch
    assert single['our_warnings'] == [] and double['our_warnings'] == []
