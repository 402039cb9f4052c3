"""``tempme-search INDEX --eval-moments``: video-corpus moment retrieval over an index built from an MDS split
whose captions carry ``[start, end]`` timestamps (ActivityNet Captions, DiDeMo, the long demo), or over a folder
index with ``--annotations FILE`` (ActivityNet Captions' JSON layout; video ids are the files' names).

The index's rows are the moments (a row without ``start``/``end`` is its whole video, ``[0, duration]``); its
captions are encoded with the index's model and scored against every row with
`tempme_composer.metrics.moments` (definitions, ties and NMS there). No Composer import.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from tempme_composer.inference.exported import ExportedModel
from tempme_composer.inference.store import IndexFolderError
from tempme_composer.metrics.moments import (
    DEFAULT_CHUNK_ELEMENTS,
    MOMENT_IOUS,
    MOMENT_KS,
    NMS_THRESHOLD,
    moment_retrieval_metrics,
)

__all__ = ['MomentQueries', 'annotation_captions', 'evaluate_moments', 'format_moment_lines', 'moment_gallery', 'moment_queries']


def _row_video(row: dict[str, Any]) -> str:
    """The video a row belongs to: its ``video_id`` (an MDS index), else its ``path``."""
    return str(row.get('video_id') or row['path'])


def moment_gallery(rows: list[dict[str, Any]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(video ids, [N] video number per row, [N, 2] seconds per row)`` of an index's rows.

    Raises:
        IndexFolderError: a row whose ``end`` is before its ``start``.
    """
    numbers: dict[str, int] = {}
    video = np.empty(len(rows), dtype=np.int64)
    segments = np.empty((len(rows), 2), dtype=np.float64)
    for i, row in enumerate(rows):
        video[i] = numbers.setdefault(_row_video(row), len(numbers))
        start = row.get('start')
        end = row.get('end')
        if start is None or end is None:  # a whole-video row
            start, end = 0.0, float(row.get('duration') or 0.0)
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise IndexFolderError(f'index row {i} ({_row_video(row)!r}): moment [{start}, {end}] is not a span of '
                              'seconds (end before start): the index is damaged; rebuild it with tempme-index --rebuild')
        segments[i] = (float(start), float(end))
    return list(numbers), video, segments


def _caption_segments(value: Any) -> np.ndarray:
    """A caption's ground-truth segments ``[G, 2]`` from ``[[s, e], ...]`` or one ``[s, e]`` (an ActivityNet
    sample stores one pair per caption); entries that are not a finite ``[s, e]`` with ``e >= s`` are left
    out (G = 0 when none is usable)."""
    if not isinstance(value, list) or not value:
        return np.zeros((0, 2))
    pairs = [value] if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value) else value
    kept = []
    for pair in pairs:
        if (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in pair)
                and all(math.isfinite(x) for x in pair) and pair[1] >= pair[0]):
            kept.append((float(pair[0]), float(pair[1])))
    return np.asarray(kept, dtype=np.float64).reshape(-1, 2)


@dataclass
class MomentQueries:
    """The captions evaluated: text, ground-truth video number and segments; and how many were left out."""

    texts: list[str]
    video: np.ndarray  # [Q] int64
    segments: list[np.ndarray]  # per caption [G, 2]
    without_timestamps: int


def moment_queries(captions: list[dict[str, Any]], rows: list[dict[str, Any]],
                   numbers: dict[str, int]) -> MomentQueries:
    """The captions with at least one usable ``[start, end]``, each tied to its video.

    Raises:
        IndexFolderError: a caption whose ``video_id`` is not the video of its ``row``.
    """
    texts, video, segments, left_out = [], [], [], 0
    for n, c in enumerate(captions, 1):
        owner = _row_video(rows[c['row']])
        named = c.get('video_id')
        if named is not None and str(named) != owner:
            raise IndexFolderError(f'caption {n} names video {named!r} but its row {c["row"]} is {owner!r}: the index '
                              'is damaged; rebuild it with tempme-index --rebuild')
        seg = _caption_segments(c.get('timestamps'))
        if not len(seg):
            left_out += 1
            continue
        texts.append(c['text'])
        video.append(numbers[owner])
        segments.append(seg)
    return MomentQueries(texts, np.asarray(video, dtype=np.int64), segments, left_out)


