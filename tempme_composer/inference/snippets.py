"""``tempme-search INDEX "query" --snippets DIR``: each hit's moment written as its own video file.

A cut is a stream copy (no quality loss, no encoder, fast) when the video has a keyframe at or shortly before
the moment's start — the copy begins at that keyframe, so it starts at most `copy_lead` early —; otherwise
the moment is decoded from the keyframe before it and re-encoded (H.264, or MPEG-4 Part 2 where this PyAV
build has no libx264) to start at the moment's first frame. Audio is copied along in both cases when the
output container takes its codec. Files are named ``<rank>-<stem>-<start>-<end>.<ext>`` and never replace an
existing file: a taken name gets ``-2``, ``-3``, … No Composer import.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from tempme_composer.inference.preprocess import QueryError
from tempme_composer.inference.search import Hit, QueryResult, VideoIndex, full_path

__all__ = ['Snippet', 'SnippetError', 'cut_moment', 'write_snippets', 'snippet_name', 'copy_lead', 'check_folder',
           'check_source', 'prepare_folder']

#: A stream copy may start this many seconds before the moment (capped at a fifth of the moment's length).
MAX_COPY_LEAD_S = 1.0
#: Audio codecs an MP4 file holds (audio of a re-encoded snippet is copied only when it is one of them).
_MP4_AUDIO = frozenset({'aac', 'mp3', 'ac3', 'eac3', 'opus', 'alac', 'flac'})
_UNSAFE = re.compile(r'[^\w.-]+')


class SnippetError(ValueError):
    """A moment that cannot be cut (file missing or changed since indexing, no frames in the range)."""


@dataclass
class Snippet:
    """A written snippet: where, how, and the span of the source it holds."""

    path: Path
    mode: str  # 'copy' (stream copy from a keyframe) or 'encode'
    start: float  # seconds in the source where the snippet starts (a copy: the keyframe)
    end: float


def copy_lead(start: float, end: float) -> float:
    """How early a stream copy may start: a keyframe this close before ``start`` is an exact-enough cut."""
    return min(MAX_COPY_LEAD_S, 0.2 * max(end - start, 0.0))


def _seconds_text(t: float) -> str:
    return f'{t:.1f}'


def snippet_name(rank: int, source: Path, start: float, end: float, ext: str) -> str:
    """``3-cooking_show-12.0-24.0.mp4``: the stem kept to letters, digits, ``.``, ``_`` and ``-``."""
    stem = _UNSAFE.sub('_', source.stem).strip('._')[:80] or 'video'
    return f'{rank}-{stem}-{_seconds_text(start)}-{_seconds_text(end)}{ext}'


def _place(tmp: Path, folder: Path, name: str) -> Path:
    """Give ``tmp`` its final ``name`` in ``folder`` without replacing a file: ``name-2``… when taken."""
    stem, ext = os.path.splitext(name)
    for n in range(1, 10_000):
        target = folder / (name if n == 1 else f'{stem}-{n}{ext}')
        try:
            os.link(tmp, target)  # fails when the name exists: never replaces
        except FileExistsError:
            continue
        except OSError:  # a filesystem without hard links
            if target.exists():
                continue
            os.rename(tmp, target)
            return target
        tmp.unlink()
        return target
    raise SnippetError(f'--snippets {folder}: every name like {name} is taken')


def _video_stream(container: Any) -> Any:
    if not container.streams.video:
        raise SnippetError('it has no video stream')
    return container.streams.video[0]


def _origin(stream: Any) -> float:
    """Seconds of the stream's first timestamp: moment times count from it."""
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _keyframe_before(source: Path, at: float) -> float | None:
    """Seconds (in the file's timeline) of the last keyframe at or before ``at``, or None when none is found."""
    import av

    with av.open(str(source)) as container:
        stream = _video_stream(container)
        tb = stream.time_base
        target = int(at / tb)
        try:
            container.seek(target, stream=stream, backward=True)
        except av.FFmpegError:
            container.seek(0, stream=stream, backward=True)
        best = None
        for packet in container.demux(stream):
            if packet.dts is None and packet.pts is None:
                continue
            if (packet.dts if packet.dts is not None else packet.pts) > target:
                break
            if packet.is_keyframe and packet.pts is not None and packet.pts <= target:
                best = packet.pts
        return float(best * tb) if best is not None else None


