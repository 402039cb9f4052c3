"""The real public benchmark split files the parser and conversion tests read (tests/data/annotations/README.md).

Imported as a top-level helper module (like ``video_fixtures``), so tests in any sub-folder of tests/ find the
same files. The two ActivityNet Captions JSON files are stored gzip-compressed; the readers take plain paths.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

ANNOTATIONS = Path(__file__).resolve().parent / 'data' / 'annotations'


def activitynet_json(name: str, folder: Path) -> Path:
    """Decompress ``activitynet/{name}.json.gz`` (``train`` or ``val_1``) into ``folder``; returns the JSON path."""
    out = Path(folder) / f'{name}.json'
    with gzip.open(ANNOTATIONS / 'activitynet' / f'{name}.json.gz', 'rb') as src, open(out, 'wb') as dst:
        shutil.copyfileobj(src, dst)
    return out


def load_activitynet(name: str) -> dict:
    """The parsed ``activitynet/{name}.json.gz``: video id -> duration, timestamps, sentences."""
    with gzip.open(ANNOTATIONS / 'activitynet' / f'{name}.json.gz', 'rt', encoding='utf-8') as f:
        return json.load(f)
