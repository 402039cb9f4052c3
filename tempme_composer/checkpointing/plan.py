"""`plan_checkpoints`: one decision, made before data is read, about where a run's checkpoints come from and go.

Where it resumes from (``resume=``, downloaded once per node when it is remote; or, with autoresume, the
latest checkpoint of ``output_dir``, fetched from ``save_folder`` on a fresh machine), whether that file is
safe to unpickle and fits this model, and what writes checkpoints (Composer's saver, `BestCheckpoint`, the
uploader to ``save_folder``). A full disk while one is written becomes a `RecipeError` naming what survived.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from composer.callbacks import CheckpointSaver

from tempme_composer.checkpointing.best_checkpoint import BestCheckpoint
from tempme_composer.checkpointing.disk import disk_full_message, is_disk_full, kept_checkpoints
from tempme_composer.checkpointing.matching import check_checkpoint_matches, latest_checkpoint
from tempme_composer.checkpointing.remote import (
    CheckpointUploader,
    build_checkpoint_saver,
    local_checkpoint,
    prefetch_latest,
)
from tempme_composer.config import TrainConfig
from tempme_composer.errors import RecipeError

__all__ = ['CheckpointPlan', 'plan_checkpoints']


@dataclass
class CheckpointPlan:
    """What one run loads and saves. ``best_checkpoint``, ``saver`` and ``uploader`` are None when the run
    does not train (or, for the last two, has no ``save_folder``)."""

    folder: Path  # output_dir/checkpoints: Composer's resumable checkpoints, best.pt and best.json
    train: bool
    load_path: str | None  # the local copy of resume= (autoresume's latest checkpoint wins over it)
    resume_from: Path | None  # the file the run starts from, checked against the model; None: fresh start
    autoresume: bool
    save_interval: str
    keep: int  # resumable checkpoints kept (Composer's rotation)
    best_checkpoint: BestCheckpoint | None
    saver: CheckpointSaver | None
    uploader: CheckpointUploader | None

    def trainer_kwargs(self) -> dict[str, Any]:
        """Composer ``Trainer`` arguments: resumable checkpoints for training, the weights alone for eval."""
        if not self.train:
            return {'load_path': self.load_path, 'load_weights_only': True}
        return {
            'save_folder': str(self.folder),
            'save_interval': self.save_interval,
            'save_num_checkpoints_to_keep': self.keep,
            # Also with autoresume: a run killed while writing a checkpoint leaves a file newer than `latest`
            # (or no `latest` at all), which save_overwrite=False would refuse to overwrite on the next start.
            'save_overwrite': True,
            'autoresume': self.autoresume,
            'load_path': self.load_path,
        }

    def disk_full_error(self, error: BaseException) -> RecipeError | None:
        """The error to raise for a full disk during training (None: ``error`` is something else)."""
        if not is_disk_full(error):
            return None
        kept = kept_checkpoints(self.folder) + (
            ' (a partial ep*-ba*-rank0.pt newer than latest-rank0.pt may be left: delete it)'
        )
        return RecipeError(disk_full_message('a checkpoint', self.folder, error, kept))


def plan_checkpoints(
    cfg: TrainConfig, model: torch.nn.Module, output_dir: Path, *, eval_label: str, metric: str
) -> CheckpointPlan:
    """Fetch and check what the run resumes from, and build what saves its checkpoints.

    Raises:
        CheckpointRefusedError: the checkpoint would run code when unpickled (unless allow_unsafe_checkpoint).
        RecipeError: it was saved from another model, or ``save_folder`` cannot be read.
    """
    folder = output_dir / 'checkpoints'
    load_path = (
        local_checkpoint(cfg.resume, output_dir / 'fetched') if cfg.resume else None
    )  # s3://.../best.pt
    autoresume = cfg.autoresume and cfg.do_train
    if cfg.save_folder and autoresume:  # fresh machine: the newest remote checkpoint
        prefetch_latest(cfg.save_folder, folder)
    latest = latest_checkpoint(folder) if autoresume else None
    if latest is not None:  # autoresume overrides resume=, as Composer does
        check_checkpoint_matches(
            latest,
            model,
            f'autoresume (the latest checkpoint of {output_dir})',
            allow_unsafe=cfg.allow_unsafe_checkpoint,
        )  # also refuses a pickle that runs code
    elif load_path:
        check_checkpoint_matches(load_path, model, 'resume', allow_unsafe=cfg.allow_unsafe_checkpoint)
    resume_from = latest or (Path(load_path) if load_path else None)
    best = saver = uploader = None
    if cfg.do_train:
        best = BestCheckpoint(
            folder, eval_label, metric, dataclasses.asdict(cfg), remote_folder=cfg.save_folder
        )
    if cfg.do_train and cfg.save_folder:  # Composer uploads every checkpoint; local copies stay in folder
        uploader = CheckpointUploader(cfg.save_folder, folder)
        saver = build_checkpoint_saver(cfg.save_folder, folder, cfg.save_interval, cfg.checkpoints_to_keep)
    return CheckpointPlan(
        folder=folder,
        train=cfg.do_train,
        load_path=load_path,
        resume_from=resume_from,
        autoresume=cfg.autoresume,
        save_interval=cfg.save_interval,
        keep=cfg.checkpoints_to_keep,
        best_checkpoint=best,
        saver=saver,
        uploader=uploader,
    )
