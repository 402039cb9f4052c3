"""Pure text↔video ranking: exact ranks from a similarity matrix or from embeddings, in bounded memory.

No torch.distributed, no Composer. Inputs are a caption × video similarity matrix ``sim [Q, V]`` (or the
L2-normalised embeddings it comes from) and explicit labels ``text_to_video [Q]``: the video column each
caption describes. Order and contiguity of captions do not matter (docs/reference/evaluation-protocol.md,
worked case T13); every video needs at least one caption.

Conventions (docs/reference/evaluation-protocol.md):

* **Queries.** Text→video ranks every caption against all videos. Video→text ranks each video against the
  caption *groups*: a group scores its best caption, so a video query is at rank k when k − 1 other videos
  own a caption that beats the query's best own caption (the research codebases' group-max rule,
  #group-max-rule, T9).
* **Counts.** For each query we count the candidates scoring strictly above the ground truth (``greater``)
  and those scoring exactly the same, the ground truth included (``ties`` ≥ 1): `RankCounts`. Every tie
  mode derives from these two numbers, so all of them are computed in the same chunked pass.
* **Tie modes** (ranks are 1-based):

  - ``'pessimistic'`` (default): rank = ``greater + ties`` = #candidates scoring ≥ the ground truth. A tie
    counts against the ground truth, so a collapsed model (all scores equal) gets the worst rank, never a
    perfect one.
  - ``'optimistic'``: rank = ``greater + 1``.
  - ``'reference'``: reproduces the research code's numbers (CLIP4Clip ``compute_metrics``): a query tied
    with m other candidates contributes all m + 1 ranks ``greater + 1 … greater + ties``, and the
    denominator grows (1,012 ranks on MSR-VTT 1k-A video→text, T19); averaging median. For the multi-sentence
    text→video path (more captions than videos) it follows ``tensor_text_to_video_metrics`` instead: one rank
    per caption, the *lower* median (``torch.median``) and R@K rounded to float32 (T5, T8, T9). That path's
    tie order comes from an unstable argsort and cannot be reproduced; we take the pessimistic position.

* **Summaries** (`tempme_composer.metrics.summary`): R@1/5/10 in percent, median rank with numpy's
  convention (mean of the two middle ranks for an even count, so it can be x.5) in every mode except the
  reference multi-sentence text→video path above, mean rank.
* **Non-finite scores** (NaN, ±inf) raise `NonFiniteScoreError` (a ValueError) naming the query, in every
  mode: the research code silently drops such queries (T7); we do not reproduce that.
* **Memory.** Scores are computed in fp32 blocks of ``chunk_size`` queries against the whole gallery, never
  the full Q × V matrix; the default chunk keeps a block at about 2**25 elements (128 MiB), and at most
  three blocks live at once (scores, comparison scratch, and DSL weights or the captions gathered per
  video for the group maxima).
* **DSL** (dual softmax, TS2-Net style, #dsl): ``s · softmax_text(s)`` with ``s = scale · sim``, the softmax
  running over all captions of each video column. Computed in two chunked passes (column log-sum-exp, then
  ranking). Video→text DSL ranks use the same re-ranked matrix with the group-max rule, as TS2-Net does
  (so they are close to the raw ones).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    'TIE_MODES',
    'TieMode',
    'NonFiniteScoreError',
    'RankCounts',
    'rank_counts',
    'embedding_rank_counts',
    'caption_topk',
    'dual_softmax',
    'retrieval_ranks',
    'check_tie_mode',
    'is_multi_sentence',
    'rank_intervals',
]

TieMode = Literal['pessimistic', 'optimistic', 'reference']
TIE_MODES: tuple[str, ...] = ('pessimistic', 'optimistic', 'reference')
CHUNK_ELEMENTS = 2**25  # default block size in scores: 128 MiB of fp32

Blocks = Callable[[int, int], torch.Tensor]


class NonFiniteScoreError(ValueError):
    """A NaN or infinite similarity; ``kind`` is ``'caption'`` or ``'video'``, ``index`` the query's row."""

    def __init__(self, kind: str, index: int) -> None:
        super().__init__(
            f'non-finite similarity for {kind} query {index}: its embedding or score holds NaN or inf'
        )
        self.kind = kind
        self.index = index


@dataclass(frozen=True)
class RankCounts:
    """Per query: ``greater`` = candidates scoring strictly above the ground truth, ``ties`` = candidates
    scoring exactly the same, the ground truth included (≥ 1). Both int64 ``[N]`` on the CPU."""

    greater: torch.Tensor
    ties: torch.Tensor

    def __len__(self) -> int:
        return len(self.greater)

    def ranks(self, tie_mode: TieMode = 'pessimistic') -> torch.Tensor:
        """1-based ranks: one per query, or for ``'reference'`` every tied position (``sum(ties)`` ranks)."""
        lo, hi = rank_intervals(self, tie_mode)
        if tie_mode != 'reference':
            return lo
        size = hi - lo + 1
        start = torch.repeat_interleave(lo, size)
        offset = torch.arange(len(start)) - torch.repeat_interleave(torch.cumsum(size, 0) - size, size)
        return start + offset


