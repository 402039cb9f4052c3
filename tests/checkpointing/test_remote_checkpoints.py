"""Checkpoints in an object store (moto's S3 server on loopback): Composer uploads the resumable checkpoints
and BestCheckpoint best.pt/best.json; autoresume on a fresh machine continues from the newest remote one;
do_eval reads a remote best.pt; a failed upload says what is and is not saved, and a store that goes away
mid-run loses no checkpoint: autoresume uploads again once it is back."""

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from composer import Trainer
from composer.core import Callback, State
from composer.loggers import Logger
from s3_fixtures import start_moto_server

import tempme_composer.train as train_module
from tempme_composer.callbacks import RetrievalLogger
from tempme_composer.checkpointing.remote import CheckpointUploader
from tempme_composer.config import load_config
from tempme_composer.errors import CheckpointUploadError, RecipeError
from tempme_composer.remote import download_file, list_objects, upload_file
from tempme_composer.train import train

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / 'yamls' / 'demo.yaml'


def demo_args(tmp_path: Path, data: Path, run: str, *extra: str) -> list[str]:
    """24 train / 12 eval demo videos at ``data`` (the session's), batch 8: 3 batches per epoch."""
    return [f'output_dir={tmp_path / run}', 'run_name=remote', f'data.demo.root={data}',
            'data.demo.num_train=24', 'data.demo.num_eval=12', 'batch_size=8', 'batch_size_val=6',
            'data.num_workers=0', 'n_display=100', *extra]


def _results(trainer) -> dict:
    (logger,) = [cb for cb in trainer.state.callbacks if isinstance(cb, RetrievalLogger)]
    return logger.last_results['demo']


