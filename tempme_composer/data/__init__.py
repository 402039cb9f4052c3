"""Data: PyAV video decoding, the synthetic demo dataset, and the MDS/StreamingDataset loaders.

``video`` names are imported eagerly (numpy/PIL/torch only). The streaming and synthetic names are resolved
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
    'VideoTextDataset': 'streaming',
    'build_video_text_dataloader': 'streaming',
    'collate_eval': 'streaming',
    'collate_train': 'streaming',
    'check_dataset_format': 'streaming',
    'make_streams': 'streaming',
    'split_eval_batch': 'streaming',
    'split_eval_batch_by_size': 'streaming',
    'DemoDataset': 'synthetic',
    'MDS_COLUMNS': 'synthetic',
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
