"""``tempme-convert``: the six retrieval benchmarks from raw videos + official annotations to MDS shards.

One MDS sample per **video** (``video_id``, all ``captions``, ``timestamps``, ``frames`` decoded once with PyAV
at ``--fps`` and resized to short side ``--size``, ``num_frames``, ``fps``, ``duration``), one folder per split
``OUT/<split>/``, plus a caption-level index ``OUT/<split>_pairs/`` (no frames: ``video_index``,
``caption_index``, ``caption``) that the training loader uses for ``expand_sentences`` (every (video, caption)
pair once per epoch). Each folder holds ``tempme_dataset.json`` (format version + decode settings) next to
``index.json``; a video folder also holds ``skipped.csv`` (video_id, path, reason, detail).

Pipeline per split: annotations -> find every video file (recursive walk, by stem) -> decode the missing ones
in ``--workers`` processes into a per-video cache under ``--work-dir`` (atomic writes: an interrupted run
resumes where it stopped, finished videos are never decoded again) -> write the split's shards into a
temporary sibling folder and rename it into place (readers never see a half-written split). Bad videos are
skipped with a reason, never zero-filled (an incomplete download, a file that is no video and an empty file
are told apart by :mod:`~tempme_composer.data.media_probe`); a truncated tail is kept with its decoded
duration and listed (or skipped with ``skip_truncated``); every unwritten video of a benchmark's official
test split is listed with its reason in a banner; each split's figures are stored with it
(``conversion_summary.json``) so ``conversion_report.json`` keeps them across re-runs; the exit code is 1 when
more than ``--max-failed-fraction`` of a split failed.

Per-dataset differences live only in :mod:`tempme_composer.data.annotations`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from tempme_composer.data.annotations import (
    TEST_SPLITS,
    Annotations,
    VideoRecord,
    read_activitynet,
    read_didemo,
    read_lsmdc,
    read_msrvtt,
    read_msvd,
    read_vatex,
)
from tempme_composer.data.frame_layout import FRAME_COLUMN_ENCODINGS, pack_jpeg_frames
from tempme_composer.data.mds_format import SHARD_HASHES
from tempme_composer.remote import RemoteStorageError, is_remote, upload_folder

__all__ = [
    'DATASET_FORMAT_VERSION',
    'DEFAULT_JPEG_QUALITY',
    'META_FILE',
    'PAIRS_SUFFIX',
    'ConvertSettings',
    'SplitSummary',
    'convert_records',
    'find_videos',
    'main',
    'pairs_split',
    'read_dataset_meta',
    'video_columns',
]

log = logging.getLogger(__name__)

#: Version of the on-disk layout written here; the loader refuses versions it does not know. 2: JPEG frames
#: as one ``bytes`` blob the loader decodes selectively (`tempme_composer.data.frame_layout`); 1: ``jpegarray``.
DATASET_FORMAT_VERSION = 2
#: Version of the per-video decode cache (its files did not change with the shard layout).
_CACHE_VERSION = 1
META_FILE = 'tempme_dataset.json'
SKIPPED_FILE = 'skipped.csv'
REPORT_FILE = 'conversion_report.json'
PAIRS_SUFFIX = '_pairs'
#: Chosen from the measurements in README "Converting the benchmarks" (quality vs size vs read speed).
DEFAULT_JPEG_QUALITY = 85
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v', '.3gp', '.3g2', '.flv', '.mpg', '.mpeg',
                    '.wmv', '.ogv', '.ts', '.mts', '.m2ts', '.gif')
PAIRS_COLUMNS = {'video_id': 'str', 'video_index': 'int', 'caption_index': 'int', 'caption': 'str'}
_CACHE_MAGIC = b'TMVC1\n'
#: Bumped when the decoder's verdicts change (2: truncated tails by timestamp, decoded duration), so a cache
#: left by an older version is decoded again instead of reused.
_DECODER_VERSION = 2
SPLIT_REPORT_FILE = 'conversion_summary.json'  # this split's SplitSummary, written with the split


def pairs_split(split: str) -> str:
    """Name of the caption-level index split written next to ``split``."""
    return f'{split}{PAIRS_SUFFIX}'


def video_columns(frame_format: str) -> dict[str, str]:
    """MDS columns of a video split (compatible with the demo data's ``MDS_COLUMNS`` plus extras)."""
    frames = FRAME_COLUMN_ENCODINGS[frame_format]
    return {'video_id': 'str', 'captions': 'json', 'timestamps': 'json', 'frames': frames, 'num_frames': 'int',
            'fps': 'float32', 'duration': 'float32'}


@dataclass(frozen=True)
class ConvertSettings:
    """Decode/storage settings; they are recorded with the shards and key the per-video cache."""

    fps: float = 1.0
    size: int = 224
    frame_format: str = 'jpeg'  # 'jpeg' (one blob, frame_layout.py) or 'raw' (ndarray:uint8 [T, H, W, 3])
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    min_frames: int = 1
    apply_rotation: bool = True

    def cache_key(self) -> str:
        q = f'q{self.jpeg_quality}' if self.frame_format == 'jpeg' else 'raw'
        return f'v{_CACHE_VERSION}-fps{self.fps:g}-s{self.size}-{q}-r{int(self.apply_rotation)}'


@dataclass
class SplitSummary:
    split: str
    total: int = 0
    converted: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    short_videos: int = 0
    frames: int = 0
    decoded_now: int = 0
    reused: bool = False
    seconds: float = 0.0
    is_test: bool = False
    missing_ids: list[str] = field(default_factory=list)
    unwritten: list[list[str]] = field(default_factory=list)  # [video_id, reason] of every video not written
    truncated_videos: list[dict[str, Any]] = field(default_factory=list)  # id, frames, seconds, declared, kept
    short_list: list[list[Any]] = field(default_factory=list)  # [video_id, frames] below --warn-frames
    written_at: str = ''  # UTC time of the run that wrote this split

    @property
    def failed(self) -> int:
        return sum(self.skipped.values())

    @property
    def failed_fraction(self) -> float:
        return self.failed / self.total if self.total else 0.0


# ------------------------------------------------------------------------------------------------------------
# Finding videos
# ------------------------------------------------------------------------------------------------------------


def find_videos(videos_dir: str | os.PathLike) -> dict[str, Path]:
    """Index every file under ``videos_dir`` (recursive) by file name and, for video extensions, by stem.

    A name ``x.3gp.mp4`` is reachable as ``x.3gp.mp4`` and ``x.3gp`` (DiDeMo). When two files share a stem the
    first in sorted path order wins.
    """
    root = Path(videos_dir)
    if not root.is_dir():
        raise FileNotFoundError(f'videos folder {str(root)!r} does not exist')
    index: dict[str, Path] = {}
    stems: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            index.setdefault(name, path)
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                stems.setdefault(stem, path)
    for stem, path in stems.items():
        index.setdefault(stem, path)
    return index


# ------------------------------------------------------------------------------------------------------------
# Per-video cache (one file per decoded video; written atomically)
# ------------------------------------------------------------------------------------------------------------


def _cache_name(path: Path) -> str:
    digest = hashlib.sha1(str(path.resolve()).encode('utf-8', 'surrogatepass')).hexdigest()[:16]
    safe = re.sub(r'[^A-Za-z0-9._-]', '_', path.stem)[:48]
    return f'{safe}-{digest}'


def _file_signature(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}')
    with open(tmp, 'wb') as f:
        f.write(data)
    os.replace(tmp, path)


def _write_cache(path: Path, header: dict[str, Any], blobs: list[bytes]) -> None:
    head = json.dumps(header).encode()
    _atomic_write(path, b''.join([_CACHE_MAGIC, struct.pack('<I', len(head)), head, *blobs]))


def _read_cache(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    data = path.read_bytes()
    if not data.startswith(_CACHE_MAGIC):
        raise ValueError(f'{path} is not a converter cache file')
    offset = len(_CACHE_MAGIC)
    (n,) = struct.unpack_from('<I', data, offset)
    header = json.loads(data[offset + 4:offset + 4 + n])
    offset += 4 + n
    blobs = []
    for size in header['blob_sizes']:
        blobs.append(data[offset:offset + size])
        offset += size
    if offset != len(data):
        raise ValueError(f'{path} is truncated or corrupt')
    return header, blobs


def _cached_result(cache_dir: Path, path: Path) -> dict[str, Any] | None:
    """The cached outcome for ``path`` (ok or failed) if it is still valid for the file on disk."""
    name = _cache_name(path)
    try:
        signature = _file_signature(path)
    except OSError:
        return None
    ok = cache_dir / f'{name}.bin'
    if ok.is_file():
        try:
            header, _ = _read_cache(ok)
            if header.get('signature') == signature and header.get('decoder') == _DECODER_VERSION:
                return {'status': 'ok', **{k: header[k] for k in ('num_frames', 'warnings')},
                        'duration': header.get('duration'), 'declared_duration': header.get('declared_duration')}
        except (ValueError, OSError, KeyError, json.JSONDecodeError):
            pass
    fail = cache_dir / f'{name}.fail.json'
    if fail.is_file():
        try:
            info = json.loads(fail.read_text())
            if info.get('signature') == signature and info.get('decoder') == _DECODER_VERSION:
                return info
        except (OSError, json.JSONDecodeError):
            pass
    return None


def _classify(message: str) -> str:
    text = message.lower()
    if 'no video stream' in text:
        return 'no_video_stream'
    if 'does not exist' in text:
        return 'missing'
    if 'zero frames' in text:
        return 'no_frames'
    if 'cannot open' in text:
        return 'unreadable'
    return 'decode_error'


def _decode_one(task: tuple[str, str, ConvertSettings]) -> tuple[str, dict[str, Any]]:
    """Worker: decode one video, write its cache file (or a failure marker), return a small status dict."""
    from tempme_composer.data.media_probe import diagnose_file
    from tempme_composer.data.video import VideoDecodeError, decode_video, encode_jpeg

    path_str, cache_dir_str, settings = task
    path, cache_dir = Path(path_str), Path(cache_dir_str)
    name = _cache_name(path)
    try:
        signature = _file_signature(path)
    except OSError as e:
        return path_str, {'status': 'failed', 'reason': 'missing', 'detail': str(e)}
    try:
        decoded = decode_video(path.absolute(), fps=settings.fps, short_side=settings.size,
                               apply_rotation=settings.apply_rotation)
        if len(decoded.frames) < settings.min_frames:
            raise VideoDecodeError(f'only {len(decoded.frames)} frames at {settings.fps:g} fps '
                                   f'(--min-frames {settings.min_frames}): zero frames usable')
        frames = decoded.frames
        if settings.frame_format == 'jpeg':
            blobs = [encode_jpeg(f, quality=settings.jpeg_quality) for f in frames]
            shape = None
        else:
            stacked = np.stack(frames)  # [T, H, W, 3] uint8
            blobs, shape = [stacked.tobytes()], list(stacked.shape)
        height, width = frames[0].shape[:2]
        header = {'signature': signature, 'num_frames': len(frames), 'source_fps': decoded.source_fps,
                  'duration': decoded.duration_s, 'warnings': decoded.warnings, 'width': width,
                  'height': height, 'shape': shape, 'blob_sizes': [len(b) for b in blobs],
                  'declared_duration': decoded.declared_duration_s, 'decoder': _DECODER_VERSION}
        _write_cache(cache_dir / f'{name}.bin', header, blobs)
        return path_str, {'status': 'ok', 'num_frames': len(frames), 'warnings': decoded.warnings,
                          'duration': decoded.duration_s, 'declared_duration': decoded.declared_duration_s}
    except Exception as e:  # noqa: BLE001 - one bad video must never stop the run
        reason = _classify(str(e)) if isinstance(e, VideoDecodeError) else 'decode_error'
        if 'min-frames' in str(e):
            reason = 'too_few_frames'
        detail = f'{type(e).__name__}: {e}'
        if reason in ('unreadable', 'decode_error', 'no_frames'):  # cut off, or not a video at all?
            try:
                diagnosis = diagnose_file(path)
            except OSError:
                diagnosis = None
            if diagnosis is not None:
                reason, detail = diagnosis[0], f'{diagnosis[1]} (FFmpeg: {e})'
        info = {'status': 'failed', 'reason': reason, 'detail': detail, 'signature': signature,
                'decoder': _DECODER_VERSION}
        try:
            _atomic_write(cache_dir / f'{name}.fail.json', json.dumps(info).encode())
        except OSError:
            pass
        return path_str, info


# ------------------------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------------------------


def read_dataset_meta(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``tempme_dataset.json`` of an MDS folder, or None when there is none."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _digest(items: Sequence[str]) -> str:
    h = hashlib.sha1()
    for item in items:
        h.update(item.encode('utf-8', 'surrogatepass') + b'\0')
    return h.hexdigest()


def _run_decodes(todo: list[Path], cache_dir: Path, settings: ConvertSettings, workers: int,
                 progress: bool, desc: str) -> dict[str, dict[str, Any]]:
    from tqdm import tqdm

    results: dict[str, dict[str, Any]] = {}
    if not todo:
        return results
    tasks = [(str(p), str(cache_dir), settings) for p in todo]
    bar = tqdm(total=len(tasks), desc=desc, unit='video', disable=not progress, dynamic_ncols=True,
               smoothing=0.1)
    try:
        if workers <= 1:
            for task in tasks:
                key, info = _decode_one(task)
                results[key] = info
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_decode_one, t) for t in tasks]
                for future in as_completed(futures):
                    key, info = future.result()
                    results[key] = info
                    bar.update(1)
    finally:
        bar.close()
    return results


def _write_split(out_dir: Path, split: str, dataset: str, records: list[VideoRecord],
                 paths: dict[str, Path | None], outcomes: dict[str, dict[str, Any]], cache_dir: Path,
                 settings: ConvertSettings, summary: SplitSummary, fingerprint: str,
                 size_limit: str, extra_rows: Sequence[Sequence[str]] = (), *, warn_frames: int = 12,
                 skip_truncated: bool = False) -> None:
    """Write ``out/<split>`` and ``out/<split>_pairs`` via temporary folders renamed into place; fills
    ``summary`` (counts, unwritten videos with reasons, truncated and short videos)."""
    from streaming import MDSWriter

    tag = f'{os.getpid()}-{uuid.uuid4().hex[:8]}'
    tmp_videos = out_dir / f'.{split}.tmp-{tag}'
    tmp_pairs = out_dir / f'.{pairs_split(split)}.tmp-{tag}'
    skipped_rows: list[list[str]] = [list(r) for r in extra_rows]
    summary.unwritten.extend([r[0], r[2]] for r in extra_rows if r[2] != 'duplicate_id')  # a duplicate is written
    columns = video_columns(settings.frame_format)
    try:
        with MDSWriter(out=str(tmp_videos), columns=columns, compression=None, hashes=SHARD_HASHES,
                       size_limit=size_limit, progress_bar=False) as videos, \
                MDSWriter(out=str(tmp_pairs), columns=PAIRS_COLUMNS, compression=None, hashes=SHARD_HASHES,
                          size_limit=size_limit, progress_bar=False) as pairs:
            video_index = 0
            for record in records:
                path = paths[record.video_id]
                outcome = outcomes.get(record.video_id)
                if path is None or outcome is None or outcome['status'] != 'ok':
                    reason = 'missing' if path is None else (outcome or {}).get('reason', 'decode_error')
                    detail = 'no file with this name/stem under --videos' if path is None else \
                        (outcome or {}).get('detail', '')
                    skipped_rows.append([record.video_id, '' if path is None else os.path.abspath(path), reason,
                                         detail])
                    summary.skipped[reason] = summary.skipped.get(reason, 0) + 1
                    summary.unwritten.append([record.video_id, reason])
                    if reason == 'missing':
                        summary.missing_ids.append(record.video_id)
                    continue
                header, blobs = _read_cache(cache_dir / f'{_cache_name(path)}.bin')
                num_frames = int(header['num_frames'])
                cut = next((w for w in header['warnings'] if w.startswith('truncated:')), None)
                if cut is not None:
                    summary.truncated_videos.append({
                        'video_id': record.video_id, 'frames': num_frames, 'decoded_s': round(header['duration'], 2),
                        'declared_s': header.get('declared_duration'), 'kept': not skip_truncated, 'detail': cut})
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
                videos.write({
                    'video_id': record.video_id, 'captions': list(record.captions),
                    'timestamps': record.timestamps, 'frames': frames, 'num_frames': num_frames,
                    'fps': float(settings.fps), 'duration': float(header['duration']),
                })
                for k, caption in enumerate(record.captions):
                    pairs.write({'video_id': record.video_id, 'video_index': video_index, 'caption_index': k,
                                 'caption': caption})
                summary.converted += 1
                summary.frames += num_frames
                video_index += 1
        summary.short_videos = len(summary.short_list)
        unwritten_ids = {v for v, _ in summary.unwritten}
        meta = {
            'format_version': DATASET_FORMAT_VERSION, 'dataset': dataset, 'split': split,
            'settings': asdict(settings), 'columns': columns, 'num_videos': summary.converted,
            'num_captions': sum(len(r.captions) for r in records if r.video_id not in unwritten_ids),
            'num_listed': summary.total, 'num_skipped': summary.failed, 'fingerprint': fingerprint,
            'created': time.strftime('%Y-%m-%dT%H:%M:%S'),
        }
        (tmp_videos / META_FILE).write_text(json.dumps({**meta, 'kind': 'videos'}, indent=2) + '\n')
        (tmp_pairs / META_FILE).write_text(json.dumps(
            {**meta, 'kind': 'pairs', 'columns': PAIRS_COLUMNS, 'videos_split': split}, indent=2) + '\n')
        with open(tmp_videos / SKIPPED_FILE, 'w', newline='', encoding='utf-8') as f:
            writer = csv.writer(f)
            writer.writerow(['video_id', 'path', 'reason', 'detail'])
            writer.writerows(skipped_rows)
        summary.written_at = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
        (tmp_videos / SPLIT_REPORT_FILE).write_text(json.dumps(_split_record(summary), indent=2) + '\n')
        for tmp, final in ((tmp_pairs, out_dir / pairs_split(split)), (tmp_videos, out_dir / split)):
            if final.exists():
                trash = out_dir / f'.{final.name}.old-{tag}'
                os.replace(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp_videos, ignore_errors=True)
        shutil.rmtree(tmp_pairs, ignore_errors=True)


def convert_records(dataset: str, annotations: Annotations, videos_dir: str | os.PathLike,
                    out_dir: str | os.PathLike, *, settings: ConvertSettings | None = None,
                    workers: int | None = None, work_dir: str | os.PathLike | None = None,
                    splits: Sequence[str] | None = None, progress: bool = True, retry_failed: bool = False,
                    warn_frames: int = 12, size_limit: str = '128mb',
                    skip_truncated: bool = False) -> dict[str, SplitSummary]:
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
    work_root = Path(work_dir) if work_dir is not None else out_dir / '.tempme_work'
    cache_dir = work_root / settings.cache_key()
    cache_dir.mkdir(parents=True, exist_ok=True)
    index = find_videos(videos_dir)
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
        fingerprint = _digest([settings.cache_key() + ('-skip-truncated' if skip_truncated else '')] + [
            f'{r.video_id}|{paths[r.video_id]}|{"|".join(r.captions)}' for r in records])
        meta = read_dataset_meta(out_dir / split)
        pairs_meta = read_dataset_meta(out_dir / pairs_split(split))
        if (not retry_failed and meta and pairs_meta and meta.get('fingerprint') == fingerprint
                and pairs_meta.get('fingerprint') == fingerprint
                and meta.get('format_version') == DATASET_FORMAT_VERSION):
            summary = _summary_from_existing(out_dir / split, summary, meta)
            summary.reused = True
            summary.seconds = time.perf_counter() - start
            summaries[split] = summary
            log.info('%s/%s: already converted (same annotations, files and settings); skipping', dataset, split)
            continue

        outcomes: dict[str, dict[str, Any]] = {}
        todo: list[Path] = []
        queued: set[Path] = set()
        for record in records:
            path = paths[record.video_id]
            if path is None:
                continue
            cached = _cached_result(cache_dir, path)
            if cached is not None and not (retry_failed and cached['status'] != 'ok'):
                outcomes[record.video_id] = cached
            elif path not in queued:
                queued.add(path)
                todo.append(path)
        decoded = _run_decodes(todo, cache_dir, settings, workers, progress, f'{dataset}/{split}')
        summary.decoded_now = len(decoded)
        for record in records:
            path = paths[record.video_id]
            if path is not None and record.video_id not in outcomes:
                outcomes[record.video_id] = decoded[str(path)]
        _write_split(out_dir, split, dataset, records, paths, outcomes, cache_dir, settings, summary,
                     fingerprint, size_limit, extra_rows, warn_frames=warn_frames, skip_truncated=skip_truncated)
        summary.seconds = time.perf_counter() - start
        summaries[split] = summary
    return summaries


def _split_record(summary: SplitSummary) -> dict[str, Any]:
    """A split's entry of ``conversion_report.json`` (and of its own ``conversion_summary.json``)."""
    return {**asdict(summary), 'failed_fraction': summary.failed_fraction}


def _summary_from_existing(folder: Path, summary: SplitSummary, meta: dict[str, Any]) -> SplitSummary:
    """The figures of the run that wrote ``folder`` (its ``conversion_summary.json``; for a folder written
    before that file existed, the counts rebuilt from ``skipped.csv``); this run's timing stays."""
    stored = folder / SPLIT_REPORT_FILE
    if stored.is_file():
        try:
            record = json.loads(stored.read_text())
            names = {f.name for f in fields(SplitSummary)} - {'decoded_now', 'seconds', 'reused'}
            return replace(summary, **{k: v for k, v in record.items() if k in names})
        except (OSError, ValueError, TypeError):
            pass  # unreadable: rebuild from skipped.csv below
    summary.converted = int(meta.get('num_videos', 0))
    summary.written_at = str(meta.get('created', ''))
    skipped_path = folder / SKIPPED_FILE
    if skipped_path.is_file():
        with open(skipped_path, newline='', encoding='utf-8') as f:
            for row in csv.DictReader(f):
                summary.skipped[row['reason']] = summary.skipped.get(row['reason'], 0) + 1
                if row['reason'] != 'duplicate_id':
                    summary.unwritten.append([row['video_id'], row['reason']])
                if row['reason'] == 'missing':
                    summary.missing_ids.append(row['video_id'])
    return summary


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------

# dataset -> (reader, {flag: (reader kwarg, default file name in --annotations DIR)})
_FLAGS: dict[str, dict[str, tuple[str, str]]] = {
    'msrvtt': {'data_json': ('data_json', 'MSRVTT_data.json'), 'train_9k_csv': ('train_9k_csv', 'MSRVTT_train.9k.csv'),
               'train_7k_csv': ('train_7k_csv', 'MSRVTT_train.7k.csv'),
               'test_csv': ('test_csv', 'MSRVTT_JSFUSION_test.csv')},
    'msvd': {'captions_pkl': ('captions_pkl', 'raw-captions.pkl'), 'train_list': ('train_list', 'train_list.txt'),
             'val_list': ('val_list', 'val_list.txt'), 'test_list': ('test_list', 'test_list.txt')},
    'lsmdc': {'train_csv': ('train_csv', 'LSMDC16_annos_training.csv'), 'val_csv': ('val_csv', 'LSMDC16_annos_val.csv'),
              'test_csv': ('test_csv', 'LSMDC16_challenge_1000_publictect.csv')},
    'didemo': {'train_json': ('train_json', 'train_data.json'), 'val_json': ('val_json', 'val_data.json'),
               'test_json': ('test_json', 'test_data.json'), 'train_list': ('train_list', 'train_list.txt'),
               'val_list': ('val_list', 'val_list.txt'), 'test_list': ('test_list', 'test_list.txt')},
    'activitynet': {'train_json': ('train_json', 'train.json'), 'val_json': ('val_json', 'val_1.json'),
                    'train_ids': ('train_ids', 'train_ids.json'), 'val_ids': ('val_ids', 'val_ids.json')},
    'vatex': {'captions_json': ('ref_captions_json', 'ref_captions.json'),
              'train_list': ('train_list', 'train_list.txt'), 'test_list': ('test_list', 'test_list.txt')},
}
_READERS: dict[str, Callable[..., Annotations]] = {
    'msrvtt': read_msrvtt, 'msvd': read_msvd, 'lsmdc': read_lsmdc, 'didemo': read_didemo,
    'activitynet': read_activitynet, 'vatex': read_vatex,
}
_REQUIRED = {'msrvtt': ['data_json|test_csv'], 'msvd': ['captions_pkl'], 'vatex': ['captions_json']}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='tempme-convert', description='Convert a text-video retrieval benchmark to MDS shards.',
        epilog='Example: tempme-convert msrvtt --annotations msrvtt_data/ --videos MSRVTT/videos/all '
               '--out data/msrvtt_mds')
    sub = parser.add_subparsers(dest='dataset', required=True, metavar='DATASET')
    for dataset, flags in _FLAGS.items():
        p = sub.add_parser(dataset, help=f'convert {dataset}')
        p.add_argument('--videos', required=True, help='folder with the video files (searched recursively)')
        p.add_argument('--out', required=True, help='output root: OUT/<split>/ and OUT/<split>_pairs/; an '
                                                    'object store (s3://bucket/prefix) is written to --staging '
                                                    'first, then uploaded')
        p.add_argument('--staging', help='local folder for an --out object store (default: a temporary one, '
                                         'deleted after the upload)')
        p.add_argument('--annotations', help='folder holding the official annotation files under their usual '
                                             'names (any file flag below overrides one)')
        for flag, (_, default_name) in flags.items():
            p.add_argument(f'--{flag.replace("_", "-")}', dest=flag, help=f'(default name: {default_name})')
        p.add_argument('--splits', help='comma-separated subset of the splits to convert')
        p.add_argument('--fps', type=float, default=1.0, help='frames kept per second (first frame of each '
                                                              '1/fps interval; default 1)')
        p.add_argument('--size', type=int, default=224, help='short side in pixels, aspect kept (default 224)')
        p.add_argument('--frame-format', choices=('jpeg', 'raw'), default='jpeg',
                       help='jpeg (default) or raw uint8 (ndarray, ~10x larger)')
        p.add_argument('--jpeg-quality', type=int, default=DEFAULT_JPEG_QUALITY,
                       help=f'JPEG quality (default {DEFAULT_JPEG_QUALITY})')
        p.add_argument('--min-frames', type=int, default=1, help='fewer kept frames -> skipped (default 1)')
        p.add_argument('--no-rotation', action='store_true', help='ignore the display-matrix rotation')
        p.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                       help='decoding processes (default: number of CPUs)')
        p.add_argument('--work-dir', help='per-video decode cache for resuming (default OUT/.tempme_work, '
                                          'deleted after a successful run; an explicit --work-dir is kept)')
        p.add_argument('--keep-work', action='store_true', help='keep OUT/.tempme_work after a successful run')
        p.add_argument('--retry-failed', action='store_true', help='decode previously failed videos again')
        p.add_argument('--max-failed-fraction', type=float, default=0.05,
                       help='exit 1 when a split skips more than this fraction of its videos (default 0.05)')
        p.add_argument('--warn-frames', type=int, default=12,
                       help='list videos with fewer frames than this in the summary (default 12)')
        p.add_argument('--skip-truncated', action='store_true',
                       help='skip videos whose tail is cut off (default: keep the frames before the cut and '
                            'list the video as truncated)')
        p.add_argument('--size-limit', default='128mb', help='MDS shard size limit (default 128mb)')
        p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def read_annotations(dataset: str, files: dict[str, str | None]) -> Annotations:
    """Call the dataset's reader with CLI-style file arguments (flag name -> path or None)."""
    flags = _FLAGS[dataset]
    kwargs = {flags[k][0]: v for k, v in files.items() if k in flags and v}
    if not kwargs:
        raise ValueError(f'no annotation file given for {dataset}; pass --annotations DIR or the file flags')
    reader = _READERS[dataset]
    if dataset == 'msrvtt':
        return reader(kwargs.pop('data_json', None), kwargs.pop('test_csv', None), **kwargs)
    if dataset == 'msvd':
        return reader(kwargs.pop('captions_pkl'), **kwargs)
    if dataset == 'vatex':
        return reader(kwargs.pop('ref_captions_json'), **kwargs)
    return reader(**kwargs)


