"""Retrieval metrics: pure ranking functions and a torchmetrics Metric that gathers embeddings.

Ranks are 1-based. Tie rule: a score equal to the ground truth's counts *against* it (the ground truth ranks
behind every item that scores at least as high), so a collapsed model cannot look good. Similarities are
cosine products of L2-normalised embeddings, computed in fp32 in chunks of queries so memory stays bounded.
Multi-sentence sets (several captions per video): text→video ranks every caption; video→text ranks each
video by its best caption.
"""

from __future__ import annotations

import logging

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ['RetrievalMetrics', 'retrieval_ranks', 'summarize_ranks', 'format_log_lines', 'METRIC_NAMES']

log = logging.getLogger(__name__)

METRIC_NAMES = ('R@1', 'R@5', 'R@10', 'MdR', 'MnR')


def retrieval_ranks(
    text: torch.Tensor, video: torch.Tensor, text_to_video: torch.Tensor, chunk_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text→video and video→text ranks of the ground truth.

    Args:
        text: ``[Q, D]`` L2-normalised caption embeddings.
        video: ``[V, D]`` L2-normalised video embeddings.
        text_to_video: ``[Q]`` int64, the row of ``video`` each caption describes; every video needs one caption.
        chunk_size: queries scored at once (bounds memory to ``chunk_size × max(Q, V)`` floats).

    Returns:
        ``(t2v_ranks [Q], v2t_ranks [V])``, int64, 1-based.

    Raises:
        ValueError: on a NaN score (naming the query) or a video without a caption.
    """
    text, video = text.float(), video.float()
    Q, V = text.shape[0], video.shape[0]
    if text_to_video.numel() != Q or (Q and (int(text_to_video.min()) < 0 or int(text_to_video.max()) >= V)):
        raise ValueError(f'text_to_video must hold {Q} video rows in [0, {V}), got {text_to_video.tolist()[:10]}...')
    t2v = torch.empty(Q, dtype=torch.long)
    for start in range(0, Q, chunk_size):
        sim = text[start : start + chunk_size] @ video.t()  # [q, V]
        _check_finite(sim, 'caption', start)
        target = text_to_video[start : start + chunk_size].to(sim.device)
        positive = sim.gather(1, target[:, None])  # [q, 1]
        t2v[start : start + chunk_size] = (sim >= positive).sum(dim=1).cpu()
    captions_per_video = torch.bincount(text_to_video.cpu(), minlength=V)
    if V and bool((captions_per_video == 0).any()):
        missing = torch.nonzero(captions_per_video == 0).flatten().tolist()[:10]
        raise ValueError(f'videos at rows {missing} have no caption, so video→text is undefined for them')
    v2t = torch.empty(V, dtype=torch.long)
    owner = text_to_video.to(video.device)
    for start in range(0, V, chunk_size):
        sim = video[start : start + chunk_size] @ text.t()  # [v, Q]
        _check_finite(sim, 'video', start)
        rows = torch.arange(start, start + sim.shape[0], device=sim.device)
        own = owner[None, :] == rows[:, None]  # [v, Q] True where the caption belongs to the video
        best = sim.masked_fill(~own, float('-inf')).amax(dim=1, keepdim=True)  # [v, 1] best own caption
        v2t[start : start + chunk_size] = (sim >= best).sum(dim=1).cpu()
    return t2v, v2t


def summarize_ranks(ranks: torch.Tensor) -> dict[str, float]:
    """R@1/5/10 in percent, median rank (numpy convention: mean of the middle pair) and mean rank."""
    r = ranks.double()
    return {
        'R@1': float((r <= 1).double().mean() * 100),
        'R@5': float((r <= 5).double().mean() * 100),
        'R@10': float((r <= 10).double().mean() * 100),
        'MdR': float(torch.quantile(r, 0.5)),
        'MnR': float(r.mean()),
    }


def format_log_lines(results: dict[str, float]) -> list[str]:
    """The research codebases' two result lines (CLIP4Clip/STOP format), which users grep for."""
    t = {k: results[f't2v_{k}'] for k in METRIC_NAMES}
    v = {k: results[f'v2t_{k}'] for k in METRIC_NAMES}
    return [
        'Text-to-Video:',
        f"\t (metric) >>>  R@1: {t['R@1']:.1f} - R@5: {t['R@5']:.1f} - R@10: {t['R@10']:.1f} - "
        f"Median R: {t['MdR']:.1f} - Mean R: {t['MnR']:.1f}",
        'Video-to-Text:',
        f"\t (metric) >>>  V2T$R@1: {v['R@1']:.1f} - V2T$R@5: {v['R@5']:.1f} - V2T$R@10: {v['R@10']:.1f} - "
        f"V2T$Median R: {v['MdR']:.1f} - V2T$Mean R: {v['MnR']:.1f}",
    ]


class RetrievalMetrics(Metric):
    """Text↔video retrieval over a whole evaluation set.

    Accumulates caption and video embeddings with their global ids; torchmetrics gathers them from every rank
    at ``compute()``. Rows seen twice (sampler or streaming padding) are dropped by id. ``compute()`` returns
    text→video R@1 (Composer logs it as ``metrics/<label>/t2v_R@1``); every number is kept in ``results``
    for the `RetrievalLogger` callback.
    """

    full_state_update = False

    def __init__(self, chunk_size: int = 4096, **kwargs) -> None:
        super().__init__(**kwargs)
        self.chunk_size = chunk_size
        self.results: dict[str, float] = {}
        for name in ('text', 'video', 'text_video_index', 'text_caption_index', 'video_index'):
            self.add_state(name, default=[], dist_reduce_fx='cat')

    def update(
        self,
        text: torch.Tensor,
        video: torch.Tensor,
        text_video_index: torch.Tensor,
        text_caption_index: torch.Tensor,
        video_index: torch.Tensor,
    ) -> None:
        """Add a batch: ``text [K, D]`` with its video ids and caption numbers, ``video [B, D]`` with ids."""
        self.text.append(text.detach().float())
        self.video.append(video.detach().float())
        self.text_video_index.append(text_video_index.detach().long())
        self.text_caption_index.append(text_caption_index.detach().long())
        self.video_index.append(video_index.detach().long())

    def compute(self) -> torch.Tensor:
        text, video = dim_zero_cat(self.text), dim_zero_cat(self.video)
        text_vid, text_cap = dim_zero_cat(self.text_video_index), dim_zero_cat(self.text_caption_index)
        vid = dim_zero_cat(self.video_index)
        video_ids, first = _unique_first(vid)
        video = video[first]
        caption_key = torch.stack([text_vid, text_cap], dim=1)
        _, first_text = _unique_first(caption_key)
        text, text_vid = text[first_text], text_vid[first_text]
        column = torch.searchsorted(video_ids, text_vid)
        column = column.clamp(max=max(len(video_ids) - 1, 0))
        if len(video_ids) == 0 or bool((video_ids[column] != text_vid).any()):
            raise ValueError('evaluation captions refer to videos that were never encoded')
        t2v, v2t = retrieval_ranks(text, video, column, self.chunk_size)
        results = {f't2v_{k}': v for k, v in summarize_ranks(t2v).items()}
        results.update({f'v2t_{k}': v for k, v in summarize_ranks(v2t).items()})
        results.update({'num_texts': float(len(text)), 'num_videos': float(len(video))})
        self.results = results
        return torch.tensor(results['t2v_R@1'])


def _unique_first(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique keys (rows if 2-D) and the index of each key's first occurrence."""
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    positions = torch.arange(len(inverse), device=keys.device)
    first = torch.full((len(unique),), len(inverse), dtype=torch.long, device=keys.device)
    first = first.scatter_reduce(0, inverse, positions, reduce='amin')
    return unique, first


def _check_finite(sim: torch.Tensor, kind: str, offset: int) -> None:
    bad = ~torch.isfinite(sim)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0]) + offset
        raise ValueError(f'non-finite similarity for {kind} query {row}: its embedding contains NaN or inf')
