"""MSR-VTT: ``MSRVTT_data.json`` (captions), 9k/7k train CSVs (ids), JSFusion 1k-A test CSV (id + sentence)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from tempme_composer.data.annotations.common import (
    Annotations,
    VideoRecord,
    add_record,
    clean_captions,
    decode_text,
    note_text_problems,
    read_id_list,
    read_json_file,
)

__all__ = ['read_msrvtt', 'read_jsfusion_rows']


def read_jsfusion_rows(path: str | os.PathLike, problems: list[str] | None = None) -> list[dict[str, str]]:
    """Rows of ``MSRVTT_JSFUSION_test.csv`` (columns key, vid_key, video_id, sentence), CR-free."""
    path = Path(path)
    text = decode_text(path.read_bytes(), path, problems)
    reader = csv.DictReader(io.StringIO(text, newline=''))
    rows = []
    for row in reader:
        rows.append({k.strip(): (v or '').strip() for k, v in row.items() if k is not None})
    return rows


def read_msrvtt(data_json: str | os.PathLike | None, test_csv: str | os.PathLike | None = None, *,
                train_9k_csv: str | os.PathLike | None = None,
                train_7k_csv: str | os.PathLike | None = None) -> Annotations:
    """Splits ``train_9k`` / ``train_7k`` (all 20 JSON captions of each listed video) and ``test``
    (JSFusion 1k-A: the CSV row's sentence only, in CSV row order).

    ``data_json`` is only needed for the train splits.
    """
    ann = Annotations()
    captions: dict[str, list[str]] = {}
    if train_9k_csv or train_7k_csv:
        if data_json is None:
            raise ValueError('MSR-VTT train splits need MSRVTT_data.json (--data-json)')
        messages: list[str] = []
        data = read_json_file(data_json, messages)
        note_text_problems(ann, 'train', messages)
        for sentence in data['sentences']:
            captions.setdefault(str(sentence['video_id']).strip(), []).append(sentence.get('caption', ''))
    for split, csv_path in (('train_9k', train_9k_csv), ('train_7k', train_7k_csv)):
        if csv_path is None:
            continue
        ann.setdefault(split, [])
        seen: set[str] = set()
        for video_id in read_id_list(csv_path, header='video_id'):
            caps, _ = clean_captions(captions.get(video_id, []), ann, split, video_id)
            add_record(ann, VideoRecord(video_id, video_id, caps, None, split), seen)
    if test_csv is not None:
        ann.setdefault('test', [])
        messages = []
        seen = set()
        for row in read_jsfusion_rows(test_csv, messages):
            video_id = row['video_id']
            caps, _ = clean_captions([row.get('sentence', '')], ann, 'test', video_id)
            add_record(ann, VideoRecord(video_id, video_id, caps, None, 'test',
                                        {'key': row.get('key', '')}), seen)
        note_text_problems(ann, 'test', messages)
    return ann