def _resolve_files(args: argparse.Namespace) -> dict[str, str | None]:
    files: dict[str, str | None] = {}
    for flag, (_, default_name) in _FLAGS[args.dataset].items():
        value = getattr(args, flag)
        if value is None and args.annotations:
            candidate = Path(args.annotations) / default_name
            value = str(candidate) if candidate.is_file() else None
        files[flag] = value
    missing = [f for f in files.values() if f and not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f'annotation file(s) not found: {missing}')
    return files


def _print_summary(dataset: str, summaries: dict[str, SplitSummary], max_failed: float, out: Path) -> int:
    status = 0
    print(f'\n{dataset}: conversion summary ({out})')
    print(f'{"split":<12} {"listed":>7} {"written":>7} {"skipped":>7} {"short":>6} {"frames":>8} '
          f'{"decoded":>7} {"vid/s":>7}  skipped by reason / warnings')
    for s in summaries.values():
        rate = s.decoded_now / s.seconds if s.seconds and s.decoded_now else 0.0
        reasons = ', '.join(f'{k} {v}' for k, v in sorted(s.skipped.items())) or '-'
        warns = ', '.join(f'{k} {v}' for k, v in sorted(s.warnings.items()))
        note = f' (already converted by the run of {s.written_at or "an earlier run"})' if s.reused else ''
        print(f'{s.split:<12} {s.total:>7} {s.converted:>7} {s.failed:>7} {s.short_videos:>6} {s.frames:>8} '
              f'{s.decoded_now:>7} {rate:>7.2f}  {reasons}{"; " + warns if warns else ""}{note}')
        _print_video_lists(dataset, s)
        if s.is_test and s.unwritten:
            _print_test_banner(dataset, s, out)
        if s.failed_fraction > max_failed:
            print(f'ERROR: {dataset}/{s.split}: {s.failed}/{s.total} videos skipped '
                  f'({s.failed_fraction:.1%} > --max-failed-fraction {max_failed:.1%}); see '
                  f'{out / s.split / SKIPPED_FILE}', file=sys.stderr)
            status = 1
    return status


