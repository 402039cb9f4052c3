"""Evaluation is exact: 1, 2 and 3 ranks and any eval batch size give identical metrics; best checkpoints."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tempme_composer.checkpointing.best_checkpoint import BestCheckpoint
from tempme_composer.config import load_config
from tempme_composer.train import train

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / 'yamls' / 'demo.yaml'
NUM_EVAL = 13  # not divisible by 2 or 3: streaming pads each rank's partition with duplicates


def overrides(root: Path, run: str, *extra: str) -> list[str]:
    return [
        f'output_dir={root / run}',
        f'data.demo.root={root / "data"}',
        'data.demo.num_train=24',
        f'data.demo.num_eval={NUM_EVAL}',
        'batch_size=8',
        'batch_size_val=6',
        'data.num_workers=0',
        'n_display=100',
        *extra,
    ]


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> Path:
    """A 3-epoch demo run (module-shared): its output folder."""
    root = tmp_path_factory.mktemp('exact')
    trainer = train(load_config(DEMO, overrides(root, 'train', 'epochs=3')))
    trainer.close()
    return root


def evaluate(root: Path, name: str, checkpoint: Path, nproc: int, batch_size_val: int) -> dict:
    """Eval-only run of `checkpoint` on `nproc` CPU ranks; the numbers it wrote to eval-demo.json."""
    args = overrides(root, name, 'do_train=false', 'do_eval=true', f'resume={checkpoint}',
                     f'batch_size_val={batch_size_val}')
    if nproc == 1:
        train(load_config(DEMO, args)).close()
    else:
        env = {**os.environ, 'PYTHONPATH': str(REPO)}
        cmd = [sys.executable, '-m', 'composer.cli.launcher', '-n', str(nproc), '--stdout', str(root / f'{name}.{{rank}}.out'),
               '--stderr', str(root / f'{name}.{{rank}}.err'), str(REPO / 'recipes' / 'train.py'), str(DEMO), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((root / name / 'eval-demo.json').read_text())['results']


@pytest.fixture(scope='module')
def latest_on_one_rank(trained) -> dict:
    """The final checkpoint evaluated in-process with eval batch 6 (module-shared: the reference of the
    rank/batch-size comparison and the raw numbers the analysis outputs must leave alone)."""
    return evaluate(trained, 'n1-b6', trained / 'train' / 'checkpoints' / 'latest-rank0.pt', 1, 6)


@pytest.mark.e2e
def test_best_checkpoint_holds_the_best_weights_and_record(trained):
    best_record = json.loads((trained / 'train' / 'checkpoints' / 'best.json').read_text())
    assert best_record['metric'] == 't2v_R@1' and best_record['value'] == best_record['results']['t2v_R@1']
    assert best_record['config']['epochs'] == 3
    ckpt = torch.load(trained / 'train' / 'checkpoints' / 'latest-rank0.pt', weights_only=False)
    state = ckpt['state']['callbacks']['BestCheckpoint']
    assert state['best'] == best_record['value'] and state['best_epoch'] == best_record['epoch']
    # Evaluating best.pt alone reproduces the record exactly.
    again = evaluate(trained, 'eval-best', trained / 'train' / 'checkpoints' / 'best.pt', 1, 6)
    assert again == best_record['results']


@pytest.mark.e2e
def test_best_state_survives_autoresume(trained, tmp_path):
    before = json.loads((trained / 'train' / 'checkpoints' / 'best.json').read_text())
    trainer = train(load_config(DEMO, overrides(trained, 'train', 'epochs=3', 'autoresume=true')))
    (best_cb,) = [cb for cb in trainer.state.callbacks if isinstance(cb, BestCheckpoint)]
    assert int(trainer.state.timestamp.epoch) == 3  # resumed at the end: nothing retrained
    assert best_cb.best == before['value'] and best_cb.best_epoch == before['epoch']
    trainer.close()


@pytest.mark.e2e
@pytest.mark.multiprocess
def test_metrics_identical_for_1_2_3_ranks_and_eval_batch_sizes(trained, latest_on_one_rank):
    latest = trained / 'train' / 'checkpoints' / 'latest-rank0.pt'
    reference = latest_on_one_rank
    assert reference['num_videos'] == NUM_EVAL
    assert evaluate(trained, 'n1-b12', latest, 1, 12) == reference
    assert evaluate(trained, 'n1-b1', latest, 1, 1) == reference
    assert evaluate(trained, 'n2-b6', latest, 2, 6) == reference
    assert evaluate(trained, 'n3-b6', latest, 3, 6) == reference


@pytest.mark.e2e
def test_analysis_outputs_and_dsl_on_request(trained, latest_on_one_rank):
    import numpy as np

    latest = trained / 'train' / 'checkpoints' / 'latest-rank0.pt'
    raw = latest_on_one_rank
    args = overrides(trained, 'analysis', 'do_train=false', 'do_eval=true', f'resume={latest}',
                     'evaluation.save_ranks=true', 'evaluation.save_similarity=true', 'evaluation.dsl=true')
    train(load_config(DEMO, args)).close()
    results = json.loads((trained / 'analysis' / 'eval-demo.json').read_text())['results']
    assert {k: v for k, v in results.items() if not k.startswith('dsl_')} == raw  # raw numbers never replaced
    assert 'dsl_t2v_R@1' in results and 'dsl_v2t_MnR' in results

    folder = trained / 'analysis' / 'analysis'
    rows = [json.loads(line) for line in (folder / 'demo-ep0-ranks.jsonl').read_text().splitlines()]
    sim = np.load(folder / 'demo-ep0-similarity.npy')
    index = json.loads((folder / 'demo-ep0-similarity-index.json').read_text())
    assert len(rows) == results['num_texts'] == sim.shape[0] and sim.shape[1] == NUM_EVAL
    assert all(isinstance(r['caption'], str) and r['caption'] for r in rows)
    for i, row in enumerate(rows):
        assert index['rows'][i] == [row['video_id'], row['caption_index']]
        truth = index['columns'].index(row['video_id'])
        assert row['rank'] == int((sim[i] >= sim[i, truth]).sum())  # pessimistic rank from the matrix
        assert row['top_videos'][0] == index['columns'][int(sim[i].argmax())]
    assert 100 * np.mean([r['rank'] == 1 for r in rows]) == pytest.approx(raw['t2v_R@1'])


@pytest.mark.e2e
def test_eval_through_pooled_loader_workers_is_exact(trained):
    """Two loader workers lend their frames from reused shared-memory buffers (data/frame_pool.py), with a
    last partial batch: the metrics equal those of the in-process loader bit for bit."""
    best_record = json.loads((trained / 'train' / 'checkpoints' / 'best.json').read_text())
    args = overrides(trained, 'eval-workers', 'do_train=false', 'do_eval=true',
                     f"resume={trained / 'train' / 'checkpoints' / 'best.pt'}", 'batch_size_val=5',
                     'data.num_workers=2')
    train(load_config(DEMO, args)).close()
    got = json.loads((trained / 'eval-workers' / 'eval-demo.json').read_text())['results']
    assert got == best_record['results']