# --------------------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------------------


def rank_counts(
    sim: torch.Tensor, text_to_video: torch.Tensor, *, chunk_size: int | None = None
) -> tuple[RankCounts, RankCounts]:
    """Text→video and video→text `RankCounts` from a similarity matrix.

    Args:
        sim: ``[Q, V]`` scores, rows = captions, columns = videos (any float dtype; compared as given).
        text_to_video: ``[Q]`` int, the column of each caption's video; every video needs a caption.
        chunk_size: queries per block (default: about 2**25 scores per block).

    Returns:
        ``(t2v [Q], v2t [V])``.

    Raises:
        ValueError: bad labels, a video without caption, or (`NonFiniteScoreError`) a NaN/inf score.
    """
    Q, V = sim.shape
    owner = _check_labels(text_to_video, Q, V)
    return (
        _t2v_counts(lambda s, e: sim[s:e], Q, V, owner, chunk_size),
        _v2t_counts(lambda s, e: sim[:, s:e].t(), Q, V, owner, chunk_size),
    )


def embedding_rank_counts(
    text: torch.Tensor,
    video: torch.Tensor,
    text_to_video: torch.Tensor,
    *,
    chunk_size: int | None = None,
    dsl: bool = False,
    dsl_scale: float = 100.0,
) -> tuple[RankCounts, RankCounts]:
    """`rank_counts` of ``text @ video.T`` (or its DSL re-ranking) without materialising the matrix.

    Args:
        text: ``[Q, D]`` caption embeddings (L2-normalised for cosine scores); cast to fp32.
        video: ``[V, D]`` video embeddings, on the same device.
        text_to_video: ``[Q]`` int, the row of ``video`` each caption describes.
        chunk_size: queries per block; memory is about ``3 · chunk_size · max(Q, V)`` floats.
        dsl: rank the dual-softmax matrix ``s · softmax_text(s)``, ``s = dsl_scale · text @ video.T``.
        dsl_scale: logit scale applied before DSL (the references use 100).
    """
    text, video, owner = _prepare(text, video, text_to_video)
    Q, V = text.shape[0], video.shape[0]
    if not dsl:
        rows, cols = _product_blocks(text, video, 'caption'), _product_blocks(video, text, 'video')
        return _t2v_counts(rows, Q, V, owner, chunk_size), _v2t_counts(cols, Q, V, owner, chunk_size)
    lse = _column_logsumexp(_product_blocks(text, video, 'caption', dsl_scale), Q, V, chunk_size)
    rows = _product_blocks(text, video, 'caption', dsl_scale, lse[None, :])
    cols = _product_blocks(video, text, 'video', dsl_scale, lse[:, None], slice_lse=True)
    return _t2v_counts(rows, Q, V, owner, chunk_size), _v2t_counts(cols, Q, V, owner, chunk_size)


def caption_topk(
    text: torch.Tensor,
    video: torch.Tensor,
    text_to_video: torch.Tensor,
    k: int = 5,
    *,
    chunk_size: int | None = None,
) -> tuple[RankCounts, torch.Tensor]:
    """Per caption: its text→video `RankCounts` and the columns of its ``k`` best videos (``[Q, min(k, V)]``,
    best first; order among exactly tied scores is unspecified)."""
    text, video, owner = _prepare(text, video, text_to_video)
    Q, V = text.shape[0], video.shape[0]
    top = torch.empty(Q, min(k, V), dtype=torch.long)
    products = _product_blocks(text, video, 'caption')

    def rows(s: int, e: int) -> torch.Tensor:
        block = products(s, e)
        top[s:e] = block.topk(top.shape[1], dim=1).indices.cpu()
        return block

    return _t2v_counts(rows, Q, V, owner, chunk_size), top


