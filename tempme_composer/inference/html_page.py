"""Static result pages: one self-contained HTML file (thumbnails inlined), no server, no network, works from
``file://``. Two pages: search results (per query the top-k moments, each as its thumbnail strip and time
range), and the eval-time analysis (the worst-ranked captions with what was retrieved instead — the
qualitative figure papers show).

Each thumbnail is inlined once per page, as a CSS class every card that shows it refers to, so a page grows
with what it shows, not with how often a video appears. Each card of a folder index links to its video file
(``file://``) and plays its moment in place: a ``<video>`` whose source carries a W3C media fragment
(``video.mp4#t=12,24``: the browser starts at 12 s and pauses at 24 s), ``preload="none"`` so a page of many
cards reads no video until one is played. Every text from a file is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tempme_composer.inference.search import (
    QueryResult,
    VideoIndex,
    clock,
    full_path,
    media_fragment,
    moment_of,
)

__all__ = ['results_page', 'analysis_page', 'read_ranks', 'is_our_page', 'GENERATOR']

#: Marks the pages written here, so ``--html`` replaces one of ours and refuses any other file.
GENERATOR = 'tempme-composer results page'

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d1d1f;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} .sub{color:#666;margin-bottom:16px}
.metrics{display:flex;gap:12px;margin:12px 0 20px}
.metric{background:#fff;border:1px solid #ddd;border-radius:8px;padding:8px 14px}
.metric b{display:block;font-size:20px}
section{background:#fff;border:1px solid #ddd;border-radius:10px;padding:12px 16px;margin-bottom:16px}
section h2{font-size:16px;margin:0 0 6px} .note{color:#a15c00;font-size:12px;margin-bottom:6px}
.hits{display:flex;flex-wrap:wrap;gap:10px}
.hit{width:300px;border:2px solid #e3e3e3;border-radius:8px;padding:6px;background:#fff}
.hit.gt{border-color:#1a7f37;background:#f0fff4}
.th{display:block;width:100%;background:#eee no-repeat;background-size:100% 100%;border-radius:4px;min-height:30px}
a.play{display:block;text-decoration:none;color:inherit}
.hit video{display:block;width:100%;max-height:170px;margin-top:4px;background:#111;border-radius:4px}
.span{font-family:ui-monospace,monospace}
.meta{font-size:12px;color:#333;margin-top:4px;word-break:break-all}
.rank{font-weight:600} .score{font-family:ui-monospace,monospace}
.badge{display:inline-block;background:#1a7f37;color:#fff;border-radius:4px;padding:0 5px;font-size:11px;margin-left:4px}
.miss{color:#b42318;font-size:12px;margin-top:6px}
"""


class _Thumbnails:
    """The page's thumbnails: each file read and inlined once, as a CSS class (``.t3``) cards refer to."""

    def __init__(self) -> None:
        self._classes: dict[Path, str] = {}
        self._rules: list[str] = []

    def css_class(self, path: Path | None) -> str:
        """The class showing ``path`` ('' when there is none or it is not a readable JPEG)."""
        if path is None:
            return ''
        if path not in self._classes:
            self._classes[path] = self._add(path)
        return self._classes[path]

    def _add(self, path: Path) -> str:
        from PIL import Image, UnidentifiedImageError

        try:
            data = path.read_bytes()
            with Image.open(path) as image:
                if image.format != 'JPEG':
                    return ''
                width, height = image.size
        except (OSError, UnidentifiedImageError):
            return ''
        name = f't{len(self._rules)}'
        uri = 'data:image/jpeg;base64,' + base64.b64encode(data).decode('ascii')
        self._rules.append(f'.{name}{{background-image:url("{uri}");aspect-ratio:{width}/{height}}}')
        return name

    def style(self) -> str:
        return '<style>' + '\n'.join(self._rules) + '</style>' if self._rules else ''


def _page(title: str, subtitle: str, body: Sequence[str], thumbs: _Thumbnails) -> str:
    return '\n'.join([
        '<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
        f'<meta name="generator" content="{GENERATOR}">',
        f'<title>{html.escape(title)}</title>', f'<style>{_CSS}</style>', thumbs.style(), '</head><body>',
        f'<h1>{html.escape(title)}</h1>', f'<div class="sub">{html.escape(subtitle)}</div>',
        *body, '</body></html>', ''])


def is_our_page(path: Path) -> bool:
    """Whether ``path`` is a page written here (its head names `GENERATOR`)."""
    try:
        with open(path, 'rb') as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}">'.encode() in head


def _card(index: VideoIndex, row: int, rank: int | str, score: float | None, ground_truth: bool,
          thumbs: _Thumbnails) -> str:
    r = index.rows[row]
    score_text = f' · <span class="score">{score:.4f}</span>' if score is not None else ''
    badge = '<span class="badge">ground truth</span>' if ground_truth else ''
    label = html.escape(r['path'])
    start, end, _ = moment_of(r)
    span = f'{clock(start)}–{clock(end)}'
    picture = f'<span class="th {thumbs.css_class(index.thumbnail(row))}" role="img" aria-label="{label}"></span>'
    video = full_path(index, r['path'])
    if video is not None:  # a folder index: the card links its file and plays its moment
        uri = html.escape(video.as_uri())
        picture = (f'<a class="play" href="{uri}" title="open {label}">{picture}</a>'
                   f'<video controls preload="none" src="{uri}{media_fragment(start, end)}" '
                   f'title="{label} {span}"></video>')
    return (f'<div class="hit{" gt" if ground_truth else ""}">{picture}<div class="meta"><span class="rank">#{rank}'
            f'</span>{score_text}{badge}<br>{label} · <span class="span">{span}</span> of '
            f'{float(r.get("duration") or 0):.1f} s</div></div>')