def _audio_stream(container: Any, encode: bool) -> Any | None:
    audio = container.streams.audio
    if not audio:
        return None
    if encode and audio[0].codec_context.name not in _MP4_AUDIO:
        return None
    return audio[0]


def _copy(source: Path, tmp: Path, t0: float, end: float) -> None:
    """Stream-copy from the keyframe at ``t0`` (file timeline, seconds) to ``end``.

    Video packets are taken in decode order until one decodes at or after ``end``; a packet shown at or after
    ``end`` is kept only when a later one shown before ``end`` may refer to it, so the snippet ends at the
    moment's end, not at the next keyframe.
    """
    import av

    with av.open(str(source)) as inp, av.open(str(tmp), mode='w') as out:
        video = _video_stream(inp)
        audio = _audio_stream(inp, encode=False)
        streams = [s for s in (video, audio) if s is not None]
        outs = {s.index: out.add_stream_from_template(s) for s in streams}
        inp.seek(int(t0 / video.time_base), stream=video, backward=True)
        base: dict[int, int] = {}
        held: list[Any] = []  # video packets shown after ``end``, kept only if a later one is shown before it

        def mux(packet: Any) -> None:
            packet.dts -= base[packet.stream.index]
            if packet.pts is not None:
                packet.pts -= base[packet.stream.index]
            packet.stream = outs[packet.stream.index]
            out.mux(packet)

        for packet in inp.demux(*streams):
            if packet.dts is None or packet.pts is None:
                continue
            s = packet.stream
            shown = float(packet.pts * s.time_base)
            if s is video:
                if not base:
                    if not packet.is_keyframe or shown < t0 - 1e-6:
                        continue  # before the chosen keyframe
                    base[video.index] = packet.pts
                    if audio is not None:
                        base[audio.index] = int(t0 / audio.time_base)
                if float(packet.dts * s.time_base) >= end:
                    break
                if shown >= end:
                    held.append(packet)
                    continue
                for earlier in held:
                    mux(earlier)
                held.clear()
                mux(packet)
            elif base and t0 <= shown < end:
                mux(packet)
        if not base:
            raise SnippetError(f'no keyframe at {t0:.3f} s')


def _encoder() -> str:
    import av

    for name in ('libx264', 'mpeg4'):
        try:
            av.codec.Codec(name, 'w')
            return name
        except Exception:
            continue
    raise SnippetError('this PyAV build has neither libx264 nor mpeg4 encoders')


