"""The ``tempme-convert`` command line: arguments, annotation files, the run and its exit code."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from tempme_composer.data.annotations import (
    Annotations,
    read_activitynet,
    read_didemo,
    read_lsmdc,
    read_msrvtt,
    read_msvd,
    read_vatex,
)
from tempme_composer.data.convert.cache import WORK_DIR_NAME, atomic_write
from tempme_composer.data.convert.holdout import (
    DEFAULT_VAL_SEED,
    HELD_OUT_SPLIT,
    REPORT_KEY,
    check_previous_holdout,
    hold_out_validation,
)
from tempme_composer.data.convert.pipeline import convert_records
from tempme_composer.data.convert.report import merge_report, print_summary, split_record
from tempme_composer.data.convert.settings import DEFAULT_JPEG_QUALITY, ConvertSettings
from tempme_composer.data.convert.upload import upload_conversion
from tempme_composer.data.format import REPORT_FILE
from tempme_composer.extras import reports_missing_extras, require_extra
from tempme_composer.remote import is_remote

__all__ = ['main', 'read_annotations']

log = logging.getLogger(__name__)

_FLAGS: dict[str, dict[str, tuple[str, str]]] = {
    'msrvtt': {
        'data_json': ('data_json', 'MSRVTT_data.json'),
        'train_9k_csv': ('train_9k_csv', 'MSRVTT_train.9k.csv'),
        'train_7k_csv': ('train_7k_csv', 'MSRVTT_train.7k.csv'),
        'test_csv': ('test_csv', 'MSRVTT_JSFUSION_test.csv'),
    },
    'msvd': {
        'captions_pkl': ('captions_pkl', 'raw-captions.pkl'),
        'train_list': ('train_list', 'train_list.txt'),
        'val_list': ('val_list', 'val_list.txt'),
        'test_list': ('test_list', 'test_list.txt'),
    },
    'lsmdc': {
        'train_csv': ('train_csv', 'LSMDC16_annos_training.csv'),
        'val_csv': ('val_csv', 'LSMDC16_annos_val.csv'),
        'test_csv': ('test_csv', 'LSMDC16_challenge_1000_publictect.csv'),
    },
    'didemo': {
        'train_json': ('train_json', 'train_data.json'),
        'val_json': ('val_json', 'val_data.json'),
        'test_json': ('test_json', 'test_data.json'),
        'train_list': ('train_list', 'train_list.txt'),
        'val_list': ('val_list', 'val_list.txt'),
        'test_list': ('test_list', 'test_list.txt'),
    },
    'activitynet': {
        'train_json': ('train_json', 'train.json'),
        'val_json': ('val_json', 'val_1.json'),
        'train_ids': ('train_ids', 'train_ids.json'),
        'val_ids': ('val_ids', 'val_ids.json'),
    },
    'vatex': {
        'captions_json': ('ref_captions_json', 'ref_captions.json'),
        'train_list': ('train_list', 'train_list.txt'),
        'test_list': ('test_list', 'test_list.txt'),
    },
}
_READERS: dict[str, Callable[..., Annotations]] = {
    'msrvtt': read_msrvtt,
    'msvd': read_msvd,
    'lsmdc': read_lsmdc,
    'didemo': read_didemo,
    'activitynet': read_activitynet,
    'vatex': read_vatex,
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='tempme-convert',
        description='Convert a text-video retrieval benchmark to MDS shards.',
        epilog='Example: tempme-convert msrvtt --annotations msrvtt_data/ --videos MSRVTT/videos/all '
        '--out data/msrvtt_mds',
    )
    sub = parser.add_subparsers(dest='dataset', required=True, metavar='DATASET')
    for dataset, flags in _FLAGS.items():
        p = sub.add_parser(dataset, help=f'convert {dataset}')
        p.add_argument('--videos', required=True, help='folder with the video files (searched recursively)')
        p.add_argument(
            '--out',
            required=True,
            help='output root: OUT/<split>/ and OUT/<split>_pairs/; an '
            'object store (s3://bucket/prefix) is written to --staging '
            'first, then uploaded',
        )
        p.add_argument(
            '--staging',
            help='local folder for an --out object store (default: a temporary one, '
            'deleted after the upload)',
        )
        p.add_argument(
            '--annotations',
            help='folder holding the official annotation files under their usual '
            'names (any file flag below overrides one)',
        )
        for flag, (_, default_name) in flags.items():
            p.add_argument(f'--{flag.replace("_", "-")}', dest=flag, help=f'(default name: {default_name})')
        p.add_argument('--splits', help='comma-separated subset of the splits to convert')
        p.add_argument(
            '--val-from-train',
            type=int,
            metavar='N',
            help='move N training videos (all their captions) into a val/ split, for benchmarks without an '
            'official validation split; the ids are listed in the conversion report',
        )
        p.add_argument(
            '--val-seed',
            type=int,
            default=DEFAULT_VAL_SEED,
            help=f'which videos --val-from-train holds out (default {DEFAULT_VAL_SEED})',
        )
        p.add_argument(
            '--fps',
            type=float,
            default=1.0,
            help='frames kept per second (first frame of each 1/fps interval; default 1)',
        )
        p.add_argument(
            '--size', type=int, default=224, help='short side in pixels, aspect kept (default 224)'
        )
        p.add_argument(
            '--frame-format',
            choices=('jpeg', 'raw'),
            default='jpeg',
            help='jpeg (default) or raw uint8 (ndarray, ~10x larger)',
        )
        p.add_argument(
            '--jpeg-quality',
            type=int,
            default=DEFAULT_JPEG_QUALITY,
            help=f'JPEG quality (default {DEFAULT_JPEG_QUALITY})',
        )
        p.add_argument('--min-frames', type=int, default=1, help='fewer kept frames -> skipped (default 1)')
        p.add_argument('--no-rotation', action='store_true', help='ignore the display-matrix rotation')
        p.add_argument(
            '--workers',
            type=int,
            default=os.cpu_count() or 1,
            help='decoding processes (default: number of CPUs)',
        )
        p.add_argument(
            '--work-dir',
            help='per-video decode cache for resuming (default OUT/.tempme_work, '
            'deleted after a successful run; an explicit --work-dir is kept)',
        )
        p.add_argument(
            '--keep-work', action='store_true', help='keep OUT/.tempme_work after a successful run'
        )
        p.add_argument('--retry-failed', action='store_true', help='decode previously failed videos again')
        p.add_argument(
            '--max-failed-fraction',
            type=float,
            default=0.05,
            help='exit 1 when a split skips more than this fraction of its videos (default 0.05)',
        )
        p.add_argument(
            '--warn-frames',
            type=int,
            default=12,
            help='list videos with fewer frames than this in the summary (default 12)',
        )
        p.add_argument(
            '--skip-truncated',
            action='store_true',
            help='skip videos whose tail is cut off (default: keep the frames before the cut and '
            'list the video as truncated)',
        )
        p.add_argument('--size-limit', default='128mb', help='MDS shard size limit (default 128mb)')
        p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def read_annotations(dataset: str, files: dict[str, str | None]) -> Annotations:
    """Call the dataset's reader with CLI-style file arguments (flag name -> path or None)."""
    flags = _FLAGS[dataset]
    kwargs = {flags[k][0]: v for k, v in files.items() if k in flags and v}
    if not kwargs:
        raise ValueError(f'no annotation file given for {dataset}; pass --annotations DIR or the file flags')
    reader = _READERS[dataset]
    if dataset == 'msrvtt':
        return reader(kwargs.pop('data_json', None), kwargs.pop('test_csv', None), **kwargs)
    if dataset == 'msvd':
        return reader(kwargs.pop('captions_pkl'), **kwargs)
    if dataset == 'vatex':
        return reader(kwargs.pop('ref_captions_json'), **kwargs)
    return reader(**kwargs)


