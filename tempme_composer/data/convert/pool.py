"""Decoding in worker processes: each video is decoded once into the cache; a bad video becomes a reason
(told apart by :mod:`~tempme_composer.data.media_probe`), never an exception that stops the run."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from tempme_composer.data.convert.cache import (
    DECODER_VERSION,
    atomic_write,
    cache_name,
    file_signature,
    write_cache,
)
from tempme_composer.data.convert.settings import ConvertSettings

__all__ = ['decode_one', 'run_decodes']


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


def decode_one(task: tuple[str, str, ConvertSettings]) -> tuple[str, dict[str, Any]]:
    """Worker: decode one video, write its cache file (or a failure marker), return a small status dict."""
    from tempme_composer.data.media_probe import diagnose_file
    from tempme_composer.data.video import VideoDecodeError, decode_video, encode_jpeg

    path_str, cache_dir_str, settings = task
    path, cache_dir = Path(path_str), Path(cache_dir_str)
    name = cache_name(path)
    try:
        signature = file_signature(path)
    except OSError as e:
        return path_str, {'status': 'failed', 'reason': 'missing', 'detail': str(e)}
    try:
        decoded = decode_video(
            path.absolute(),
            fps=settings.fps,
            short_side=settings.size,
            apply_rotation=settings.apply_rotation,
        )
        if len(decoded.frames) < settings.min_frames:
            raise VideoDecodeError(
                f'only {len(decoded.frames)} frames at {settings.fps:g} fps '
                f'(--min-frames {settings.min_frames}): zero frames usable'
            )
        frames = decoded.frames
        if settings.frame_format == 'jpeg':
            blobs = [encode_jpeg(f, quality=settings.jpeg_quality) for f in frames]
            shape = None
        else:
            stacked = np.stack(frames)  # [T, H, W, 3] uint8
            blobs, shape = [stacked.tobytes()], list(stacked.shape)
        height, width = frames[0].shape[:2]
        header = {
            'signature': signature,
            'num_frames': len(frames),
            'source_fps': decoded.source_fps,
            'duration': decoded.duration_s,
            'warnings': decoded.warnings,
            'width': width,
            'height': height,
            'shape': shape,
            'blob_sizes': [len(b) for b in blobs],
            'declared_duration': decoded.declared_duration_s,
            'decoder': DECODER_VERSION,
        }
        write_cache(cache_dir / f'{name}.bin', header, blobs)
        return path_str, {
            'status': 'ok',
            'num_frames': len(frames),
            'warnings': decoded.warnings,
            'duration': decoded.duration_s,
            'declared_duration': decoded.declared_duration_s,
        }
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
        info = {
            'status': 'failed',
            'reason': reason,
            'detail': detail,
            'signature': signature,
            'decoder': DECODER_VERSION,
        }
        try:
            atomic_write(cache_dir / f'{name}.fail.json', json.dumps(info).encode())
        except OSError:
            pass
        return path_str, info


def run_decodes(
    todo: list[Path], cache_dir: Path, settings: ConvertSettings, workers: int, progress: bool, desc: str
) -> dict[str, dict[str, Any]]:
    from tqdm import tqdm

    results: dict[str, dict[str, Any]] = {}
    if not todo:
        return results
    tasks = [(str(p), str(cache_dir), settings) for p in todo]
    bar = tqdm(
        total=len(tasks), desc=desc, unit='video', disable=not progress, dynamic_ncols=True, smoothing=0.1
    )
    try:
        if workers <= 1:
            for task in tasks:
                key, info = decode_one(task)
                results[key] = info
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(decode_one, t) for t in tasks]
                for future in as_completed(futures):
                    key, info = future.result()
                    results[key] = info
                    bar.update(1)
    finally:
        bar.close()
    return results
