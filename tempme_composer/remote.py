"""Object-store paths (``s3://``, ``gs://``, ``oci://``, ...) for data, checkpoints and exports.

The transfers go through streaming's own storage clients (the ones it streams shards with), so every store
streaming supports works, configured by the usual environment (``S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
...). This module imports neither Composer nor torch, so command-line tools can use it cheaply
(`fetch_checkpoint` is what ``do_eval`` and ``tempme-export`` call for a remote ``best.pt``).

Every transfer is tried a bounded number of times; the final error names the object and the attempt count.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = [
    'ATTEMPTS',
    'RemoteStorageError',
    'download_file',
    'fetch_checkpoint',
    'is_remote',
    'join',
    'list_objects',
    'split_uri',
    'upload_file',
    'upload_folder',
]

log = logging.getLogger(__name__)

#: Tries per transfer (one first attempt and two retries), as streaming's default ``download_retry=2``.
ATTEMPTS = 3
_BACKOFF_S = 0.5  # wait before retry k: 0.5 * 2**k seconds
_SYMLINK = '.symlink'  # Composer's remote "latest" pointer: a text file holding the checkpoint's key

T = TypeVar('T')


class RemoteStorageError(RuntimeError):
    """A transfer to or from an object store that failed every attempt; the message names the object."""


def is_remote(path: str | os.PathLike[str] | None) -> bool:
    """True for ``scheme://...`` URIs (object stores); False for local paths (and ``file://``)."""
    if path is None:
        return False
    scheme = urllib.parse.urlparse(str(path)).scheme
    return len(scheme) > 1 and scheme != 'file'  # one letter: a Windows drive


def split_uri(uri: str) -> tuple[str, str, str]:
    """``s3://bucket/a/b`` -> ``('s3', 'bucket', 'a/b')``."""
    parsed = urllib.parse.urlparse(uri)
    if not is_remote(uri) or not parsed.netloc:
        raise ValueError(f'{uri!r} is not an object-store URI like s3://bucket/prefix')
    return parsed.scheme, parsed.netloc, parsed.path.strip('/')


def join(uri: str, *parts: str) -> str:
    """Join key parts onto a URI with single slashes."""
    return '/'.join([uri.rstrip('/'), *(p.strip('/') for p in parts if p)])


def download_file(uri: str, local: str | Path, *, attempts: int = ATTEMPTS, timeout: float = 600.0) -> Path:
    """Download one object to ``local`` (written under a temporary name, then renamed into place).

    Raises:
        RemoteStorageError: every attempt failed (a missing object, no permission, no connection, ...).
    """
    from streaming.base.storage import CloudDownloader

    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f'.tmp-{local.name}')

    def once() -> Path:
        downloader = CloudDownloader.get(uri)
        try:
            downloader.download(uri, str(tmp), timeout)
        finally:
            downloader.clean_up()
        os.replace(tmp, local)
        return local

    try:
        return _with_retries(once, attempts, f'download {uri}')
    finally:
        tmp.unlink(missing_ok=True)


def upload_file(local: str | Path, uri: str, *, attempts: int = ATTEMPTS) -> None:
    """Upload one local file to the object ``uri`` (overwriting it); the object keeps the file's name.

    Raises:
        RemoteStorageError: every attempt failed.
    """
    local = Path(local)
    if not local.is_file():
        raise FileNotFoundError(f'cannot upload {local}: no such file')
    remote_dir, name = uri.rstrip('/').rsplit('/', 1)
    if name != local.name:
        raise ValueError(f'upload_file keeps the file name: {uri} must end with /{local.name}')
    _with_retries(lambda: _uploader_for(local.parent, remote_dir).upload_file(local.name),
                  attempts, f'upload {local} to {uri}')


