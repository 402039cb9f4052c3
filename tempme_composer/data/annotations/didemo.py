"""DiDeMo: ``{train,val,test}_data.json`` (moment annotations) and ``{train,val,test}_list.txt``."""

from __future__ import annotations

import os

from tempme_composer.data.annotations.common import (
    Annotations,
    VideoRecord,
    add_record,
    clean_captions,
    note_text_problems,
    read_id_list,
    read_json_file,
)

__all__ = ['read_didemo']


def _moment_seconds(times: list[list[int]]) -> list[float]:
    """Mean annotator [start chunk, end chunk] -> seconds (5-s chunks; end chunk inclusive)."""
    if not times:
        return [0.0, 30.0]
    start = sum(t[0] for t in times) / len(times)
    end = sum(t[1] for t in times) / len(times)
    return [start * 5.0, (end + 1.0) * 5.0]


def read_didemo(*, train_json: str | os.PathLike | None = None, val_json: str | os.PathLike | None = None,
                test_json: str | os.PathLike | None = None, train_list: str | os.PathLike | None = None,
                val_list: str | os.PathLike | None = None,
                test_list: str | os.PathLike | None = None) -> Annotations:
    """Splits ``train``/``val``/``test``: one record per video with its descriptions in json order and their
    moment times in seconds. With a list file only listed videos are kept (in caption-json order)."""
    ann = Annotations()
    for split, path, list_path in (('train', train_json, train_list), ('val', val_json, val_list),
                                   ('test', test_json, test_list)):
        if path is None:
            continue
        ann.setdefault(split, [])
        messages: list[str] = []
        moments = read_json_file(path, messages)
        note_text_problems(ann, split, messages)
        grouped: dict[str, tuple[list[str], list[list[float]]]] = {}
        for moment in moments:
            name = str(moment['video']).strip()
            caps, ts = grouped.setdefault(name, ([], []))
            caps.append(moment.get('description', ''))
            ts.append(_moment_seconds(moment.get('times') or []))
        allowed = set(read_id_list(list_path)) if list_path else None
        if allowed is not None:
            for name in sorted(allowed - set(grouped)):
                ann.note(split, name, 'no_captions', 'listed but has no description')
        seen: set[str] = set()
        for name, (raw_caps, raw_ts) in grouped.items():
            if allowed is not None and name not in allowed:
                continue
            caps, ts = clean_captions(raw_caps, ann, split, name, raw_ts)
            add_record(ann, VideoRecord(name, name, caps, ts, split), seen)
    return ann
