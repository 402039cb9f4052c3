"""RetrievalMetrics: a torchmetrics Metric that gathers eval embeddings and scores them exactly (`ranking`)."""

from __future__ import annotations

import logging

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from tempme_composer.metrics.ranking import NonFiniteScoreError, TieMode, caption_topk, check_tie_mode
from tempme_composer.metrics.summary import embedding_metrics

__all__ = ['RetrievalMetrics']

log = logging.getLogger(__name__)


class RetrievalMetrics(Metric):
    """Text↔video retrieval over a whole evaluation set.

    Accumulates caption and video embeddings with their global ids; torchmetrics gathers them from every rank
    at ``compute()``. Rows seen twice (sampler or streaming padding) are dropped by id, and captions and videos
    are sorted by id, so the numbers do not depend on the number of ranks or on batch order. ``compute()``
    returns text→video R@1 (Composer logs it as ``metrics/<label>/t2v_R@1``); every number is kept in
    ``results``: ``{t2v,v2t}_{R@1,R@5,R@10,MdR,MnR}``, ``num_texts``, ``num_videos`` and, with ``dsl``, the
    same ten under ``dsl_``. Conventions (ties, medians, group-level video→text): `ranking`.

    After ``compute()``: ``text_ids [Q, 2]`` (video_index, caption_index) and ``video_ids [V]`` in the order
    used, `similarity_matrix` and `per_query` for analysis.

    Args:
        tie_mode: ``'pessimistic'`` (default; a tie counts against the ground truth), ``'optimistic'`` or
            ``'reference'`` (the research code's counting, to compare with published tables).
        dsl: also report dual-softmax re-ranked metrics (``dsl_…`` keys); the raw ones are always reported.
        chunk_size: queries scored at once (default: about 2**25 scores per block).
        dsl_scale: logit scale applied before the dual softmax. Default: ``100.0``, as in the references.
        multi_sentence: which research path ``'reference'`` reproduces for text→video; default: more captions
            than videos.
    """

    full_state_update = False

    def __init__(
        self,
        tie_mode: TieMode = 'pessimistic',
        dsl: bool = False,
        chunk_size: int | None = None,
        *,
        dsl_scale: float = 100.0,
        multi_sentence: bool | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_tie_mode(tie_mode)
        self.tie_mode = tie_mode
        self.dsl = dsl
        self.chunk_size = chunk_size
        self.dsl_scale = dsl_scale
        self.multi_sentence = multi_sentence
        for name in ('text', 'video', 'text_video_index', 'text_caption_index', 'video_index'):
            self.add_state(name, default=[], dist_reduce_fx='cat')
        self._clear_cache()

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
        video_ids, first = _unique_first(dim_zero_cat(self.video_index))
        video = video[first]
        text_ids, first_text = _unique_first(torch.stack([text_vid, text_cap], dim=1))
        text = text[first_text]
        column = torch.searchsorted(video_ids, text_ids[:, 0].contiguous())
        column = column.clamp(max=max(len(video_ids) - 1, 0))
        if len(video_ids) == 0 or bool((video_ids[column] != text_ids[:, 0]).any()):
            raise ValueError('evaluation captions refer to videos that were never encoded')
        self.text_ids, self.video_ids = text_ids.cpu(), video_ids.cpu()
        self._text, self._video, self._column = text, video, column
        try:
            results = embedding_metrics(
                text,
                video,
                column,
                self.tie_mode,
                multi_sentence=self.multi_sentence,
                chunk_size=self.chunk_size,
                dsl=self.dsl,
                dsl_scale=self.dsl_scale,
            )
        except NonFiniteScoreError as err:
            what = (
                f'caption (video_index={int(self.text_ids[err.index, 0])}, '
                f'caption_index={int(self.text_ids[err.index, 1])})'
                if err.kind == 'caption'
                else f'video (video_index={int(self.video_ids[err.index])})'
            )
            raise ValueError(f'non-finite similarity for {err.kind} query {err.index}, {what}') from err
        results.update({'num_texts': float(len(text)), 'num_videos': float(len(video))})
        self.results = results
        return torch.tensor(results['t2v_R@1'])

    def reset(self) -> None:
        super().reset()
        self._clear_cache()

    def similarity_matrix(self) -> torch.Tensor:
        """The fp32 caption × video cosine matrix ``[Q, V]`` on the CPU, rows/columns in ``text_ids``/``video_ids``
        order. Materialises Q·V floats: call it only on request."""
        text, video = self._computed_embeddings()
        sim = torch.empty(len(text), len(video), dtype=torch.float32)
        step = max(1, 2**25 // max(len(video), 1)) if self.chunk_size is None else self.chunk_size
        for s in range(0, len(text), step):
            sim[s : s + step] = (text[s : s + step] @ video.t()).cpu()
        return sim

    def per_query(self, topk: int = 5) -> dict[str, torch.Tensor]:
        """Per caption (``text_ids`` order), computed in chunks:

        ``video_index``/``caption_index`` ``[Q]``; ``rank`` ``[Q]`` (text→video, 1-based, in ``tie_mode``;
        ``'reference'`` gives the pessimistic rank, the last position it collects); ``ties`` ``[Q]`` (videos
        scoring exactly like the ground truth, itself included); ``topk_video_index`` ``[Q, min(topk, V)]``
        (video ids, best first).
        """
        text, video = self._computed_embeddings()
        counts, top = caption_topk(text, video, self._column, topk, chunk_size=self.chunk_size)
        return {
            'video_index': self.text_ids[:, 0].clone(),
            'caption_index': self.text_ids[:, 1].clone(),
            'rank': counts.ranks('optimistic' if self.tie_mode == 'optimistic' else 'pessimistic'),
            'ties': counts.ties,
            'topk_video_index': self.video_ids[top],
        }

    def _computed_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._text is None or self._video is None:
            raise RuntimeError('call compute() before similarity_matrix() or per_query()')
        return self._text, self._video

    def _clear_cache(self) -> None:
        self.results: dict[str, float] = {}
        self.text_ids: torch.Tensor | None = None
        self.video_ids: torch.Tensor | None = None
        self._text: torch.Tensor | None = None
        self._video: torch.Tensor | None = None
        self._column: torch.Tensor | None = None


def _unique_first(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique keys (rows if 2-D) and the index of each key's first occurrence."""
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    positions = torch.arange(len(inverse), device=keys.device)
    first = torch.full((len(unique),), len(inverse), dtype=torch.long, device=keys.device)
    first = first.scatter_reduce(0, inverse, positions, reduce='amin')
    return unique, first