def annotation_captions(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Caption rows (as an MDS index stores them) for a folder index, from an ActivityNet Captions-style file
    ``{video_id: {"timestamps": [[s, e], ...], "sentences": [...]}}``; a video id names the indexed file whose
    relative path without its extension (or whose file name without it) is that id.

    Raises:
        IndexFolderError: the file is missing or not of that form, or none of its videos is in the index.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise IndexFolderError(f'--annotations {path}: cannot read it as JSON ({e})') from e
    if not isinstance(data, dict):
        raise IndexFolderError(f'--annotations {path}: expected an object {{video_id: {{"timestamps", "sentences"}}}}')
    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        rel = PurePosixPath(row['path'])
        for name in (str(rel.with_suffix('')), rel.stem):
            first.setdefault(name, i)
    captions = []
    for video_id, entry in data.items():
        if str(video_id) not in first:
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get('sentences'), list) \
                or not isinstance(entry.get('timestamps'), list) or len(entry['sentences']) != len(entry['timestamps']):
            raise IndexFolderError(f'--annotations {path}: video {video_id!r}: expected "sentences" and "timestamps" '
                              'lists of the same length')
        row = first[str(video_id)]
        for k, (text, stamp) in enumerate(zip(entry['sentences'], entry['timestamps'], strict=True)):
            captions.append({'row': row, 'video_id': rows[row]['path'], 'caption_index': k, 'text': str(text),
                             'timestamps': stamp})
    if not captions:
        raise IndexFolderError(f'--annotations {path}: none of its {len(data)} videos is in the index (video ids are '
                          'matched to the indexed files\' paths without their extension)')
    return captions


def evaluate_moments(index: Any, model: ExportedModel, *, batch_size: int = 256,
                     chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                     annotations: str | os.PathLike | None = None) -> dict[str, float]:
    """VCMR R@1/5/10 at tIoU 0.3/0.5/0.7 and video R@1/5/10 (percent) of an annotated index
    (a `tempme_composer.inference.search.VideoIndex`), with the counts they cover.

    Raises:
        IndexFolderError: the index has no captions (built from a folder of videos), none of its captions has
            timestamps, or it was built by another model.
    """
    from tempme_composer.clip.tokenizer import tokenize
    from tempme_composer.inference.index import encode_texts

    index.check_model(model)
    rows = list(index.rows)
    captions = annotation_captions(annotations, rows) if annotations else index.store.captions(index.manifest)
    if not captions:
        raise IndexFolderError(f'{index.folder} has no captions (it was built from a folder of videos): --eval-moments '
                          'needs an index built with tempme-index --mds from a split whose captions have '
                          'timestamps (ActivityNet Captions, DiDeMo, the long demo), or --annotations FILE')
    video_ids, row_video, row_segments = moment_gallery(rows)
    queries = moment_queries(captions, rows, {v: i for i, v in enumerate(video_ids)})
    if not queries.texts:
        raise IndexFolderError(f'none of the {len(captions)} captions of {index.folder} has [start, end] timestamps: '
                          '--eval-moments needs a split with moment annotations (ActivityNet Captions, DiDeMo, the '
                          'long demo), not a whole-video one; --eval ranks whole videos')
    ids, _ = tokenize(queries.texts, model.preprocessing.max_words)
    text = encode_texts(model, ids, batch_size=batch_size)
    results = moment_retrieval_metrics(text, index.embeddings, row_video, row_segments, queries.video,
                                       queries.segments, chunk_elements=chunk_elements)
    results['num_captions_without_timestamps'] = float(queries.without_timestamps)
    return results


def format_moment_lines(results: dict[str, float]) -> list[str]:
    """Printable summary: moment recall per tIoU threshold, then video recall for comparison."""
    ks = '/'.join(str(k) for k in MOMENT_KS)
    per_iou = ' | '.join(f'{m:g}: ' + '/'.join(f'{results[f"moment_R@{k}_tIoU{m:g}"]:.1f}' for k in MOMENT_KS)
                         for m in MOMENT_IOUS)
    videos = '/'.join(f'{results[f"video_R@{k}"]:.1f}' for k in MOMENT_KS)
    lines = [f'Moments: R@{ks} at tIoU {per_iou}',
             f'Videos: R@{ks} {videos} (videos ranked by their best moment)',
             f'{int(results["num_captions"])} captions against {int(results["num_moments"])} moments of '
             f'{int(results["num_videos"])} videos; per-video NMS at tIoU {NMS_THRESHOLD:g}; ties count against']
    left_out = int(results.get('num_captions_without_timestamps', 0))
    if left_out:
        lines.append(f'{left_out} captions without usable timestamps were left out')
    return lines
