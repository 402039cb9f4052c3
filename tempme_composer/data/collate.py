"""Samples -> batches, and eval batches -> microbatches that keep every caption with its video.

Batch layouts (B videos, T = max_frames, R = image_resolution, L = max_words):

- train: ``video [B,T,R,R,3]`` uint8, channels last (resized and centre-cropped, zero padding; the model
  normalises it on its device, channels first, with :func:`~tempme_composer.data.uint8_frames.normalize_frames`),
  ``video_mask [B,T]`` int64,
  ``video_index [B]`` int64, ``text_ids [B,L]`` int64, ``text_mask [B,L]`` int64.
- eval: the same video keys plus ``text_ids/text_mask [K_total,L]``, ``text_video_index [K_total]`` (the
  ``video_index`` of each caption's video) and ``text_caption_index [K_total]`` (0..K-1 within the video).

``video_index`` is the global MDS sample index; it lets the metric drop the duplicates that streaming pads
each rank's eval partition with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

from tempme_composer.data.frame_pool import PooledFrames

__all__ = [
    'TEXT_KEYS',
    'VIDEO_KEYS',
    'StackFrames',
    'collate_eval',
    'collate_train',
    'num_videos',
    'split_eval_batch',
    'split_eval_batch_by_size',
]

#: A loader's frame stacker (:meth:`~tempme_composer.data.frame_pool.SharedFramePool.stack`).
StackFrames = Callable[[list[torch.Tensor]], 'torch.Tensor | PooledFrames']

#: Eval-batch keys with one row per video, and with one row per caption.
VIDEO_KEYS = ('video', 'video_mask', 'video_index')
TEXT_KEYS = ('text_ids', 'text_mask', 'text_video_index', 'text_caption_index')


def _stack_rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``, written straight into shared memory in a loader worker (torch's default_collate does
    that; a plain stack there costs a second copy of the batch on its way to the main process)."""
    return default_collate(tensors)


def _stack_video(
    samples: Sequence[Mapping[str, torch.Tensor]], stack_frames: StackFrames | None
) -> torch.Tensor | PooledFrames:
    """The samples' frames stacked (through the loader's frame pool when it has one)."""
    frames = [s['video'] for s in samples]
    return _stack_rows(frames) if stack_frames is None else stack_frames(frames)


def collate_train(
    samples: Sequence[Mapping[str, torch.Tensor]], stack_frames: StackFrames | None = None
) -> dict[str, torch.Tensor]:
    """Stack training samples: every key gets a leading batch dimension B.

    ``stack_frames``: the loader's :meth:`SharedFramePool.stack` (frames into a reused shared-memory buffer).
    """
    if not samples:
        raise ValueError('collate_train got an empty list of samples')
    batch: dict[str, Any] = {'video': _stack_video(samples, stack_frames)}
    for k in ('video_mask', 'video_index', 'text_ids', 'text_mask'):
        batch[k] = _stack_rows([s[k] for s in samples])
    return batch


def collate_eval(
    samples: Sequence[Mapping[str, torch.Tensor]], stack_frames: StackFrames | None = None
) -> dict[str, torch.Tensor]:
    """Stack videos ([B, ...]) and concatenate every caption ([K_total, L]) with its video's index."""
    if not samples:
        raise ValueError('collate_eval got an empty list of samples')
    batch: dict[str, Any] = {'video': _stack_video(samples, stack_frames)}
    for k in VIDEO_KEYS:
        if k != 'video':
            batch[k] = _stack_rows([s[k] for s in samples])
    counts = torch.tensor([s['text_ids'].shape[0] for s in samples], dtype=torch.long)  # [B]
    batch['text_ids'] = torch.cat([s['text_ids'] for s in samples])  # [K_total, L]
    batch['text_mask'] = torch.cat([s['text_mask'] for s in samples])  # [K_total, L]
    batch['text_video_index'] = torch.repeat_interleave(batch['video_index'], counts)  # [K_total]
    batch['text_caption_index'] = torch.cat([torch.arange(int(k), dtype=torch.long) for k in counts])
    return batch


def _split_eval(batch: Mapping[str, torch.Tensor], bounds: Sequence[int]) -> list[dict[str, torch.Tensor]]:
    """Cut an eval batch at video positions ``bounds`` (0 = b0 < b1 < ... = B); captions follow videos."""
    unknown = sorted(set(batch) - set(VIDEO_KEYS) - set(TEXT_KEYS))
    if unknown:
        raise ValueError(
            f'split_eval_batch does not know how to split keys {unknown}; expected {VIDEO_KEYS + TEXT_KEYS}'
        )
    num_videos = batch['video'].shape[0]
    # collate_eval lays captions out video by video, each block starting at caption index 0. Using the block
    # starts (not video_index values) stays correct when a padded batch holds the same video twice.
    starts = torch.nonzero(batch['text_caption_index'] == 0).flatten().tolist()
    if len(starts) != num_videos:
        raise ValueError(
            f'eval batch has {num_videos} videos but {len(starts)} caption blocks; '
            'was it built by collate_eval?'
        )
    text_bounds = starts + [batch['text_ids'].shape[0]]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        part = {k: batch[k][lo:hi] for k in VIDEO_KEYS}
        part.update({k: batch[k][text_bounds[lo] : text_bounds[hi]] for k in TEXT_KEYS})
        out.append(part)
    return out


def split_eval_batch(
    batch: Mapping[str, torch.Tensor], num_microbatches: int
) -> list[dict[str, torch.Tensor]]:
    """Split an eval batch into ``min(num_microbatches, B)`` parts by video, each video keeping its captions.

    Composer's default split would cut the ``[B, ...]`` video rows and the ``[K_total, ...]`` caption rows
    at the same row numbers, separating captions from their videos. Part sizes differ by at most one.
    """
    if num_microbatches < 1:
        raise ValueError(f'num_microbatches must be >= 1, got {num_microbatches}')
    num_videos = batch['video'].shape[0]
    parts = min(num_microbatches, num_videos)
    bounds = [round(i * num_videos / parts) for i in range(parts + 1)] if parts else [0, 0]
    return _split_eval(batch, bounds)


def split_eval_batch_by_size(
    batch: Mapping[str, torch.Tensor], microbatch_size: int | float
) -> list[dict[str, torch.Tensor]]:
    """Composer's ``DataSpec.split_batch`` signature: microbatches of ``microbatch_size`` videos each."""
    if isinstance(microbatch_size, float):
        if not microbatch_size.is_integer():
            raise ValueError(f'eval batches split by whole videos; got microbatch_size={microbatch_size}')
        microbatch_size = int(microbatch_size)
    if microbatch_size < 1:
        raise ValueError(f'microbatch_size must be >= 1, got {microbatch_size}')
    num_videos = batch['video'].shape[0]
    bounds = list(range(0, num_videos, microbatch_size)) + [num_videos]
    return _split_eval(batch, bounds)


def num_videos(batch: Mapping[str, torch.Tensor]) -> int:
    """Samples in a batch, counted in videos (an eval batch has more caption rows than videos)."""
    return int(batch['video'].shape[0])
