"""Kill and resume under DDP: a `composer -n 2` run SIGKILLed mid-epoch and autoresumed ends with the weights,
the best-R@1 checkpoint and the BestCheckpoint state of the uninterrupted 2-rank run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from process_helpers import kill_when_latest_is

from tempme_composer.data.synthetic import generate_demo_dataset

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / 'yamls' / 'demo.yaml'


def launch(tmp_path: Path, run: str, **popen) -> subprocess.Popen:
    """`composer -n 2 recipes/train.py demo.yaml`: 24 train videos, global batch 8 (3 batches per epoch),
    2 epochs, a resumable checkpoint every 2 batches, autoresume on."""
    cmd = [sys.executable, '-m', 'composer.cli.launcher', '-n', '2',
           '--stdout', str(tmp_path / f'{run}.{{rank}}.out'), '--stderr', str(tmp_path / f'{run}.{{rank}}.err'),
           str(REPO / 'recipes' / 'train.py'), str(DEMO),
           f'output_dir={tmp_path / run}', 'run_name=ddp', f'data.demo.root={tmp_path / f"data-{run}"}',
           'data.demo.num_train=24', 'data.demo.num_eval=12', 'epochs=2', 'batch_size=8', 'batch_size_val=6',
           'data.num_workers=0', 'n_display=100', 'save_interval=2ba', 'autoresume=true']
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(proc: subprocess.Popen, tmp_path: Path, run: str) -> None:
    out, _ = proc.communicate(timeout=300)
    logs = out + ''.join(p.read_text() for p in sorted(tmp_path.glob(f'{run}.*')))
    assert proc.returncode == 0, logs[-4000:]


def final_state(run: Path) -> dict:
    return torch.load(run / 'checkpoints' / 'latest-rank0.pt', weights_only=False)['state']


@pytest.mark.e2e
@pytest.mark.multiprocess
def test_sigkill_under_ddp_then_autoresume_matches_the_uninterrupted_run(tmp_path):
    # The runs go one after another: concurrent streaming jobs on one machine race for the same /dev/shm
    # names, and each run's clean_stale_shared_memory() would delete the other's
    # (docs/reference/composer.md#streaming item 2).
    generate_demo_dataset(tmp_path / 'data-full', num_train=24, num_eval=12, seed=0)
    shutil.copytree(tmp_path / 'data-full', tmp_path / 'data-killed')
    finish(launch(tmp_path, 'full'), tmp_path, 'full')
    killed = launch(tmp_path, 'killed', start_new_session=True)
    ckpts = tmp_path / 'killed' / 'checkpoints'
    latest = ckpts / 'latest-rank0.pt'
    kill_when_latest_is(killed, latest, 'ep1-ba4-rank0.pt', timeout=240)  # mid-epoch 2, after epoch 1's eval
    best_before = json.loads((ckpts / 'best.json').read_text())
    assert best_before['epoch'] == 1 and (ckpts / 'best.pt').is_file()
    finish(launch(tmp_path, 'killed'), tmp_path, 'killed')  # same command line: autoresumes from ep1-ba4

    states = {run: final_state(tmp_path / run) for run in ('full', 'killed')}
    for state in states.values():
        assert int(state['timestamp']['Timestamp']['batch']) == 6
    assert states['full']['model'].keys() == states['killed']['model'].keys()
    for key, value in states['full']['model'].items():
        assert torch.equal(states['killed']['model'][key], value), key
    assert states['killed']['callbacks']['BestCheckpoint'] == states['full']['callbacks']['BestCheckpoint']
    records = {run: json.loads((tmp_path / run / 'checkpoints' / 'best.json').read_text()) for run in states}
    for key in ('value', 'epoch', 'batch', 'results'):  # config differs only in paths
        assert records['killed'][key] == records['full'][key], key
    best = {run: torch.load(tmp_path / run / 'checkpoints' / 'best.pt', weights_only=False)['state']['model']
            for run in states}
    for key, value in best['full'].items():
        assert torch.equal(best['killed'][key], value), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_fsdp_option_trains_checkpoints_and_resumes_on_gpu(tmp_path):
    from tempme_composer.config import load_config
    from tempme_composer.train import train

    args = [f'output_dir={tmp_path / "fsdp"}', f'data.demo.root={tmp_path / "data"}', 'data.demo.num_train=24',
            'data.demo.num_eval=12', 'batch_size=8', 'batch_size_val=6', 'data.num_workers=0',
            'fsdp={sharding_strategy: FULL_SHARD, activation_checkpointing: true}', 'autoresume=true']
    trainer = train(load_config(DEMO, [*args, 'epochs=1']))
    assert trainer.state.fsdp_enabled
    trainer.close()
    assert (tmp_path / 'fsdp' / 'checkpoints' / 'best.pt').is_file()
    trainer = train(load_config(DEMO, [*args, 'epochs=2']))  # autoresumes the full (monolithic) checkpoint
    assert int(trainer.state.timestamp.batch) == 6
    trainer.close()