def dual_softmax(sim: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """DSL re-ranking of a ``[Q, V]`` matrix: ``s · softmax(s over captions, per video)``, ``s = scale · sim``."""
    logits = sim.float() * scale
    return logits * torch.softmax(logits, dim=0)


def retrieval_ranks(
    text: torch.Tensor,
    video: torch.Tensor,
    text_to_video: torch.Tensor,
    chunk_size: int | None = None,
    tie_mode: TieMode = 'pessimistic',
    multi_sentence: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text→video and video→text 1-based ranks from embeddings (chunked, see `embedding_rank_counts`).

    One rank per query (``[Q]``, ``[V]``), except ``tie_mode='reference'``, which returns every rank the research
    code collects (a query tied with m candidates gives m + 1), and one per caption for multi-sentence
    text→video (``multi_sentence``: default = more captions than videos).
    """
    check_tie_mode(tie_mode)
    t2v, v2t = embedding_rank_counts(text, video, text_to_video, chunk_size=chunk_size)
    t2v_mode = 'pessimistic' if tie_mode == 'reference' and is_multi_sentence(t2v, v2t, multi_sentence) else tie_mode
    return t2v.ranks(t2v_mode), v2t.ranks(tie_mode)


# --------------------------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------------------------


def check_tie_mode(tie_mode: str) -> None:
    """Refuse a ``tie_mode`` outside `TIE_MODES` with one line naming the choices."""
    if tie_mode not in TIE_MODES:
        raise ValueError(f'tie_mode must be one of {TIE_MODES}, got {tie_mode!r}')


def is_multi_sentence(t2v: RankCounts, v2t: RankCounts, multi_sentence: bool | None) -> bool:
    """Whether videos have several captions: as given, else when the two directions rank different counts."""
    return len(t2v) != len(v2t) if multi_sentence is None else multi_sentence


def _check_labels(text_to_video: torch.Tensor, Q: int, V: int) -> torch.Tensor:
    """Validated labels as int64 on the CPU."""
    labels = torch.as_tensor(text_to_video).long().cpu().flatten()
    if Q == 0 or V == 0:
        raise ValueError(
            f'retrieval needs at least one caption and one video, got {Q} captions and {V} videos'
        )
    if labels.numel() != Q or int(labels.min()) < 0 or int(labels.max()) >= V:
        raise ValueError(
            f'text_to_video must hold {Q} video columns in [0, {V}), got {labels.tolist()[:10]}...'
        )
    per_video = torch.bincount(labels, minlength=V)
    if bool((per_video == 0).any()):
        missing = torch.nonzero(per_video == 0).flatten().tolist()[:10]
        raise ValueError(f'videos at columns {missing} have no caption, so video→text is undefined for them')
    return labels


def _prepare(
    text: torch.Tensor, video: torch.Tensor, text_to_video: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 embeddings and validated labels; a NaN/inf embedding is reported as its own query."""
    text, video = text.float(), video.float()
    owner = _check_labels(text_to_video, text.shape[0], video.shape[0])
    _check_finite(text, 'caption', 0)
    _check_finite(video, 'video', 0)
    return text, video, owner


def _chunk(chunk_size: int | None, width: int) -> int:
    if chunk_size is None:
        return max(1, CHUNK_ELEMENTS // max(width, 1))
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be positive, got {chunk_size}')
    return chunk_size


def _check_finite(block: torch.Tensor, kind: str, offset: int) -> None:
    if math.isfinite(float(block.sum())):  # cheap screen; an overflowing sum falls through to the exact test
        return
    bad = ~torch.isfinite(block)
    if bool(bad.any()):
        raise NonFiniteScoreError(kind, int(torch.nonzero(bad)[0, 0]) + offset)


def _buffer(cache: dict, key: str, shape: tuple[int, int], like: torch.Tensor, dtype=None) -> torch.Tensor:
    """A reused ``[rows, cols]`` scratch tensor: fresh allocations page-fault, which costs more than the math."""
    buf = cache.get(key)
    if buf is None or buf.shape[0] < shape[0] or buf.shape[1] != shape[1]:
        buf = cache[key] = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    return buf[: shape[0]]


def _product_blocks(
    a: torch.Tensor,
    b: torch.Tensor,
    kind: str,
    scale: float | None = None,
    lse: torch.Tensor | None = None,
    slice_lse: bool = False,
) -> Blocks:
    """Blocks ``a[s:e] @ b.T`` (fp32, checked finite); with ``scale``, ``scale ·`` that; with ``lse`` too, the
    DSL weights ``x · exp(x − lse)`` (``lse`` broadcast over the block; ``lse[s:e]`` with ``slice_lse``)."""
    cache: dict[str, torch.Tensor] = {}

    def block(s: int, e: int) -> torch.Tensor:
        out = torch.matmul(a[s:e], b.t(), out=_buffer(cache, 'product', (e - s, b.shape[0]), a))
        if scale is not None:
            out.mul_(scale)
        _check_finite(out, kind, s)
        if lse is None:
            return out
        weights = _buffer(cache, 'dsl', out.shape, out)
        torch.sub(out, lse[s:e] if slice_lse else lse, out=weights)
        return weights.exp_().mul_(out)

    return block


def _count(block: torch.Tensor, positive: torch.Tensor, cache: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: entries above and equal to ``positive [n, 1]``. Comparisons land in a float scratch and are
    summed there (exact integers below 2**24; float64 beyond), several times faster than summing bools."""
    dtype = torch.float32 if block.shape[1] < 2**24 else torch.float64
    scratch = _buffer(cache, 'compare', tuple(block.shape), block, dtype)
    greater = torch.gt(block, positive, out=scratch).sum(1)
    ties = torch.eq(block, positive, out=scratch).sum(1)
    return greater.long().cpu(), ties.long().cpu()


def _t2v_counts(rows: Blocks, Q: int, V: int, owner: torch.Tensor, chunk_size: int | None) -> RankCounts:
    greater, ties = torch.empty(Q, dtype=torch.long), torch.empty(Q, dtype=torch.long)
    cache: dict[str, torch.Tensor] = {}
    step = _chunk(chunk_size, V)
    for s in range(0, Q, step):
        e = min(s + step, Q)
        block = rows(s, e)  # [q, V]
        _check_finite(block, 'caption', s)
        positive = block.gather(1, owner[s:e, None].to(block.device))
        greater[s:e], ties[s:e] = _count(block, positive, cache)
    return RankCounts(greater, ties)


def _v2t_counts(cols: Blocks, Q: int, V: int, owner: torch.Tensor, chunk_size: int | None) -> RankCounts:
    """Group-level ranks: ``cols(s, e)`` gives videos ``s:e`` against every caption, ``[v, Q]``.

    A video's group score is its best caption. With several captions per video the groups are read through a
    ``[V, L]`` table of each video's captions (`_caption_table`) and reduced densely — a gather and an
    ``amax``, no atomics, the same deterministic code on CPU and GPU. Only when padding would make that table
    much larger than the captions (a few videos with far more captions than the rest) does it fall back to a
    scatter-max.
    """
    greater, ties = torch.empty(V, dtype=torch.long), torch.empty(V, dtype=torch.long)
    cache: dict[str, torch.Tensor] = {}
    table = _caption_table(owner, V)  # [V, L]
    # every video has >= 1 caption, so Q == V means exactly one each: no group max needed
    one_caption_each = Q == V
    dense = table.numel() <= 2 * Q
    step = _chunk(chunk_size, max(Q, table.numel() if dense else V))
    flat = index = None
    for s in range(0, V, step):
        e = min(s + step, V)
        block = cols(s, e)  # [v, Q]
        _check_finite(block, 'video', s)
        if one_caption_each:
            groups = block  # column q is the group of video owner[q]
            positive = block.gather(1, table[s:e, :1].to(block.device))
        else:
            if dense:
                flat = table.flatten().to(block.device) if flat is None else flat
                members = torch.index_select(block, 1, flat, out=_buffer(cache, 'members', (e - s, flat.numel()), block))
                groups = torch.amax(members.view(e - s, V, -1), 2, out=_buffer(cache, 'groups', (e - s, V), block))
            else:
                if index is None or index.shape[0] != e - s:
                    index = owner.to(block.device)[None, :].expand(e - s, Q)
                groups = _buffer(cache, 'groups', (e - s, V), block).fill_(-math.inf)
                groups.scatter_reduce_(1, index, block, 'amax')  # [v, V]: best caption of each video
            positive = groups[:, s:e].diagonal()[:, None]
        greater[s:e], ties[s:e] = _count(groups, positive, cache)
    return RankCounts(greater, ties)


def _caption_table(owner: torch.Tensor, V: int) -> torch.Tensor:
    """``[V, L]`` caption indices of each video (``L`` = most captions of one video); a shorter row repeats its
    last caption, which leaves the row's maximum unchanged."""
    counts = torch.bincount(owner, minlength=V)
    order = torch.argsort(owner, stable=True)  # captions grouped by video
    starts = torch.cumsum(counts, 0) - counts
    offsets = torch.minimum(torch.arange(int(counts.max()))[None, :], counts[:, None] - 1)
    return order[starts[:, None] + offsets]


def _column_logsumexp(rows: Blocks, Q: int, V: int, chunk_size: int | None) -> torch.Tensor:
    lse = None
    step = _chunk(chunk_size, V)
    for s in range(0, Q, step):
        part = rows(s, min(s + step, Q)).logsumexp(0)
        lse = part if lse is None else torch.logaddexp(lse, part)
    assert lse is not None
    return lse


def rank_intervals(counts: RankCounts, tie_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's collected ranks as the integer interval ``[lo, hi]``."""
    check_tie_mode(tie_mode)
    first, last = counts.greater + 1, counts.greater + counts.ties
    if tie_mode == 'pessimistic':
        return last, last
    if tie_mode == 'optimistic':
        return first, first
    return first, last