def _metrics_banner(values: dict[str, float], label: str) -> str:
    cells = ''.join(f'<div class="metric">{html.escape(k)}<b>{v:.1f}</b></div>' for k, v in values.items())
    return f'<div class="sub">{html.escape(label)}</div><div class="metrics">{cells}</div>'


def results_page(results: Sequence[QueryResult], index: VideoIndex, title: str = 'Video search results') -> str:
    """Per query its top-k; on an annotated index the ground truth is marked and R@1/5/10 over the queries
    that have one head the page."""
    body, thumbs = [], _Thumbnails()
    ranked = [r.ground_truth_rank for r in results if r.ground_truth_rank is not None]
    if ranked:
        n = len(ranked)
        body.append(_metrics_banner({f'R@{k}': 100.0 * sum(x <= k for x in ranked) / n for k in (1, 5, 10)},
                                    f'text→video over the {n} queries that are captions of {index.manifest["source"]["root"]} '
                                    f'({len(index.rows)} videos; pessimistic ties)'))
    for r in results:
        cards = [_card(index, h.row, h.rank, h.score, h.row in r.ground_truth, thumbs) for h in r.hits]
        extra = ''
        if r.ground_truth and not any(h.row in r.ground_truth for h in r.hits):
            extra = (f'<div class="miss">ground truth ranked #{r.ground_truth_rank}:</div><div class="hits">'
                     + _card(index, r.ground_truth[0], r.ground_truth_rank or '?', None, True, thumbs) + '</div>')
        note = f'<div class="note">{html.escape(r.note)}</div>' if r.note else ''
        body.append(f'<section><h2>“{html.escape(r.query)}”</h2>{note}<div class="hits">{"".join(cards)}</div>{extra}</section>')
    when = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
    videos = index.num_videos
    count = f'{videos} videos' if videos == len(index.rows) else f'{len(index.rows)} moments of {videos} videos'
    sub = f'{count} in {index.folder.resolve()} · model {index.model_hash[:12]} · {when}'
    return _page(title, sub, body, thumbs)


def read_ranks(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an ``evaluation.save_ranks`` file (``<label>-ep<E>-ranks.jsonl``), each checked.

    Raises:
        ValueError: a missing file, or a line that is not a ranks row, naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f'--analysis {path}: no such file (expected a ranks file written by evaluation.save_ranks, '
                         'RUN/analysis/<label>-ep<E>-ranks.jsonl)')
    rows = []
    for n, line in enumerate(path.read_text(encoding='utf-8', errors='replace').splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f'{path}, line {n}: not JSON ({e}); expected a ranks file written by evaluation.save_ranks') from e
        if not isinstance(row, dict) or not {'caption', 'video_id', 'rank', 'top_videos'} <= set(row):
            raise ValueError(f'{path}, line {n}: expected caption, video_id, rank and top_videos (a save_ranks file)')
        rank, top = row['rank'], row['top_videos']
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f'{path}, line {n}: rank is {rank!r}, expected a positive integer')
        if not isinstance(top, list) or not all(isinstance(v, str | int) for v in top):
            raise ValueError(f'{path}, line {n}: top_videos is {top!r:.80}, expected a list of video ids')
        if not isinstance(row['video_id'], str | int):
            raise ValueError(f'{path}, line {n}: video_id is {row["video_id"]!r:.80}, expected a video id')
        rows.append({**row, 'video_id': str(row['video_id']), 'caption': str(row['caption']),
                     'top_videos': [str(v) for v in top]})
    return rows


def analysis_page(ranks: Sequence[dict[str, Any]], index: VideoIndex | None, worst: int = 20,
                  source: str = '') -> str:
    """The ``worst`` worst-ranked captions, each with its true video and the videos retrieved above it."""
    by_id = {str(r.get('video_id', r['path'])): i for i, r in enumerate(index.rows)} if index is not None else {}
    n = len(ranks)
    summary = {f'R@{k}': 100.0 * sum(r['rank'] <= k for r in ranks) / max(n, 1) for k in (1, 5, 10)}
    body = [_metrics_banner(summary, f'text→video over all {n} captions of that evaluation (the run\'s tie mode)')]
    thumbs = _Thumbnails()

    def card(video_id: str, rank: int | str, truth: bool) -> str:
        if video_id in by_id:
            return _card(index, by_id[video_id], rank, None, truth, thumbs)
        badge = '<span class="badge">ground truth</span>' if truth else ''
        return f'<div class="hit{" gt" if truth else ""}"><div class="meta"><span class="rank">#{rank}</span>{badge}<br>{html.escape(video_id)}</div></div>'

    for r in sorted(ranks, key=lambda r: (-r['rank'], r['video_id']))[:worst]:
        retrieved = ''.join(card(v, i + 1, v == r['video_id']) for i, v in enumerate(r['top_videos']))
        body.append(f'<section><h2>“{html.escape(str(r["caption"]))}”</h2><div class="note">ground truth '
                    f'{html.escape(r["video_id"])} ranked #{r["rank"]}; retrieved instead:</div>'
                    f'<div class="hits">{retrieved}</div><div class="miss">the ground truth:</div>'
                    f'<div class="hits">{card(r["video_id"], r["rank"], True)}</div></section>')
    return _page(f'Worst-ranked captions ({min(worst, n)} of {n})', source, body, thumbs)
