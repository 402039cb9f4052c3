"""Data: PyAV video decoding, the on-disk format, conversion, the synthetic demo dataset, and the MDS loaders.

One job per module: ``format`` (columns, versions, file names), ``video_files`` (which files are videos),
``convert`` (``tempme-convert``), ``dataset`` (a sample as tensors), ``streams`` (where samples come from),
``collate`` (batches), ``loader`` (the DataSpec from a :class:`LoaderOptions`).

``video`` names are imported eagerly (numpy/PIL/torch only). The loader and synthetic names are resolved
lazily on first access, so ``python -m tempme_composer.data.synthetic`` and the decoding helpers do not pay
for importing composer.
"""

from __future__ import annotations

import importlib
from typing import Any

from tempme_composer.data.video import (
    DecodedVideo,
    VideoDecodeError,
    decode_video,
    encode_jpeg,
    select_frame_indices,
)

_LAZY = {
    'LoaderOptions': 'loader',
    'VideoTextDataset': 'dataset',
    'build_video_text_dataloader': 'loader',
    'collate_eval': 'collate',
    'collate_train': 'collate',
    'check_dataset_format': 'streams',
    'make_streams': 'streams',
    'split_eval_batch': 'collate',
    'split_eval_batch_by_size': 'collate',
    'DEMO_COLUMNS': 'format',
    'DemoDataset': 'synthetic',
    'generate_demo_dataset': 'synthetic',
}

__all__ = [
    'DecodedVideo',
    'VideoDecodeError',
    'decode_video',
    'encode_jpeg',
    'select_frame_indices',
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f'{__name__}.{_LAZY[name]}'), name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
