"""Training data streamed from an object store (moto's S3 server on loopback) behaves exactly like the same
data read locally: same metrics and weights in one process, and under `composer -n 2` a mid-epoch SIGKILL +
autoresume from remote data ends with the weights of the uninterrupted local run. A missing or corrupt
remote shard is one error naming the object; two splits sharing one cache folder are refused at config load;
`tempme-convert --out s3://...` uploads a conversion that trains like the local one."""

import json
import os
import pickle
from pathlib import Path

import boto3
import pytest
import torch
from demo_fixtures import DdpDemoRun, ddp_demo, finish, launch_demo, resolved_config
from process_helpers import kill_when_latest_is
from video_fixtures import PALETTE, write_video

from tempme_composer.callbacks import RetrievalLogger
from tempme_composer.config import load_config
from tempme_composer.data import LoaderOptions, build_video_text_dataloader
from tempme_composer.data.convert import main as convert_main
from tempme_composer.data.remote_shards import RemoteShardError
from tempme_composer.errors import ConfigError
from tempme_composer.remote import list_objects, upload_folder
from tempme_composer.train import train

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / 'yamls' / 'demo.yaml'


def uploaded(root: Path, bucket: str) -> tuple[Path, str]:
    """The 24/12-video demo set at ``root`` (the session's, read-only), uploaded to s3://bucket/demo/{train,eval}."""
    remote = f's3://{bucket}/demo'
    upload_folder(root / 'mds', remote)
    return root, remote


def args(tmp_path: Path, run: str, root: Path, remote: str | None, *extra: str) -> list[str]:
    """Batch 8 over 24 videos (3 batches per epoch); data from `remote` (cache in tmp_path) or local."""
    if remote is None:
        data = [f'data.train.local={root}/mds/train', f'data.eval.local={root}/mds/eval']
    else:
        cache = tmp_path / f'cache-{run}'
        data = [f'data.train={{remote: {remote}/train, local: {cache}/train}}',
                f'data.eval={{remote: {remote}/eval, local: {cache}/eval}}']
    return [f'output_dir={tmp_path / run}', 'run_name=data', f'data.demo.root={root}', 'data.demo.num_train=24',
            'data.demo.num_eval=12', 'batch_size=8', 'batch_size_val=6', 'data.num_workers=0', 'n_display=100',
            *data, *extra]


def results(trainer) -> dict:
    (logger,) = [cb for cb in trainer.state.callbacks if isinstance(cb, RetrievalLogger)]
    return logger.last_results['demo']


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=False)['state']['model']


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(b[key], value), key


@pytest.mark.e2e
def test_remote_data_trains_exactly_like_local_data(demo_data, tmp_path, s3_bucket):
    root, remote = uploaded(demo_data, s3_bucket)
    local = train(load_config(DEMO, args(tmp_path, 'local', root, None, 'epochs=1')))
    local_results = results(local)
    local.close()
    streamed = train(load_config(DEMO, args(tmp_path, 'remote', root, remote, 'epochs=1')))
    assert results(streamed) == local_results
    streamed.close()
    assert_same_weights(weights(tmp_path / 'local' / 'checkpoints' / 'latest-rank0.pt'),
                        weights(tmp_path / 'remote' / 'checkpoints' / 'latest-rank0.pt'))
    shards = sorted(p.name for p in (tmp_path / 'cache-remote' / 'train').glob('shard.*.mds'))
    assert shards and shards == sorted(p.name for p in (root / 'mds' / 'train').glob('shard.*.mds'))


@pytest.mark.e2e
@pytest.mark.multiprocess
def test_two_ranks_on_remote_data_killed_and_autoresumed_match_local_data(
    ddp_demo_run: DdpDemoRun, demo_data, tmp_path, s3_bucket
):
    root, remote = uploaded(demo_data, s3_bucket)
    # The local run is the session's uninterrupted `composer -n 2` demo run on this data; the remote run is
    # the same command line with both splits read from the store. One run after another: concurrent streaming
    # jobs race for /dev/shm names (docs/reference/composer.md#streaming item 2).
    cache = tmp_path / 'cache-remote'
    overrides = ddp_demo(tmp_path / 'remote', root, f'data.train={{remote: {remote}/train, local: {cache}/train}}',
                         f'data.eval={{remote: {remote}/eval, local: {cache}/eval}}')
    killed = launch_demo(tmp_path / 'logs-killed', 2, overrides, start_new_session=True)
    latest = tmp_path / 'remote' / 'checkpoints' / 'latest-rank0.pt'
    kill_when_latest_is(killed, latest, 'ep1-ba4-rank0.pt', timeout=300)  # mid-epoch 2, after epoch 1's eval
    finish(launch_demo(tmp_path / 'logs-resumed', 2, overrides), tmp_path / 'logs-resumed')  # autoresumes
    paths = ('output_dir', 'data.train', 'data.eval')  # where the data comes from, and where the run goes
    assert resolved_config(ddp_demo_run.run, *paths) == resolved_config(tmp_path / 'remote', *paths)

    runs = {'local': ddp_demo_run.run, 'remote': tmp_path / 'remote'}
    final = {run: weights(folder / 'checkpoints' / 'latest-rank0.pt') for run, folder in runs.items()}
    assert_same_weights(final['local'], final['remote'])
    best = {run: json.loads((folder / 'checkpoints' / 'best.json').read_text()) for run, folder in runs.items()}
    for key in ('value', 'epoch', 'batch', 'results'):  # the 2-rank metrics of remote = local data
        assert best['remote'][key] == best['local'][key], key


