"""Static result pages: one self-contained HTML file (thumbnails inlined), no server, no network, works from
``file://``. Two pages: search results (per query the top-k videos as thumbnail strips), and the eval-time
analysis (the worst-ranked captions with what was retrieved instead — the qualitative figure papers show).
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tempme_composer.inference.search import QueryResult, VideoIndex

__all__ = ['results_page', 'analysis_page', 'read_ranks']

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
.hit img{width:100%;height:auto;display:block;border-radius:4px;background:#eee;min-height:30px}
.meta{font-size:12px;color:#333;margin-top:4px;word-break:break-all}
.rank{font-weight:600} .score{font-family:ui-monospace,monospace}
.badge{display:inline-block;background:#1a7f37;color:#fff;border-radius:4px;padding:0 5px;font-size:11px;margin-left:4px}
.miss{color:#b42318;font-size:12px;margin-top:6px}
"""


def _data_uri(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ''
    return 'data:image/jpeg;base64,' + base64.b64encode(path.read_bytes()).decode('ascii')


def _page(title: str, subtitle: str, body: Sequence[str]) -> str:
    return '\n'.join([
        '<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
        f'<title>{html.escape(title)}</title>', f'<style>{_CSS}</style></head><body>',
        f'<h1>{html.escape(title)}</h1>', f'<div class="sub">{html.escape(subtitle)}</div>',
        *body, '</body></html>', ''])


def _card(index: VideoIndex, row: int, rank: int | str, score: float | None, ground_truth: bool) -> str:
    r = index.rows[row]
    score_text = f' · <span class="score">{score:.4f}</span>' if score is not None else ''
    badge = '<span class="badge">ground truth</span>' if ground_truth else ''
    return (f'<div class="hit{" gt" if ground_truth else ""}"><img alt="{html.escape(r["path"])}" '
            f'src="{_data_uri(index.thumbnail(row))}"><div class="meta"><span class="rank">#{rank}</span>{score_text}'
            f'{badge}<br>{html.escape(r["path"])} · {float(r.get("duration") or 0):.1f} s</div></div>')


def _metrics_banner(values: dict[str, float], label: str) -> str:
    cells = ''.join(f'<div class="metric">{html.escape(k)}<b>{v:.1f}</b></div>' for k, v in values.items())
    return f'<div class="sub">{html.escape(label)}</div><div class="metrics">{cells}</div>'


def results_page(results: Sequence[QueryResult], index: VideoIndex, title: str = 'Video search results') -> str:
    """Per query its top-k; on an annotated index the ground truth is marked and R@1/5/10 over the queries
    that have one head the page."""
    body = []
    ranked = [r.ground_truth_rank for r in results if r.ground_truth_rank is not None]
    if ranked:
        n = len(ranked)
        body.append(_metrics_banner({f'R@{k}': 100.0 * sum(x <= k for x in ranked) / n for k in (1, 5, 10)},
                                    f'text→video over the {n} queries that are captions of {index.manifest["source"]["root"]} '
                                    f'({len(index.rows)} videos; pessimistic ties)'))
    for r in results:
        cards = [_card(index, h.row, h.rank, h.score, h.row in r.ground_truth) for h in r.hits]
        extra = ''
        if r.ground_truth and not any(h.row in r.ground_truth for h in r.hits):
            extra = (f'<div class="miss">ground truth ranked #{r.ground_truth_rank}:</div><div class="hits">'
                     + _card(index, r.ground_truth[0], r.ground_truth_rank or '?', None, True) + '</div>')
        note = f'<div class="note">{html.escape(r.note)}</div>' if r.note else ''
        body.append(f'<section><h2>“{html.escape(r.query)}”</h2>{note}<div class="hits">{"".join(cards)}</div>{extra}</section>')
    when = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
    sub = f'{len(index.rows)} videos in {index.folder.resolve()} · model {index.model_hash[:12]} · {when}'
    return _page(title, sub, body)


def read_ranks(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an ``evaluation.save_ranks`` file (``<label>-ep<E>-ranks.jsonl``)."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding='utf-8').splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f'{path}, line {n}: not JSON ({e}); expected a ranks file written by evaluation.save_ranks') from e
        if not {'caption', 'video_id', 'rank', 'top_videos'} <= set(row):
            raise ValueError(f'{path}, line {n}: expected caption, video_id, rank and top_videos (a save_ranks file)')
        rows.append(row)
    return rows


def analysis_page(ranks: Sequence[dict[str, Any]], index: VideoIndex | None, worst: int = 20,
                  source: str = '') -> str:
    """The ``worst`` worst-ranked captions, each with its true video and the videos retrieved above it."""
    by_id = {str(r.get('video_id', r['path'])): i for i, r in enumerate(index.rows)} if index is not None else {}
    n = len(ranks)
    summary = {f'R@{k}': 100.0 * sum(r['rank'] <= k for r in ranks) / max(n, 1) for k in (1, 5, 10)}
    body = [_metrics_banner(summary, f'text→video over all {n} captions of that evaluation (the run\'s tie mode)')]

    def card(video_id: str, rank: int | str, truth: bool) -> str:
        if video_id in by_id:
            return _card(index, by_id[video_id], rank, None, truth)
        badge = '<span class="badge">ground truth</span>' if truth else ''
        return f'<div class="hit{" gt" if truth else ""}"><div class="meta"><span class="rank">#{rank}</span>{badge}<br>{html.escape(video_id)}</div></div>'

    for r in sorted(ranks, key=lambda r: (-r['rank'], r['video_id']))[:worst]:
        retrieved = ''.join(card(v, i + 1, v == r['video_id']) for i, v in enumerate(r['top_videos']))
        body.append(f'<section><h2>“{html.escape(str(r["caption"]))}”</h2><div class="note">ground truth '
                    f'{html.escape(r["video_id"])} ranked #{r["rank"]}; retrieved instead:</div>'
                    f'<div class="hits">{retrieved}</div><div class="miss">the ground truth:</div>'
                    f'<div class="hits">{card(r["video_id"], r["rank"], True)}</div></section>')
    return _page(f'Worst-ranked captions ({min(worst, n)} of {n})', source, body)
