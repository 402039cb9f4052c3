"""Symmetric InfoNCE over the global batch (CLIP/CLIP4Clip contrastive loss).

Embeddings from every rank are all-gathered with autograd-aware collectives, so each caption is contrasted
with every video of the global batch. Every rank computes the same global loss; the gather's backward sums
the gradient of each rank's slice over ranks (a factor world_size), which DDP's gradient averaging divides
out again, so 2 ranks × batch b give exactly the gradient of 1 rank × batch 2b. The gather is torch's
functional collective where torch has one, else the older ``torch.distributed.nn.functional.all_gather``
(deprecated where the functional one exists): the same rows and, bit for bit, the same loss and gradients
(docs/reference/composer.md, DDP item 5).

Similarity, softmax and loss always run in fp32: autocast is switched off inside (under AMP a matmul of
fp32 inputs would otherwise run in fp16/bf16).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F

__all__ = ['gather_with_grad', 'gather_no_grad', 'infonce_of_gathered', 'symmetric_infonce']

log = logging.getLogger(__name__)


def _functional_all_gather() -> Callable[[torch.Tensor, int, Any], torch.Tensor] | None:
    """torch's autograd-aware functional all-gather under its current name, or None where torch has none.

    torch 2.15 calls it ``all_gather_single_autograd`` and deprecates the older ``all_gather_tensor_autograd``
    that torch 2.7 has; both return ``[world * b, ...]`` in rank order and reduce-scatter (sum) the gradient.
    """
    try:
        from torch.distributed import _functional_collectives as functional
    except ImportError:  # pragma: no cover - a torch built without the functional collectives
        return None
    return getattr(functional, 'all_gather_single_autograd', None) or getattr(
        functional, 'all_gather_tensor_autograd', None
    )


_all_gather_autograd = _functional_all_gather()


def _world() -> int:
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return 1
    return torch_dist.get_world_size()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks in rank order; gradients flow back to each rank's own slice."""
    if _world() == 1:
        return x
    if _all_gather_autograd is not None:
        return _all_gather_autograd(x.contiguous(), 0, torch_dist.group.WORLD)
    from torch.distributed.nn.functional import all_gather  # deprecated where the functional form exists

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) from all ranks in rank order, without autograd."""
    if _world() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_world())]
    torch_dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def infonce_of_gathered(
    all_text: torch.Tensor, all_video: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE of already gathered ``[N, D]`` embeddings (row i of each is a positive pair), in fp32."""
    with torch.autocast(device_type=all_text.device.type, enabled=False):
        logits = logit_scale.float() * all_text.float() @ all_video.float().t()  # [N, N]; row = caption
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def symmetric_infonce(text: torch.Tensor, video: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of text→video and video→text cross-entropy over the global batch.

    Args:
        text: ``[b, D]`` this rank's L2-normalised text embeddings; row i is paired with ``video[i]``.
        video: ``[b, D]`` this rank's L2-normalised video embeddings.
        logit_scale: scalar temperature multiplier (``exp`` of CLIP's learned log scale).

    Returns:
        Scalar loss in fp32 (also under autocast), identical on every rank.
    """
    all_text = gather_with_grad(text.float())  # [N, D], N = global batch
    all_video = gather_with_grad(video.float())  # [N, D]
    return infonce_of_gathered(all_text, all_video, logit_scale)