def _corrupt(bucket: str, key: str) -> None:
    s3 = boto3.client('s3', endpoint_url=os.environ['S3_ENDPOINT_URL'])
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)['Body'].read())
    body[len(body) // 2] ^= 0xFF  # same size, one byte flipped
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))


@pytest.mark.e2e
def test_missing_or_corrupt_remote_shard_is_one_error_naming_the_object(demo_data, tmp_path, s3_bucket):
    root, remote = uploaded(demo_data, s3_bucket)
    (shard,) = [k for k in list_objects(f'{remote}/train') if k.startswith('shard.')]
    _corrupt(s3_bucket, f'demo/train/{shard}')
    with pytest.raises(RemoteShardError) as info:
        train(load_config(DEMO, args(tmp_path, 'corrupt', root, remote, 'epochs=1', 'data.num_workers=1')))
    message = str(info.value)  # raised in a DataLoader worker: the paragraph survives the re-raise
    assert message.startswith(f'shard {remote}/train/{shard} is corrupt: its xxh64 hash does not match')
    assert '\n' not in message and 'Traceback' not in message
    assert not (tmp_path / 'cache-corrupt' / 'train' / shard).exists()  # the bad copy is not kept

    boto3.client('s3', endpoint_url=os.environ['S3_ENDPOINT_URL']).delete_object(
        Bucket=s3_bucket, Key=f'demo/train/{shard}')
    with pytest.raises(RemoteShardError, match=rf'^shard {remote}/train/{shard} could not be downloaded after '
                                               r'2 attempts \(ClientError: Object .* not found'):
        train(load_config(DEMO, args(tmp_path, 'missing', root, remote, 'epochs=1')))


def test_two_splits_sharing_a_cache_folder_are_refused_at_config_load(tmp_path):
    shared = tmp_path / 'cache'
    with pytest.raises(ConfigError, match=r"'data.eval' and 'data.train' use the same cache folder .*cache.* "
                                          r'reads from a remote'):
        load_config(DEMO, [f'output_dir={tmp_path}', f'data.train={{remote: s3://b/d/train, local: {shared}}}',
                           f'data.eval={{remote: s3://b/d/eval, local: {shared}}}'])
    with pytest.raises(ConfigError, match=r"'data.eval.streams\[0\]' and 'data.train' use the same cache folder"):
        load_config(DEMO, [f'output_dir={tmp_path}', f'data.train={{local: {shared}, split: x}}',
                           f'data.eval={{streams: [{{remote: s3://b/d, local: {shared}, split: x}}]}}'])
    # Distinct folders, or a purely local dataset read twice, are fine.
    load_config(DEMO, [f'output_dir={tmp_path}', f'data.train={{remote: s3://b/d/train, local: {shared}/train}}',
                       f'data.eval={{remote: s3://b/d/eval, local: {shared}/eval}}'])
    load_config(DEMO, [f'output_dir={tmp_path}', f'data.train.local={shared}', f'data.eval.local={shared}'])


def test_convert_uploads_to_s3_and_the_remote_dataset_reads_like_the_local_one(tmp_path, s3_bucket):
    ids = ['vid_a', 'vid_b']
    (tmp_path / 'test_list.txt').write_text('\n'.join(ids))
    (tmp_path / 'raw-captions.pkl').write_bytes(pickle.dumps({ids[0]: [['a', 'cat'], ['a', 'kitten']],
                                                              ids[1]: [['a', 'car']]}))
    for i, v in enumerate(ids):
        write_video(tmp_path / 'videos' / f'{v}.avi', seconds=2, colours=[PALETTE[i]], container_format='avi')
    common = ['msvd', '--captions-pkl', str(tmp_path / 'raw-captions.pkl'), '--test-list',
              str(tmp_path / 'test_list.txt'), '--videos', str(tmp_path / 'videos'), '--size', '32',
              '--workers', '1', '--no-progress']
    remote = f's3://{s3_bucket}/msvd'
    assert convert_main([*common, '--out', str(tmp_path / 'local')]) == 0
    assert convert_main([*common, '--out', remote, '--staging', str(tmp_path / 'staging')]) == 0
    objects = list_objects(remote)
    assert 'test/index.json' in objects and not any(k.startswith('.') for k in objects)
    loaders = {
        'local': build_video_text_dataloader(LoaderOptions(local=str(tmp_path / 'local'), split='test', batch_size=2,
                                             train=False, max_frames=4, image_resolution=28, max_words=16)),
        'remote': build_video_text_dataloader(LoaderOptions(local=str(tmp_path / 'cache'), remote=remote, split='test',
                                              batch_size=2, train=False, max_frames=4, image_resolution=28,
                                              max_words=16)),
    }
    (a,), (b,) = (list(spec.dataloader) for spec in loaders.values())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
