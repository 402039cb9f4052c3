"""How many videos an evaluation gallery should hold, so metrics on a smaller one say so.

A converted split records the videos its annotation file lists (``tempme_dataset.json``: the written ones;
``skipped.csv``: the others with their reason). Published tables rank against the whole official test
gallery (e.g. MSR-VTT 1k-A: 1,000 videos); R@K on 987 of them is easier and not comparable, so the
evaluation prints "987 of 1,000 test videos" beside the metric lines.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tempme_composer.data.annotations import TEST_SPLITS
from tempme_composer.data.format import META_FILE, SKIPPED_FILE

__all__ = ['Gallery', 'read_gallery', 'gallery_of_source']


@dataclass(frozen=True)
class Gallery:
    """The videos a converted split's annotations list; ``written`` of them are in the MDS folder."""

    dataset: str
    split: str
    listed: int  # distinct videos the annotation file lists (a duplicate listing counts once)
    written: int
    is_test: bool  # the benchmark's official test split (published numbers are reported on it)
    skipped_csv: Path

    def note(self, num_videos: int) -> str | None:
        """One line when ``num_videos`` evaluated are fewer than listed, else None."""
        if num_videos >= self.listed:
            return None
        kind = 'test videos' if self.is_test else 'listed videos'
        text = (f'gallery: {num_videos:,} of {self.listed:,} {kind} of {self.dataset}/{self.split} '
                f'({self.listed - num_videos:,} not converted, reasons in {self.skipped_csv})')
        if self.is_test:
            text += (f': these metrics are NOT comparable with published tables, which rank against all '
                     f'{self.listed:,}')
        return text


def read_gallery(folder: str | os.PathLike) -> Gallery | None:
    """The gallery of a folder written by ``tempme-convert`` (None for other MDS folders, e.g. the demo)."""
    folder = Path(folder)
    try:
        meta: dict[str, Any] = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    if meta.get('kind', 'videos') != 'videos' or 'dataset' not in meta or 'split' not in meta:
        return None
    written = int(meta.get('num_videos', 0))
    skipped_csv = folder / SKIPPED_FILE
    not_written: set[str] = set()
    try:
        with open(skipped_csv, newline='', encoding='utf-8') as f:
            not_written = {row['video_id'] for row in csv.DictReader(f) if row.get('reason') != 'duplicate_id'}
    except (OSError, KeyError, csv.Error):
        pass
    dataset, split = str(meta['dataset']), str(meta['split'])
    return Gallery(dataset=dataset, split=split, listed=written + len(not_written), written=written,
                   is_test=TEST_SPLITS.get(dataset) == split, skipped_csv=skipped_csv.resolve())


def gallery_of_source(source: Any) -> Gallery | None:
    """:func:`read_gallery` of a config data source (``local`` + ``split``); None for mixed streams, a remote
    dataset (its cache holds no ``skipped.csv``) or no source."""
    if source is None or getattr(source, 'streams', None) or getattr(source, 'remote', None):
        return None
    local, split = getattr(source, 'local', None), getattr(source, 'split', None)
    if not local:
        return None
    return read_gallery(Path(local) / split if split else Path(local))