def _print_video_lists(dataset: str, s: SplitSummary, show: int = 20) -> None:
    """The truncated and the short videos of a split by id (all of them are in conversion_report.json)."""
    if s.truncated_videos:
        kept = all(t['kept'] for t in s.truncated_videos)
        items = [f"{t['video_id']} ({t['decoded_s']:.1f} s of {t['declared_s'] or 0:.1f} s, {t['frames']} frames)"
                 for t in s.truncated_videos]
        more = f' ... and {len(items) - show} more' if len(items) > show else ''
        how = 'kept with the frames before the cut (--skip-truncated drops them)' if kept else \
            'skipped (--skip-truncated)'
        print(f'  {dataset}/{s.split}: {len(items)} truncated video(s), {how}: {"; ".join(items[:show])}{more}')
    if s.short_list:
        items = [f'{v} ({n} frames)' for v, n in s.short_list]
        more = f' ... and {len(items) - show} more' if len(items) > show else ''
        print(f'  {dataset}/{s.split}: {len(items)} video(s) with fewer frames than --warn-frames (the loader '
              f'pads and masks them): {", ".join(items[:show])}{more}')


def _print_test_banner(dataset: str, s: SplitSummary, out: Path) -> None:
    """Every video of an official test split that was not written, with its reason (stderr)."""
    by_reason: dict[str, list[str]] = {}
    for video_id, reason in s.unwritten:
        by_reason.setdefault(reason, []).append(video_id)
    lines = [f'!!   {reason} ({len(ids)}): {", ".join(ids)}' for reason, ids in sorted(by_reason.items())]
    bar = '!' * 100
    written = s.total - len(s.unwritten) - s.skipped.get('duplicate_id', 0)
    print(f'\n{bar}\n!! WARNING: {len(s.unwritten)} video(s) of the official TEST split {dataset}/{s.split} are MISSING '
          f'from the gallery, not written ({written:,} of {written + len(s.unwritten):,} listed videos are in it):\n'
          + '\n'.join(lines) + '\n'
          f'!! Metrics on this split are NOT comparable to published numbers (the gallery is smaller). '
          f'Reasons and paths: {(out / s.split / SKIPPED_FILE).resolve()}\n{bar}\n', file=sys.stderr)


