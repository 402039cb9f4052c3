"""MSVD: ``raw-captions.pkl`` (id -> list of token lists) and ``{train,val,test}_list.txt``."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from tempme_composer.data.annotations.common import (
    Annotations,
    VideoRecord,
    add_record,
    clean_captions,
    read_id_list,
)

__all__ = ['read_msvd']


def _caption_text(caption: object) -> str:
    if isinstance(caption, bytes):
        caption = caption.decode('utf-8', errors='replace')
    if isinstance(caption, (list, tuple)):
        return ' '.join(_caption_text(t) for t in caption)
    return str(caption)


def read_msvd(captions_pkl: str | os.PathLike, *, train_list: str | os.PathLike | None = None,
              val_list: str | os.PathLike | None = None,
              test_list: str | os.PathLike | None = None) -> Annotations:
    """Splits ``train``/``val``/``test`` in list order; captions = the pickle's token lists joined by spaces.

    The pickle is the official file of the CLIP4Clip release; only load pickles you trust.
    """
    with Path(captions_pkl).open('rb') as f:
        raw = pickle.load(f)  # noqa: S301 - the benchmark's own caption file
    ann = Annotations()
    for split, list_path in (('train', train_list), ('val', val_list), ('test', test_list)):
        if list_path is None:
            continue
        ann.setdefault(split, [])
        seen: set[str] = set()
        for video_id in read_id_list(list_path):
            caps, _ = clean_captions([_caption_text(c) for c in raw.get(video_id, [])], ann, split, video_id)
            add_record(ann, VideoRecord(video_id, video_id, caps, None, split), seen)
    return ann
