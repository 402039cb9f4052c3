"""GradCache: gradient accumulation for the contrastive loss that keeps every negative of the global batch.

Composer calls ``loss()`` once per microbatch, so plain accumulation would contrast each caption only with the
videos of its own microbatch. Embedding caching (Gao et al., "Scaling Deep Contrastive Learning Batch Size
under Memory Limited Setup", 2021) restores the exact global-batch gradient:

1. ``Event.BATCH_START`` (the whole per-rank batch, before Composer splits it — the split happens before
   ``BEFORE_TRAIN_BATCH``, so that event is too late to add keys): encode the batch **without a graph**, in
   microbatch-sized chunks, under the run's precision context; all-gather the embeddings over ranks, compute
   the global symmetric InfoNCE in fp32 and its gradient w.r.t. this rank's embeddings and w.r.t. the
   ``exp(logit_scale)`` output (`contrastive_embedding_grads`). Store them in the batch as extra tensors
   with leading dimension B (Composer's default ``split_batch`` then hands each microbatch its rows):
   ``gradcache_text_grad [B, D]``, ``gradcache_video_grad [B, D]``, ``gradcache_scale_grad [B]``,
   ``gradcache_loss [B]``.
2. Per microbatch, ``RetrievalModel.loss`` sees those keys and returns `surrogate_loss`: its gradient is the
   microbatch's exact share of the global gradient (``Σ text·g_text + Σ video·g_video + scale·g_scale``,
   rescaled to undo Composer's ``microbatch/batch`` loss scaling and DDP's averaging over ranks), and its
   value is the true global loss, so ``loss/train/total`` keeps its meaning.
3. ``Event.BEFORE_FORWARD``: the torch RNG state recorded before each chunk of step 1 is restored, so a
   stochastic forward (dropout) in step 2 reproduces the cached embeddings.

Cost: one extra forward without a graph per batch. Requirements: equal per-rank batch sizes (the train loader
drops the last partial batch), and the forward must return ``text``, ``video`` and ``logit_scale``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from composer.core import Algorithm, Event, State
from composer.core.precision import get_precision_context
from composer.loggers import Logger
from composer.utils import dist

from tempme_composer.model.loss import gather_no_grad, infonce_of_gathered

__all__ = ['GRADCACHE_KEYS', 'GradCache', 'contrastive_embedding_grads', 'surrogate_loss']

log = logging.getLogger(__name__)

GRADCACHE_KEYS = ('gradcache_text_grad', 'gradcache_video_grad', 'gradcache_scale_grad', 'gradcache_loss')


def contrastive_embedding_grads(
    text: torch.Tensor, video: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global loss and its gradients w.r.t. this rank's embeddings and the scale (no graph into the model).

    Args:
        text, video: ``[b, D]`` this rank's embeddings (equal ``b`` on every rank).
        scale: scalar ``exp(logit_scale)``.

    Returns:
        ``(loss, d loss/d text [b, D], d loss/d video [b, D], d loss/d scale)``, all fp32; loss and the scale
        gradient are identical on every rank.
    """
    b = text.shape[0]
    rank = dist.get_global_rank() if dist.get_world_size() > 1 else 0
    all_text = gather_no_grad(text.detach().float()).requires_grad_(True)
    all_video = gather_no_grad(video.detach().float()).requires_grad_(True)
    s = scale.detach().float().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = infonce_of_gathered(all_text, all_video, s)
        g_text, g_video, g_scale = torch.autograd.grad(loss, [all_text, all_video, s])
    mine = slice(rank * b, (rank + 1) * b)
    return loss.detach(), g_text[mine], g_video[mine], g_scale


def surrogate_loss(outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
    """Per-microbatch loss whose gradient is the microbatch's share of the cached global gradient.

    The stored gradients already carry the factors that undo Composer's ``n_micro / batch`` loss scaling and
    DDP's averaging; the value equals the global loss once Composer has scaled and summed the microbatches.
    """
    n = outputs['text'].shape[0]
    surrogate = (
        (outputs['text'].float() * batch['gradcache_text_grad']).sum()
        + (outputs['video'].float() * batch['gradcache_video_grad']).sum()
        + outputs['logit_scale'].float() * batch['gradcache_scale_grad'].sum()
    ) / n
    return surrogate - surrogate.detach() + batch['gradcache_loss'].mean()


class GradCache(Algorithm):
    """Exact global-batch contrastive gradients under gradient accumulation (see the module docstring).

    Runs at ``Event.BATCH_START`` (embedding pass) and ``Event.BEFORE_FORWARD`` (RNG replay). The recipe adds
    it when ``gradient_accumulation_steps > 1``::

        batch_size: 128                  # global
        gradient_accumulation_steps: 4   # microbatches of 128 / ranks / 4, every caption still sees 128 videos
    """

    def __init__(self) -> None:
        self._rng_states: list[Any] = []

    def __repr__(self) -> str:
        return 'GradCache()'

    def match(self, event: Event, state: State) -> bool:
        del state  # unused
        return event in (Event.BATCH_START, Event.BEFORE_FORWARD)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        del logger  # unused
        if event == Event.BEFORE_FORWARD:
            if self._rng_states:
                _set_rng_state(self._rng_states.pop(0))
            return
        self._cache(state)

    def _cache(self, state: State) -> None:
        batch = state.batch
        if not isinstance(batch, dict):
            raise TypeError(f'GradCache needs dict batches, got {type(batch).__name__}')
        model = state.model.module if state.is_model_ddp else state.model
        microbatch = state.device_train_microbatch_size
        if not isinstance(microbatch, int):
            raise ValueError(f'GradCache needs an integer device_train_microbatch_size, got {microbatch!r}')
        inputs = {k: v for k, v in batch.items() if k not in GRADCACHE_KEYS}
        b = next(iter(inputs.values())).shape[0]
        self._rng_states = []
        texts, videos, scale = [], [], None
        with torch.no_grad(), get_precision_context(state.precision, state.precision_config):
            for start in range(0, b, microbatch):
                self._rng_states.append(_get_rng_state())
                chunk = state.device.batch_to_device({k: v[start : start + microbatch] for k, v in inputs.items()})
                out = model(chunk)
                texts.append(out['text'].float())
                videos.append(out['video'].float())
                scale = out['logit_scale']
        sizes = dist.all_gather_object(b) if dist.get_world_size() > 1 else [b]
        if len(set(sizes)) != 1:
            raise ValueError(f'GradCache needs equal per-rank batch sizes, got {sizes}')
        loss, g_text, g_video, g_scale = contrastive_embedding_grads(torch.cat(texts), torch.cat(videos), scale)
        # Composer multiplies microbatch m's loss by n_m / b_avg and DDP averages over W ranks, so the stored
        # gradients carry W * b_avg (b_avg = b here: equal sizes) and the surrogate divides by n_m.
        world = dist.get_world_size()
        batch['gradcache_text_grad'] = g_text * (world * b)
        batch['gradcache_video_grad'] = g_video * (world * b)
        batch['gradcache_scale_grad'] = g_scale.expand(b).clone()  # Σ over the b rows / b per microbatch
        batch['gradcache_loss'] = loss.expand(b).clone()


def _get_rng_state() -> tuple[torch.Tensor, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(states: tuple[torch.Tensor, Any]) -> None:
    cpu, cuda = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
