"""Video decoding (PyAV), frame selection and the CLIP per-frame transform.

These are the pieces shared by the offline path (decode a video file once, store JPEG frames in MDS) and the
online path (turn stored frames into the ``[T, 3, R, R]`` tensor the model sees). Everything except
:func:`decode_video` is a pure function so that it can be unit-tested against the worked examples in
``data_metrics.md`` §2.3–2.5.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = [
    'CLIP_MEAN',
    'CLIP_STD',
    'SLICE_FRAMEPOS_CHOICES',
    'DecodedVideo',
    'VideoDecodeError',
    'decode_video',
    'encode_jpeg',
    'frames_to_tensor',
    'select_frame_indices',
]

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: ``--slice_framepos`` values of the CLIP4Clip family: 0 = head, 1 = tail, 2 = uniform (linspace, truncated).
SLICE_FRAMEPOS_CHOICES = {0: 'first max_frames', 1: 'last max_frames', 2: 'uniform linspace over [0, L-1]'}


class VideoDecodeError(ValueError):
    """A video could not be decoded into at least one frame (missing, unreadable, no video stream, empty)."""


@dataclass
class DecodedVideo:
    """Frames kept by :func:`decode_video` plus the container timing they came from."""

    frames: list[np.ndarray]  # each [H, W, 3] uint8 RGB
    source_fps: float  # the stream's own frame rate (before any subsampling)
    duration_s: float  # seconds actually decoded: first frame to the end of the last decoded frame
    warnings: list[str] = field(default_factory=list)  # e.g. a truncated tail, an applied rotation
    rotation: int = 0  # display rotation (degrees counter-clockwise) that was applied to the frames
    truncated: bool = False  # decoding stopped early: a decode error, or far short of the declared duration
    declared_duration_s: float | None = None  # what the stream/container header says (None: not stated)


def _truncation_gap(decoded_s: float, declared_s: float | None, frame_s: float) -> float:
    """Seconds missing at the end when they exceed what timestamp rounding, a longer audio track or the last
    frame's length can explain (max(1 s, 2 frames, 2 %) of the declared duration); else 0."""
    if declared_s is None or not declared_s > 0:
        return 0.0
    gap = declared_s - decoded_s
    return gap if gap > max(1.0, 2 * frame_s, 0.02 * declared_s) else 0.0


