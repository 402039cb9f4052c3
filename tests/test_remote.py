"""tempme_composer.remote against a real S3 endpoint (moto's server on loopback): uploads, downloads,
Composer's ``.symlink`` pointer, and bounded retries whose error names the object and the attempt count."""

from pathlib import Path

import boto3
import pytest

from tempme_composer.remote import (
    RemoteStorageError,
    download_file,
    fetch_checkpoint,
    is_remote,
    list_objects,
    upload_file,
    upload_folder,
)


def test_is_remote_tells_uris_from_paths():
    assert is_remote('s3://b/k') and is_remote('gs://b/k')
    assert not is_remote('/data/x') and not is_remote('relative/x') and not is_remote(None)
    assert not is_remote('C:/data') and not is_remote('file:///data')


def test_folder_round_trip_keeps_keys_and_bytes(tmp_path, s3_bucket):
    src = tmp_path / 'src'
    (src / 'train').mkdir(parents=True)
    (src / 'train' / 'index.json').write_text('{}')
    (src / 'train' / 'shard.00000.mds').write_bytes(b'\x00\x01' * 100)
    (src / 'report.json').write_text('{"ok": 1}')
    uris = upload_folder(src, f's3://{s3_bucket}/data')
    assert uris[-1].endswith('train/index.json')  # the index goes last
    assert list_objects(f's3://{s3_bucket}/data') == {'report.json': 9, 'train/index.json': 2,
                                                     'train/shard.00000.mds': 200}
    got = download_file(f's3://{s3_bucket}/data/train/shard.00000.mds', tmp_path / 'out' / 'shard')
    assert got.read_bytes() == b'\x00\x01' * 100


def test_fetch_checkpoint_follows_composers_symlink_pointer(tmp_path, s3_bucket):
    ckpt = tmp_path / 'ep1-ba4-rank0.pt'
    ckpt.write_bytes(b'weights')
    upload_file(ckpt, f's3://{s3_bucket}/run/ep1-ba4-rank0.pt')
    pointer = tmp_path / 'latest-rank0.pt.symlink'
    pointer.write_text('run/ep1-ba4-rank0.pt')
    upload_file(pointer, f's3://{s3_bucket}/run/latest-rank0.pt.symlink')

    direct = fetch_checkpoint(f's3://{s3_bucket}/run/ep1-ba4-rank0.pt', tmp_path / 'a')
    assert direct == tmp_path / 'a' / 'ep1-ba4-rank0.pt' and direct.read_bytes() == b'weights'
    latest = fetch_checkpoint(f's3://{s3_bucket}/run/latest-rank0.pt', tmp_path / 'b')
    assert latest.name == 'ep1-ba4-rank0.pt' and latest.read_bytes() == b'weights'
    assert fetch_checkpoint(str(ckpt), tmp_path / 'c') == ckpt  # a local path is used in place


def test_missing_object_is_one_error_naming_it_with_the_attempt_count(tmp_path, s3_bucket):
    uri = f's3://{s3_bucket}/run/best.pt'
    with pytest.raises(RemoteStorageError, match=rf'could not download {uri} after 3 attempts: ') as info:
        fetch_checkpoint(uri, tmp_path)
    assert '\n' not in str(info.value)
    assert not any(tmp_path.iterdir())  # no partial or temporary file left behind
    with pytest.raises(FileNotFoundError, match='no such file'):
        fetch_checkpoint(str(tmp_path / 'nope.pt'), tmp_path)


def test_upload_to_a_missing_bucket_fails_after_bounded_attempts(tmp_path, s3_server):
    f = tmp_path / 'best.json'
    f.write_text('{}')
    with pytest.raises(RemoteStorageError, match=r'could not upload .*best.json to s3://no-such-bucket-x/r/best.json '
                                                 r'after 2 attempts'):
        upload_file(f, 's3://no-such-bucket-x/r/best.json', attempts=2)
    assert 'no-such-bucket-x' not in [b['Name'] for b in boto3.client('s3', endpoint_url=s3_server)
                                      .list_buckets()['Buckets']]


def test_upload_keeps_the_file_name(tmp_path):
    f = tmp_path / 'a.pt'
    f.write_bytes(b'x')
    with pytest.raises(ValueError, match='must end with /a.pt'):
        upload_file(f, 's3://bucket/run/b.pt')
    assert Path(f).is_file()
