"""Symmetric InfoNCE over the global batch (CLIP/CLIP4Clip contrastive loss).

Embeddings from every rank are all-gathered with autograd-aware collectives, so each caption is contrasted
with every video of the global batch. Every rank computes the same global loss; the gather's backward sums
the gradient of each rank's slice over ranks (a factor world_size), which DDP's gradient averaging divides
out again, so 2 ranks × batch b give exactly the gradient of 1 rank × batch 2b.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather as all_gather_with_grad

__all__ = ['gather_with_grad', 'symmetric_infonce']

log = logging.getLogger(__name__)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks in rank order; gradients flow back to each rank's own slice."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() == 1:
        return x
    return torch.cat(all_gather_with_grad(x.contiguous()), dim=0)


def symmetric_infonce(text: torch.Tensor, video: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of text→video and video→text cross-entropy over the global batch.

    Args:
        text: ``[b, D]`` this rank's L2-normalised text embeddings; row i is paired with ``video[i]``.
        video: ``[b, D]`` this rank's L2-normalised video embeddings.
        logit_scale: scalar temperature multiplier (``exp`` of CLIP's learned log scale).

    Returns:
        Scalar loss in fp32, identical on every rank.
    """
    all_text = gather_with_grad(text.float())  # [N, D], N = global batch
    all_video = gather_with_grad(video.float())  # [N, D]
    logits = logit_scale.float() * all_text @ all_video.t()  # [N, N]; row = caption, column = video
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
