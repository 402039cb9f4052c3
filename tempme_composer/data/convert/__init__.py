"""``tempme-convert``: the six retrieval benchmarks from raw videos + official annotations to MDS shards.

One MDS sample per **video** (``video_id``, all ``captions``, ``timestamps``, ``frames`` decoded once with PyAV
at ``--fps`` and resized to short side ``--size``, ``num_frames``, ``fps``, ``duration``), one folder per split
``OUT/<split>/``, plus a caption-level index ``OUT/<split>_pairs/`` (no frames: ``video_index``,
``caption_index``, ``caption``) that the training loader uses for ``expand_sentences`` (every (video, caption)
pair once per epoch). Each folder holds ``tempme_dataset.json`` (format version + decode settings) next to
``index.json``; a video folder also holds ``skipped.csv`` (video_id, path, reason, detail).

Pipeline per split: annotations -> find every video file (recursive walk, by stem) -> decode the missing ones
in ``--workers`` processes into a per-video cache under ``--work-dir`` (atomic writes: an interrupted run
resumes where it stopped, finished videos are never decoded again) -> write the split's shards into a
temporary sibling folder and rename it into place (readers never see a half-written split). Bad videos are
skipped with a reason, never zero-filled (an incomplete download, a file that is no video and an empty file
are told apart by :mod:`~tempme_composer.data.media_probe`); a truncated tail is kept with its decoded
duration and listed (or skipped with ``skip_truncated``); every unwritten video of a benchmark's official
test split is listed with its reason in a banner; each split's figures are stored with it
(``conversion_summary.json``) so ``conversion_report.json`` keeps them across re-runs; the exit code is 1 when
more than ``--max-failed-fraction`` of a split failed.

Per-dataset differences live only in :mod:`tempme_composer.data.annotations`; the on-disk names and columns in
:mod:`tempme_composer.data.format`; which files are videos in :mod:`tempme_composer.data.video_files`.

A package of one job per module: ``settings`` (what is decoded), ``cache`` (the per-video decode cache),
``pool`` (decoding in worker processes), ``writer`` (one split's shards), ``report`` (summaries and the
report file), ``pipeline`` (a whole conversion), ``upload`` (object stores) and ``cli`` (the command).
"""

from tempme_composer.data.convert.cli import main, read_annotations
from tempme_composer.data.convert.pipeline import convert_records
from tempme_composer.data.convert.report import SplitSummary
from tempme_composer.data.convert.settings import DEFAULT_JPEG_QUALITY, ConvertSettings

__all__ = [
    'DEFAULT_JPEG_QUALITY',
    'ConvertSettings',
    'SplitSummary',
    'convert_records',
    'main',
    'read_annotations',
]
