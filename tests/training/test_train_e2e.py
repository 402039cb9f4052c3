"""The recipe end to end on generated demo videos: train, checkpoint, evaluate, CLI, DDP."""

import os
import re
import subprocess
import sys

import pytest
import torch
from demo_fixtures import DEMO, REPO, DdpDemoRun, DemoRun, resolved_config

from tempme_composer.callbacks import RetrievalLogger
from tempme_composer.config import load_config
from tempme_composer.train import train


def _results(trainer) -> dict:
    (logger,) = [cb for cb in trainer.state.callbacks if isinstance(cb, RetrievalLogger)]
    return logger.last_results['demo']


@pytest.mark.e2e
def test_train_then_evaluate_the_checkpoint(demo_run: DemoRun, tmp_path):
    results = demo_run.results  # what the session's demo run (2 epochs) reported when it ended
    assert results['num_videos'] == 12 and results['num_texts'] >= 36  # every caption of every eval video
    for key in ('t2v_R@1', 't2v_R@5', 't2v_R@10', 't2v_MdR', 't2v_MnR', 'v2t_R@1', 'v2t_MnR'):
        assert torch.isfinite(torch.tensor(results[key])), key
    run = demo_run.run
    assert (run / 'config.yaml').is_file()
    assert load_config(run / 'config.yaml').epochs == 2
    latest = run / 'checkpoints' / 'latest-rank0.pt'
    assert latest.exists()
    assert any((run / 'tensorboard').rglob('events.out.tfevents.*'))

    evaluator = train(load_config(DEMO, demo_run.overrides(tmp_path / 'run', 'do_train=false', 'do_eval=true',
                                                           f'resume={latest}')))
    again = _results(evaluator)
    assert again == results  # same weights, same eval set: identical numbers
    evaluator.close()


@pytest.mark.e2e
def test_cli_prints_result_lines_and_config_errors_are_one_line(demo_run: DemoRun, tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    cmd = [sys.executable, '-m', 'composer.cli.launcher', '-n', '1', str(REPO / 'recipes' / 'train.py'), str(DEMO)]
    ok = subprocess.run(cmd + demo_run.overrides(tmp_path / 'run', 'epochs=1'), capture_output=True, text=True, env=env, timeout=600)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert 'Text-to-Video:' in ok.stdout and ' (metric) >>>  R@1: ' in ok.stdout
    assert 'Video-to-Text:' in ok.stdout and 'V2T$R@1: ' in ok.stdout

    bad = subprocess.run(
        [sys.executable, str(REPO / 'recipes' / 'train.py'), str(DEMO), 'optimizer.lrr=1'],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert bad.returncode == 2
    assert "unknown key 'optimizer.lrr'" in bad.stderr and 'Traceback' not in bad.stderr


@pytest.mark.e2e
@pytest.mark.multiprocess
def test_ddp_two_ranks_on_cpu(ddp_demo_run: DdpDemoRun):
    # The session's `composer -n 2` demo run (2 epochs): it exited 0, or the fixture failed with its logs.
    # The launcher pipes local rank 0 to its own stdout and the other ranks to the --stdout/--stderr files.
    assert 'Text-to-Video:' in ddp_demo_run.stdout
    assert 'Text-to-Video:' not in (ddp_demo_run.logs / 'rank1.out').read_text()  # result lines: rank 0 only
    assert (ddp_demo_run.run / 'checkpoints' / 'latest-rank0.pt').exists()


@pytest.mark.e2e
def test_streams_option_reaches_the_training_loader(demo_run: DemoRun, tmp_path):
    # Train on the demo set's train split as a 2x repeated stream.
    train_dir = demo_run.data / 'mds' / 'train'
    trainer = train(load_config(DEMO, demo_run.overrides(
        tmp_path / 'streams', 'epochs=1', f"data.train.streams=[{{local: {train_dir}, repeat: 2}}]",
    )))
    assert int(trainer.state.timestamp.batch) == 2 * 24 // 8  # 24 videos seen twice, batch 8
    trainer.close()


def _logged_losses(text: str) -> list[float]:
    return [float(m) for m in re.findall(r'Loss: ([0-9.]+)', text)]


@pytest.mark.e2e
@pytest.mark.multiprocess
def test_two_ranks_train_like_one_rank_with_the_same_global_batch(demo_run: DemoRun, ddp_demo_run: DdpDemoRun):
    """Streaming's elastic determinism + the all-gathered loss: 2 ranks x 4 == 1 rank x 8, step by step."""
    # Later steps see the weights the earlier ones produced, so equal losses mean equal training.
    # One rank: the session's demo run, trained in-process with the same overrides (2 epochs, n_display=1).
    one_losses = _logged_losses('\n'.join(demo_run.step_lines))
    # Two ranks: the session's `composer -n 2` run of the same overrides; it adds only a run name, checkpoints
    # every 2 batches and autoresume (into an empty folder), none of which changes what is trained.
    resumable = ('output_dir', 'run_name', 'save_interval', 'autoresume')
    assert resolved_config(ddp_demo_run.run, *resumable) == resolved_config(demo_run.run, *resumable)
    two_losses = _logged_losses(ddp_demo_run.stdout)
    assert len(one_losses) == len(two_losses) == 2 * 24 // 8  # every step of both epochs
    assert two_losses == pytest.approx(one_losses, rel=1e-4, abs=1e-5)
    # Weights agree far inside what training moved them (6 Adam steps of lr 1e-3): Adam's normalisation
    # amplifies float-noise gradients (e.g. of the key bias, whose true gradient is zero) to ~1e-5.
    weights = [torch.load(run / 'checkpoints' / 'latest-rank0.pt', weights_only=False)['state']['model']
               for run in (demo_run.run, ddp_demo_run.run)]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=0, atol=2e-4, msg=name)
