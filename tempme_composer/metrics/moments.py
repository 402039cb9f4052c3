"""Moment retrieval metrics: temporal IoU, temporal NMS and video-corpus moment retrieval (VCMR) recall.

Pure functions over numpy/torch; no Composer, no torch.distributed. Definitions:

* **Temporal IoU** of two segments ``[start, end]`` in seconds: ``|a ∩ b| / |a ∪ b|`` (0 when the union has no
  length). A caption annotated with several segments (DiDeMo's several annotators, or the same sentence
  marked twice) is matched against its *best* segment: a prediction's tIoU is the maximum over the caption's
  ground-truth segments.
* **Temporal NMS** (non-maximum suppression): visit moments by score, best first (equal scores in row
  order), keep a moment unless a kept moment *of the same video* overlaps it with tIoU strictly above the
  threshold.
* **VCMR R@K, tIoU ≥ m** (Escorcia et al. 2019, "Temporal Localization of Moments in Video Collections with
  Natural Language"; Lei et al., ECCV 2020, "TVR: A Large-Scale Dataset for Video-Subtitle Moment
  Retrieval"): each caption scores every moment of every video; per-video NMS at ``nms_threshold`` (0.5)
  removes near-duplicates; the survivors of all videos are ranked by score. A caption counts at K when one
  of its top-K survivors lies in the ground-truth video and reaches tIoU ≥ m with one of the caption's
  ground-truth segments. K ∈ {1, 5, 10}, m ∈ {0.3, 0.5, 0.7}.
* **Video R@K**: videos ranked by their best moment's score (before NMS: NMS never removes a video's best
  moment), the ground-truth video's rank.
* **Ties** count against the caption (pessimistic, as `tempme_composer.metrics.ranking`'s default): a
  correct survivor's rank is the number of survivors scoring at least as much as it, itself included; a
  video's rank is the number of videos whose best moment scores at least as much as the ground-truth
  video's. So a collapsed model whose scores are all equal never looks good.
* **Scores** are exact fp32 inner products, computed once per (caption, moment) in blocks of captions
  against the whole ``[rows, D]`` gallery (float16 memory maps widened block by block): memory stays near
  ``chunk_elements`` scores whatever the number of captions.

Only the first ``max(ks) + 1`` survivors of a caption decide its R@K. Each survivor suppresses at most the
other moments of its own video, so they all lie among the caption's top ``(max(ks) + 1) × (most moments of a
video)`` moments (all moments tied with the last of those are taken too): the greedy NMS runs over that short
list, not over the gallery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tempme_composer.metrics.ranking import NonFiniteScoreError

__all__ = [
    'MOMENT_KS',
    'MOMENT_IOUS',
    'NMS_THRESHOLD',
    'MomentRanks',
    'temporal_iou',
    'best_temporal_iou',
    'temporal_nms',
    'moment_ranks',
    'summarize_moment_ranks',
    'moment_retrieval_metrics',
]

MOMENT_KS: tuple[int, ...] = (1, 5, 10)
MOMENT_IOUS: tuple[float, ...] = (0.3, 0.5, 0.7)
#: TVR's per-video NMS threshold for VCMR.
NMS_THRESHOLD = 0.5
#: fp32 scores held at once (64 MiB): captions are scored in blocks of ``chunk_elements // rows``.
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def _segments(value: np.ndarray | Sequence[Sequence[float]], what: str) -> np.ndarray:
    """``[N, 2]`` float64 ``[start, end]`` seconds, finite with ``end >= start``: a reversed segment has no
    length to compare, and silently swapping it would hide a broken annotation."""
    seg = np.asarray(value, dtype=np.float64)
    if seg.ndim == 1 and seg.size == 0:
        seg = seg.reshape(0, 2)
    if seg.ndim != 2 or seg.shape[1] != 2:
        raise ValueError(f'{what}: expected [N, 2] [start, end] segments, got shape {tuple(seg.shape)}')
    if not np.isfinite(seg).all():
        raise ValueError(f'{what}: segments must be finite seconds, got {seg[~np.isfinite(seg).all(1)][0].tolist()}')
    bad = np.flatnonzero(seg[:, 1] < seg[:, 0])
    if bad.size:
        raise ValueError(f'{what}: segment {int(bad[0])} ends before it starts: {seg[bad[0]].tolist()}')
    return seg


def temporal_iou(a: np.ndarray | Sequence[Sequence[float]],
                 b: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """``[A, B]`` temporal IoU ``|a ∩ b| / |a ∪ b|`` of segments ``a [A, 2]`` and ``b [B, 2]`` in seconds.

    Two segments without length (a point) have IoU 0, even at the same time: nothing is covered.

    Raises:
        ValueError: a segment that is not finite or ends before it starts.
    """
    a, b = _segments(a, 'temporal_iou a'), _segments(b, 'temporal_iou b')
    inter = np.clip(np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0.0, None)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def best_temporal_iou(pred: np.ndarray | Sequence[Sequence[float]],
                      truth: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """``[P]``: each prediction's tIoU with the caption's best-matching ground-truth segment (0 without any).

    A caption marked with several segments is found when any one of them is (Escorcia et al. 2019 evaluate
    DiDeMo's several annotations this way, against the best-matching one).
    """
    iou = temporal_iou(pred, truth)
    return iou.max(axis=1) if iou.shape[1] else np.zeros(iou.shape[0])


def _iou_pair(a: tuple[float, float], b: tuple[float, float]) -> float:
    """tIoU of two checked segments, as `temporal_iou` computes it (scalar path for the greedy scans)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def temporal_nms(segments: np.ndarray | Sequence[Sequence[float]], scores: np.ndarray | Sequence[float],
                 threshold: float = NMS_THRESHOLD, groups: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
    """Indices of the moments greedy temporal NMS keeps, in the order visited (score descending, equal scores
    by index).

    A moment is dropped when a kept moment of the same group (video) overlaps it with tIoU *above*
    ``threshold``; moments of different groups never suppress each other (TVR's per-video NMS).

    Raises:
        ValueError: bad segments, scores of another length, or non-finite scores.
    """
    seg = _segments(segments, 'temporal_nms segments')
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    group = np.zeros(len(seg), np.int64) if groups is None else np.asarray(groups).reshape(-1)
    if len(s) != len(seg) or len(group) != len(seg):
        raise ValueError(f'temporal_nms: {len(seg)} segments but {len(s)} scores and {len(group)} groups')
    if not np.isfinite(s).all():
        raise ValueError('temporal_nms: scores must be finite')
    order = np.lexsort((np.arange(len(s)), -s))
    return np.asarray(_greedy_nms(order.tolist(), group.tolist(), [tuple(x) for x in seg.tolist()], threshold,
                                  len(s)), dtype=np.int64)


def _greedy_nms(order: list[int], group: list[int], seg: list[tuple[float, float]], threshold: float,
                limit: int) -> list[int]:
    """Greedy NMS over ``order`` (already sorted), stopping once ``limit`` moments are kept."""
    kept: list[int] = []
    for r in order:
        g, sr = group[r], seg[r]
        if any(group[k] == g and _iou_pair(seg[k], sr) > threshold for k in kept):
            continue
        kept.append(r)
        if len(kept) >= limit:
            break
    return kept


@dataclass
class MomentRanks:
    """Per caption: the pessimistic rank of its best correct survivor at each tIoU threshold (``moment [Q, M]``,
    ``max_k + 1`` standing for "not within ``max_k``"), and the exact pessimistic rank of its video
    (``video [Q]``)."""

    moment: np.ndarray  # [Q, len(ious)] int64, capped at max_k + 1
    video: np.ndarray  # [Q] int64, 1-based
    ious: tuple[float, ...]
    max_k: int
    num_moments: int
    num_videos: int


def _check_gallery(moment_video: np.ndarray | Sequence[int], moment_segments: np.ndarray,
                   num_rows: int) -> tuple[np.ndarray, np.ndarray, int]:
    video = np.asarray(moment_video).reshape(-1)
    if len(video) != num_rows or not np.issubdtype(video.dtype, np.integer) or (num_rows and video.min() < 0):
        raise ValueError(f'moment_video: expected {num_rows} video numbers >= 0 (one per moment), got '
                         f'{len(video)} of dtype {video.dtype}')
    seg = _segments(moment_segments, 'moment_segments')
    if len(seg) != num_rows:
        raise ValueError(f'moment_segments: expected {num_rows} segments (one per moment), got {len(seg)}')
    return video.astype(np.int64), seg, int(video.max()) + 1 if num_rows else 0


def _score_block(text: torch.Tensor, moments: np.ndarray | torch.Tensor, row_block: int) -> torch.Tensor:
    """``[Qc, N]`` fp32 scores, the gallery widened to fp32 ``row_block`` rows at a time."""
    out = torch.empty(len(text), len(moments), dtype=torch.float32)
    for s in range(0, len(moments), row_block):
        block = moments[s : s + row_block]
        block = block.float() if isinstance(block, torch.Tensor) else torch.from_numpy(np.array(block)).float()
        out[:, s : s + len(block)] = text @ block.T
    return out


def _candidates(scores: torch.Tensor, depth: int) -> list[np.ndarray]:
    """Per caption, the rows that can hold its first survivors: its top ``depth`` moments plus every moment
    tied with the last of them, ordered by score (descending) then row."""
    n = scores.shape[1]
    out = []
    if depth >= n:
        for row in scores.numpy():
            out.append(np.lexsort((np.arange(n), -row)))
        return out
    values, rows = torch.topk(scores, depth, dim=1)
    floor = values[:, -1:]
    at_least = (scores >= floor).sum(1).tolist()
    floor_np = floor[:, 0].numpy()
    for i, row in enumerate(scores.numpy()):
        cand = rows[i].numpy() if at_least[i] == depth else np.flatnonzero(row >= floor_np[i])
        out.append(cand[np.lexsort((cand, -row[cand]))])
    return out


def moment_ranks(text: np.ndarray | torch.Tensor, moments: np.ndarray | torch.Tensor,
                 moment_video: np.ndarray | Sequence[int], moment_segments: np.ndarray | Sequence[Sequence[float]],
                 caption_video: np.ndarray | Sequence[int],
                 caption_segments: Sequence[np.ndarray | Sequence[Sequence[float]]], *,
                 ious: Sequence[float] = MOMENT_IOUS, max_k: int = max(MOMENT_KS),
                 nms_threshold: float = NMS_THRESHOLD, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> MomentRanks:
    """Per-caption VCMR and video ranks (see the module docstring for the definitions).

    Args:
        text: ``[Q, D]`` caption embeddings.
        moments: ``[N, D]`` moment embeddings (a float16 memory map is fine: widened block by block).
        moment_video: ``[N]`` video number of each moment (0-based; rows of a video need not be adjacent).
        moment_segments: ``[N, 2]`` each moment's ``[start, end]`` in seconds.
        caption_video: ``[Q]`` the ground-truth video number of each caption.
        caption_segments: per caption, its ``[G, 2]`` ground-truth segments (G >= 1).

    Raises:
        ValueError: mismatched lengths, a caption without a segment or whose video has no moment, bad
            segments. `NonFiniteScoreError` (a ValueError): a NaN or infinite score, naming the caption.
    """
    q = torch.as_tensor(np.asarray(text, dtype=np.float32) if not isinstance(text, torch.Tensor) else text).float()
    if q.ndim != 2 or moments.ndim != 2 or q.shape[1] != moments.shape[1]:
        raise ValueError(f'text {tuple(q.shape)} and moments {tuple(moments.shape)} must be [Q, D] and [N, D]')
    num_rows = moments.shape[0]
    video, seg, num_videos = _check_gallery(moment_video, moment_segments, num_rows)
    cap_video = np.asarray(caption_video, dtype=np.int64).reshape(-1)
    if len(cap_video) != len(q) or len(caption_segments) != len(q):
        raise ValueError(f'{len(q)} captions but {len(cap_video)} caption videos and {len(caption_segments)} '
                         'ground-truth segment lists')
    counts = np.bincount(video, minlength=num_videos)
    missing = [i for i, v in enumerate(cap_video.tolist()) if not 0 <= v < num_videos or counts[v] == 0]
    if missing:
        raise ValueError(f'caption {missing[0]}: its video {int(cap_video[missing[0]])} has no moment in the gallery')
    truths = [_segments(t, f'caption {i} ground truth') for i, t in enumerate(caption_segments)]
    empty = [i for i, t in enumerate(truths) if len(t) == 0]
    if empty:
        raise ValueError(f'caption {empty[0]} has no ground-truth segment')
    thresholds = tuple(float(m) for m in ious)
    depth = (max_k + 1) * int(counts.max()) if num_rows else 0
    group, segs = video.tolist(), [tuple(x) for x in seg.tolist()]
    video_index = torch.from_numpy(video)
    moment_out = np.full((len(q), len(thresholds)), max_k + 1, dtype=np.int64)
    video_out = np.zeros(len(q), dtype=np.int64)
    chunk = max(1, chunk_elements // max(num_rows, 1))
    row_block = max(1, chunk_elements // max(q.shape[1], 1))
    for c0 in range(0, len(q), chunk):
        scores = _score_block(q[c0 : c0 + chunk], moments, row_block)
        finite = torch.isfinite(scores).all(1)
        if not bool(finite.all()):
            bad = c0 + int((~finite).nonzero()[0, 0])
            raise NonFiniteScoreError('caption', bad)
        best = torch.full((len(scores), num_videos), -float('inf'))
        best.scatter_reduce_(1, video_index.expand(len(scores), -1), scores, 'amax', include_self=True)
        own = best.gather(1, torch.from_numpy(cap_video[c0 : c0 + len(scores)])[:, None])
        video_out[c0 : c0 + len(scores)] = (best >= own).sum(1).numpy()
        row_scores = scores.numpy()
        for i, cand in enumerate(_candidates(scores, depth)):
            kept = _greedy_nms(cand.tolist(), group, segs, nms_threshold, max_k + 1)
            moment_out[c0 + i] = _survivor_ranks(kept, row_scores[i], video, seg, int(cap_video[c0 + i]),
                                                 truths[c0 + i], thresholds, max_k)
    return MomentRanks(moment_out, video_out, thresholds, max_k, num_rows, num_videos)


def _survivor_ranks(kept: list[int], scores: np.ndarray, video: np.ndarray, seg: np.ndarray, truth_video: int,
                    truth: np.ndarray, thresholds: tuple[float, ...], max_k: int) -> np.ndarray:
    """Pessimistic rank of the best correct survivor per threshold (``max_k + 1`` when none is within reach).

    ``kept`` is complete down to its last score, so counting within it is exact for every survivor scoring
    above that; one scoring exactly that already has ``len(kept)`` (> ``max_k`` when the list was cut) ahead.
    """
    out = np.full(len(thresholds), max_k + 1, dtype=np.int64)
    if not kept:
        return out
    kept_rows = np.asarray(kept)
    kept_scores = scores[kept_rows]
    overlap = np.where(video[kept_rows] == truth_video, best_temporal_iou(seg[kept_rows], truth), -1.0)
    for j, m in enumerate(thresholds):
        hits = np.flatnonzero(overlap >= m)
        if hits.size:
            rank = int((kept_scores >= kept_scores[hits[0]]).sum())
            out[j] = min(rank, max_k + 1)
    return out


def summarize_moment_ranks(ranks: MomentRanks, ks: Sequence[int] = MOMENT_KS) -> dict[str, float]:
    """``moment_R@K_tIoU<m>`` and ``video_R@K`` in percent, with the counts they were computed over."""
    if any(k > ranks.max_k for k in ks):
        raise ValueError(f'ks {tuple(ks)} go beyond the ranks computed (max_k {ranks.max_k})')
    n = len(ranks.video)
    if n == 0:
        raise ValueError('no captions to summarise')
    out: dict[str, float] = {}
    for j, m in enumerate(ranks.ious):
        for k in ks:
            out[f'moment_R@{k}_tIoU{m:g}'] = 100.0 * float((ranks.moment[:, j] <= k).sum()) / n
    for k in ks:
        out[f'video_R@{k}'] = 100.0 * float((ranks.video <= k).sum()) / n
    out.update({'num_captions': float(n), 'num_moments': float(ranks.num_moments),
                'num_videos': float(ranks.num_videos)})
    return out


def moment_retrieval_metrics(text: np.ndarray | torch.Tensor, moments: np.ndarray | torch.Tensor,
                             moment_video: np.ndarray | Sequence[int],
                             moment_segments: np.ndarray | Sequence[Sequence[float]],
                             caption_video: np.ndarray | Sequence[int],
                             caption_segments: Sequence[np.ndarray | Sequence[Sequence[float]]], *,
                             ks: Sequence[int] = MOMENT_KS, ious: Sequence[float] = MOMENT_IOUS,
                             nms_threshold: float = NMS_THRESHOLD,
                             chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> dict[str, float]:
    """VCMR R@K at each tIoU threshold and video R@K, in percent (arguments as `moment_ranks`)."""
    ranks = moment_ranks(text, moments, moment_video, moment_segments, caption_video, caption_segments,
                         ious=ious, max_k=max(ks), nms_threshold=nms_threshold, chunk_elements=chunk_elements)
    return summarize_moment_ranks(ranks, ks)
