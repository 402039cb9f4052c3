"""Checkpoints in an object store (moto's S3 server on loopback): Composer uploads the resumable checkpoints
and BestCheckpoint best.pt/best.json; autoresume on a fresh machine continues from the newest remote one;
do_eval reads a remote best.pt; a failed upload says what is and is not saved."""

import json
from pathlib import Path

import pytest
import torch

from tempme_composer.callbacks import RetrievalLogger
from tempme_composer.config import load_config
from tempme_composer.preflight import RecipeError
from tempme_composer.remote import download_file, list_objects, upload_file
from tempme_composer.remote_checkpoints import CheckpointUploader, CheckpointUploadError
from tempme_composer.train import train

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / 'yamls' / 'demo.yaml'


def demo_args(tmp_path: Path, run: str, *extra: str) -> list[str]:
    """24 train / 12 eval demo videos, batch 8: 3 batches per epoch."""
    return [f'output_dir={tmp_path / run}', 'run_name=remote', f'data.demo.root={tmp_path / "data"}',
            'data.demo.num_train=24', 'data.demo.num_eval=12', 'batch_size=8', 'batch_size_val=6',
            'data.num_workers=0', 'n_display=100', *extra]


def _results(trainer) -> dict:
    (logger,) = [cb for cb in trainer.state.callbacks if isinstance(cb, RetrievalLogger)]
    return logger.last_results['demo']


@pytest.mark.e2e
def test_checkpoints_go_to_s3_and_a_fresh_machine_resumes_and_evaluates_from_there(tmp_path, s3_bucket):
    store = f's3://{s3_bucket}/runs/demo'
    # autoresume on an empty store: nothing to resume, a fresh start
    first = train(load_config(DEMO, demo_args(tmp_path, 'machine-a', 'epochs=1', f'save_folder={store}',
                                              'autoresume=true')))
    assert int(first.state.timestamp.epoch) == 1
    first.close()  # waits for the uploads
    objects = list_objects(store)
    assert {'ep1-ba3-rank0.pt', 'latest-rank0.pt.symlink', 'best.pt', 'best.json'} <= set(objects), objects
    local = tmp_path / 'machine-a' / 'checkpoints'
    assert objects['ep1-ba3-rank0.pt'] == (local / 'ep1-ba3-rank0.pt').stat().st_size
    assert objects['best.pt'] == (local / 'best.pt').stat().st_size

    # Another machine, empty output_dir: autoresume downloads ep1-ba3 and trains epoch 2 only.
    second = train(load_config(DEMO, demo_args(tmp_path, 'machine-b', 'epochs=2', f'save_folder={store}',
                                               'autoresume=true')))
    assert int(second.state.timestamp.epoch) == 2 and int(second.state.timestamp.batch) == 6
    ckpts = tmp_path / 'machine-b' / 'checkpoints'
    resumed = torch.load(ckpts / 'ep1-ba3-rank0.pt', weights_only=False)['state']['model']
    original = torch.load(local / 'ep1-ba3-rank0.pt', weights_only=False)['state']['model']
    assert all(torch.equal(resumed[k], v) for k, v in original.items())
    second.close()
    objects = list_objects(store)
    assert 'ep2-ba6-rank0.pt' in objects
    pointer = download_file(f'{store}/latest-rank0.pt.symlink', tmp_path / 'pointer').read_text()
    assert pointer == 'runs/demo/ep2-ba6-rank0.pt'

    # Evaluate the remote best.pt on a third machine: the numbers its best.json recorded.
    best = json.loads(download_file(f'{store}/best.json', tmp_path / 'best.json').read_text())
    evaluator = train(load_config(DEMO, demo_args(tmp_path, 'machine-c', 'do_train=false', 'do_eval=true',
                                                  f'resume={store}/best.pt')))
    assert _results(evaluator) == best['results']
    assert (tmp_path / 'machine-c' / 'fetched' / 'best.pt').is_file()
    evaluator.close()

    # tempme-export takes the remote best.pt too (its config comes from the best.json beside it).
    from tempme_composer.inference import load_exported
    from tempme_composer.inference.export import export_checkpoint

    exported = load_exported(export_checkpoint(f'{store}/best.pt', tmp_path / 'export'))
    assert exported.config['training']['best']['results'] == best['results']


@pytest.mark.e2e
def test_an_unwritable_store_is_refused_before_training(tmp_path, s3_server):
    store = 's3://tempme-no-such-bucket/runs/demo'
    with pytest.raises(CheckpointUploadError) as info:
        train(load_config(DEMO, demo_args(tmp_path, 'run', 'epochs=2', f'save_folder={store}')))
    message = str(info.value)
    assert message.startswith(f'save_folder={store}: cannot write to the store (') and 'NoSuchBucket' in message
    assert 'Nothing was trained or saved yet' in message and '\n' not in message
    assert isinstance(info.value, RecipeError)  # main() prints it as one `error: ...` paragraph, exit 1
    assert not list((tmp_path / 'run' / 'checkpoints').glob('*.pt'))


def test_a_failed_upload_says_what_is_saved_locally_and_on_the_store(tmp_path, s3_bucket):
    store = f's3://{s3_bucket}/runs/demo'
    local = tmp_path / 'checkpoints'
    local.mkdir()
    for name in ('ep1-ba3-rank0.pt', 'best.pt', 'best.json'):
        (local / name).write_bytes(b'x')
    (local / 'latest-rank0.pt').symlink_to('ep1-ba3-rank0.pt')
    upload_file(local / 'best.pt', f'{store}/best.pt')
    message = CheckpointUploader(store, local).failure_message(RuntimeError('connection reset'))
    assert message.startswith(f'uploading a checkpoint to save_folder={store} failed after 3 attempts '
                              '(RuntimeError: connection reset). Training stopped. ')
    assert f'Saved locally in {local}: best.json, best.pt, ep1-ba3-rank0.pt, latest-rank0.pt. ' in message
    assert f'On {store}: best.pt. Not uploaded: best.json, ep1-ba3-rank0.pt, latest-rank0.pt.' in message


@pytest.mark.e2e
def test_a_missing_remote_checkpoint_is_one_error_naming_it(tmp_path, s3_bucket):
    uri = f's3://{s3_bucket}/runs/none/best.pt'
    with pytest.raises(RecipeError, match=rf'resume={uri}: could not download {uri} after 3 attempts'):
        train(load_config(DEMO, demo_args(tmp_path, 'run', 'do_train=false', 'do_eval=true', f'resume={uri}')))
