"""One conversion: per split, find the videos, decode the missing ones into the cache, write the split; a
split whose annotations, files and settings are unchanged is kept as it is."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tempme_composer.data.annotations import TEST_SPLITS, Annotations
from tempme_composer.data.convert.cache import WORK_DIR_NAME, cached_result
from tempme_composer.data.convert.pool import run_decodes
from tempme_composer.data.convert.report import SplitSummary, summary_from_existing
from tempme_composer.data.convert.settings import ConvertSettings
from tempme_composer.data.convert.writer import write_split
from tempme_composer.data.format import DATASET_FORMAT_VERSION, pairs_split, read_dataset_meta
from tempme_composer.data.video_files import videos_by_name

__all__ = ['convert_records']

log = logging.getLogger(__name__)


def _digest(items: Sequence[str]) -> str:
    h = hashlib.sha1()
    for item in items:
        h.update(item.encode('utf-8', 'surrogatepass') + b'\0')
    return h.hexdigest()


def convert_records(
    dataset: str,
    annotations: Annotations,
    videos_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    settings: ConvertSettings | None = None,
    workers: int | None = None,
    work_dir: str | os.PathLike | None = None,
    splits: Sequence[str] | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    warn_frames: int = 12,
    size_limit: str = '128mb',
    skip_truncated: bool = False,
) -> dict[str, SplitSummary]:
    """Convert every split of ``annotations`` (or only ``splits``) to ``out_dir/<split>`` MDS folders.

    A video whose tail is cut off (see :func:`~tempme_composer.data.video.decode_video`) is written with the
    frames it has and reported, or skipped with reason ``truncated`` when ``skip_truncated``.

    Returns one :class:`SplitSummary` per split. Never raises for a bad video; raises ``FileNotFoundError``
    when ``videos_dir`` does not exist and ``ValueError`` for an unknown split name.
    """
    settings = settings or ConvertSettings()
    if settings.frame_format not in ('jpeg', 'raw'):
        raise ValueError(f"frame_format must be 'jpeg' or 'raw', got {settings.frame_format!r}")
    if not 1 <= settings.jpeg_quality <= 100:
        raise ValueError(f'jpeg_quality must be in [1, 100], got {settings.jpeg_quality}')
    if not settings.fps > 0 or settings.size < 1:
        raise ValueError(f'fps must be > 0 and size >= 1, got {settings.fps} and {settings.size}')
    workers = workers or os.cpu_count() or 1
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_root = Path(work_dir) if work_dir is not None else out_dir / WORK_DIR_NAME
    cache_dir = work_root / settings.cache_key()
    cache_dir.mkdir(parents=True, exist_ok=True)
    index = videos_by_name(videos_dir)
    wanted = list(annotations) if splits is None else list(splits)
    unknown = [s for s in wanted if s not in annotations]
    if unknown:
        raise ValueError(f'unknown split(s) {unknown}; the annotations define {sorted(annotations)}')

    summaries: dict[str, SplitSummary] = {}
    for split in wanted:
        start = time.perf_counter()
        records = annotations[split]
        summary = SplitSummary(split=split, total=len(records), is_test=TEST_SPLITS.get(dataset) == split)
        extra_rows = []
        for problem in annotations.problems:
            if problem.split in (split, 'all') and problem.reason in ('duplicate_id', 'no_captions'):
                summary.skipped[problem.reason] = summary.skipped.get(problem.reason, 0) + 1
                summary.total += 1  # listed but not a record: still part of the denominator
                extra_rows.append([problem.video_id, '', problem.reason, problem.detail])
        paths = {r.video_id: index.get(r.path_stem) for r in records}
        fingerprint = _digest(
            [settings.cache_key() + ('-skip-truncated' if skip_truncated else '')]
            + [f'{r.video_id}|{paths[r.video_id]}|{"|".join(r.captions)}' for r in records]
        )
        meta = read_dataset_meta(out_dir / split)
        pairs_meta = read_dataset_meta(out_dir / pairs_split(split))
        if (
            not retry_failed
            and meta
            and pairs_meta
            and meta.get('fingerprint') == fingerprint
            and pairs_meta.get('fingerprint') == fingerprint
            and meta.get('format_version') == DATASET_FORMAT_VERSION
        ):
            summary = summary_from_existing(out_dir / split, summary, meta)
            summary.reused = True
            summary.seconds = time.perf_counter() - start
            summaries[split] = summary
            log.info(
                '%s/%s: already converted (same annotations, files and settings); skipping', dataset, split
            )
            continue

        outcomes: dict[str, dict[str, Any]] = {}
        todo: list[Path] = []
        queued: set[Path] = set()
        for record in records:
            path = paths[record.video_id]
            if path is None:
                continue
            cached = cached_result(cache_dir, path)
            if cached is not None and not (retry_failed and cached['status'] != 'ok'):
                outcomes[record.video_id] = cached
            elif path not in queued:
                queued.add(path)
                todo.append(path)
        decoded = run_decodes(todo, cache_dir, settings, workers, progress, f'{dataset}/{split}')
        summary.decoded_now = len(decoded)
        for record in records:
            path = paths[record.video_id]
            if path is not None and record.video_id not in outcomes:
                outcomes[record.video_id] = decoded[str(path)]
        write_split(
            out_dir,
            split,
            dataset,
            records,
            paths,
            outcomes,
            cache_dir,
            settings,
            summary,
            fingerprint,
            size_limit,
            extra_rows,
            warn_frames=warn_frames,
            skip_truncated=skip_truncated,
        )
        summary.seconds = time.perf_counter() - start
        summaries[split] = summary
    return summaries
