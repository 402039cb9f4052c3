"""Load a checkpoint without running code from it: ``torch.load(weights_only=True)`` under an allowlist.

A ``.pt`` file is a pickle, and unpickling calls whatever its ``__reduce__`` names, so ``resume=`` on a
checkpoint someone shared would run their code: Composer 0.32.1 loads with ``weights_only=False``. Before any
checkpoint reaches Composer, the recipe loads it here with torch's restricted unpickler and an allowlist of
exactly the globals its own checkpoints hold beyond torch's defaults (tensors, dicts, lists, ...):

- ``numpy.ndarray``, ``numpy.dtype`` (and the uint32 dtype class it builds) and numpy's array
  reconstructor: the numpy RNG state Composer saves (``rng[*]['numpy']``, a uint32 array); the reconstructor
  under both numpy 2 (``numpy._core``) and numpy 1 (``numpy.core``) names, so a checkpoint written with either
  loads;
- ``datetime.timedelta``: Composer's ``Timestamp`` wall-clock fields;
- ``torch.torch_version.TorchVersion``: the torch version in Composer's checkpoint metadata.

Everything else in the recipe's checkpoints (model and optimizer tensors — AdamW and BertAdam —, scheduler,
GradCache and callback states, Python RNG state) is plain containers, numbers and strings. Anything else is
refused with :class:`UnsafeCheckpointError` naming the first offending global. No Composer import here: the
export and inference code reuse :func:`safe_torch_load`.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tempme_composer.errors import UnsafeCheckpointError

__all__ = ['ALLOW_UNSAFE_KEY', 'allowed_globals', 'safe_torch_load']

log = logging.getLogger(__name__)

#: The config key that skips the check for a file the user trusts.
ALLOW_UNSAFE_KEY = 'allow_unsafe_checkpoint'


def _numpy_reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def allowed_globals() -> list[Any]:
    """The allowlist beyond torch's defaults, in the form ``torch.serialization.safe_globals`` takes."""
    reconstruct = _numpy_reconstruct()
    return [
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),  # numpy.dtypes.UInt32DType: what np.dtype('u4') is built as
        (reconstruct, 'numpy._core.multiarray._reconstruct'),
        (reconstruct, 'numpy.core.multiarray._reconstruct'),
        datetime.timedelta,
        torch.torch_version.TorchVersion,
    ]


#: Where torch's weights_only error names the offending global (its wording differs by opcode).
_GLOBAL_IN_MESSAGE = (
    re.compile(r'GLOBAL ([A-Za-z_][\w.]*)'),
    re.compile(r"but got <class '([\w.]+)'>"),
    re.compile(r'global:? ([A-Za-z_][\w.]*)'),
)


def _way_out(path: Path) -> str:
    return (
        f'If you trust the file (you or a machine you trust wrote it), either export it there with '
        f'`tempme-export {path} --out DIR` and use the export (safetensors + JSON, never unpickled), or '
        f'load it anyway with {ALLOW_UNSAFE_KEY}=true.'
    )


def safe_torch_load(
    path: str | os.PathLike,
    *,
    map_location: str | torch.device = 'cpu',
    mmap: bool = False,
    allow_unsafe: bool = False,
) -> dict[str, Any]:
    """``torch.load`` a checkpoint with ``weights_only=True`` and the recipe's allowlist.

    Args:
        path: the checkpoint (a symlink such as ``latest-rank0.pt`` is followed).
        map_location: where tensors go.
        mmap: memory-map the tensors instead of reading them (zip-format files; ignored for others).
        allow_unsafe: the user trusts the file: full unpickling (``weights_only=False``), with a warning.

    Returns:
        The unpickled checkpoint, which must be a dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the pickle names a global outside the allowlist (named in the message, with
            the way out), or the file is not a checkpoint torch can read safely (truncated, another format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    mmap = mmap and zipfile.is_zipfile(path)
    if allow_unsafe:
        log.warning(
            '%s=true: loading %s with full unpickling (weights_only=False); only do this for a file '
            'you trust',
            ALLOW_UNSAFE_KEY,
            path,
        )
        ckpt = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    else:
        try:
            with torch.serialization.safe_globals(allowed_globals()):
                ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            text = str(e)
            matches = (pattern.search(text) for pattern in _GLOBAL_IN_MESSAGE)
            name = next((m.group(1) for m in matches if m), None)
            if name is None:  # no global to blame: bytes that are no pickle torch wrote
                raise _unreadable(path, e) from e
            raise UnsafeCheckpointError(
                f'refusing to load checkpoint {path}: its pickle calls the global {name}, which is not one of the '
                "types this recipe's own checkpoints contain, and loading it would run code chosen by whoever "
                f'made the file (torch: {_first_line(text)}). {_way_out(path)}',
                path,
                name,
            ) from e
        except Exception as e:  # noqa: BLE001 - torch raises many kinds for a truncated or foreign file
            raise _unreadable(path, e) from e
    if not isinstance(ckpt, dict):
        raise UnsafeCheckpointError(
            f'{path} holds a {type(ckpt).__name__}, not a checkpoint dict', path, None
        )
    return ckpt


def _unreadable(path: Path, error: BaseException) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f'cannot check checkpoint {path}: torch cannot read it with weights_only=True ({type(error).__name__}: '
        f'{_first_line(str(error))}). It is truncated (an interrupted copy or save) or not a PyTorch '
        f'checkpoint: copy it again. {_way_out(path)}',
        path,
        None,
    )


def _first_line(text: str) -> str:
    """The informative line of torch's multi-line error (which starts with a generic preface)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    useful = [line for line in lines if any(k in line for k in ('GLOBAL', 'but got', 'WeightsUnpickler'))]
    return (useful or lines or [''])[0][:300]
