"""Tiny real video files for the data tests (PyAV), named after real benchmark ids."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

#: Solid colours that survive yuv420p + JPEG well (saturated, distinct).
PALETTE = [(220, 40, 40), (40, 190, 60), (40, 80, 230), (235, 215, 40), (200, 200, 200), (150, 50, 210)]


def _codec() -> str:
    for name in ('libx264', 'mpeg4'):
        try:
            av.codec.Codec(name, 'w')
            return name
        except Exception:
            continue
    raise RuntimeError('no H.264/MPEG-4 encoder in this PyAV build')


def write_video(path: Path, *, seconds: float = 3, fps: int = 5, width: int = 32, height: int = 24,
                colours: Sequence[tuple[int, int, int]] = ((220, 40, 40),), rotation: float | None = None,
                container_format: str | None = None, left_right: bool = False) -> Path:
    """Write ``seconds * fps`` frames; second ``s`` is solid ``colours[s % len(colours)]``.

    ``left_right`` paints the left half in the colour and the right half black (to see rotations).
    ``rotation`` stores a display-matrix rotation (degrees counter-clockwise).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * fps))
    with av.open(str(path), mode='w', format=container_format or 'mp4') as container:
        stream = container.add_stream(_codec(), rate=Fraction(fps), options={'threads': '1'})
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(n):
            array = np.zeros((height, width, 3), np.uint8)
            colour = colours[(i // fps) % len(colours)]
            if left_right:
                array[:, : width // 2] = colour
            else:
                array[:] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An mp4 with one audio stream and no video stream."""
    with av.open(str(path), mode='w', format='mp4') as container:
        stream = container.add_stream('aac', rate=16000)
        stream.layout = 'mono'
        samples = int(16000 * seconds)
        for start in range(0, samples, 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format='fltp', layout='mono')
            frame.sample_rate = 16000
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_numbered_video(path: Path, *, frames: int = 30, fps: int = 10, width: int = 32, height: int = 24,
                         pts_ms: Sequence[int] | None = None, rotation: float | None = None,
                         container_format: str | None = None, faststart: bool = False) -> Path:
    """Write ``frames`` frames that all differ (noise plus a brightness step per frame), so that taking a
    wrong frame changes the decoded pixels.

    ``pts_ms`` gives each frame's presentation time in milliseconds (a variable frame rate; needs a container
    that keeps them, e.g. Matroska); ``faststart`` puts an mp4's index in front, so a cut file still opens.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(frames)
    options = {'movflags': 'faststart'} if faststart else {}
    with av.open(str(path), mode='w', format=container_format or 'mp4', options=options) as container:
        stream = container.add_stream(_codec(), rate=Fraction(fps), options={'threads': '1'})
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        if pts_ms is not None:
            stream.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            array = (rng.integers(0, 128, (height, width, 3)) + 2 * (i % 64)).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(array, format='rgb24')
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
