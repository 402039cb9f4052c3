"""VATEX (HGR split): ``ref_captions.json`` (name -> English sentences), ``train_list.txt``, ``test_list.txt``."""

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

__all__ = ['read_vatex']


def read_vatex(ref_captions_json: str | os.PathLike, *, train_list: str | os.PathLike | None = None,
               test_list: str | os.PathLike | None = None) -> Annotations:
    """Splits ``train``/``test`` in list order (the references' "val" is the test list again)."""
    ann = Annotations()
    messages: list[str] = []
    captions = read_json_file(ref_captions_json, messages)
    note_text_problems(ann, 'all', messages)
    for split, list_path in (('train', train_list), ('test', test_list)):
        if list_path is None:
            continue
        ann.setdefault(split, [])
        seen: set[str] = set()
        for name in read_id_list(list_path):
            caps, _ = clean_captions(list(captions.get(name, [])), ann, split, name)
            add_record(ann, VideoRecord(name, name, caps, None, split), seen)
    return ann
