"""Checkpoints in an object store (``save_folder: s3://bucket/prefix``), through Composer's own upload path.

Checkpoints are still written to ``output_dir/checkpoints`` first (so everything local keeps working: the
model check before a resume, the disk-full messages, ``latest-rank0.pt``); Composer's `CheckpointSaver` then
uploads each one with a `RemoteUploaderDownloader` to ``<save_folder>/ep{epoch}-ba{batch}-rank{rank}.pt`` and
points ``<save_folder>/latest-rank0.pt.symlink`` at it; `BestCheckpoint` uploads ``best.pt`` and
``best.json`` the same way.

- `prefetch_latest`: autoresume on a fresh machine (empty output_dir) first downloads the newest remote
  checkpoint (and best.pt/best.json) into output_dir/checkpoints, so the resume is the local one.
- `local_checkpoint`: ``resume=s3://.../best.pt`` (eval or fine-tune) is downloaded once per node.
- `CheckpointUploader`: a failed upload stops training with a `CheckpointUploadError` that lists what is
  saved locally, what is on the store and what is not (noticed at the end of training, once every epoch is
  trained, it says so: a rerun with the same ``epochs`` would not upload anything).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from composer.callbacks import CheckpointSaver
from composer.loggers import RemoteUploaderDownloader
from composer.utils import dist

from tempme_composer.errors import CheckpointUploadError, RecipeError
from tempme_composer.remote import (
    RemoteStorageError,
    download_file,
    fetch_checkpoint,
    is_remote,
    join,
    list_objects,
    split_uri,
)

__all__ = [
    'CheckpointUploader',
    'build_checkpoint_saver',
    'local_checkpoint',
    'prefetch_latest',
    'remote_key',
]

log = logging.getLogger(__name__)

_LATEST = 'latest-rank{rank}.pt'
_CHECKPOINT = 'ep{epoch}-ba{batch}-rank{rank}.pt'
# Composer's attempts per upload for the errors it calls transient (ObjectStoreTransientError). Its S3 store
# raises none: an S3 upload is tried once by Composer, with botocore's own retries inside (3 by default).
UPLOAD_ATTEMPTS = 3


def remote_key(save_folder: str, name: str) -> str:
    """The object key (relative to the bucket) of ``name`` under ``save_folder``."""
    _, _, prefix = split_uri(save_folder)
    return f'{prefix}/{name}' if prefix else name


class CheckpointUploader(RemoteUploaderDownloader):
    """Composer's RemoteUploaderDownloader for the bucket of ``save_folder``, one upload at a time (what
    autoresume needs), whose failure becomes a `CheckpointUploadError` naming the local and remote files."""

    def __init__(self, save_folder: str, local_folder: Path) -> None:
        scheme, bucket, _ = split_uri(save_folder)
        super().__init__(
            bucket_uri=f'{scheme}://{bucket}', num_concurrent_uploads=1, num_attempts=UPLOAD_ATTEMPTS
        )
        self.save_folder = save_folder
        self.local_folder = Path(local_folder)
        self._prefix = remote_key(save_folder, '')

    def init(self, state, logger) -> None:  # noqa: ANN001 - composer State, Logger
        try:  # Composer writes a probe object (.credentials_validated_successfully) at the bucket root
            super().init(state, logger)
        except Exception as e:
            reason = str(e).split('\n')[0] or type(e).__name__
            raise CheckpointUploadError(
                f'save_folder={self.save_folder}: cannot write to the store ({type(e).__name__}: {reason}), '
                f'checked before training. Nothing was trained or saved yet. Check that the bucket exists, the '
                'credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and S3_ENDPOINT_URL.'
            ) from e

    def upload_file(self, state, remote_file_name: str, file_path: Path, *, overwrite: bool) -> None:  # noqa: ANN001
        """Only the checkpoints under save_folder; TensorBoard's event files (which Composer would put at
        ``tensorboard_logs/`` of the bucket) stay in output_dir/tensorboard."""
        if remote_file_name.startswith(self._prefix):
            super().upload_file(state, remote_file_name, file_path, overwrite=overwrite)

    def _check_workers(self) -> None:
        try:
            super()._check_workers()
        except Exception as e:
            raise CheckpointUploadError(self.failure_message(e)) from e

    def wait_for_workers(self, device) -> None:  # noqa: ANN001 - composer Device
        try:  # at FIT_END: every epoch is trained and saved locally
            super().wait_for_workers(device)
        except Exception as e:
            raise CheckpointUploadError(self.failure_message(e, finished=True)) from e

    def failure_message(self, error: BaseException, *, finished: bool = False) -> str:
        """What is saved where after a failed upload, and how to continue; ``finished``: noticed at the end
        of training (all epochs trained), where a rerun with autoresume=true and the same epochs trains and
        uploads nothing."""
        local = sorted(
            p.name for p in self.local_folder.glob('*') if p.is_file() and not p.name.startswith('.')
        )
        try:
            remote = sorted(list_objects(self.save_folder))
            remote_text = ', '.join(remote) if remote else 'nothing'
            missing = [
                n for n in local if n not in remote and n.removesuffix('.pt') + '.pt.symlink' not in remote
            ]
            missing_text = ', '.join(missing) if missing else 'nothing'
        except (RemoteStorageError, NotImplementedError) as e:
            remote_text = f'unknown (listing it failed too: {e})'
            missing_text = 'see the two lists above'
        reason = str(error).split('\n')[0] or type(error).__name__
        if finished:
            state = 'Training finished (every epoch is trained and saved locally), but not every file reached the store'
            advice = (
                'Fix the store (bucket, credentials, S3_ENDPOINT_URL), then copy the files not uploaded to '
                f'{self.save_folder}, or continue training with autoresume=true and a larger epochs= (it '
                'uploads the checkpoints it saves; with the same epochs it trains and uploads nothing).'
            )
        else:
            state = 'Training stopped'
            advice = (
                'Fix the store (bucket, credentials, S3_ENDPOINT_URL) and rerun with autoresume=true: it '
                'continues from the local checkpoints and uploads the next ones.'
            )
        return (
            f'uploading a checkpoint to save_folder={self.save_folder} failed ({type(error).__name__}: {reason}). '
            f'{state}. Saved locally in {self.local_folder}: {", ".join(local) or "nothing"}. On '
            f'{self.save_folder}: {remote_text}. Not uploaded: {missing_text}. {advice}'
        )


def build_checkpoint_saver(
    save_folder: str, local_folder: Path, save_interval: str, num_checkpoints_to_keep: int
) -> CheckpointSaver:
    """The Trainer's CheckpointSaver as it builds it from its ``save_*`` arguments (same file names,
    interval, rotation, overwrite), saving to ``local_folder`` and uploading to ``save_folder``."""
    return CheckpointSaver(
        folder=str(local_folder),
        filename=_CHECKPOINT,
        remote_file_name=remote_key(save_folder, _CHECKPOINT),
        latest_filename=_LATEST,
        latest_remote_file_name=remote_key(save_folder, _LATEST),
        overwrite=True,
        save_interval=save_interval,
        num_checkpoints_to_keep=num_checkpoints_to_keep,
    )


def prefetch_latest(save_folder: str, local_folder: Path) -> Path | None:
    """On each node's local rank 0: if ``local_folder`` has no ``latest-rank0.pt`` but ``save_folder`` has
    one, download it (following Composer's ``.symlink`` pointer) with ``best.pt``/``best.json`` and link
    ``latest-rank0.pt`` to it, as a local run would have left it. Returns the local latest, if any.

    Raises:
        RecipeError: the store cannot be read (a missing checkpoint is not an error: first run).
    """
    local_folder = Path(local_folder)
    latest = local_folder / _LATEST.format(rank=0)
    if dist.get_local_rank() == 0 and not (latest.is_symlink() or latest.is_file()):
        try:
            _download_latest(save_folder, local_folder, latest)
        except RemoteStorageError as e:
            raise RecipeError(
                f'autoresume: cannot read the checkpoints in save_folder={save_folder}: {e}. '
                'Check the bucket, the credentials and S3_ENDPOINT_URL.'
            ) from e
    dist.barrier()  # the other ranks of the node see the files once local rank 0 is done
    return latest if (latest.is_symlink() or latest.is_file()) else None


def _download_latest(save_folder: str, local_folder: Path, latest: Path) -> None:
    name = _LATEST.format(rank=0)
    scheme = split_uri(save_folder)[0]
    if scheme == 's3':  # a listing tells "no checkpoint yet" from "cannot reach the store"
        objects = list_objects(save_folder)
        if name + '.symlink' not in objects and name not in objects:
            log.info('autoresume: no checkpoint in %s yet; starting from scratch', save_folder)
            return
        path = fetch_checkpoint(join(save_folder, name), local_folder)
    else:
        try:
            path = fetch_checkpoint(join(save_folder, name), local_folder)
        except RemoteStorageError as e:
            log.info('autoresume: no checkpoint found in %s (%s); starting from scratch', save_folder, e)
            return
    if path.name != name:
        os.symlink(path.name, latest)
    log.info('autoresume: downloaded %s from %s', path.name, save_folder)
    for extra in ('best.pt', 'best.json'):
        try:
            download_file(join(save_folder, extra), local_folder / extra, attempts=1)
        except RemoteStorageError:
            log.info('autoresume: no %s in %s', extra, save_folder)


def local_checkpoint(path: str, local_dir: Path) -> str:
    """``resume`` as a local path: a remote URI is downloaded once per node into ``local_dir``.

    Raises:
        RecipeError: the object cannot be downloaded (the message names it and the attempt count).
    """
    if not is_remote(path):
        return path
    fetched: str | None = None
    if dist.get_local_rank() == 0:
        try:
            fetched = str(fetch_checkpoint(path, Path(local_dir)))
        except RemoteStorageError as e:
            raise RecipeError(f'resume={path}: {e}') from e
    names = [p for p in dist.all_gather_object(fetched) if p is not None]  # same object on every node
    return names[0]
