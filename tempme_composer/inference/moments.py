"""Moments of a long video: overlapping time windows (or shots, split into windows), one index row each.

A model reads ``max_frames`` frames: spread over a two-hour video they say little about any minute of it.
Indexed as moments, each window of the video gets its own embedding from its own frames, selected and
preprocessed exactly as a whole video is (`video_from_frames`), so a video no longer than one window is one
moment equal to its whole-file input.

* `plan_windows` (pure): windows start at 0, stride, 2·stride, … and stop once one reaches the end.
* `moment_settings`: the ``--segments`` / ``--window`` / ``--stride`` flags checked, and the export's defaults.
* `MomentCutter`: assigns timed frames, in time order, to the windows as they stream by and hands a window's
  frames out as soon as it closes, so only the frames of the windows still open are held.
* `file_moments`: one decoding pass of a file (`RuleFrames`) through the cutter; `stored_moments`: the frames
  of an MDS sample (frame i at i / fps); `detect_cuts`: shot boundaries from PySceneDetect.
"""

from __future__ import annotations

import bisect
import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tempme_composer.data.video import MAX_FRAME_PIXELS, RuleFrames
from tempme_composer.inference.exported import Preprocessing
from tempme_composer.inference.preprocess import VideoInput, video_from_frames
from tempme_composer.inference.store import IndexFolderError

__all__ = ['MODES', 'TIME_TOLERANCE_S', 'CutMoment', 'FrameSpan', 'Moment', 'MomentCutter', 'MomentSettings', 'VideoEnd',
           'detect_cuts', 'file_moments', 'moment_settings', 'moments_of', 'plan_windows', 'require_shot_detection',
           'stored_moments']

#: ``whole``: one row per video (no moments); ``windows``: overlapping windows; ``shots``: shots, each longer
#: one split into windows.
MODES = ('whole', 'windows', 'shots')

#: Frame times are float sums of a container's time base while window bounds are multiples of the stride: a
#: microsecond, far below any frame's length, absorbs their rounding when they are compared.
TIME_TOLERANCE_S = 1e-6


@dataclass(frozen=True)
class MomentSettings:
    """How videos are cut into moments. ``window``/``stride`` in seconds; None: decided per video (the
    export's rule keeps every frame, so a window is ``max_frames`` frames at each video's own rate)."""

    mode: str = 'whole'
    window: float | None = None
    stride: float | None = None

    @property
    def segmented(self) -> bool:
        return self.mode != 'whole'

    def record(self) -> dict[str, Any]:
        """What the index manifest records as ``moments``."""
        return {'mode': self.mode, 'window': self.window, 'stride': self.stride}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> MomentSettings:
        return cls(record.get('mode', 'whole'), record.get('window'), record.get('stride'))

    def describe(self) -> str:
        if not self.segmented:
            return 'whole videos (one row each)'
        window = f'{self.window:g} s' if self.window is not None else 'max_frames frames at the video\'s rate'
        stride = f'{self.stride:g} s' if self.stride is not None else 'half the window'
        return f'{self.mode}, window {window}, stride {stride}'

    def window_and_stride(self, rate: float | None, max_frames: int) -> tuple[float, float]:
        """Seconds of one window and of the stride for a video whose frames come at ``rate`` per second (the
        default window is ``max_frames`` of them; an unknown rate counts one frame per second)."""
        window = self.window if self.window is not None else max_frames / (rate or 1.0)
        return window, self.stride if self.stride is not None else window / 2


