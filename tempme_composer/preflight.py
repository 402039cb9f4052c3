"""Checks that turn bad inputs into one clear paragraph naming the input and the fix, before (or instead of)
an error deep inside streaming, torch or Composer.

- `check_dataset`: an MDS folder that is missing, empty (zero samples) or has a missing/truncated shard file.
- `check_checkpoint_matches`: a checkpoint whose pickle would run code (refused before Composer unpickles
  it, see `checkpoint_safety`), or whose model weights do not fit this model (another CLIP architecture,
  another model variant such as LoRA on/off): missing, unexpected and mis-shaped keys.
- `disk_full_message`: the message for ``OSError(ENOSPC)`` while a checkpoint is written.

`RecipeError` is what the recipe raises for a bad input that is not a config typo; ``main`` prints it as one
paragraph and exits with status 1.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tempme_composer.checkpoint_safety import UnsafeCheckpointError, safe_torch_load
from tempme_composer.errors import RecipeError
from tempme_composer.fsdp import same_shape_up_to_scalar

__all__ = ['CheckpointRefusedError', 'check_dataset', 'check_checkpoint_matches', 'is_disk_full',
           'disk_full_message', 'latest_checkpoint']

_SHOW = 3  # keys listed per kind of mismatch


class CheckpointRefusedError(RecipeError, UnsafeCheckpointError):
    """``resume=``/autoresume/``do_eval`` on a checkpoint that cannot be loaded without running its code."""


_DATA_FIX = ('Point it at a folder written by `tempme-convert` (or `python -m tempme_composer.data.synthetic '
             '--out DIR` for the demo set: DIR/mds/train and DIR/mds/eval)')


def check_dataset(key: str, local: str | None, split: str | None, validate_hash: bool = True) -> int:
    """Check the local MDS dataset that config key ``key`` names and return its number of samples.

    Raises:
        RecipeError: the folder or its ``index.json`` is missing, the index is unreadable, the dataset has
            zero samples, a shard file is missing or shorter/longer than the index says (truncated copy), or
            (``validate_hash``) its bytes do not match the hash the writer recorded (corrupt copy).
    """
    folder = Path(local) / split if split else Path(local or '')
    index = folder / 'index.json'
    if not index.is_file():
        what = 'does not exist' if not folder.exists() else 'has no index.json, so it is not an MDS dataset'
        raise RecipeError(f'{key}: the dataset folder {str(folder)!r} {what}. {_DATA_FIX}, or fix the path.')
    try:
        shards = json.loads(index.read_text())['shards']
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RecipeError(f'{key}: {index} is not a readable MDS index ({e}). The copy is damaged: '
                          're-run the conversion (or copy the folder again).') from e
    total = sum(int(s.get('samples', 0)) for s in shards)
    if total == 0:
        raise RecipeError(f'{key}: the dataset {str(folder)!r} has zero samples ({len(shards)} shards). The '
                          'conversion skipped every video: read skipped.csv and conversion_report.json next to '
                          'it, fix the annotations/video paths and convert again.')
    for shard in shards:
        raw = shard.get('zip_data') if shard.get('compression') else shard.get('raw_data')
        raw = raw or shard.get('raw_data') or {}
        name, expected = raw.get('basename'), raw.get('bytes')
        if not name or expected is None:
            continue
        path = folder / name
        if not path.is_file():
            raise RecipeError(f'{key}: shard {path} listed in {index} is missing. The dataset copy is incomplete: '
                              'copy the folder again or re-run the conversion.')
        size = path.stat().st_size
        if size != int(expected):
            raise RecipeError(f'{key}: shard {path} is {size} bytes but {index} says {expected}, so the file is '
                              'truncated or corrupt (an interrupted copy or download, or a full disk). Copy '
                              'the folder again or re-run the conversion; with `remote` set, delete the local '
                              'cache folder so it is downloaded again.')
        if validate_hash:
            _check_shard_hashes(key, path, index, raw.get('hashes') or {})
    return total


def _check_shard_hashes(key: str, path: Path, index: Path, hashes: Mapping[str, str]) -> None:
    """Recompute the hashes the writer recorded for a shard (none for shards written without hashes)."""
    if not hashes:
        return
    from streaming.base.hashing import get_hash

    data = path.read_bytes()
    for algo, expected in hashes.items():
        if get_hash(algo, data) != expected:
            raise RecipeError(f'{key}: shard {path} has the right size but its {algo} hash does not match the one '
                              f'in {index}, so its bytes are corrupt (a bad copy or disk). Copy the folder again or '
                              're-run the conversion (data.validate_hash=false skips this check).')


def latest_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """``checkpoints_dir/latest-rank0.pt`` if it resolves to a file (what autoresume loads), else None."""
    path = Path(checkpoints_dir) / 'latest-rank0.pt'
    return path if path.is_file() else None


def _model_state(path: Path, key: str, allow_unsafe: bool) -> Mapping[str, Any]:
    """``state.model`` of a checkpoint, loaded without running code from it (unless ``allow_unsafe``)."""
    try:
        ckpt = safe_torch_load(path, mmap=True, allow_unsafe=allow_unsafe)
    except UnsafeCheckpointError as e:
        raise CheckpointRefusedError(f'{key}={path}: {e}', e.path, e.global_name) from e
    except Exception:  # noqa: BLE001 - allow_unsafe on a file torch cannot read: Composer reports it
        return {}
    state = ckpt.get('state', {}) if isinstance(ckpt, dict) else {}
    model = state.get('model') if isinstance(state, dict) else None
    return model if isinstance(model, Mapping) else {}


def check_checkpoint_matches(path: str | Path, model: torch.nn.Module, key: str, *,
                             allow_unsafe: bool = False) -> None:
    """Load the checkpoint with ``torch.load(weights_only=True)`` under the recipe's allowlist (so Composer,
    which unpickles fully, only ever gets a file that carries no code), then compare its model weights
    (``state.model``) with ``model.state_dict()``.

    Raises:
        CheckpointRefusedError: the pickle names a global outside the allowlist, or the file cannot be read
            safely (skipped with ``allow_unsafe``: the user trusts the file).
        RecipeError: listing the missing, unexpected and mis-shaped keys, and where the run's config is.
    """
    path = Path(path)
    saved = _model_state(path, key, allow_unsafe)
    if not saved:
        return
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [f'{k} {tuple(saved[k].shape)} in the file vs {tuple(own[k].shape)} here' for k in own
              if k in saved and hasattr(saved[k], 'shape') and not same_shape_up_to_scalar(saved[k].shape, own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (('missing from the file', missing), ('unexpected (only in the file)', unexpected),
                         ('with another shape', shapes)):
        if items:
            more = f' and {len(items) - _SHOW} more' if len(items) > _SHOW else ''
            parts.append(f'{len(items)} keys {label}: {"; ".join(items[:_SHOW])}{more}')
    config = path.resolve().parent.parent / 'config.yaml'
    where = f' (its run wrote them to {config})' if config.is_file() else ''
    raise RecipeError(
        f'{key}={path} was saved from a different model than the one this config builds ({". ".join(parts)}). '
        'Another CLIP architecture shows as shape mismatches, another model variant (LoRA, TempMe, '
        f'STOP on/off) as missing/unexpected keys. Set model.* to the values that run used{where}, or point '
        f'{key} at a checkpoint of this model.'
    )


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(what: str, folder: str | Path, error: OSError, kept: str) -> str:
    return (f'disk full while writing {what} in {folder} ({os.strerror(error.errno)}). Nothing saved before was '
            f'touched: {kept}. Free space on that disk (or set output_dir to a larger one) and rerun with '
            'autoresume=true to continue from the last checkpoint.')
