"""What a conversion did, per split: the :class:`SplitSummary` stored with each split, the printed summary
(with a banner for every unwritten video of an official test split) and ``conversion_report.json``, which
keeps each split's figures across re-runs."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tempme_composer.data.format import MDS_INDEX_FILE, SKIPPED_FILE, SPLIT_REPORT_FILE

__all__ = ['SplitSummary', 'merge_report', 'print_summary', 'split_record', 'summary_from_existing']


@dataclass
class SplitSummary:
    """One split's figures: what was listed, written and skipped (by reason), and how long it took."""

    split: str
    total: int = 0
    converted: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    short_videos: int = 0
    frames: int = 0
    decoded_now: int = 0
    reused: bool = False
    seconds: float = 0.0
    is_test: bool = False
    missing_ids: list[str] = field(default_factory=list)
    unwritten: list[list[str]] = field(default_factory=list)  # [video_id, reason] of every video not written
    truncated_videos: list[dict[str, Any]] = field(
        default_factory=list
    )  # id, frames, seconds, declared, kept
    short_list: list[list[Any]] = field(default_factory=list)  # [video_id, frames] below --warn-frames
    written_at: str = ''  # UTC time of the run that wrote this split

    @property
    def failed(self) -> int:
        return sum(self.skipped.values())

    @property
    def failed_fraction(self) -> float:
        return self.failed / self.total if self.total else 0.0


def split_record(summary: SplitSummary) -> dict[str, Any]:
    """A split's entry of ``conversion_report.json`` (and of its own ``conversion_summary.json``)."""
    return {**asdict(summary), 'failed_fraction': summary.failed_fraction}


def summary_from_existing(folder: Path, summary: SplitSummary, meta: dict[str, Any]) -> SplitSummary:
    """The figures of the run that wrote ``folder`` (its ``conversion_summary.json``; for a folder written
    before that file existed, the counts rebuilt from ``skipped.csv``); this run's timing stays."""
    stored = folder / SPLIT_REPORT_FILE
    if stored.is_file():
        try:
            record = json.loads(stored.read_text())
            names = {f.name for f in fields(SplitSummary)} - {'decoded_now', 'seconds', 'reused'}
            return replace(summary, **{k: v for k, v in record.items() if k in names})
        except (OSError, ValueError, TypeError):
            pass  # unreadable: rebuild from skipped.csv below
    summary.converted = int(meta.get('num_videos', 0))
    summary.written_at = str(meta.get('created', ''))
    skipped_path = folder / SKIPPED_FILE
    if skipped_path.is_file():
        with open(skipped_path, newline='', encoding='utf-8') as f:
            for row in csv.DictReader(f):
                summary.skipped[row['reason']] = summary.skipped.get(row['reason'], 0) + 1
                if row['reason'] != 'duplicate_id':
                    summary.unwritten.append([row['video_id'], row['reason']])
                if row['reason'] == 'missing':
                    summary.missing_ids.append(row['video_id'])
    return summary


def print_summary(dataset: str, summaries: dict[str, SplitSummary], max_failed: float, out: Path) -> int:
    status = 0
    print(f'\n{dataset}: conversion summary ({out})')
    print(
        f'{"split":<12} {"listed":>7} {"written":>7} {"skipped":>7} {"short":>6} {"frames":>8} '
        f'{"decoded":>7} {"vid/s":>7}  skipped by reason / warnings'
    )
    for s in summaries.values():
        rate = s.decoded_now / s.seconds if s.seconds and s.decoded_now else 0.0
        reasons = ', '.join(f'{k} {v}' for k, v in sorted(s.skipped.items())) or '-'
        warns = ', '.join(f'{k} {v}' for k, v in sorted(s.warnings.items()))
        note = f' (already converted by the run of {s.written_at or "an earlier run"})' if s.reused else ''
        print(
            f'{s.split:<12} {s.total:>7} {s.converted:>7} {s.failed:>7} {s.short_videos:>6} {s.frames:>8} '
            f'{s.decoded_now:>7} {rate:>7.2f}  {reasons}{"; " + warns if warns else ""}{note}'
        )
        _print_video_lists(dataset, s)
        if s.is_test and s.unwritten:
            _print_test_banner(dataset, s, out)
        if s.failed_fraction > max_failed:
            print(
                f'ERROR: {dataset}/{s.split}: {s.failed}/{s.total} videos skipped '
                f'({s.failed_fraction:.1%} > --max-failed-fraction {max_failed:.1%}); see '
                f'{out / s.split / SKIPPED_FILE}',
                file=sys.stderr,
            )
            status = 1
    return status


def _print_video_lists(dataset: str, s: SplitSummary, show: int = 20) -> None:
    """The truncated and the short videos of a split by id (all of them are in conversion_report.json)."""
    if s.truncated_videos:
        kept = all(t['kept'] for t in s.truncated_videos)
        items = [
            f'{t["video_id"]} ({t["decoded_s"]:.1f} s of {t["declared_s"] or 0:.1f} s, {t["frames"]} frames)'
            for t in s.truncated_videos
        ]
        more = f' ... and {len(items) - show} more' if len(items) > show else ''
        how = (
            'kept with the frames before the cut (--skip-truncated drops them)'
            if kept
            else 'skipped (--skip-truncated)'
        )
        print(
            f'  {dataset}/{s.split}: {len(items)} truncated video(s), {how}: {"; ".join(items[:show])}{more}'
        )
    if s.short_list:
        items = [f'{v} ({n} frames)' for v, n in s.short_list]
        more = f' ... and {len(items) - show} more' if len(items) > show else ''
        print(
            f'  {dataset}/{s.split}: {len(items)} video(s) with fewer frames than --warn-frames (the loader '
            f'pads and masks them): {", ".join(items[:show])}{more}'
        )


def _print_test_banner(dataset: str, s: SplitSummary, out: Path) -> None:
    """Every video of an official test split that was not written, with its reason (stderr)."""
    by_reason: dict[str, list[str]] = {}
    for video_id, reason in s.unwritten:
        by_reason.setdefault(reason, []).append(video_id)
    lines = [f'!!   {reason} ({len(ids)}): {", ".join(ids)}' for reason, ids in sorted(by_reason.items())]
    bar = '!' * 100
    written = s.total - len(s.unwritten) - s.skipped.get('duplicate_id', 0)
    print(
        f'\n{bar}\n!! WARNING: {len(s.unwritten)} video(s) of the official TEST split {dataset}/{s.split} are MISSING '
        f'from the gallery, not written ({written:,} of {written + len(s.unwritten):,} listed videos are in it):\n'
        + '\n'.join(lines)
        + '\n'
        f'!! Metrics on this split are NOT comparable to published numbers (the gallery is smaller). '
        f'Reasons and paths: {(out / s.split / SKIPPED_FILE).resolve()}\n{bar}\n',
        file=sys.stderr,
    )


def merge_report(path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with the split entries of the previous report kept for splits this run did not touch (and
    whose folder still exists), so each split keeps the figures and date of the run that wrote it."""
    try:
        previous = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        previous = {}
    if previous.get('dataset') != report['dataset'] or not isinstance(previous.get('splits'), dict):
        return report
    kept = {
        k: v
        for k, v in previous['splits'].items()
        if k not in report['splits'] and (path.parent / k / MDS_INDEX_FILE).is_file()
    }
    return {**report, 'splits': {**kept, **report['splits']}}