def upload_folder(local_dir: str | Path, uri: str, *, attempts: int = ATTEMPTS, skip_hidden: bool = False) -> list[str]:
    """Upload every file under ``local_dir`` to ``uri`` with the same relative keys; returns the URIs.
    ``skip_hidden`` leaves out paths with a part starting with ``.`` (work caches, temporary files).

    Files are uploaded sorted by path, ``index.json`` files last, so that a reader never sees an index whose
    shards are not there yet.

    Raises:
        RemoteStorageError: a file failed every attempt (the message names it; earlier files are uploaded).
    """
    local_dir = Path(local_dir)
    files = sorted((p for p in local_dir.rglob('*') if p.is_file() and not (
        skip_hidden and any(part.startswith('.') for part in p.relative_to(local_dir).parts))),
                   key=lambda p: (p.name == 'index.json', str(p)))
    uploader = _with_retries(lambda: _uploader_for(local_dir, uri), attempts, f'open {uri} for upload')
    done = []
    for path in files:
        rel = path.relative_to(local_dir).as_posix()
        target = join(uri, rel)
        _with_retries(lambda r=rel: uploader.upload_file(r), attempts, f'upload {path} to {target}')
        done.append(target)
    log.info('uploaded %d files from %s to %s', len(done), local_dir, uri)
    return done


def list_objects(uri: str) -> dict[str, int]:
    """``{key relative to uri: size in bytes}`` of the objects under an ``s3://`` prefix.

    Raises:
        RemoteStorageError: the listing failed every attempt.
        NotImplementedError: another store (listing is only needed for S3 checks and messages).
    """
    scheme, bucket, prefix = split_uri(uri)
    if scheme != 's3':
        raise NotImplementedError(f'listing {scheme}:// stores is not supported (only s3://)')
    prefix = f'{prefix}/' if prefix else ''

    def once() -> dict[str, int]:
        paginator = _s3_client().get_paginator('list_objects_v2')
        sizes = {}
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get('Contents', []):
                sizes[obj['Key'][len(prefix):]] = int(obj['Size'])
        return sizes

    return _with_retries(once, ATTEMPTS, f'list {uri}')


def fetch_checkpoint(uri: str, local_dir: Path) -> Path:
    """A local path for checkpoint ``uri``: a local path is returned as is; a remote one is downloaded into
    ``local_dir`` (same file name). Composer's remote ``latest-rank0.pt`` exists only as
    ``latest-rank0.pt.symlink`` pointing at the real checkpoint; that pointer is followed.

    Raises:
        FileNotFoundError: a local path that does not exist.
        RemoteStorageError: the object (and its ``.symlink`` pointer) cannot be downloaded.
    """
    if not is_remote(uri):
        path = Path(uri)
        if not path.is_file():
            raise FileNotFoundError(f'checkpoint {uri}: no such file')
        return path
    local_dir = Path(local_dir)
    name = uri.rstrip('/').rsplit('/', 1)[-1]
    try:
        return download_file(uri, local_dir / name)
    except RemoteStorageError as first:
        try:
            pointer = download_file(uri + _SYMLINK, local_dir / (name + _SYMLINK), attempts=1)
        except RemoteStorageError:
            raise first from None
    scheme, bucket, _ = split_uri(uri)
    key = pointer.read_text().strip()
    pointer.unlink()
    target = f'{scheme}://{bucket}/{key.lstrip("/")}'
    log.info('%s points at %s', uri + _SYMLINK, target)
    return download_file(target, local_dir / key.rsplit('/', 1)[-1])


def _with_retries(fn: Callable[[], T], attempts: int, what: str) -> T:
    if attempts < 1:
        raise ValueError(f'attempts must be >= 1, got {attempts}')
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any client error: retry, then report it with the count
            if i + 1 == attempts:
                raise RemoteStorageError(f'could not {what} after {attempts} attempt{"s" * (attempts > 1)}: '
                                         f'{_reason(e)}') from e
            log.warning('attempt %d/%d to %s failed: %s', i + 1, attempts, what, _reason(e))
            time.sleep(_BACKOFF_S * 2**i)
    raise AssertionError('unreachable')  # pragma: no cover


def _reason(e: BaseException) -> str:
    text = str(e).split('\n')[0] or type(e).__name__
    return f'{type(e).__name__}: {text}'


def _uploader_for(local_dir: Path, remote_dir: str):  # -> streaming CloudUploader
    from streaming.base.storage import CloudUploader

    return CloudUploader.get(out=(str(local_dir), remote_dir), keep_local=True, exist_ok=True, retry=1)


def _s3_client():  # -> botocore S3 client
    import boto3

    return boto3.session.Session().client('s3', endpoint_url=os.environ.get('S3_ENDPOINT_URL') or None)

