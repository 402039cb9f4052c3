"""The recipe end to end on generated demo videos: train, checkpoint, evaluate, CLI, DDP."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tempme_composer.callbacks import RetrievalLogger
from tempme_composer.config import load_config
from tempme_composer.train import train

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / 'yamls' / 'demo.yaml'


def small_demo(tmp_path: Path, *extra: str) -> list[str]:
    """Overrides that shrink the demo to seconds: 24 train / 12 eval videos, 2 epochs."""
    return [
        f'output_dir={tmp_path / "run"}',
        f'data.demo.root={tmp_path.parent / "demo_data"}',  # shared by the tests of this module
        'data.demo.num_train=24',
        'data.demo.num_eval=12',
        'epochs=2',
        'batch_size=8',
        'batch_size_val=6',
        'data.num_workers=0',
        'n_display=1',
        *extra,
    ]


def _results(trainer) -> dict:
    (logger,) = [cb for cb in trainer.state.callbacks if isinstance(cb, RetrievalLogger)]
    return logger.last_results['demo']


@pytest.mark.e2e
def test_train_then_evaluate_the_checkpoint(tmp_path):
    trainer = train(load_config(DEMO, small_demo(tmp_path)))
    results = _results(trainer)
    assert results['num_videos'] == 12 and results['num_texts'] >= 36  # every caption of every eval video
    for key in ('t2v_R@1', 't2v_R@5', 't2v_R@10', 't2v_MdR', 't2v_MnR', 'v2t_R@1', 'v2t_MnR'):
        assert torch.isfinite(torch.tensor(results[key])), key
    run = tmp_path / 'run'
    assert (run / 'config.yaml').is_file()
    assert load_config(run / 'config.yaml').epochs == 2
    latest = run / 'checkpoints' / 'latest-rank0.pt'
    assert latest.exists()
    assert any((run / 'tensorboard').rglob('events.out.tfevents.*'))
    trainer.close()

    evaluator = train(load_config(DEMO, small_demo(tmp_path, 'do_train=false', 'do_eval=true', f'resume={latest}')))
    again = _results(evaluator)
    assert again == results  # same weights, same eval set: identical numbers
    evaluator.close()


@pytest.mark.e2e
def test_cli_prints_result_lines_and_config_errors_are_one_line(tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    cmd = [sys.executable, '-m', 'composer.cli.launcher', '-n', '1', str(REPO / 'recipes' / 'train.py'), str(DEMO)]
    ok = subprocess.run(cmd + small_demo(tmp_path, 'epochs=1'), capture_output=True, text=True, env=env, timeout=600)
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
def test_ddp_two_ranks_on_cpu(tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    cmd = [sys.executable, '-m', 'composer.cli.launcher', '-n', '2', '--stdout', str(tmp_path / 'rank{rank}.out'),
           '--stderr', str(tmp_path / 'rank{rank}.err'), str(REPO / 'recipes' / 'train.py'), str(DEMO)]
    proc = subprocess.run(cmd + small_demo(tmp_path, 'epochs=1'), capture_output=True, text=True, env=env, timeout=600)
    # The launcher pipes local rank 0 to its own stdout and the other ranks to the --stdout/--stderr files.
    logs = proc.stdout + proc.stderr + ''.join(p.read_text() for p in sorted(tmp_path.glob('rank*.*')))
    assert proc.returncode == 0, logs[-4000:]
    assert 'Text-to-Video:' in proc.stdout
    assert 'Text-to-Video:' not in (tmp_path / 'rank1.out').read_text()  # result lines come from rank 0 only
    assert (tmp_path / 'run' / 'checkpoints' / 'latest-rank0.pt').exists()


@pytest.mark.e2e
def test_streams_option_reaches_the_training_loader(tmp_path):
    # Generate the demo set once through a normal run, then train on its train split as a 2x repeated stream.
    train(load_config(DEMO, small_demo(tmp_path, 'epochs=1'))).close()
    train_dir = tmp_path.parent / 'demo_data' / 'mds' / 'train'
    trainer = train(load_config(DEMO, small_demo(
        tmp_path, 'epochs=1', f'output_dir={tmp_path / "streams"}', f"data.train.streams=[{{local: {train_dir}, repeat: 2}}]",
    )))
    assert int(trainer.state.timestamp.batch) == 2 * 24 // 8  # 24 videos seen twice, batch 8
    trainer.close()


def _logged_losses(text: str) -> list[float]:
    return [float(m) for m in re.findall(r'Loss: ([0-9.]+)', text)]


@pytest.mark.e2e
@pytest.mark.multiprocess
def test_two_ranks_train_like_one_rank_with_the_same_global_batch(tmp_path, capfd):
    """Streaming's elastic determinism + the all-gathered loss: 2 ranks x 4 == 1 rank x 8, step by step."""
    # Later steps see the weights the earlier ones produced, so equal losses mean equal training.
    one = train(load_config(DEMO, small_demo(tmp_path, 'epochs=2', f'output_dir={tmp_path / "one"}')))
    one.close()
    one_losses = _logged_losses(capfd.readouterr().out)
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    cmd = [sys.executable, '-m', 'composer.cli.launcher', '-n', '2', '--stdout', str(tmp_path / 'r{rank}.out'),
           '--stderr', str(tmp_path / 'r{rank}.err'), str(REPO / 'recipes' / 'train.py'), str(DEMO)]
    proc = subprocess.run(cmd + small_demo(tmp_path, 'epochs=2', f'output_dir={tmp_path / "two"}'),
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two_losses = _logged_losses(proc.stdout)
    assert len(one_losses) == len(two_losses) == 2 * 24 // 8  # every step of both epochs
    assert two_losses == pytest.approx(one_losses, rel=1e-4, abs=1e-5)
    # Weights agree far inside what training moved them (6 Adam steps of lr 1e-3): Adam's normalisation
    # amplifies float-noise gradients (e.g. of the key bias, whose true gradient is zero) to ~1e-5.
    weights = [torch.load(tmp_path / run / 'checkpoints' / 'latest-rank0.pt', weights_only=False)['state']['model']
               for run in ('one', 'two')]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=0, atol=2e-4, msg=name)