def _seconds(flag: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise IndexFolderError(f'{flag} {value!r}: expected a positive number of seconds')
    return float(value)


def moment_settings(prep: Preprocessing, *, segments: str | None = None, window: float | None = None,
                    stride: float | None = None) -> MomentSettings:
    """The flags checked and the export's defaults filled in: a window is ``max_frames`` frames at the
    conversion rate (``prep.frames.fps``), the stride half a window. Nothing given: whole videos.

    Raises:
        IndexFolderError: naming the flag: an unknown ``--segments``, a ``--window`` or ``--stride`` that is not a
            positive number, a stride longer than the window, or ``--stride`` alone where the default window
            differs per video.
    """
    if segments is None and window is None and stride is None:
        return MomentSettings()
    mode = segments or 'windows'
    if mode not in MODES[1:]:
        raise IndexFolderError(f'--segments {mode!r}: expected one of {", ".join(MODES[1:])}')
    window, stride = _seconds('--window', window), _seconds('--stride', stride)
    if window is None and prep.frames.fps:
        window = prep.max_frames / prep.frames.fps
    if window is None and stride is not None:
        raise IndexFolderError(f'--stride {stride:g} needs --window SECONDS with this model: its frame rule keeps every '
                          f'frame, so the default window (max_frames={prep.max_frames} frames at each video\'s own '
                          'rate) differs per video')
    if window is not None and stride is None:
        stride = window / 2
    if window is not None and stride > window + TIME_TOLERANCE_S:
        raise IndexFolderError(f'--stride {stride:g}: expected at most the window ({window:g} s); a longer stride leaves '
                          'parts of the video in no window')
    return MomentSettings(mode, window, stride)


def moments_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The ``moments`` record of a manifest (an index written before moments existed holds whole videos)."""
    got = manifest.get('moments')
    return got if isinstance(got, dict) else MomentSettings().record()


def plan_windows(duration: float, window: float, stride: float) -> list[tuple[float, float]]:
    """``(start, end)`` seconds of the windows of a ``duration``-second span: starts at 0, stride, 2·stride, …;
    the first window that reaches the end stops the list and ends at ``duration`` (one window when the span is
    no longer than a window)."""
    if not window > 0 or not stride > 0:
        raise ValueError(f'window and stride must be positive, got {window} and {stride}')
    spans = []
    for k in range(math.ceil(max(duration - window, 0.0) / stride) + 2):
        start = float(k * stride)
        if start + window >= duration - TIME_TOLERANCE_S:
            spans.append((start, float(duration)))
            return spans
        spans.append((start, float(start + window)))
    raise AssertionError('unreachable: the last window reaches the end')


@dataclass
class CutMoment:
    """The frames (or frame indices) the cutter assigned to one moment."""

    index: int  # 0-based within the video
    start: float
    end: float
    items: list[Any]


@dataclass
class _Open:
    index: int
    region: int
    k: int  # window number within its region
    start: float
    nominal_end: float


class MomentCutter:
    """Assigns frames arriving in time order to the windows of a video, and returns each window's frames once
    it closes; frames no open window can still take are dropped, so at most a window's span is held.

    ``cuts`` (seconds, shot boundaries) split the video into regions (shots), each cut into windows on its own:
    a shot no longer than a window is one moment. A window (or shot) that no frame falls in has no moment.
    The end of the video is only known at `finish`: windows of the last region are planned against it there.
    """

    def __init__(self, window: float, stride: float, cuts: Sequence[float] = ()) -> None:
        if not window > 0 or not 0 < stride <= window + TIME_TOLERANCE_S:
            raise ValueError(f'expected 0 < stride <= window, got window {window}, stride {stride}')
        self.window, self.stride = window, stride
        self.regions = [0.0, *sorted({float(c) for c in cuts if c > TIME_TOLERANCE_S})]
        self._next_k: dict[int, int] = {}
        self._planned: dict[int, int] = {}
        self._open: list[_Open] = []
        self._held: deque[tuple[float, Any]] = deque()
        self._count = 0

    @property
    def held(self) -> int:
        """Frames held now."""
        return len(self._held)

    def _region_end(self, region: int) -> float | None:
        return self.regions[region + 1] if region + 1 < len(self.regions) else None

    def _in_plan(self, region: int, k: int) -> bool:
        """Window ``k`` of a region whose end is known exists (the last region's are pruned at `finish`)."""
        end = self._region_end(region)
        if end is None:
            return True
        if region not in self._planned:
            self._planned[region] = len(plan_windows(end - self.regions[region], self.window, self.stride))
        return k < self._planned[region]

    def _bound(self, w: _Open) -> float:
        end = self._region_end(w.region)
        return w.nominal_end if end is None else min(w.nominal_end, end)

    def _take(self, w: _Open, end: float, bounded: bool) -> CutMoment:
        lo, hi = w.start - TIME_TOLERANCE_S, end - TIME_TOLERANCE_S
        items = [item for t, item in self._held if t >= lo and (not bounded or t < hi)]
        return CutMoment(w.index, w.start, end, items)

    def add(self, time: float, item: Any) -> list[CutMoment]:
        """Take the frame at ``time`` seconds; returns the moments it closed (they end before it)."""
        region = max(0, bisect.bisect_right(self.regions, time + TIME_TOLERANCE_S) - 1)
        closed, still = [], []
        for w in self._open:
            end = self._bound(w)
            if w.region < region or time >= end - TIME_TOLERANCE_S:
                closed.append(self._take(w, end, bounded=True))
            else:
                still.append(w)
        self._open = still
        self._open_windows(region, time)
        if self._open:
            self._held.append((time, item))
        first = min((w.start for w in self._open), default=math.inf)
        while self._held and self._held[0][0] < first - TIME_TOLERANCE_S:
            self._held.popleft()
        return closed

    def _open_windows(self, region: int, time: float) -> None:
        """Open the windows of ``region`` that start by ``time``; those that also end by it stay empty."""
        a, k = self.regions[region], self._next_k.get(region, 0)
        while a + k * self.stride <= time + TIME_TOLERANCE_S and self._in_plan(region, k):
            w = _Open(self._count, region, k, a + k * self.stride, a + k * self.stride + self.window)
            if time < self._bound(w) - TIME_TOLERANCE_S:
                self._open.append(w)
                self._count += 1
            k += 1
        self._next_k[region] = k

    def finish(self, duration: float) -> list[CutMoment]:
        """The moments still open once the video ended at ``duration`` seconds: its last region's windows are
        those `plan_windows` gives up to there, the last ending at ``duration``; later ones are dropped."""
        out = []
        for w in self._open:
            a, end = self.regions[w.region], self._region_end(w.region)
            limit = duration if end is None else min(end, duration)
            plan = plan_windows(max(limit - a, 0.0), self.window, self.stride)
            if w.k >= len(plan):
                continue
            last_of_video = w.k == len(plan) - 1 and limit == duration
            out.append(self._take(w, a + plan[w.k][1], bounded=not last_of_video))
        self._open, self._held = [], deque()
        return out


@dataclass
class Moment:
    """One moment ready for the model: its span (seconds) and input; ``input.duration`` is the span's length."""

    index: int
    start: float
    end: float
    input: VideoInput


@dataclass
class VideoEnd:
    """Follows the last moment of a video: what the whole pass learned about it."""

    duration: float  # seconds decoded (or stored)
    warnings: list[str]
    num_frames: int  # frames the rule kept over the whole video
    moments: int


def _moment(cut: CutMoment, frames: Sequence[Any], prep: Preprocessing, warnings: Sequence[str]) -> Moment:
    x = video_from_frames(frames, prep, duration=cut.end - cut.start, warnings=warnings)
    return Moment(cut.index, cut.start, cut.end, x)


def file_moments(path: str | os.PathLike, prep: Preprocessing, settings: MomentSettings, *,
                 cuts: Sequence[float] = (), max_pixels: int = MAX_FRAME_PIXELS) -> Iterator[Moment | VideoEnd]:
    """The moments of a video file in one decoding pass with the export's frame rule, each as soon as its
    window closes, then a `VideoEnd`.

    Only the frames of the windows still open are held (plus the one frame the decoder is on), so memory is
    bounded by a window, not by the video. A video no longer than one window is one moment whose input equals
    `video_from_file`'s. Moments that close before the end carry no warnings (the video's, e.g. a truncated
    tail, are only known at its end: `VideoEnd.warnings`). A variable frame rate or a broken tail: the last
    moment ends where decoding ended.

    Raises:
        VideoDecodeError: the file is not a readable video (before any frame).
    """
    rule = prep.frames
    frames = RuleFrames(path, fps=rule.fps, short_side=rule.short_side, apply_rotation=rule.apply_rotation,
                        max_pixels=max_pixels)
    cutter: MomentCutter | None = None
    emitted = 0
    for time, image in frames:
        if cutter is None:
            cutter = MomentCutter(*settings.window_and_stride(rule.fps or frames.declared_fps, prep.max_frames), cuts)
        for cut in cutter.add(time, image):
            yield _moment(cut, cut.items, prep, ())
            emitted += 1
    run = frames.result
    assert run is not None and cutter is not None  # RuleFrames raises before yielding no frame
    for cut in cutter.finish(run.duration_s):
        yield _moment(cut, cut.items, prep, run.warnings)
        emitted += 1
    yield VideoEnd(run.duration_s, list(run.warnings), run.num_frames, emitted)


class FrameSpan(Sequence[Any]):
    """Frames ``lo..hi-1`` of a stored sequence (e.g. `StoredFrames`), indexed from 0, still decoded lazily."""

    def __init__(self, frames: Sequence[Any], lo: int, hi: int) -> None:
        if not 0 <= lo < hi <= len(frames):
            raise ValueError(f'frame span {lo}..{hi} outside 0..{len(frames)}')
        self._frames, self._lo, self._hi = frames, lo, hi

    def __len__(self) -> int:
        return self._hi - self._lo

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(f'frame {index} of a span of {len(self)}')
        return self._frames[self._lo + index]

    def select_stored(self, indices: Sequence[int]) -> list[Any]:
        """As `StoredFrames.select_stored` (nothing decoded), or the frames themselves."""
        at = [self._lo + int(i) for i in indices]
        if hasattr(self._frames, 'select_stored'):
            return self._frames.select_stored(at)
        return [self._frames[i] for i in at]


def stored_moments(frames: Sequence[Any], fps: float, duration: float, prep: Preprocessing,
                   settings: MomentSettings) -> Iterator[Moment]:
    """The moments of stored frames (frame i at i / ``fps`` seconds) of a video ``duration`` seconds long (the
    stored duration when it covers the last frame, else the frames' count / ``fps``), one at a time; only the
    frames a moment's input and thumbnail use are read."""
    if not fps > 0:
        raise ValueError(f'expected the frames\' rate (frames per second) to place them in time, got {fps!r}')
    if not duration > (len(frames) - 1) / fps:
        duration = len(frames) / fps
    cutter = MomentCutter(*settings.window_and_stride(fps, prep.max_frames))
    for i in range(len(frames)):
        for cut in cutter.add(i / fps, i):
            yield _moment(cut, FrameSpan(frames, cut.items[0], cut.items[-1] + 1), prep, ())
    for cut in cutter.finish(duration):
        yield _moment(cut, FrameSpan(frames, cut.items[0], cut.items[-1] + 1), prep, ())


def require_shot_detection() -> None:
    """Refuse ``--segments shots`` before any video is read when PySceneDetect (with OpenCV) is missing.

    Raises:
        IndexFolderError: naming the package to install.
    """
    try:
        import cv2  # noqa: F401
        import scenedetect  # noqa: F401
    except ImportError as e:
        raise IndexFolderError('--segments shots needs PySceneDetect with OpenCV (pip install '
                          f'"scenedetect[opencv-headless]"): {e}') from e


def detect_cuts(path: str | os.PathLike) -> list[float]:
    """Shot boundaries (seconds after the start, ascending) that PySceneDetect's ``ContentDetector`` finds
    (a second decoding pass, by OpenCV, frame by frame); empty when the video is one shot."""
    from scenedetect import ContentDetector, detect

    scenes = detect(os.fspath(path), ContentDetector())
    return [float(start.get_seconds()) for start, _ in scenes[1:]]
