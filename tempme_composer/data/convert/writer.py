"""Writing one split: its video shards and caption-pair index from the decode cache, into temporary sibling
folders renamed into place, so a reader never sees a half-written split."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tempme_composer.data.annotations import VideoRecord
from tempme_composer.data.convert.cache import cache_name, read_cache
from tempme_composer.data.convert.report import SplitSummary, split_record
from tempme_composer.data.convert.settings import ConvertSettings
from tempme_composer.data.format import (
    DATASET_FORMAT_VERSION,
    META_FILE,
    PAIRS_COLUMNS,
    SHARD_HASHES,
    SKIPPED_FILE,
    SPLIT_REPORT_FILE,
    pairs_split,
    video_columns,
)
from tempme_composer.data.frame_layout import pack_jpeg_frames

if TYPE_CHECKING:
    from streaming import MDSWriter

__all__ = ['write_split']


def write_split(
    out_dir: Path,
    split: str,
    dataset: str,
    records: list[VideoRecord],
    paths: dict[str, Path | None],
    outcomes: dict[str, dict[str, Any]],
    cache_dir: Path,
    settings: ConvertSettings,
    summary: SplitSummary,
    fingerprint: str,
    size_limit: str,
    extra_rows: Sequence[Sequence[str]] = (),
    *,
    warn_frames: int = 12,
    skip_truncated: bool = False,
) -> None:
    """Write ``out/<split>`` and ``out/<split>_pairs`` via temporary folders renamed into place; fills
    ``summary`` (counts, unwritten videos with reasons, truncated and short videos)."""
    tag = f'{os.getpid()}-{uuid.uuid4().hex[:8]}'
    tmp_videos = out_dir / f'.{split}.tmp-{tag}'
    tmp_pairs = out_dir / f'.{pairs_split(split)}.tmp-{tag}'
    skipped_rows: list[list[str]] = [list(r) for r in extra_rows]
    summary.unwritten.extend(
        [r[0], r[2]] for r in extra_rows if r[2] != 'duplicate_id'
    )  # a duplicate is written
    columns = video_columns(settings.frame_format)
    try:
        with (
            _shard_writer(tmp_videos, columns, size_limit) as videos,
            _shard_writer(tmp_pairs, PAIRS_COLUMNS, size_limit) as pairs,
        ):
            video_index = 0
            for record in records:
                path = paths[record.video_id]
                outcome = outcomes.get(record.video_id)
                if path is None or outcome is None or outcome['status'] != 'ok':
                    reason = 'missing' if path is None else (outcome or {}).get('reason', 'decode_error')
                    detail = (
                        'no file with this name/stem under --videos'
                        if path is None
                        else (outcome or {}).get('detail', '')
                    )
                    skipped_rows.append(
                        [record.video_id, '' if path is None else os.path.abspath(path), reason, detail]
                    )
                    summary.skipped[reason] = summary.skipped.get(reason, 0) + 1
                    summary.unwritten.append([record.video_id, reason])
                    if reason == 'missing':
                        summary.missing_ids.append(record.video_id)
                    continue
                header, blobs = read_cache(cache_dir / f'{cache_name(path)}.bin')
                num_frames = int(header['num_frames'])
                cut = next((w for w in header['warnings'] if w.startswith('truncated:')), None)
                if cut is not None:
                    summary.truncated_videos.append(
                        {
                            'video_id': record.video_id,
                            'frames': num_frames,
                            'decoded_s': round(header['duration'], 2),
                            'declared_s': header.get('declared_duration'),
                            'kept': not skip_truncated,
                            'detail': cut,
                        }
                    )
                    if skip_truncated:
                        skipped_rows.append([record.video_id, os.path.abspath(path), 'truncated', cut])
                        summary.skipped['truncated'] = summary.skipped.get('truncated', 0) + 1
                        summary.unwritten.append([record.video_id, 'truncated'])
                        continue
                if num_frames < warn_frames:
                    summary.short_list.append([record.video_id, num_frames])
                if settings.frame_format == 'jpeg':
                    frames: Any = pack_jpeg_frames(blobs)
                else:
                    frames = np.frombuffer(blobs[0], np.uint8).reshape(header['shape'])
                for w in header['warnings']:
                    kind = w.split(':', 1)[0]
                    summary.warnings[kind] = summary.warnings.get(kind, 0) + 1
                videos.write(
                    {
                        'video_id': record.video_id,
                        'captions': list(record.captions),
                        'timestamps': record.timestamps,
                        'frames': frames,
                        'num_frames': num_frames,
                        'fps': float(settings.fps),
                        'duration': float(header['duration']),
                    }
                )
                for k, caption in enumerate(record.captions):
                    pairs.write(
                        {
                            'video_id': record.video_id,
                            'video_index': video_index,
                            'caption_index': k,
                            'caption': caption,
                        }
                    )
                summary.converted += 1
                summary.frames += num_frames
                video_index += 1
        summary.short_videos = len(summary.short_list)
        unwritten_ids = {v for v, _ in summary.unwritten}
        meta = {
            'format_version': DATASET_FORMAT_VERSION,
            'dataset': dataset,
            'split': split,
            'settings': asdict(settings),
            'columns': columns,
            'num_videos': summary.converted,
            'num_captions': sum(len(r.captions) for r in records if r.video_id not in unwritten_ids),
            'num_listed': summary.total,
            'num_skipped': summary.failed,
            'fingerprint': fingerprint,
            'created': time.strftime('%Y-%m-%dT%H:%M:%S'),
        }
        (tmp_videos / META_FILE).write_text(json.dumps({**meta, 'kind': 'videos'}, indent=2) + '\n')
        (tmp_pairs / META_FILE).write_text(
            json.dumps({**meta, 'kind': 'pairs', 'columns': PAIRS_COLUMNS, 'videos_split': split}, indent=2)
            + '\n'
        )
        with open(tmp_videos / SKIPPED_FILE, 'w', newline='', encoding='utf-8') as f:
            writer = csv.writer(f)
            writer.writerow(['video_id', 'path', 'reason', 'detail'])
            writer.writerows(skipped_rows)
        summary.written_at = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
        (tmp_videos / SPLIT_REPORT_FILE).write_text(json.dumps(split_record(summary), indent=2) + '\n')
        for tmp, final in ((tmp_pairs, out_dir / pairs_split(split)), (tmp_videos, out_dir / split)):
            if final.exists():
                trash = out_dir / f'.{final.name}.old-{tag}'
                os.replace(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp_videos, ignore_errors=True)
        shutil.rmtree(tmp_pairs, ignore_errors=True)


def _shard_writer(out: Path, columns: dict[str, str], size_limit: str) -> MDSWriter:
    """An uncompressed MDS writer with the format's shard hashes: the videos split and its pairs split alike."""
    from streaming import MDSWriter  # imported when writing, so the converter's CLI starts without it

    return MDSWriter(
        out=str(out),
        columns=columns,
        compression=None,
        hashes=SHARD_HASHES,
        size_limit=size_limit,
        progress_bar=False,
    )
