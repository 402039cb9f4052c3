"""Inputs for an exported model: video files / stored MDS frames → ``[T, R, R, 3]`` + mask, text → token ids.

The same functions the training data path uses (`tempme_composer.data.video`): PyAV decoding with the
conversion's frame rule, the CLIP4Clip frame selection, CLIP's resize/crop/normalise, CLIP BPE.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from tempme_composer.clip.tokenizer import tokenize
from tempme_composer.data.uint8_frames import frames_to_uint8
from tempme_composer.data.video import MAX_FRAME_PIXELS, decode_video_frames, select_frame_indices
from tempme_composer.inference.exported import Preprocessing

__all__ = ['VideoInput', 'QueryError', 'video_from_file', 'video_from_frames', 'tokenize_queries',
           'thumbnail_strip', 'thumbnail_indices', 'frames_needed', 'THUMBNAILS_PER_VIDEO']

THUMBNAILS_PER_VIDEO = 4
THUMBNAIL_HEIGHT = 72


class QueryError(ValueError):
    """A text query that cannot be searched (empty, not text)."""


@dataclass
class VideoInput:
    """One video ready for the model, plus what the index stores about it."""

    video: torch.Tensor  # [T, R, R, 3] uint8 as the training loader hands it (the model normalises), zero padded
    mask: torch.Tensor  # [T] int64
    duration: float  # seconds actually decoded (or stored)
    num_frames: int  # frames taken by the frame rule (before selection)
    thumbnail: bytes  # JPEG strip of a few frames
    warnings: list[str] = field(default_factory=list)


def video_from_frames(frames: Sequence[np.ndarray | Image.Image], prep: Preprocessing, *, duration: float,
                      warnings: Sequence[str] = ()) -> VideoInput:
    """Select ``max_frames`` of ``frames`` and preprocess them exactly as evaluation does (``frames`` may be a
    `StoredFrames`, which decodes only the selected ones, or a `PickedFrames` holding `frames_needed`)."""
    keep = select_frame_indices(len(frames), prep.max_frames, prep.slice_framepos)
    picked = frames.select_stored(keep) if hasattr(frames, 'select_stored') else [frames[i] for i in keep]
    R = prep.image_resolution
    video = torch.zeros(prep.max_frames, R, R, 3, dtype=torch.uint8)
    frames_to_uint8(picked, R, out=video[: len(keep)])
    mask = torch.zeros(prep.max_frames, dtype=torch.long)
    mask[: len(keep)] = 1
    return VideoInput(video, mask, float(duration), len(frames), thumbnail_strip(frames), list(warnings))


def frames_needed(num_frames: int, prep: Preprocessing) -> set[int]:
    """Rule indices `video_from_frames` reads from ``num_frames`` frames: the selection and the thumbnails."""
    keep = select_frame_indices(num_frames, prep.max_frames, prep.slice_framepos)
    return {int(i) for i in keep} | {int(i) for i in thumbnail_indices(num_frames)}


def video_from_file(path: str | os.PathLike, prep: Preprocessing, *,
                    max_pixels: int = MAX_FRAME_PIXELS) -> VideoInput:
    """Decode with the conversion's frame rule, then `video_from_frames`.

    Only `frames_needed` are held (`decode_video_frames`), so memory does not grow with the video's length,
    and frames over ``max_pixels`` (after the rule's resize) are decoded smaller with a ``resized:`` warning.
    Otherwise the result equals decoding every frame with `decode_video` and passing them all.

    Raises:
        VideoDecodeError: the file is not a readable video (missing, not media, truncated before any frame).
    """
    rule = prep.frames
    decoded = decode_video_frames(path, fps=rule.fps, short_side=rule.short_side,
                                  apply_rotation=rule.apply_rotation, pick=lambda n: frames_needed(n, prep),
                                  max_pixels=max_pixels)
    return video_from_frames(decoded.frames, prep, duration=decoded.duration_s, warnings=decoded.warnings)


def thumbnail_indices(num_frames: int, count: int = THUMBNAILS_PER_VIDEO) -> np.ndarray:
    """Indices of the ``count`` evenly spaced frames (first and last included) `thumbnail_strip` shows."""
    return np.linspace(0, num_frames - 1, num=min(count, num_frames)).round().astype(int)


def thumbnail_strip(frames: Sequence[np.ndarray | Image.Image], count: int = THUMBNAILS_PER_VIDEO,
                    height: int = THUMBNAIL_HEIGHT) -> bytes:
    """A JPEG of ``count`` evenly spaced frames side by side (the results page shows it as the video)."""
    import io

    images = []
    for i in thumbnail_indices(len(frames), count):
        image = frames[i] if isinstance(frames[i], Image.Image) else Image.fromarray(frames[i])
        image = image.convert('RGB')
        width = max(1, round(image.width * height / image.height))
        images.append(image.resize((width, height), Image.Resampling.BILINEAR))
    strip = Image.new('RGB', (sum(im.width for im in images) + 2 * (len(images) - 1), height), 'white')
    x = 0
    for im in images:
        strip.paste(im, (x, 0))
        x += im.width + 2
    buf = io.BytesIO()
    strip.save(buf, format='JPEG', quality=80)
    return buf.getvalue()


def tokenize_queries(queries: Sequence[str], prep: Preprocessing) -> tuple[torch.Tensor, list[str | None]]:
    """Token ids ``[Q, max_words]`` and, per query, a note when it was truncated (else None).

    Raises:
        QueryError: an empty or whitespace-only query, or a non-string.
    """
    from tempme_composer.clip.tokenizer import bpe_tokenizer

    notes: list[str | None] = []
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise QueryError(f'query {i + 1} is a {type(q).__name__}, expected text')
        if not q.strip():
            raise QueryError(f'query {i + 1} is empty: give the words to search for')
        n = len(bpe_tokenizer().encode(q))
        room = prep.max_words - 2
        notes.append(f'query {i + 1} has {n} tokens; the model reads at most {room} (max_words={prep.max_words}), '
                     f'so it was truncated to its first {room}' if n > room else None)
    ids, _ = tokenize([q.strip() for q in queries], prep.max_words)
    return ids, notes