def _scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Output (width, height) with the short side exactly ``short_side`` and the aspect ratio kept.

    The long side is truncated like torchvision's ``Resize(int)`` (long = int(short_side * long / short)).
    """
    if short_side is None:
        return width, height
    if width <= height:
        return short_side, max(1, int(short_side * height / width))
    return max(1, int(short_side * width / height)), short_side


def _rotation_of(frame: object) -> int:
    """Display-matrix rotation of a decoded frame in degrees counter-clockwise (0 if absent/unsupported)."""
    try:
        angle = getattr(frame, 'rotation', 0) or 0
    except Exception:  # older PyAV or unreadable side data
        return 0
    return int(round(float(angle) / 90.0)) * 90 % 360


def decode_video(path: str | os.PathLike, *, fps: float | None, short_side: int | None,
                 apply_rotation: bool = True) -> DecodedVideo:
    """Decode a video file to RGB frames, optionally subsampled in time and resized.

    Args:
        path: video file readable by FFmpeg.
        fps: keep the first frame of every ``1/fps`` interval, measured by presentation time from the first
            frame (``fps=None`` keeps every frame). With a 30 fps source and ``fps=3`` this keeps frames
            0, 10, 20, ...; with ``fps`` above the source rate every frame is kept (no duplication).
        short_side: resize so the shorter side is exactly this many pixels, keeping the aspect ratio
            (landscape and portrait alike, up or down). ``None`` keeps the decoded size.
        apply_rotation: honour the stream's display matrix (phones store portrait video as rotated
            landscape frames): frames are turned by multiples of 90 degrees to their display orientation.

    Returns:
        :class:`DecodedVideo` with at least one frame.

    Raises:
        VideoDecodeError: the file is missing, not a video, has no video stream, or yields no frame. A decode
            error after at least one frame was decoded only logs a warning (naming the file) and keeps the
            frames decoded so far, as truncated tails are common in scraped datasets.

    A truncated tail is detected two ways, because FFmpeg's multi-threaded decoder swallows the error at the
    cut that single-threaded decoding raises: a decode error, or the last decoded frame ending far short of
    the duration the stream (else the container) declares. Either sets ``truncated`` and a ``truncated:``
    warning; ``duration_s`` is always the decoded span, never the declared one.
        ValueError: ``fps`` or ``short_side`` is not positive.
    """
    import av  # local import: keep ``import tempme_composer.data`` light for processes that never decode

    if fps is not None and not fps > 0:
        raise ValueError(f'fps must be positive or None, got {fps}')
    if short_side is not None and short_side < 1:
        raise ValueError(f'short_side must be a positive int or None, got {short_side}')
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f'cannot decode video {str(path)!r}: file does not exist')

    frames: list[np.ndarray] = []
    try:
        container = av.open(str(path), mode='r')
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoDecodeError(f'cannot decode video {str(path)!r}: cannot open container ({e})') from e
    try:
        if not len(container.streams):
            raise VideoDecodeError(f'cannot decode video {str(path)!r}: cannot open container (no streams: '
                                   'truncated, e.g. a missing mp4 moov atom, or not a media file)')
        if not container.streams.video:
            raise VideoDecodeError(f'cannot decode video {str(path)!r}: no video stream')
        stream = container.streams.video[0]
        stream.thread_type = 'AUTO'
        time_base = stream.time_base
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        source_fps = float(rate) if rate else 0.0
        keep_rate = Fraction(fps).limit_denominator(1_000_000) if fps is not None else None

        first_pts: int | None = None
        last_interval = -1
        last_time: Fraction | None = None
        last_len: Fraction | None = None  # presentation length of the last decoded frame
        n_decoded = 0
        warnings: list[str] = []
        rotation = 0
        decode_error: av.FFmpegError | None = None
        try:
            for frame in container.decode(stream):
                # Presentation time relative to the first frame; fall back to the frame counter without pts.
                if frame.pts is not None and time_base is not None:
                    if first_pts is None:
                        first_pts = frame.pts
                    t = Fraction(frame.pts - first_pts) * time_base
                else:
                    t = Fraction(n_decoded) / Fraction(rate if rate else 1)
                n_decoded += 1
                last_time = t
                length = getattr(frame, 'duration', None)
                last_len = Fraction(length) * time_base if length and time_base is not None else None
                if keep_rate is not None:
                    interval = math.floor(t * keep_rate)  # exact: Fraction arithmetic, no float drift
                    if interval <= last_interval:
                        continue
                    last_interval = interval
                width, height = _scaled_size(frame.width, frame.height, short_side)
                rgb = frame.reformat(width=width, height=height, format='rgb24', interpolation='BICUBIC')
                array = rgb.to_ndarray()  # [H, W, 3] uint8
                if apply_rotation:
                    rotation = _rotation_of(frame)
                    if rotation:
                        # np.rot90 turns counter-clockwise for positive k, like the display matrix angle.
                        array = np.ascontiguousarray(np.rot90(array, k=rotation // 90))
                frames.append(array)
        except av.FFmpegError as e:
            if not frames:
                raise VideoDecodeError(f'cannot decode video {str(path)!r}: decoding failed ({e})') from e
            decode_error = e

        if not frames:
            raise VideoDecodeError(f'cannot decode video {str(path)!r}: the video stream has zero frames')
        if not source_fps:
            source_fps = float(n_decoded / float(last_time)) if last_time else 1.0
        frame_s = float(last_len) if last_len else 1.0 / source_fps
        duration_s = float(last_time) + frame_s if last_time is not None else n_decoded / source_fps
        if stream.duration is not None and time_base is not None:
            declared_s: float | None = float(stream.duration * time_base)
        elif container.duration is not None:
            declared_s = container.duration / av.time_base
        else:
            declared_s = None
        gap = _truncation_gap(duration_s, declared_s, frame_s)
        truncated = decode_error is not None or gap > 0
        if truncated:
            of = f' of the {declared_s:.1f} s the file declares' if declared_s else ''
            why = f'decode error: {decode_error}' if decode_error is not None else 'no error, the frames just stop'
            log.warning('video %s: truncated, decoded %.1f s%s (%d frames, %s); keeping the frames read so far',
                        path, duration_s, of, n_decoded, why)
            warnings.append(f'truncated: decoded {duration_s:.1f} s{of} ({n_decoded} frames; {why}): the file ends '
                            'early, e.g. an incomplete download')
    finally:
        container.close()
    if rotation:
        warnings.append(f'rotated: display matrix {rotation} degrees applied')
    return DecodedVideo(frames=frames, source_fps=source_fps, duration_s=duration_s, warnings=warnings,
                        rotation=rotation, truncated=truncated, declared_duration_s=declared_s)


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    """Encode one ``[H, W, 3]`` uint8 RGB frame as JPEG bytes (for the MDS ``jpegarray`` column).

    Encoding ourselves (instead of ``list[jpeg]``) lets us choose the quality; MDS would use PIL's default 75.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f'expected an [H, W, 3] uint8 RGB frame, got {frame.shape} {frame.dtype}')
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format='JPEG', quality=quality)
    return buf.getvalue()