@pytest.mark.e2e
def test_checkpoints_go_to_s3_and_a_fresh_machine_resumes_and_evaluates_from_there(demo_data, tmp_path, s3_bucket):
    store = f's3://{s3_bucket}/runs/demo'
    # autoresume on an empty store: nothing to resume, a fresh start
    first = train(load_config(DEMO, demo_args(tmp_path, demo_data, 'machine-a', 'epochs=1', f'save_folder={store}',
                                              'autoresume=true')))
    assert int(first.state.timestamp.epoch) == 1
    first.close()  # waits for the uploads
    objects = list_objects(store)
    assert {'ep1-ba3-rank0.pt', 'latest-rank0.pt.symlink', 'best.pt', 'best.json'} <= set(objects), objects
    local = tmp_path / 'machine-a' / 'checkpoints'
    assert objects['ep1-ba3-rank0.pt'] == (local / 'ep1-ba3-rank0.pt').stat().st_size
    assert objects['best.pt'] == (local / 'best.pt').stat().st_size

    # Another machine, empty output_dir: autoresume downloads ep1-ba3 and trains epoch 2 only.
    second = train(load_config(DEMO, demo_args(tmp_path, demo_data, 'machine-b', 'epochs=2', f'save_folder={store}',
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
    evaluator = train(load_config(DEMO, demo_args(tmp_path, demo_data, 'machine-c', 'do_train=false', 'do_eval=true',
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
def test_an_unwritable_store_is_refused_before_training(demo_data, tmp_path, s3_server):
    store = 's3://tempme-no-such-bucket/runs/demo'
    with pytest.raises(CheckpointUploadError) as info:
        train(load_config(DEMO, demo_args(tmp_path, demo_data, 'run', 'epochs=2', f'save_folder={store}')))
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
    assert message.startswith(f'uploading a checkpoint to save_folder={store} failed '
                              '(RuntimeError: connection reset). Training stopped. ')
    assert f'Saved locally in {local}: best.json, best.pt, ep1-ba3-rank0.pt, latest-rank0.pt. ' in message
    assert f'On {store}: best.pt. Not uploaded: best.json, ep1-ba3-rank0.pt, latest-rank0.pt.' in message


@pytest.mark.e2e
def test_a_missing_remote_checkpoint_is_one_error_naming_it(demo_data, tmp_path, s3_bucket):
    uri = f's3://{s3_bucket}/runs/none/best.pt'
    with pytest.raises(RecipeError, match=rf'resume={uri}: could not download {uri} after 3 attempts'):
        train(load_config(DEMO, demo_args(tmp_path, demo_data, 'run', 'do_train=false', 'do_eval=true', f'resume={uri}')))


class StopStoreWhenEpoch2Starts(Callback):
    """Stops the run's S3 server at the start of epoch 2, once every upload of epoch 1 is listed on it.

    Training waits here (bounded), so the outage covers exactly epoch 2's uploads however fast training or
    the upload worker runs; the server is real and is really stopped (connections refused).
    """

    def __init__(self, server, client, bucket: str, keys: set[str], timeout_s: float = 180.0) -> None:
        self.server, self.client, self.bucket, self.keys, self.timeout_s = server, client, bucket, keys, timeout_s
        self.stopped = False

    def epoch_start(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.epoch) != 1 or self.stopped:
            return
        deadline = time.monotonic() + self.timeout_s
        while not self.keys <= (listed := self._listed()):
            if time.monotonic() > deadline:
                raise AssertionError(f'epoch 1 uploads not on the store after {self.timeout_s:.0f} s: {sorted(listed)}')
            time.sleep(0.05)
        self.server.stop()
        self.stopped = True

    def _listed(self) -> set[str]:
        listing = self.client.list_objects_v2(Bucket=self.bucket)
        return {o['Key'] for o in listing.get('Contents', [])}


def with_callback(monkeypatch: pytest.MonkeyPatch, callback: Callback) -> None:
    """Every Trainer that ``train()`` builds also gets ``callback`` (through Composer's ``callbacks``)."""

    class TrainerWithCallback(Trainer):
        def __init__(self, *args: Any, callbacks: list[Callback] | None = None, **kwargs: Any) -> None:
            super().__init__(*args, callbacks=[*(callbacks or []), callback], **kwargs)

    monkeypatch.setattr(train_module, 'Trainer', TrainerWithCallback)


@pytest.mark.e2e
def test_a_store_that_goes_away_mid_run_is_an_error_and_autoresume_uploads_again(demo_data, tmp_path, s3_server, monkeypatch):
    """A real outage, nothing of the recipe patched: the run's own S3 server is stopped when epoch 2 starts,
    right after epoch 1's checkpoint, latest pointer and best files are on it, so every upload of epoch 2
    fails. With epochs=2 the failure surfaces deterministically at the end of training (Composer's wait for
    the uploads at FIT_END): epoch 2's uploads are queued after its last batch, so no batch end checks the
    upload worker first. No retry settings are needed: a refused connection uses up botocore's retries
    within seconds."""
    import boto3

    server, endpoint = start_moto_server()
    port = int(endpoint.rsplit(':', 1)[1])
    monkeypatch.setenv('S3_ENDPOINT_URL', endpoint)  # this test's server; the spawned upload worker inherits it
    bucket = f'tempme-{uuid.uuid4().hex[:12]}'
    client = boto3.client('s3', endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    store = f's3://{bucket}/runs/demo'
    local = tmp_path / 'run' / 'checkpoints'
    args = demo_args(tmp_path, demo_data, 'run', f'save_folder={store}', 'autoresume=true')
    epoch_1 = {f'runs/demo/{name}' for name in ('best.pt', 'best.json', 'ep1-ba3-rank0.pt', 'latest-rank0.pt.symlink')}
    stopper = StopStoreWhenEpoch2Starts(server, client, bucket, epoch_1)
    try:
        with monkeypatch.context() as patch, pytest.raises(CheckpointUploadError) as info:
            with_callback(patch, stopper)
            train(load_config(DEMO, [*args, 'epochs=2']))
    finally:
        if not stopper.stopped:
            server.stop()
    assert stopper.stopped
    message = str(info.value)
    assert isinstance(info.value, RecipeError) and '\n' not in message  # main(): one `error: ...` paragraph
    assert message.startswith(f'uploading a checkpoint to save_folder={store} failed (EndpointConnectionError: '
                              f'Could not connect to the endpoint URL: "{endpoint}/{bucket}/runs/demo/'), message
    assert '. Training finished (every epoch is trained and saved locally), but not every file reached the store. ' \
        in message
    # checkpoints_to_keep=1: ep1-ba3 was rotated away locally (it is on the store); ep2-ba6 is the only copy
    listed = ['best.json', 'best.pt', 'ep2-ba6-rank0.pt', 'latest-rank0.pt']
    assert (f'Saved locally in {local}: {", ".join(listed)}. On {store}: unknown (listing it failed too: could '
            f'not list {store} after 3 attempts: EndpointConnectionError: Could not connect to the endpoint URL') \
        in message, message
    assert sorted(p.name for p in local.iterdir()) == listed
    assert os.readlink(local / 'latest-rank0.pt') == 'ep2-ba6-rank0.pt'
    assert torch.load(local / 'ep2-ba6-rank0.pt', weights_only=False)['state']['timestamp']['Timestamp']['batch'] == 6
    assert 'Not uploaded: see the two lists above. ' in message
    assert message.endswith('continue training with autoresume=true and a larger epochs= (it uploads the '
                            'checkpoints it saves; with the same epochs it trains and uploads nothing).')

    # The store comes back (same port, same in-memory objects): epoch 1 is there, nothing saved after the outage.
    server, _ = start_moto_server(port)
    try:
        objects = list_objects(store)
        assert {'ep1-ba3-rank0.pt', 'latest-rank0.pt.symlink'} <= set(objects), objects
        assert 'ep2-ba6-rank0.pt' not in objects
        pointer = download_file(f'{store}/latest-rank0.pt.symlink', tmp_path / 'pointer').read_text()
        assert pointer == 'runs/demo/ep1-ba3-rank0.pt'

        # The same command with epochs=3 continues from the LOCAL ep2-ba6 (the store's newest is ep1-ba3) and
        # uploads epoch 3; ep2-ba6 stays missing on the store, which shows epoch 2 was not trained again.
        resumed = train(load_config(DEMO, [*args, 'epochs=3']))
        assert (int(resumed.state.timestamp.epoch), int(resumed.state.timestamp.batch)) == (3, 9)
        resumed.close()  # waits for the uploads
        objects = list_objects(store)
        assert objects.get('ep3-ba9-rank0.pt') == (local / 'ep3-ba9-rank0.pt').stat().st_size, objects
        assert 'ep2-ba6-rank0.pt' not in objects
        pointer = download_file(f'{store}/latest-rank0.pt.symlink', tmp_path / 'pointer').read_text()
        assert pointer == 'runs/demo/ep3-ba9-rank0.pt'
    finally:
        server.stop()
