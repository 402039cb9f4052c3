"""RetrievalModel: the thin ComposerModel around `UnifiedModel` (forward, loss, eval, metrics)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from composer.models import ComposerModel
from torchmetrics import Metric

from tempme_composer.algorithms.grad_cache import surrogate_loss
from tempme_composer.clip.preprocess import normalize_frames
from tempme_composer.metrics.retrieval import RetrievalMetrics
from tempme_composer.model import UnifiedModel
from tempme_composer.model.loss import symmetric_infonce

__all__ = ['RetrievalModel', 'PRIMARY_METRIC']

log = logging.getLogger(__name__)

PRIMARY_METRIC = 't2v_R@1'  # model selection everywhere in this field: text→video R@1


class RetrievalModel(ComposerModel):
    """Contrastive text-video retrieval.

    Train batch: ``video`` (``uint8 [B,T,H,W,3]`` from the loader, or float32 ``[B,T,3,H,W]`` already
    CLIP-normalised), ``video_mask [B,T]``, ``text_ids [B,L]`` (caption i describes video i).
    Eval batch: the same videos plus every caption ``text_ids [K,L]`` with ``text_video_index [K]``,
    ``text_caption_index [K]`` and ``video_index [B]`` (global ids used to drop padding duplicates).
    """

    def __init__(self, model: UnifiedModel, **metric_kwargs: Any) -> None:
        super().__init__()
        self.model = model
        self.metric_kwargs = metric_kwargs  # RetrievalMetrics options: tie_mode, dsl

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Through UnifiedModel.forward, so FSDP gathers its parameters; logit_scale is consumed here, inside
        # DDP's forward, not in loss() (docs/reference/composer.md#ddp item 2). The loader's uint8 frames are
        # normalised here, before FSDP's root unit: it casts float inputs to its param dtype, as it did when
        # the loader shipped float frames.
        video = normalize_frames(batch['video'], batch['video_mask'])
        return self.model(batch['text_ids'], video, batch['video_mask'])

    def loss(self, outputs: dict[str, torch.Tensor], batch: Any, *args, **kwargs) -> torch.Tensor:
        """Symmetric InfoNCE over the global batch; under gradient accumulation (the `GradCache` algorithm put
        its cached embedding gradients in the batch) the microbatch's surrogate with the same gradient."""
        del args, kwargs  # unused
        if isinstance(batch, dict) and 'gradcache_text_grad' in batch:
            return surrogate_loss(outputs, batch)
        return symmetric_infonce(outputs['text'], outputs['video'], outputs['logit_scale'])

    def eval_forward(self, batch: dict[str, torch.Tensor], outputs: Any | None = None) -> dict[str, torch.Tensor]:
        del outputs  # eval recomputes: captions and videos are not paired one-to-one here
        return self.forward(batch)

    def get_metrics(self, is_train: bool = False) -> dict[str, Metric]:
        # No train metric: a full-matrix retrieval metric on every train batch is wasted work.
        return {} if is_train else {PRIMARY_METRIC: RetrievalMetrics(**self.metric_kwargs)}

    def update_metric(self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor], metric: Metric) -> None:
        metric.update(
            outputs['text'],
            outputs['video'],
            batch['text_video_index'],
            batch['text_caption_index'],
            batch['video_index'],
        )
