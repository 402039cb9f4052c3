"""LSMDC: tab-separated ``LSMDC16_annos_{training,val}.csv`` and ``LSMDC16_challenge_1000_publictect.csv``.

Six fields per line: clip id, start/end (aligned), start/end (extracted), sentence. Train/val clips may carry
several sentences (grouped into one record, in file order); videos live in per-movie sub-folders.
"""

from __future__ import annotations

import os

from tempme_composer.data.annotations.common import (
    Annotations,
    VideoRecord,
    add_record,
    clean_captions,
    note_text_problems,
    read_text_lines,
)

__all__ = ['read_lsmdc', 'read_lsmdc_rows']


def read_lsmdc_rows(path: str | os.PathLike, problems: list[str] | None = None) -> list[list[str]]:
    """The non-blank lines of an LSMDC csv split on tabs (a sentence containing tabs is re-joined)."""
    rows = []
    for line in read_text_lines(path, problems):
        if not line.strip():
            continue
        fields = line.split('\t')
        if len(fields) > 6:
            fields = fields[:5] + ['\t'.join(fields[5:])]
        rows.append(fields)
    return rows


def read_lsmdc(*, train_csv: str | os.PathLike | None = None, val_csv: str | os.PathLike | None = None,
               test_csv: str | os.PathLike | None = None) -> Annotations:
    """Splits ``train``/``val``/``test``; one record per clip id (first-appearance order)."""
    ann = Annotations()
    for split, path in (('train', train_csv), ('val', val_csv), ('test', test_csv)):
        if path is None:
            continue
        ann.setdefault(split, [])
        messages: list[str] = []
        grouped: dict[str, list[str]] = {}
        for fields in read_lsmdc_rows(path, messages):
            clip = fields[0].strip()
            if len(fields) != 6:
                ann.note(split, clip, 'bad_line', f'expected 6 tab-separated fields, got {len(fields)}')
                if len(fields) < 6:
                    continue
            grouped.setdefault(clip, []).append(fields[5])
        note_text_problems(ann, split, messages)
        seen: set[str] = set()
        for clip, sentences in grouped.items():
            caps, _ = clean_captions(sentences, ann, split, clip)
            add_record(ann, VideoRecord(clip, clip, caps, None, split), seen)
    return ann