def _merge_report(path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with the split entries of the previous report kept for splits this run did not touch (and
    whose folder still exists), so each split keeps the figures and date of the run that wrote it."""
    try:
        previous = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        previous = {}
    if previous.get('dataset') != report['dataset'] or not isinstance(previous.get('splits'), dict):
        return report
    kept = {k: v for k, v in previous['splits'].items()
            if k not in report['splits'] and (path.parent / k / 'index.json').is_file()}
    return {**report, 'splits': {**kept, **report['splits']}}


def main(argv: Sequence[str] | None = None) -> int:
    """``tempme-convert DATASET --videos DIR --out DIR [annotation files] [options]``; returns the exit code
    (0 ok, 1 too many failed videos, 2 bad arguments or files)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    remote = args.out if is_remote(args.out) else None
    if remote is not None:  # convert locally, upload at the end (shards before their index.json)
        args.out = args.staging or tempfile.mkdtemp(prefix='tempme-convert-')
    try:
        files = _resolve_files(args)
        annotations = read_annotations(args.dataset, files)
        settings = ConvertSettings(fps=args.fps, size=args.size, frame_format=args.frame_format,
                                   jpeg_quality=args.jpeg_quality, min_frames=args.min_frames,
                                   apply_rotation=not args.no_rotation)
        splits = [s.strip() for s in args.splits.split(',') if s.strip()] if args.splits else None
        start = time.perf_counter()
        summaries = convert_records(args.dataset, annotations, args.videos, args.out, settings=settings,
                                    workers=args.workers, work_dir=args.work_dir, splits=splits,
                                    progress=not args.no_progress, retry_failed=args.retry_failed,
                                    warn_frames=args.warn_frames, size_limit=args.size_limit,
                                    skip_truncated=args.skip_truncated)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f'tempme-convert: error: {e}', file=sys.stderr)
        return 2
    out = Path(args.out)
    for problem in annotations.problems:
        log.warning('%s/%s %s: %s (%s)', args.dataset, problem.split, problem.video_id or '-', problem.reason,
                    problem.detail)
    status = _print_summary(args.dataset, summaries, args.max_failed_fraction, out)
    elapsed = time.perf_counter() - start
    decoded = sum(s.decoded_now for s in summaries.values())
    print(f'decoded {decoded} videos in {elapsed:.1f}s ({decoded / elapsed if elapsed else 0:.2f} videos/s, '
          f'{args.workers} workers)')
    report = {
        'dataset': args.dataset, 'settings': asdict(settings), 'skip_truncated': args.skip_truncated,
        'annotation_files': files, 'videos': os.path.abspath(args.videos), 'seconds': round(elapsed, 2),
        'updated_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'splits': {k: _split_record(v) for k, v in summaries.items()},
        'annotation_problems': [asdict(p) for p in annotations.problems],
        'exit_code': status,
    }
    report = _merge_report(out / REPORT_FILE, report)
    _atomic_write(out / REPORT_FILE, (json.dumps(report, indent=2) + '\n').encode())
    if status == 0 and not args.keep_work and not args.work_dir:  # an explicit --work-dir is the user's
        shutil.rmtree(out / '.tempme_work', ignore_errors=True)
    if remote is not None:
        return _upload(out, remote, status, keep=bool(args.staging))
    return status


def _upload(out: Path, remote: str, status: int, keep: bool) -> int:
    """Upload a finished conversion (not the hidden work cache); a failed conversion is not uploaded."""
    if status != 0:
        print(f'tempme-convert: not uploaded to {remote} because the conversion failed; the result is in {out}',
              file=sys.stderr)
        return status
    try:
        uploaded = upload_folder(out, remote, skip_hidden=True)
    except RemoteStorageError as e:
        print(f'tempme-convert: error: {e}. The converted data is kept in {out}: rerun with --staging {out} '
              'to upload it without decoding again.', file=sys.stderr)
        return 1
    print(f'uploaded {len(uploaded)} files to {remote}')
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
