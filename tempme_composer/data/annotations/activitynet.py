"""ActivityNet Captions: ``train.json`` / ``val_1.json`` (id -> duration, timestamps, sentences)."""

from __future__ import annotations

import os

from tempme_composer.data.annotations.common import (
    Annotations,
    VideoRecord,
    add_record,
    clean_captions,
    note_text_problems,
    read_json_file,
)

__all__ = ['read_activitynet']


def read_activitynet(*, train_json: str | os.PathLike | None = None, val_json: str | os.PathLike | None = None,
                     train_ids: str | os.PathLike | None = None,
                     val_ids: str | os.PathLike | None = None) -> Annotations:
    """Splits ``train`` and ``val_1``: one record per video with its sentences and [start, end] timestamps.

    Records follow the optional id lists (``train_ids.json``/``val_ids.json``: ids without captions are
    noted), else the json order. Files are looked up without the ``v_`` prefix.
    """
    ann = Annotations()
    for split, path, ids_path in (('train', train_json, train_ids), ('val_1', val_json, val_ids)):
        if path is None:
            continue
        ann.setdefault(split, [])
        messages: list[str] = []
        data = read_json_file(path, messages)
        note_text_problems(ann, split, messages)
        order = [str(i).strip() for i in read_json_file(ids_path)] if ids_path else list(data)
        seen: set[str] = set()
        for video_id in order:
            entry = data.get(video_id)
            if entry is None:
                ann.note(split, video_id, 'no_captions', 'listed in the id file but has no caption entry')
                continue
            caps, ts = clean_captions(entry.get('sentences', []), ann, split, video_id,
                                      entry.get('timestamps', []))
            stem = video_id[2:] if video_id.startswith('v_') else video_id
            add_record(ann, VideoRecord(video_id, stem, caps, ts, split,
                                        {'duration': float(entry.get('duration', 0.0))}), seen)
    return ann
