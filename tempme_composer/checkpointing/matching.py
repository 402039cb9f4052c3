"""Does a checkpoint fit this model? Refuse a pickle that would run code, then compare its weights.

Before Composer (which unpickles fully) sees a ``resume=`` or autoresume file, it is loaded with
`safe_torch_load` and its ``state.model`` compared key by key with the model this config builds: another
CLIP architecture shows as shape mismatches, another variant (LoRA, TempMe, STOP on/off) as missing or
unexpected keys. FSDP's 1-element ``logit_scale`` counts as the scalar a DDP run saves.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tempme_composer.checkpointing.safe_load import safe_torch_load
from tempme_composer.errors import CheckpointRefusedError, RecipeError, UnsafeCheckpointError
from tempme_composer.fsdp import same_shape_up_to_scalar

__all__ = ['check_checkpoint_matches', 'latest_checkpoint']

_SHOW = 3  # keys listed per kind of mismatch


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


def check_checkpoint_matches(
    path: str | Path, model: torch.nn.Module, key: str, *, allow_unsafe: bool = False
) -> None:
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
    shapes = [
        f'{k} {tuple(saved[k].shape)} in the file vs {tuple(own[k].shape)} here'
        for k in own
        if k in saved
        and hasattr(saved[k], 'shape')
        and not same_shape_up_to_scalar(saved[k].shape, own[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (
        ('missing from the file', missing),
        ('unexpected (only in the file)', unexpected),
        ('with another shape', shapes),
    ):
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
