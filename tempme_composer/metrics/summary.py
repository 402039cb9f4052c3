"""Summaries of `RankCounts`: R@K, median and mean rank per tie mode, and the research code's log lines.

Median: numpy's convention (mean of the two middle ranks, so it can be x.5) by default and in every tie mode,
except the reference multi-sentence text→video path, which uses the lower median and float32 R@K as the
research code's ``tensor_text_to_video_metrics`` does (docs/reference/evaluation-protocol.md,
"Metric definitions" item 6; worked cases T5/T8/T9). Summaries never expand the ranks, so ``'reference'``
stays exact and cheap when a collapsed model ties billions of candidates.
"""

from __future__ import annotations

from typing import Literal

import torch

from tempme_composer.metrics.ranking import (
    RankCounts,
    TieMode,
    check_tie_mode,
    embedding_rank_counts,
    is_multi_sentence,
    rank_counts,
    rank_intervals,
)

__all__ = [
    'METRIC_NAMES',
    'summarize_ranks',
    'summarize_counts',
    'retrieval_metrics',
    'similarity_metrics',
    'embedding_metrics',
    'format_log_lines',
]

METRIC_NAMES = ('R@1', 'R@5', 'R@10', 'MdR', 'MnR')
RECALL_KS = (1, 5, 10)


def summarize_ranks(ranks: torch.Tensor, median: Literal['average', 'lower'] = 'average') -> dict[str, float]:
    """R@1/5/10 in percent, median rank (``'average'``: numpy, mean of the middle pair; ``'lower'``:
    ``torch.median``) and mean rank of 1-based ``ranks``."""
    ranks = ranks.long().cpu()
    return summarize_counts(RankCounts(ranks - 1, torch.ones_like(ranks)), 'optimistic', median=median)


def summarize_counts(
    counts: RankCounts,
    tie_mode: TieMode = 'pessimistic',
    *,
    median: Literal['average', 'lower'] = 'average',
    float32_recall: bool = False,
) -> dict[str, float]:
    """``{'R@1', 'R@5', 'R@10', 'MdR', 'MnR'}`` of `RankCounts` under ``tie_mode``.

    Exact and memory-bounded even when ``'reference'`` collects billions of tied ranks (nothing is expanded).
    ``float32_recall`` rounds R@K as the research code's torch path does (``count * 100 / n`` in float32).
    """
    check_tie_mode(tie_mode)
    lo, hi = rank_intervals(counts, tie_mode)
    size = hi - lo + 1
    n = int(size.sum())
    if n == 0:
        raise ValueError('no queries to summarise')
    out = {}
    for k in RECALL_KS:
        hits = int((torch.clamp(hi, max=k) - lo + 1).clamp_(min=0).sum())
        out[f'R@{k}'] = float(torch.tensor(hits * 100) / n) if float32_recall else 100.0 * hits / n
    if median == 'average':
        out['MdR'] = (_kth_rank(lo, hi, (n - 1) // 2) + _kth_rank(lo, hi, n // 2)) / 2
    elif median == 'lower':
        out['MdR'] = float(_kth_rank(lo, hi, (n - 1) // 2))
    else:
        raise ValueError(f"median must be 'average' or 'lower', got {median!r}")
    out['MnR'] = int(((lo + hi) * size).sum()) / 2 / n
    return out


def retrieval_metrics(
    t2v: RankCounts, v2t: RankCounts, tie_mode: TieMode = 'pessimistic', multi_sentence: bool | None = None
) -> dict[str, float]:
    """``t2v_{R@1,R@5,R@10,MdR,MnR}`` and ``v2t_…`` under ``tie_mode``.

    ``multi_sentence`` only matters for ``'reference'`` (which research path to reproduce for text→video);
    default: more captions than videos.
    """
    check_tie_mode(tie_mode)
    if tie_mode == 'reference' and is_multi_sentence(t2v, v2t, multi_sentence):
        t2v_summary = summarize_counts(t2v, 'pessimistic', median='lower', float32_recall=True)
    else:
        t2v_summary = summarize_counts(t2v, tie_mode)
    out = {f't2v_{k}': v for k, v in t2v_summary.items()}
    out.update({f'v2t_{k}': v for k, v in summarize_counts(v2t, tie_mode).items()})
    return out


def similarity_metrics(
    sim: torch.Tensor,
    text_to_video: torch.Tensor,
    tie_mode: TieMode = 'pessimistic',
    *,
    multi_sentence: bool | None = None,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """`retrieval_metrics` of a ``[Q, V]`` similarity matrix with explicit caption→video labels."""
    check_tie_mode(tie_mode)
    t2v, v2t = rank_counts(sim, text_to_video, chunk_size=chunk_size)
    return retrieval_metrics(t2v, v2t, tie_mode, multi_sentence)


def embedding_metrics(
    text: torch.Tensor,
    video: torch.Tensor,
    text_to_video: torch.Tensor,
    tie_mode: TieMode = 'pessimistic',
    *,
    multi_sentence: bool | None = None,
    chunk_size: int | None = None,
    dsl: bool = False,
    dsl_scale: float = 100.0,
) -> dict[str, float]:
    """`retrieval_metrics` from embeddings (chunked); with ``dsl`` also the ``dsl_t2v_…``/``dsl_v2t_…`` keys."""
    check_tie_mode(tie_mode)
    counts = embedding_rank_counts(text, video, text_to_video, chunk_size=chunk_size)
    out = retrieval_metrics(*counts, tie_mode, multi_sentence)
    if dsl:
        counts = embedding_rank_counts(
            text, video, text_to_video, chunk_size=chunk_size, dsl=True, dsl_scale=dsl_scale
        )
        out.update({f'dsl_{k}': v for k, v in retrieval_metrics(*counts, tie_mode, multi_sentence).items()})
    return out


def format_log_lines(results: dict[str, float], prefix: str = '') -> list[str]:
    """The research codebases' result lines (CLIP4Clip/STOP format), which users grep for.

    ``prefix='dsl_'`` formats the ``dsl_t2v_…`` keys under "DSL Text-to-Video:" / "DSL Video-to-Text:".
    """
    title = prefix.strip('_').upper() + ' ' if prefix else ''
    t = {k: results[f'{prefix}t2v_{k}'] for k in METRIC_NAMES}
    v = {k: results[f'{prefix}v2t_{k}'] for k in METRIC_NAMES}
    return [
        f'{title}Text-to-Video:',
        f'\t (metric) >>>  R@1: {t["R@1"]:.1f} - R@5: {t["R@5"]:.1f} - R@10: {t["R@10"]:.1f} - '
        f'Median R: {t["MdR"]:.1f} - Mean R: {t["MnR"]:.1f}',
        f'{title}Video-to-Text:',
        f'\t (metric) >>>  V2T$R@1: {v["R@1"]:.1f} - V2T$R@5: {v["R@5"]:.1f} - V2T$R@10: {v["R@10"]:.1f} - '
        f'V2T$Median R: {v["MdR"]:.1f} - V2T$Mean R: {v["MnR"]:.1f}',
    ]


def _kth_rank(lo: torch.Tensor, hi: torch.Tensor, k: int) -> int:
    """The ``k``-th smallest (0-based) of the multiset ⋃ [lo_i, hi_i], by bisection on the rank value."""
    if bool((lo == hi).all()):
        return int(torch.kthvalue(lo, k + 1).values)
    left, right = 1, int(hi.max())
    while left < right:
        mid = (left + right) // 2
        if int((torch.clamp(hi, max=mid) - lo + 1).clamp_(min=0).sum()) >= k + 1:
            right = mid
        else:
            left = mid + 1
    return left
