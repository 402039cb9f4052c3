"""``tempme-convert --val-from-train N``: a validation split held out of the training videos.

MSR-VTT, VATEX and ActivityNet Captions have no official validation split, so checkpoints are usually chosen on
the test split (docs/evaluation.md#selecting-on-a-validation-split). This moves N training videos, with all
their captions, into a ``val`` split and out of every training split; which ones is decided by a seed alone, so
the same command always holds out the same videos. Benchmarks with an official validation split use it instead.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tempme_composer.data.annotations import Annotations, VideoRecord

__all__ = [
    'DEFAULT_VAL_SEED',
    'HELD_OUT_SPLIT',
    'OFFICIAL_VAL_SPLITS',
    'REPORT_KEY',
    'check_previous_holdout',
    'hold_out_validation',
]

#: The seed of ``--val-seed`` when none is given.
DEFAULT_VAL_SEED = 0
#: The split the held-out videos are written to (OUT/val).
HELD_OUT_SPLIT = 'val'
#: Benchmarks whose annotations already have a validation split, and its name.
OFFICIAL_VAL_SPLITS = {'msvd': 'val', 'lsmdc': 'val', 'didemo': 'val'}
#: Where the conversion report records what was held out.
REPORT_KEY = 'val_from_train'


def hold_out_validation(dataset: str, annotations: Annotations, count: int, seed: int) -> dict[str, Any]:
    """Move ``count`` training videos (chosen by ``seed``) into the ``val`` split, in place.

    The candidates are the sorted ids of every training split (``train*``; MSR-VTT's 7k list is a subset of
    its 9k list); the chosen ones leave every training split and join ``val`` once, with the captions of the
    first training split that lists them.

    Returns:
        The report entry: count, seed, the training splits and their sizes before, the moved ids (sorted).

    Raises:
        ValueError: the benchmark has an official validation split, ``count`` is not positive, or it is not
            smaller than the number of training videos.
    """
    if dataset in OFFICIAL_VAL_SPLITS:
        raise ValueError(
            f'--val-from-train: {dataset} has an official validation split ({OFFICIAL_VAL_SPLITS[dataset]!r}); '
            f'convert it and point data.val at OUT/{OFFICIAL_VAL_SPLITS[dataset]} instead'
        )
    if HELD_OUT_SPLIT in annotations:
        raise ValueError(
            f'--val-from-train: the {dataset} annotations already have a {HELD_OUT_SPLIT!r} split'
        )
    train_splits = sorted(s for s in annotations if s.startswith('train'))
    if not train_splits:
        raise ValueError(f'--val-from-train: no training split was read from the {dataset} annotations')
    records: dict[str, VideoRecord] = {}
    for split in train_splits:
        for record in annotations[split]:
            records.setdefault(record.video_id, record)
    if count < 1 or count >= len(records):
        raise ValueError(
            f'--val-from-train {count}: expected at least 1 and fewer than the {len(records)} training videos '
            f'of {dataset} ({", ".join(train_splits)})'
        )
    chosen = set(random.Random(seed).sample(sorted(records), count))
    sizes = {split: len(annotations[split]) for split in train_splits}
    for split in train_splits:
        annotations[split] = [r for r in annotations[split] if r.video_id not in chosen]
    annotations[HELD_OUT_SPLIT] = [
        VideoRecord(r.video_id, r.path_stem, r.captions, r.timestamps, HELD_OUT_SPLIT, dict(r.extra))
        for video_id, r in sorted(records.items())
        if video_id in chosen
    ]
    return {
        'count': count,
        'seed': seed,
        'from_splits': sizes,
        'split': HELD_OUT_SPLIT,
        'video_ids': sorted(chosen),
    }


def check_previous_holdout(
    before: dict[str, Any] | None, holdout: dict[str, Any] | None, splits: list[str], out: Path
) -> None:
    """Refuse to rewrite a training or ``val`` split of ``out`` whose ``val`` split was held out otherwise
    (``before``, from its conversion report): the splits would share videos, or the training split would miss
    some, without a word.

    Raises:
        ValueError: ``before`` records another hold-out than ``holdout`` (or None) and ``splits`` rewrites one.
    """
    touched = [s for s in splits if s.startswith('train') or s == HELD_OUT_SPLIT]
    if before is None or not touched:
        return
    now = holdout or {}
    if (before.get('count'), before.get('seed')) != (now.get('count'), now.get('seed')):
        raise ValueError(
            f'{out} holds a val split of {before.get("count")} videos held out of the training videos with '
            f'--val-seed {before.get("seed")} (its conversion report says so); rewriting {", ".join(touched)} '
            f'otherwise would make the splits overlap. Pass the same --val-from-train {before.get("count")} '
            f'--val-seed {before.get("seed")}, or write to a new --out'
        )
