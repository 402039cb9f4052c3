"""Queries that are not text: an image, a video clip, or a moment already in the index ("more like this").

An image or a video is encoded by the visual path the index used, with the same preprocessing: a video file
through `preprocess.video_from_file`, an image as a one-frame video (decoded with PIL, turned upright by its
EXIF orientation when the frame rule applies rotations, resized by the frame rule's short side, then
`preprocess.video_from_frames`). A ``--like`` query is the stored embedding of an indexed moment, so it needs
no model. No Composer import.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tempme_composer.inference.exported import ExportedModel
from tempme_composer.inference.preprocess import QueryError, VideoInput
from tempme_composer.inference.search import (
    NMS_IOU,
    PER_VIDEO_AUTO,
    QueryResult,
    VideoIndex,
    clock,
    display_path,
    moment_of,
    search_vectors,
)

__all__ = ['VectorQuery', 'image_query', 'video_query', 'like_query', 'image_input', 'search_by', 'parse_like']


@dataclass
class VectorQuery:
    """A query as an embedding, with the label results show for it."""

    label: str  # e.g. "image: cat.png"
    vector: np.ndarray  # [D] float32
    note: str | None = None
    row: int | None = None  # the indexed moment of a --like query


def image_input(path: str | os.PathLike, model: ExportedModel) -> VideoInput:
    """An image file as the one-frame video the model reads (see the module docstring).

    Raises:
        QueryError: ``--image`` naming the file: missing, a folder, or not a picture PIL decodes.
    """
    from PIL import Image, ImageOps

    from tempme_composer.clip.preprocess import scaled_size
    from tempme_composer.data.video import MAX_FRAME_PIXELS, fit_pixels
    from tempme_composer.inference.preprocess import video_from_frames

    path = Path(path)
    if path.is_dir():
        raise QueryError(f'--image {path} is a folder, expected an image file')
    if not path.is_file():
        raise QueryError(f'--image {path}: no such file')
    rule = model.preprocessing.frames
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image) if rule.apply_rotation else image
            rgb = upright.convert('RGB')
    except Exception as e:  # PIL raises many types on a damaged or hostile file (OSError, SyntaxError, bombs)
        raise QueryError(f'--image {path}: not a readable image ({type(e).__name__}: {e}); expected a picture '
                         'file such as PNG, JPEG or WebP') from e
    size = scaled_size(rgb.width, rgb.height, rule.short_side)
    warnings = []
    if size[0] * size[1] > MAX_FRAME_PIXELS:
        fitted = fit_pixels(size[0], size[1], MAX_FRAME_PIXELS)
        warnings.append(f'resized: {size[0]}x{size[1]} is over the {MAX_FRAME_PIXELS / 1e6:.1f} MP budget; '
                        f'read at {fitted[0]}x{fitted[1]}')
        size = fitted
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    return video_from_frames([np.asarray(rgb)], model.preprocessing, duration=0.0, warnings=warnings)


def _encode(model: ExportedModel, x: VideoInput) -> np.ndarray:
    from tempme_composer.inference.index import encode_videos

    return encode_videos(model, [x])[0].astype(np.float32)


def image_query(model: ExportedModel, path: str | os.PathLike) -> VectorQuery:
    """An image as a query (see `image_input`)."""
    x = image_input(path, model)
    return VectorQuery(f'image: {path}', _encode(model, x), '; '.join(x.warnings) or None)


def video_query(model: ExportedModel, path: str | os.PathLike) -> VectorQuery:
    """A video file as a query, preprocessed as the index's videos are.

    Raises:
        QueryError: ``--video`` naming the file when it does not decode.
    """
    from tempme_composer.data.video import VideoDecodeError
    from tempme_composer.inference.preprocess import video_from_file

    path = Path(path)
    if path.is_dir():
        raise QueryError(f'--video {path} is a folder, expected a video file')
    try:
        x = video_from_file(path, model.preprocessing)
    except VideoDecodeError as e:
        raise QueryError(f'--video {path}: {e}') from e
    return VectorQuery(f'video: {path}', _encode(model, x), '; '.join(x.warnings) or None)


_CLOCK = re.compile(r'(?:(\d+):)?(?:(\d+):)?(\d+(?:\.\d*)?|\.\d+)')


def _seconds(text: str) -> float | None:
    """``'83.5'``, ``'1:23.5'`` or ``'0:01:23'`` in seconds, negative with a leading ``-`` (None: not a time)."""
    text = text.strip()
    sign = -1.0 if text.startswith('-') else 1.0
    m = _CLOCK.fullmatch(text.removeprefix('-'))
    if m is None:
        return None
    value = 0.0
    for part in (p for p in m.groups() if p is not None):
        value = value * 60 + float(part)
    return sign * value


def _find_video(index: VideoIndex, text: str, by_path: dict[str, list[int]]) -> str | None:
    """The stored path ``text`` names: as results show it, relative to the indexed folder, or a file path."""
    if text in by_path:
        return text
    source = index.manifest['source']
    if source.get('kind') != 'videos':
        return None  # an MDS split: video ids only
    root = source['root']
    for base, target in ((os.path.abspath(root), os.path.abspath(text)),
                         (os.path.realpath(root), os.path.realpath(text))):
        rel = os.path.relpath(target, base)
        if rel != '..' and not rel.startswith('../') and Path(rel).as_posix() in by_path:
            return Path(rel).as_posix()
    return None


def parse_like(index: VideoIndex, spec: str) -> tuple[str, float | None]:
    """``PATH[@SECONDS]`` → (stored path, seconds or None). A path holding ``@`` itself is found whole first.

    Raises:
        QueryError: the path is not in the index (naming a close match), or the time is not a number.
    """
    by_path = index.rows_by_video()
    found = _find_video(index, spec, by_path)
    if found is not None:
        return found, None
    text, at = spec, None
    if '@' in spec:
        text, tail = spec.rsplit('@', 1)
        at = _seconds(tail)
        if at is None:
            raise QueryError(f'--like {spec}: {tail!r} after @ is not a time; expected PATH@SECONDS (e.g. '
                             'clip.mp4@12.5 or clip.mp4@1:05)')
        found = _find_video(index, text, by_path)
    if found is None:
        raise QueryError(f'--like {text}: not a video of the index {index.folder}{_close_match(index, text, by_path)}; '
                         'give a path as results show it or relative to the indexed folder')
    return found, at


def _close_match(index: VideoIndex, text: str, by_path: dict[str, list[int]], limit: int = 200_000) -> str:
    names = list(by_path)[:limit]
    shown = {display_path(index, p): p for p in names}
    close = difflib.get_close_matches(text, list(shown) + names, n=1, cutoff=0.6)
    return f' (did you mean {close[0]}?)' if close else ''


def _moment_at(index: VideoIndex, rows: Sequence[int], at: float) -> int:
    """The row whose moment contains ``at`` (the one centred nearest it when several overlap; the nearest
    moment when none covers it)."""
    def distance(r: int) -> tuple[float, float, int]:
        start, end, _ = moment_of(index.rows[r])
        outside = max(start - at, at - end, 0.0)
        return outside, abs((start + end) / 2 - at), r

    return min(rows, key=distance)


def like_query(index: VideoIndex, spec: str) -> VectorQuery:
    """The stored embedding of an indexed moment as the query: ``PATH`` (its first moment) or ``PATH@SECONDS``
    (the moment containing that time).

    Raises:
        QueryError: a path not in the index, or a time outside the video.
    """
    path, at = parse_like(index, spec)
    rows = index.rows_by_video()[path]
    if at is None:
        row = min(rows, key=lambda r: (moment_of(index.rows[r])[0], r))
    else:
        duration = max([float(index.rows[r].get('duration') or 0.0) for r in rows]
                       + [moment_of(index.rows[r])[1] for r in rows])
        if not 0.0 <= at <= duration:
            raise QueryError(f'--like {spec}: {at:g} s is outside {display_path(index, path)}, which is '
                             f'{duration:g} s long; expected a time from 0 to {duration:g}')
        row = _moment_at(index, rows, at)
    start, end, _ = moment_of(index.rows[row])
    vector = np.asarray(index.embeddings[row], dtype=np.float32)
    return VectorQuery(f'like: {display_path(index, path)} {clock(start)}-{clock(end)}', vector, row=row)


def search_by(index: VideoIndex, queries: Sequence[VectorQuery], top_k: int = 10, approximate: bool = False,
              expansion_search: int | None = None, *, nms_iou: float = NMS_IOU,
              per_video: int | str = PER_VIDEO_AUTO) -> list[QueryResult]:
    """Top-``k`` moments for each image, video or ``--like`` query (the moment a ``--like`` query came from is
    its own best match, at rank 1)."""
    if not queries:
        return []
    vectors = np.stack([q.vector for q in queries])
    return search_vectors(index, vectors, [q.label for q in queries], top_k, approximate, expansion_search,
                          nms_iou=nms_iou, per_video=per_video, notes=[q.note for q in queries])
