"""The on-disk format of our datasets, declared once: MDS columns and encodings, format versions, file names.

Writers (``tempme-convert``, the demo generators, the format-1 copy) and readers (the training loader, the
gallery check, the pre-flight check) import these names, so a column, a version or a file name cannot drift
between them. The frame bytes themselves are laid out by :mod:`tempme_composer.data.frame_layout`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    'DATASET_FORMAT_VERSION',
    'DEMO_COLUMNS',
    'DEMO_FORMAT_VERSION',
    'DEMO_META_FILE',
    'FRAME_COLUMN_ENCODINGS',
    'LONG_DEMO_FORMAT_VERSION',
    'LONG_DEMO_META_FILE',
    'MDS_INDEX_FILE',
    'META_FILE',
    'PAIRS_COLUMNS',
    'PAIRS_SUFFIX',
    'REPORT_FILE',
    'SHARD_HASHES',
    'SKIPPED_FILE',
    'SPLIT_REPORT_FILE',
    'SUPPORTED_FORMAT_VERSIONS',
    'pairs_split',
    'read_dataset_meta',
    'video_columns',
]

# --- versions ---------------------------------------------------------------------------------------------

#: Version of the layout ``tempme-convert`` writes; the loader refuses versions it does not know. 2: JPEG frames
#: as one ``bytes`` blob the loader decodes selectively (`tempme_composer.data.frame_layout`); 1: ``jpegarray``.
DATASET_FORMAT_VERSION = 2
#: ``tempme_dataset.json`` format versions the loader reads.
SUPPORTED_FORMAT_VERSIONS = (1, 2)
#: Version of the demo dataset (2: JPEG frames in one blob; 1: ``jpegarray``, still read and reused).
DEMO_FORMAT_VERSION = 2
#: Version of the long (ActivityNet-like) demo dataset's parameters file.
LONG_DEMO_FORMAT_VERSION = 1

# --- file names -------------------------------------------------------------------------------------------

#: MDS's own index of a split folder (its shards, their sizes and hashes).
MDS_INDEX_FILE = 'index.json'
#: Per split folder: format version, decode settings and counts, written by ``tempme-convert``.
META_FILE = 'tempme_dataset.json'
#: Per video split: every listed video that was not written (video_id, path, reason, detail).
SKIPPED_FILE = 'skipped.csv'
#: Per output root: every split's figures across re-runs.
REPORT_FILE = 'conversion_report.json'
#: Per video split: its own figures, written with the split.
SPLIT_REPORT_FILE = 'conversion_summary.json'
#: The demo dataset's parameters (written last: marks a complete demo folder).
DEMO_META_FILE = 'demo_dataset.json'
#: The long demo dataset's parameters (written last: marks a complete folder).
LONG_DEMO_META_FILE = 'long_demo_dataset.json'
#: Suffix of the caption-level index written next to each video split.
PAIRS_SUFFIX = '_pairs'

# --- columns ----------------------------------------------------------------------------------------------

#: Hashes recorded per shard in index.json (fast, non-cryptographic): the pre-flight check recomputes them to
#: catch a shard whose size is right but whose bytes are corrupt (a bad copy or disk).
SHARD_HASHES = ['xxh64']
#: MDS encoding of the ``frames`` column per frame format (format 2).
FRAME_COLUMN_ENCODINGS = {'jpeg': 'bytes', 'raw': 'ndarray:uint8'}
#: Columns of a caption-level index (no frames): one row per (video, caption) pair.
PAIRS_COLUMNS = {'video_id': 'str', 'video_index': 'int', 'caption_index': 'int', 'caption': 'str'}
#: Columns of the demo dataset's splits (a subset of a converted video split's).
DEMO_COLUMNS = {
    'video_id': 'str',
    'captions': 'json',
    'frames': FRAME_COLUMN_ENCODINGS['jpeg'],
    'num_frames': 'int',
    'fps': 'float32',
}


def pairs_split(split: str) -> str:
    """Name of the caption-level index split written next to ``split``."""
    return f'{split}{PAIRS_SUFFIX}'


def video_columns(frame_format: str) -> dict[str, str]:
    """MDS columns of a converted video split (:data:`DEMO_COLUMNS` plus timestamps and duration)."""
    frames = FRAME_COLUMN_ENCODINGS[frame_format]
    return {
        'video_id': 'str',
        'captions': 'json',
        'timestamps': 'json',
        'frames': frames,
        'num_frames': 'int',
        'fps': 'float32',
        'duration': 'float32',
    }


def read_dataset_meta(folder: str | os.PathLike) -> dict[str, Any] | None:
    """:data:`META_FILE` of an MDS folder, or None when there is none."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