def _resolve_files(args: argparse.Namespace) -> dict[str, str | None]:
    files: dict[str, str | None] = {}
    for flag, (_, default_name) in _FLAGS[args.dataset].items():
        value = getattr(args, flag)
        if value is None and args.annotations:
            candidate = Path(args.annotations) / default_name
            value = str(candidate) if candidate.is_file() else None
        files[flag] = value
    missing = [f for f in files.values() if f and not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f'annotation file(s) not found: {missing}')
    return files


def _previous_report(path: Path) -> dict:
    """The conversion report already in the output folder ({} when there is none or it is unreadable)."""
    try:
        previous = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}


@reports_missing_extras('tempme-convert')
def main(argv: Sequence[str] | None = None) -> int:
    """``tempme-convert DATASET --videos DIR --out DIR [annotation files] [options]``; returns the exit code
    (0 ok, 1 too many failed videos, 2 bad arguments or files)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    require_extra('streaming', 'writing MDS shards')  # before any video is decoded
    remote = args.out if is_remote(args.out) else None
    if remote is not None:  # convert locally, upload at the end (shards before their index.json)
        args.out = args.staging or tempfile.mkdtemp(prefix='tempme-convert-')
    try:
        files = _resolve_files(args)
        annotations = read_annotations(args.dataset, files)
        settings = ConvertSettings(
            fps=args.fps,
            size=args.size,
            frame_format=args.frame_format,
            jpeg_quality=args.jpeg_quality,
            min_frames=args.min_frames,
            apply_rotation=not args.no_rotation,
        )
        splits = [s.strip() for s in args.splits.split(',') if s.strip()] if args.splits else None
        holdout = None
        if args.val_from_train is not None:
            holdout = hold_out_validation(args.dataset, annotations, args.val_from_train, args.val_seed)
            left_out = [
                s for s in [*holdout['from_splits'], HELD_OUT_SPLIT] if splits is not None and s not in splits
            ]
            if left_out:
                raise ValueError(
                    f'--val-from-train rewrites the training splits and val together; --splits leaves out '
                    f'{", ".join(left_out)}'
                )
        previous_holdout = _previous_report(Path(args.out) / REPORT_FILE).get(REPORT_KEY)
        check_previous_holdout(previous_holdout, holdout, splits or list(annotations), Path(args.out))
        start = time.perf_counter()
        summaries = convert_records(
            args.dataset,
            annotations,
            args.videos,
            args.out,
            settings=settings,
            workers=args.workers,
            work_dir=args.work_dir,
            splits=splits,
            progress=not args.no_progress,
            retry_failed=args.retry_failed,
            warn_frames=args.warn_frames,
            size_limit=args.size_limit,
            skip_truncated=args.skip_truncated,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f'tempme-convert: error: {e}', file=sys.stderr)
        return 2
    out = Path(args.out)
    for problem in annotations.problems:
        log.warning(
            '%s/%s %s: %s (%s)',
            args.dataset,
            problem.split,
            problem.video_id or '-',
            problem.reason,
            problem.detail,
        )
    status = print_summary(args.dataset, summaries, args.max_failed_fraction, out)
    elapsed = time.perf_counter() - start
    decoded = sum(s.decoded_now for s in summaries.values())
    print(
        f'decoded {decoded} videos in {elapsed:.1f}s ({decoded / elapsed if elapsed else 0:.2f} videos/s, '
        f'{args.workers} workers)'
    )
    report = {
        'dataset': args.dataset,
        'settings': asdict(settings),
        'skip_truncated': args.skip_truncated,
        'annotation_files': files,
        'videos': os.path.abspath(args.videos),
        'seconds': round(elapsed, 2),
        'updated_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'splits': {k: split_record(v) for k, v in summaries.items()},
        'annotation_problems': [asdict(p) for p in annotations.problems],
        'exit_code': status,
    }
    report = merge_report(out / REPORT_FILE, report)
    if (
        holdout is not None or previous_holdout is not None
    ):  # kept by a later run that left train and val alone
        report[REPORT_KEY] = holdout or previous_holdout
    if holdout is not None:
        print(
            f'{HELD_OUT_SPLIT}: {holdout["count"]} videos held out of {", ".join(holdout["from_splits"])} '
            f'(--val-seed {holdout["seed"]}); their ids are under "{REPORT_KEY}" in {out / REPORT_FILE}'
        )
    atomic_write(out / REPORT_FILE, (json.dumps(report, indent=2) + '\n').encode())
    if status == 0 and not args.keep_work and not args.work_dir:  # an explicit --work-dir is the user's
        shutil.rmtree(out / WORK_DIR_NAME, ignore_errors=True)
    if remote is not None:
        return upload_conversion(out, remote, status, keep=bool(args.staging))
    return status
