"""Annotation readers: one small module per benchmark, all returning the same records.

Every reader has the shape ``read_<dataset>(annotation paths...) -> Annotations`` where :class:`Annotations`
is a ``dict[split, list[VideoRecord]]`` that also carries the problems found while parsing (duplicate ids,
empty or non-UTF-8 captions, ...). Everything dataset-specific lives here; the converter only sees
:class:`VideoRecord`.
"""

from __future__ import annotations

from tempme_composer.data.annotations.activitynet import read_activitynet
from tempme_composer.data.annotations.common import (
    Annotations,
    Problem,
    VideoRecord,
    read_id_list,
    read_json_file,
    read_text_lines,
)
from tempme_composer.data.annotations.didemo import read_didemo
from tempme_composer.data.annotations.lsmdc import read_lsmdc
from tempme_composer.data.annotations.msrvtt import read_msrvtt
from tempme_composer.data.annotations.msvd import read_msvd
from tempme_composer.data.annotations.vatex import read_vatex

__all__ = [
    'Annotations',
    'Problem',
    'VideoRecord',
    'TEST_SPLITS',
    'read_activitynet',
    'read_didemo',
    'read_id_list',
    'read_json_file',
    'read_lsmdc',
    'read_msrvtt',
    'read_msvd',
    'read_text_lines',
    'read_vatex',
]

#: The split of each benchmark on which published numbers are reported (missing videos there are loud).
TEST_SPLITS = {
    'msrvtt': 'test',
    'msvd': 'test',
    'lsmdc': 'test',
    'didemo': 'test',
    'activitynet': 'val_1',
    'vatex': 'test',
}
