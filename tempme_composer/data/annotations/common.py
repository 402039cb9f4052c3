"""Shared record type and tolerant file readers (BOM, CRLF, stray whitespace, non-UTF-8 bytes)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ['Annotations', 'Problem', 'VideoRecord', 'read_id_list', 'read_json_file', 'read_text_lines',
           'clean_captions', 'decode_text']


@dataclass
class VideoRecord:
    """One video of one split with all its captions.

    Attributes:
        video_id: the id the benchmark uses (``video9770``, ``v_QOlSCBRmfWY``, an LSMDC clip name, ...).
        path_stem: file name of the video without extension (what the videos folder is searched for); DiDeMo
            names include the original extension (``x.3gp``), matched exactly or with an extra extension.
        captions: the captions in annotation order (stripped, never empty).
        timestamps: ``[start, end]`` seconds per caption where the dataset has them (ActivityNet, DiDeMo),
            else ``None``.
        split: the split name the record belongs to.
        extra: small dataset-specific metadata stored with the sample (e.g. ActivityNet ``duration``).
    """

    video_id: str
    path_stem: str
    captions: list[str]
    timestamps: list[list[float]] | None
    split: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Problem:
    """Something odd found while parsing: ``reason`` is a short code, ``detail`` a human sentence."""

    split: str
    video_id: str
    reason: str
    detail: str


class Annotations(dict):
    """``dict[split, list[VideoRecord]]`` plus ``problems`` (list of :class:`Problem`) found while parsing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.problems: list[Problem] = []

    def note(self, split: str, video_id: str, reason: str, detail: str) -> None:
        self.problems.append(Problem(split, video_id, reason, detail))


def decode_text(data: bytes, path: Path, problems: list[str] | None) -> str:
    """UTF-8 (BOM stripped); undecodable lines fall back to cp1252/latin-1 and are reported, never dropped."""
    if data.startswith(b'\xef\xbb\xbf'):
        data = data[3:]
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError:
        pass
    lines = []
    for number, raw in enumerate(data.split(b'\n'), start=1):
        try:
            lines.append(raw.decode('utf-8'))
        except UnicodeDecodeError:
            try:
                text = raw.decode('cp1252')
            except UnicodeDecodeError:
                text = raw.decode('latin-1')
            lines.append(text)
            if problems is not None:
                problems.append(f'{path}:{number}: not UTF-8, decoded as cp1252/latin-1: {text.strip()[:60]!r}')
    return '\n'.join(lines)


def read_text_lines(path: str | os.PathLike, problems: list[str] | None = None) -> list[str]:
    """Lines of a text file with line endings (LF, CRLF, CR) removed; non-UTF-8 lines noted in ``problems``."""
    path = Path(path)
    return decode_text(path.read_bytes(), path, problems).splitlines()


def read_id_list(path: str | os.PathLike, *, header: str | None = None) -> list[str]:
    """Ids one a line (stripped, blank lines skipped); a first line equal to ``header`` is dropped."""
    ids = [line.strip() for line in read_text_lines(path)]
    ids = [i for i in ids if i]
    if header is not None and ids and ids[0] == header:
        ids = ids[1:]
    return ids


def read_json_file(path: str | os.PathLike, problems: list[str] | None = None) -> Any:
    path = Path(path)
    return json.loads(decode_text(path.read_bytes(), path, problems))


def clean_captions(captions: list[Any], ann: Annotations, split: str, video_id: str,
                   timestamps: list[list[float]] | None = None) -> tuple[list[str], list[list[float]] | None]:
    """Strip captions, drop empty ones (noted), keep timestamps aligned."""
    kept, kept_ts = [], [] if timestamps is not None else None
    for i, caption in enumerate(captions):
        text = ' '.join(str(caption).split())  # collapses CR, tabs and runs of spaces
        if not text:
            ann.note(split, video_id, 'empty_caption', f'caption {i} is empty and was dropped')
            continue
        kept.append(text)
        if kept_ts is not None:
            kept_ts.append([float(x) for x in timestamps[i]] if i < len(timestamps) else [])
    return kept, kept_ts


def add_record(ann: Annotations, record: VideoRecord, seen: set[str]) -> None:
    """Append ``record`` unless its id was already listed in this split (noted) or it has no caption (noted)."""
    if record.video_id in seen:
        ann.note(record.split, record.video_id, 'duplicate_id', 'listed more than once; kept the first')
        return
    seen.add(record.video_id)
    if not record.captions:
        ann.note(record.split, record.video_id, 'no_captions', 'no non-empty caption')
        return
    ann.setdefault(record.split, []).append(record)


def note_text_problems(ann: Annotations, split: str, messages: list[str]) -> None:
    for message in messages:
        ann.note(split, '', 'non_utf8', message)