def _encode(source: Path, tmp: Path, start: float, end: float) -> None:
    """Decode from the keyframe before ``start`` and re-encode the frames in [start, end) to MP4."""
    import av

    with av.open(str(source)) as inp, av.open(str(tmp), mode='w', format='mp4') as out:
        video = _video_stream(inp)
        audio = _audio_stream(inp, encode=True)
        tb = video.time_base
        rate = video.average_rate or video.guessed_rate or Fraction(25)
        codec = _encoder()
        encoder = out.add_stream(codec, rate=rate, options={'crf': '18', 'preset': 'veryfast'} if codec == 'libx264'
                                 else {'qscale': '3'})
        encoder.width = max(2, video.codec_context.width // 2 * 2)
        encoder.height = max(2, video.codec_context.height // 2 * 2)
        encoder.pix_fmt = 'yuv420p'
        encoder.time_base = tb
        encoder.codec_context.time_base = tb
        audio_out = out.add_stream_from_template(audio) if audio is not None else None
        first_pts = int(start / tb)
        written = 0
        inp.seek(first_pts, stream=video, backward=True)
        for packet in inp.demux(*[s for s in (video, audio) if s is not None]):
            if packet.stream is not video:
                if packet.dts is not None and start <= float(packet.dts * audio.time_base) < end:
                    packet.dts -= int(start / audio.time_base)
                    if packet.pts is not None:
                        packet.pts -= int(start / audio.time_base)
                    packet.stream = audio_out
                    out.mux(packet)
                continue
            done = False
            for frame in packet.decode():
                if frame.pts is None:
                    continue
                t = float(frame.pts * tb)
                if t < start - 1e-6:
                    continue
                if t >= end:
                    done = True
                    break
                if written == 0 and frame.rotation:
                    encoder.set_display_rotation(frame.rotation)
                image = frame.reformat(width=encoder.width, height=encoder.height, format='yuv420p')
                image.pts, image.time_base = frame.pts - first_pts, tb
                out.mux(encoder.encode(image))
                written += 1
            if done:
                break
        out.mux(encoder.encode())
        if not written:
            raise SnippetError(f'no frame between {start:.3f} s and {end:.3f} s')


def cut_moment(source: str | os.PathLike, start: float, end: float, folder: str | os.PathLike, rank: int,
               *, allow_copy: bool = True) -> Snippet:
    """Write ``source``'s span [``start``, ``end``] (seconds from the video's first frame) into ``folder``.

    Raises:
        SnippetError: no readable video, or nothing in the span.
    """
    import av

    source, folder = Path(source), Path(folder)
    if not end > start:
        raise SnippetError(f'{source}: empty moment {start:.3f}-{end:.3f} s')
    try:
        with av.open(str(source)) as probe:
            origin = _origin(_video_stream(probe))
        keyframe = _keyframe_before(source, origin + start) if allow_copy else None
    except av.FFmpegError as e:
        raise SnippetError(f'{source}: not a readable video ({e})') from e
    copy = keyframe is not None and origin + start - keyframe <= copy_lead(start, end) + 1e-6
    ext = source.suffix.lower() if copy and source.suffix else '.mp4'
    tmp = folder / f'.tmp-{os.getpid()}-snippet{ext}'
    try:
        if copy:
            try:
                _copy(source, tmp, keyframe, origin + end)
                return Snippet(_place(tmp, folder, snippet_name(rank, source, start, end, ext)), 'copy',
                               keyframe - origin, end)
            except (av.FFmpegError, SnippetError, ValueError):  # a container that will not take the stream
                tmp.unlink(missing_ok=True)
                ext, tmp = '.mp4', folder / f'.tmp-{os.getpid()}-snippet.mp4'
        _encode(source, tmp, origin + start, origin + end)
        return Snippet(_place(tmp, folder, snippet_name(rank, source, start, end, ext)), 'encode', start, end)
    except (av.FFmpegError, ValueError, RuntimeError) as e:
        if isinstance(e, SnippetError):
            raise SnippetError(f'{source}: {e}') from e
        raise SnippetError(f'{source}: cannot cut {start:.3f}-{end:.3f} s ({e})') from e
    finally:
        tmp.unlink(missing_ok=True)


def _check_unchanged(index: VideoIndex, hit: Hit, video: Path) -> None:
    """The file must be the one indexed (same size and mtime): a changed file's moments are elsewhere."""
    row = index.rows[hit.row]
    try:
        st = video.stat()
    except OSError as e:
        raise SnippetError(f'{video}: {e.strerror}') from e
    if 'size' in row and (st.st_size, st.st_mtime_ns) != (row.get('size'), row.get('mtime_ns')):
        raise SnippetError(f'{video} changed since it was indexed; re-run tempme-index to update its moments')


def check_folder(folder: str | os.PathLike) -> Path:
    """``--snippets DIR`` must be a folder or not exist yet.

    Raises:
        QueryError: ``folder`` is a file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise QueryError(f'--snippets {folder} is a file, expected a folder to write the moments into')
    return folder


def prepare_folder(folder: str | os.PathLike) -> Path:
    """``--snippets DIR``, created when missing (`check_folder` first)."""
    folder = check_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_source(index: VideoIndex) -> None:
    """Snippets are cut from video files: an index of a folder of videos.

    Raises:
        QueryError: the index is an MDS split (its videos are stored frames, not files).
    """
    if index.manifest['source'].get('kind') != 'videos':
        raise QueryError(f'--snippets: {index.folder} indexes an MDS split, which has no video files to cut; '
                         'use an index of a folder of videos')


def write_snippets(results: list[QueryResult], index: VideoIndex, folder: str | os.PathLike
                   ) -> list[tuple[Hit, Snippet | str]]:
    """Every hit's moment as a file in ``folder`` (one query) or ``folder/q<N>`` (several), with the reason
    for each one that could not be cut.

    Raises:
        QueryError: ``folder`` is a file, or the index is an MDS split (`check_source`).
    """
    check_source(index)
    folder = prepare_folder(folder)
    done: list[tuple[Hit, Snippet | str]] = []
    for n, result in enumerate(results, 1):
        target = prepare_folder(folder / f'q{n}') if len(results) > 1 else folder
        for hit in result.hits:
            video = full_path(index, hit.path)
            try:
                _check_unchanged(index, hit, video)
                done.append((hit, cut_moment(video, hit.start, hit.end, target, hit.rank)))
            except SnippetError as e:
                done.append((hit, str(e)))
    return done
