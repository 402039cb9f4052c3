"""Video decoding (PyAV) and frame selection.

These are the pieces shared by the offline path (decode a video file once, store JPEG frames in MDS) and the
online path (which stored frames a model input takes); the CLIP transform of those frames is
`tempme_composer.clip.preprocess`. Everything except the
decoders is a pure function so that it can be unit-tested against the worked examples in
``docs/reference/evaluation-protocol.md`` (frame sampling, CLIP preprocessing, video tensor and mask).
:func:`decode_video` returns every frame the rule keeps (the converter stores them all);
:func:`decode_video_frames` holds only the few a model input needs, for any length or frame size;
:class:`RuleFrames` streams every kept frame with its time, for consumers that hold a sliding window of them.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import operator
import os
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from tempme_composer.clip.preprocess import scaled_size

if TYPE_CHECKING:
    import av

__all__ = [
    'MAX_DECODE_PASSES',
    'MAX_FRAME_PIXELS',
    'SLICE_FRAMEPOS_CHOICES',
    'DecodedVideo',
    'PassResult',
    'PickedFrames',
    'RuleFrames',
    'SelectedFrames',
    'VideoDecodeError',
    'decode_video',
    'decode_video_frames',
    'encode_jpeg',
    'fit_pixels',
    'select_frame_indices',
]

log = logging.getLogger(__name__)

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


def _rotation_of(frame: object) -> int:
    """Display-matrix rotation of a decoded frame in degrees counter-clockwise (0 if absent/unsupported)."""
    try:
        angle = getattr(frame, 'rotation', 0) or 0
    except Exception:  # older PyAV or unreadable side data
        return 0
    return int(round(float(angle) / 90.0)) * 90 % 360


def _check_rule(fps: float | None, short_side: int | None) -> None:
    """Refuse a frame rule that cannot be applied (before any file is opened)."""
    if fps is not None and not fps > 0:
        raise ValueError(f'fps must be positive or None, got {fps}')
    if short_side is not None and short_side < 1:
        raise ValueError(f'short_side must be a positive int or None, got {short_side}')


class _RuleClock:
    """The fps rule over one sequence of frames in presentation order: each frame's time from the first one,
    and whether the rule keeps it. Decoding and packet counting share it, so both apply the same rule."""

    def __init__(self, time_base: Fraction | None, rate: Fraction | None, fps: float | None) -> None:
        self.time_base, self.rate = time_base, rate
        self.keep_rate = Fraction(fps).limit_denominator(1_000_000) if fps is not None else None
        self.first_pts: int | None = None
        self.last_interval = -1
        self.seen = 0  # frames stepped through
        self.last_time: Fraction | None = None
        self.last_len: Fraction | None = None  # presentation length of the last frame

    def keeps(self, pts: int | None, length: int | None) -> bool:
        """Step over one frame (``pts`` and ``length`` in the stream's time base, None when unknown)."""
        # Presentation time relative to the first frame; fall back to the frame counter without pts.
        if pts is not None and self.time_base is not None:
            if self.first_pts is None:
                self.first_pts = pts
            t = Fraction(pts - self.first_pts) * self.time_base
        else:
            t = Fraction(self.seen) / Fraction(self.rate if self.rate else 1)
        self.seen += 1
        self.last_time = t
        self.last_len = Fraction(length) * self.time_base if length and self.time_base is not None else None
        if self.keep_rate is None:
            return True
        interval = math.floor(t * self.keep_rate)  # exact: Fraction arithmetic, no float drift
        if interval <= self.last_interval:
            return False
        self.last_interval = interval
        return True


def _stream_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    return stream.average_rate or stream.guessed_rate or stream.base_rate


@contextlib.contextmanager
def _open_video(path: Path) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """The container and its first video stream, closed on exit; `VideoDecodeError` naming the file when there
    is no file, no container or no video stream."""
    import av

    if not path.is_file():
        raise VideoDecodeError(f'cannot decode video {str(path)!r}: file does not exist')
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
        yield container, container.streams.video[0]
    finally:
        container.close()


#: Called by `_decode_pass` for every frame the rule keeps: (rule index, decoded frame, its rotation in degrees).
_FrameSink = Callable[[int, 'av.VideoFrame', int], None]


@dataclass
class PassResult:
    """What one decoding pass learned about the file (everything in `DecodedVideo` but the frames)."""

    num_frames: int  # frames the rule kept
    source_fps: float
    duration_s: float
    warnings: list[str]
    rotation: int
    truncated: bool
    declared_duration_s: float | None


def _thread_type(stream: av.video.stream.VideoStream, max_pixels: int | None) -> str:
    """FFmpeg's threading for a stream: ``AUTO`` (frame threads: one frame in flight per core), or ``SLICE``
    (one frame in flight) when its coded frames exceed ``max_pixels``, as a frame thread then holds hundreds
    of MB (64 MP frames: ~180 MB each, so 16 threads would hold ~3 GB)."""
    pixels = (stream.codec_context.width or 0) * (stream.codec_context.height or 0)
    return 'SLICE' if max_pixels is not None and pixels > max_pixels else 'AUTO'


def _pass_frames(path: Path, fps: float | None, apply_rotation: bool, max_pixels: int | None = None,
                 opened: Callable[[float | None], None] | None = None,
                 ) -> Generator[tuple[int, Fraction, av.VideoFrame, int], None, PassResult]:
    """Decode every frame once, yield each frame the rule keeps and measure duration/truncation.

    Yields (rule index, time from the first frame in seconds, decoded frame, its rotation in degrees) and
    returns the `PassResult`. ``opened`` is told the stream's declared frame rate (None: not stated) before the
    first frame. An ``av.FFmpegError`` thrown in at a yield counts as a decode error at that frame. Errors and
    warnings are those documented on `decode_video`; ``max_pixels``: see `_thread_type` (None: always FFmpeg's
    automatic threading).
    """
    import av

    with _open_video(path) as (container, stream):
        stream.thread_type = _thread_type(stream, max_pixels)
        time_base = stream.time_base
        rate = _stream_rate(stream)
        source_fps = float(rate) if rate else 0.0
        if opened is not None:
            opened(source_fps or None)
        clock = _RuleClock(time_base, rate, fps)
        kept = 0
        warnings: list[str] = []
        rotation = 0
        decode_error: av.FFmpegError | None = None
        try:
            for frame in container.decode(stream):
                if not clock.keeps(frame.pts, getattr(frame, 'duration', None)):
                    continue
                frame_rotation = _rotation_of(frame) if apply_rotation else 0
                yield kept, clock.last_time, frame, frame_rotation
                if apply_rotation:
                    rotation = frame_rotation
                kept += 1
        except av.FFmpegError as e:
            if not kept:
                raise VideoDecodeError(f'cannot decode video {str(path)!r}: decoding failed ({e})') from e
            decode_error = e

        if not kept:
            raise VideoDecodeError(f'cannot decode video {str(path)!r}: the video stream has zero frames')
        n_decoded, last_time = clock.seen, clock.last_time
        if not source_fps:
            source_fps = float(n_decoded / float(last_time)) if last_time else 1.0
        frame_s = float(clock.last_len) if clock.last_len else 1.0 / source_fps
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
    if rotation:
        warnings.append(f'rotated: display matrix {rotation} degrees applied')
    return PassResult(num_frames=kept, source_fps=source_fps, duration_s=duration_s, warnings=warnings,
                      rotation=rotation, truncated=truncated, declared_duration_s=declared_s)


def _handled(frames: Generator[tuple[int, Fraction, av.VideoFrame, int], None, PassResult],
             handle: Callable[[int, av.VideoFrame, int], object],
             ) -> Generator[tuple[int, Fraction, object], None, PassResult]:
    """Each kept frame of a `_pass_frames` pass through ``handle`` (rule index, frame, rotation), yielded as
    (rule index, time, what ``handle`` returned); an ``av.FFmpegError`` of the handler is a decode error at
    that frame, as one of the decoder's. Returns the pass's `PassResult`; the file is closed on exit."""
    import av

    with contextlib.closing(frames):
        try:
            item = next(frames)
            while True:
                index, time, frame, rotation = item
                try:
                    out = handle(index, frame, rotation)
                except av.FFmpegError as e:
                    item = frames.throw(e)
                    continue
                yield index, time, out
                item = next(frames)
        except StopIteration as stop:
            return stop.value


def _decode_pass(path: Path, fps: float | None, apply_rotation: bool, sink: _FrameSink,
                 max_pixels: int | None = None) -> PassResult:
    """`_pass_frames` handing each kept frame to ``sink``, which decides what a kept frame costs:
    `decode_video` converts all of them, `decode_video_frames` only the few it needs."""
    handled = _handled(_pass_frames(path, fps, apply_rotation, max_pixels), sink)
    while True:
        try:
            next(handled)
        except StopIteration as stop:
            return stop.value


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int], rotation: int) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of a decoded frame resized to ``size`` (width, height), then turned upright."""
    rgb = frame.reformat(width=size[0], height=size[1], format='rgb24', interpolation='BICUBIC')
    array = rgb.to_ndarray()  # [H, W, 3] uint8
    if rotation:
        # np.rot90 turns counter-clockwise for positive k, like the display matrix angle.
        array = np.ascontiguousarray(np.rot90(array, k=rotation // 90))
    return array


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
        :class:`DecodedVideo` with at least one frame. Every kept frame is held in memory: to take a few
        frames of a long or very large video use :func:`decode_video_frames`.

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
    _check_rule(fps, short_side)
    frames: list[np.ndarray] = []

    def keep(index: int, frame: av.VideoFrame, rotation: int) -> None:
        frames.append(_to_rgb(frame, scaled_size(frame.width, frame.height, short_side), rotation))

    run = _decode_pass(Path(path), fps, apply_rotation, keep)
    return DecodedVideo(frames=frames, source_fps=run.source_fps, duration_s=run.duration_s, warnings=run.warnings,
                        rotation=run.rotation, truncated=run.truncated,
                        declared_duration_s=run.declared_duration_s)


#: Pixel budget of one decoded frame in `decode_video_frames`: 3840x2160 (4K UHD), 8.3 MP. A frame larger
#: after the rule's short-side resize is decoded smaller (aspect kept) so that a handful of huge frames cannot
#: exhaust memory; the model sees ``image_resolution`` pixels a side anyway.
MAX_FRAME_PIXELS = 3840 * 2160

#: Full decoding passes `decode_video_frames` makes before refusing a file whose frame count keeps changing.
MAX_DECODE_PASSES = 3


class PickedFrames(Sequence[np.ndarray]):
    """The L frames a frame rule yields, of which only the picked ones are held.

    ``len()`` is L; indexing a picked frame returns its ``[H, W, 3]`` uint8 RGB array, any other index raises
    `IndexError`. Consumers that index only what they picked (the frame selection, the thumbnail strip) see
    the same frames as with the full list.
    """

    def __init__(self, frames: dict[int, np.ndarray], length: int) -> None:
        if any(not 0 <= i < length for i in frames):
            raise ValueError(f'picked frame indices {sorted(frames)} fall outside 0..{length - 1}')
        self._frames, self._length = frames, length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        i = operator.index(index)
        if i < 0:
            i += self._length
        if i not in self._frames:
            raise IndexError(f'frame {index} of {self._length} was not picked (held: {sorted(self._frames)})')
        return self._frames[i]

    @property
    def picked(self) -> list[int]:
        """Indices of the frames held, ascending."""
        return sorted(self._frames)


@dataclass
class SelectedFrames:
    """What :func:`decode_video_frames` returns: the picked frames plus the same timing as `DecodedVideo`."""

    frames: PickedFrames
    source_fps: float
    duration_s: float
    warnings: list[str]  # truncated / rotated as in `decode_video`, then ``resized:`` when over the pixel budget
    rotation: int
    truncated: bool
    declared_duration_s: float | None
    decode_passes: int  # full decoding passes: 1 unless the packet count missed the decoded count
    frames_converted: int  # RGB conversions over all passes: the frames ever held, at most one pass's picks each


def fit_pixels(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest `scaled_size` of ``width`` x ``height`` with at most ``max_pixels`` pixels."""
    short, long = min(width, height), max(width, height)
    side = max(1, math.isqrt(max_pixels * short // long))
    while side > 1 and math.prod(scaled_size(width, height, side)) > max_pixels:
        side -= 1
    return scaled_size(width, height, side)


def _resize_warning(size: tuple[int, int], fitted: tuple[int, int], max_pixels: int, rotation: int) -> str:
    """``resized:`` warning, sizes as displayed (width x height after the rotation)."""
    if rotation in (90, 270):
        size, fitted = size[::-1], fitted[::-1]
    mp = math.prod(size) / 1e6
    return (f'resized: frames are {size[0]}x{size[1]} ({mp:.1f} MP), over the {max_pixels / 1e6:.1f} MP budget; '
            f'decoded at {fitted[0]}x{fitted[1]}')


class _BudgetRGB:
    """Converts kept frames to the rule's size capped to the pixel budget; remembers the first ``resized:``."""

    def __init__(self, short_side: int | None, max_pixels: int) -> None:
        self.short_side, self.max_pixels = short_side, max_pixels
        self.resized: str | None = None

    def convert(self, frame: av.VideoFrame, rotation: int) -> np.ndarray:
        size = scaled_size(frame.width, frame.height, self.short_side)
        if math.prod(size) > self.max_pixels:
            fitted = fit_pixels(size[0], size[1], self.max_pixels)
            if self.resized is None:
                self.resized = _resize_warning(size, fitted, self.max_pixels, rotation)
            size = fitted
        return _to_rgb(frame, size, rotation)


class _Keeper(_BudgetRGB):
    """Sink of one pass of `decode_video_frames`: converts and holds only the wanted rule indices, at the
    rule's size capped to the pixel budget."""

    def __init__(self, wanted: set[int], short_side: int | None, max_pixels: int) -> None:
        super().__init__(short_side, max_pixels)
        self.wanted = wanted
        self.frames: dict[int, np.ndarray] = {}

    def __call__(self, index: int, frame: av.VideoFrame, rotation: int) -> None:
        if index not in self.wanted:
            return  # dropped undecoded to RGB: the decoder's buffer is released with ``frame``
        self.frames[index] = self.convert(frame, rotation)


class RuleFrames:
    """Every frame the rule keeps, in one decoding pass, as ``(seconds from the first frame, [H, W, 3] uint8)``.

    The frames are `decode_video_frames`'s (rule size capped to ``max_pixels``, turned upright) but nothing is
    held here: a consumer that keeps only what it still needs (e.g. the frames of a time window) decodes a video
    of any length in bounded memory. ``declared_fps`` is known once the first frame is out; ``result`` (the
    pass's timing and warnings, ``resized:`` last as in `decode_video_frames`) once the iteration ended.

    Raises (while iterating): `VideoDecodeError` and `ValueError` as `decode_video_frames`.
    """

    def __init__(self, path: str | os.PathLike, *, fps: float | None, short_side: int | None,
                 apply_rotation: bool = True, max_pixels: int = MAX_FRAME_PIXELS) -> None:
        _check_rule(fps, short_side)
        if max_pixels < 1:
            raise ValueError(f'max_pixels must be a positive int, got {max_pixels}')
        self.path, self.fps, self.apply_rotation = Path(path), fps, apply_rotation
        self._rgb = _BudgetRGB(short_side, max_pixels)
        self.declared_fps: float | None = None
        self.result: PassResult | None = None

    def _opened(self, rate: float | None) -> None:
        self.declared_fps = rate

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        frames = _pass_frames(self.path, self.fps, self.apply_rotation, self._rgb.max_pixels, self._opened)
        handled = _handled(frames, lambda _, frame, rotation: self._rgb.convert(frame, rotation))
        while True:
            try:
                _, time, image = next(handled)
            except StopIteration as stop:
                run: PassResult = stop.value
                break
            yield float(time), image
        if self._rgb.resized:
            run.warnings.append(self._rgb.resized)
        self.result = run


def _count_rule_frames(path: Path, fps: float | None) -> int:
    """How many frames the rule will keep, from the demuxed packets alone (nothing decoded).

    Packets come in decode order: their presentation times, sorted, are the frames' order out of the decoder.
    Discarded packets (before an edit list's start) are left out as the decoder drops them. This is an
    estimate: packets without pts, frames a decoder drops, or a cut tail can make it differ from decoding.
    """
    import av

    with _open_video(path) as (container, stream):
        pts: list[int] = []
        missing = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:  # the demuxer's end-of-stream flush packet / dropped
                    continue
                if packet.pts is None:
                    missing += 1
                else:
                    pts.append(packet.pts)
        except av.FFmpegError:
            pass  # a cut tail: count what was read, the decoding pass says the rest
        clock = _RuleClock(stream.time_base, _stream_rate(stream), fps)
    kept = sum(clock.keeps(p, None) for p in sorted(pts))
    return kept + sum(clock.keeps(None, None) for _ in range(missing))


def decode_video_frames(path: str | os.PathLike, *, fps: float | None, short_side: int | None,
                        pick: Callable[[int], Iterable[int]], apply_rotation: bool = True,
                        max_pixels: int = MAX_FRAME_PIXELS) -> SelectedFrames:
    """Decode only the frames ``pick`` needs: what :func:`decode_video` returns, without holding the video.

    The frame rule (``fps``, ``short_side``, ``apply_rotation``) is `decode_video`'s; ``pick(L)`` names the
    rule indices needed once the rule's frame count L is known (e.g. the model's frame selection). L is
    counted first from the packets' presentation times (demuxing only), then one decoding pass converts the
    picked frames to RGB and drops every other frame as it comes out of the decoder. When that pass yields
    another L (a cut tail, packets without timestamps, frames the decoder drops), it is repeated with the
    L it found, up to `MAX_DECODE_PASSES` passes. So the picked frames, timing and warnings equal
    ``decode_video(...)``'s at those indices, while at most ``len(pick(L))`` frames are held at a time.

    ``max_pixels`` (default `MAX_FRAME_PIXELS`, 3840x2160) caps a frame's pixels after the short-side resize:
    a larger frame is decoded at the largest size within the budget (aspect kept, short side whole) and a
    ``resized: frames are WxH (… MP), over the … MP budget; decoded at wxh`` warning is added. A stream whose
    coded frames exceed it is decoded with slice threads only (see `_thread_type`), so its decoder holds one
    frame instead of one per core; at a cut tail it may then stop a frame later than the frame-threaded
    decoder, with the decode error in the ``truncated:`` warning.

    Raises:
        VideoDecodeError: as `decode_video`; also when the decoder yields a different frame count on each of
            `MAX_DECODE_PASSES` passes.
        ValueError: ``fps``, ``short_side`` or ``max_pixels`` is not positive.
    """
    _check_rule(fps, short_side)
    if max_pixels < 1:
        raise ValueError(f'max_pixels must be a positive int, got {max_pixels}')
    path = Path(path)
    guess = promised = _count_rule_frames(path, fps)
    counts, converted = [], 0
    for passes in range(1, MAX_DECODE_PASSES + 1):
        keeper = _Keeper({int(i) for i in pick(guess)}, short_side, max_pixels)
        run = _decode_pass(path, fps, apply_rotation, keeper, max_pixels)
        converted += len(keeper.frames)
        counts.append(run.num_frames)
        needed = {int(i) for i in pick(run.num_frames)}
        if needed <= keeper.frames.keys():
            frames = PickedFrames({i: keeper.frames[i] for i in needed}, run.num_frames)
            warnings = run.warnings + ([keeper.resized] if keeper.resized else [])
            return SelectedFrames(frames=frames, source_fps=run.source_fps, duration_s=run.duration_s,
                                  warnings=warnings, rotation=run.rotation, truncated=run.truncated,
                                  declared_duration_s=run.declared_duration_s, decode_passes=passes,
                                  frames_converted=converted)
        guess = run.num_frames
        del keeper  # this pass's frames are the wrong ones: release them before the next pass
    raise VideoDecodeError(f'cannot decode video {str(path)!r}: the decoder yields a different number of frames '
                           f'on every pass ({", ".join(map(str, counts))}; the packets promised {promised}), so '
                           'the frame selection cannot be made')


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
    """Indices of the frames kept when a video has more than ``max_frames`` frames.

    Rules: docs/reference/evaluation-protocol.md#frame-sampling.

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
