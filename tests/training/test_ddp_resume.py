"""Kill and resume under DDP: a `composer -n 2` run SIGKILLed mid-epoch and autoresumed ends with the weights,
the best-R@1 checkpoint and the BestCheckpoint state of the uninterrupted 2-rank run."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from demo_fixtures import DdpDemoRun, ddp_demo, finish, launch_demo, resolved_config
from process_helpers import kill_when_latest_is

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / 'yamls' / 'demo.yaml'


def final_state(run: Path) -> dict:
    return torch.load(run / 'checkpoints' / 'latest-rank0.pt', weights_only=False)['state']


@pytest.mark.e2e
@pytest.mark.multiprocess
def test_sigkill_under_ddp_then_autoresume_matches_the_uninterrupted_run(ddp_demo_run: DdpDemoRun, demo_data, tmp_path):
    # The uninterrupted run is the session's `composer -n 2` demo run (24 train videos, global batch 8: 3 batches
    # per epoch, 2 epochs, a checkpoint every 2 batches, autoresume on). The killed run is the same command line
    # on a copy of its data: the runs go one after another, as concurrent streaming jobs on one machine race
    # for the same /dev/shm names (docs/reference/composer.md#streaming item 2).
    shutil.copytree(demo_data, tmp_path / 'data-killed')
    overrides = ddp_demo(tmp_path / 'killed', tmp_path / 'data-killed')
    killed = launch_demo(tmp_path / 'logs-killed', 2, overrides, start_new_session=True)
    ckpts = tmp_path / 'killed' / 'checkpoints'
    latest = ckpts / 'latest-rank0.pt'
    kill_when_latest_is(killed, latest, 'ep1-ba4-rank0.pt', timeout=240)  # mid-epoch 2, after epoch 1's eval
    best_before = json.loads((ckpts / 'best.json').read_text())
    assert best_before['epoch'] == 1 and (ckpts / 'best.pt').is_file()
    resumed = tmp_path / 'logs-resumed'
    finish(launch_demo(resumed, 2, overrides), resumed)  # same command line: autoresumes from ep1-ba4
    paths = ('output_dir', 'data.demo.root')  # the two command lines differ only in these
    assert resolved_config(ddp_demo_run.run, *paths) == resolved_config(tmp_path / 'killed', *paths)

    runs = {'full': ddp_demo_run.run, 'killed': tmp_path / 'killed'}
    states = {run: final_state(folder) for run, folder in runs.items()}
    for state in states.values():
        assert int(state['timestamp']['Timestamp']['batch']) == 6
    assert states['full']['model'].keys() == states['killed']['model'].keys()
    for key, value in states['full']['model'].items():
        assert torch.equal(states['killed']['model'][key], value), key
    assert states['killed']['callbacks']['BestCheckpoint'] == states['full']['callbacks']['BestCheckpoint']
    records = {run: json.loads((runs[run] / 'checkpoints' / 'best.json').read_text()) for run in states}
    for key in ('value', 'epoch', 'batch', 'results'):  # config differs only in paths
        assert records['killed'][key] == records['full'][key], key
    best = {run: torch.load(runs[run] / 'checkpoints' / 'best.pt', weights_only=False)['state']['model']
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