def select_frame_indices(num_frames: int, max_frames: int, slice_framepos: int = 2) -> np.ndarray:
    """Indices of the frames kept when a video has more than ``max_frames`` frames (data_metrics.md §2.3).

    Args:
        num_frames: number of available frames L (>= 0).
        max_frames: model frame budget M (>= 1).
        slice_framepos: 0 = first M, 1 = last M, 2 = ``np.linspace(0, L-1, M)`` truncated to int (published
            recipes). First and last frames are always kept with 2 and there are no duplicates while L > M.

    Returns:
        int64 array, ascending, of length ``min(L, M)``; all of ``0..L-1`` when ``L <= M`` (no up-sampling).
    """
    if slice_framepos not in SLICE_FRAMEPOS_CHOICES:
        valid = ', '.join(f'{k} ({v})' for k, v in SLICE_FRAMEPOS_CHOICES.items())
        raise ValueError(f'slice_framepos must be one of {valid}; got {slice_framepos!r}')
    if num_frames < 0:
        raise ValueError(f'num_frames must be >= 0, got {num_frames}')
    if max_frames < 1:
        raise ValueError(f'max_frames must be >= 1, got {max_frames}')
    if num_frames <= max_frames:
        return np.arange(num_frames, dtype=np.int64)
    if slice_framepos == 0:
        return np.arange(max_frames, dtype=np.int64)
    if slice_framepos == 1:
        return np.arange(num_frames - max_frames, num_frames, dtype=np.int64)
    # Same as the references' np.linspace(..., dtype=int): float positions truncated toward zero.
    return np.linspace(0, num_frames - 1, num=max_frames).astype(np.int64)


def _resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """torchvision ``Resize(R)`` (bicubic, long side truncated, no-op at short side R) + ``CenterCrop(R)``."""
    width, height = image.size
    if min(width, height) != resolution:
        image = image.resize(_scaled_size(width, height, resolution), resample=Image.Resampling.BICUBIC)
        width, height = image.size
    # Same offsets as torchvision's center_crop: int(round((size - R) / 2)).
    left = int(round((width - resolution) / 2.0))
    top = int(round((height - resolution) / 2.0))
    return image.crop((left, top, left + resolution, top + resolution))


def frames_to_tensor(frames: Sequence[Image.Image | np.ndarray], resolution: int) -> torch.Tensor:
    """CLIP preprocessing of a frame list (data_metrics.md §2.4).

    Args:
        frames: PIL images (any mode) or ``[H, W, 3]`` uint8 RGB arrays.
        resolution: output side R.

    Returns:
        float32 ``[T, 3, R, R]``: short side resized to R (bicubic), center-cropped, scaled to [0, 1] and
        normalised with the CLIP mean/std.
    """
    if not frames:
        raise ValueError('frames_to_tensor needs at least one frame')
    out = np.empty((len(frames), resolution, resolution, 3), dtype=np.uint8)  # [T, R, R, 3]
    for i, frame in enumerate(frames):
        image = Image.fromarray(frame) if isinstance(frame, np.ndarray) else frame
        if image.mode != 'RGB':
            image = image.convert('RGB')
        out[i] = np.asarray(_resize_center_crop(image, resolution))
    video = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)  # [T, 3, R, R]
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return video.sub_(mean).div_(std).contiguous()
