"""CLIP preprocessing split in two halves: ``uint8`` crops in the loader, the normalisation on the device.

:func:`~tempme_composer.data.video.frames_to_tensor` does both halves in a loader worker and ships float32
frames: 4x the bytes of ``uint8`` through worker IPC, pinned memory and the host-to-device copy, and the float
arithmetic costs a loader core more than decoding the JPEGs (README "Data throughput"). Here the worker stops
at the resized, centre-cropped ``uint8 [T, 3, R, R]`` frames (:func:`frames_to_uint8`) and the model's input
path finishes with :func:`normalize_frames` on whatever device the batch is on.

The normalised values are bit-identical to ``frames_to_tensor``: each channel has only 256 possible inputs,
so the float arithmetic runs once, on the CPU, in the same op order (``/255``, ``-mean``, ``/std``) and the
device looks the results up. Recomputing it on the GPU would not be identical: CUDA divides by a Python
scalar as a multiplication by its reciprocal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from tempme_composer.data.video import CLIP_MEAN, CLIP_STD, _resize_center_crop

__all__ = ['clip_lookup_table', 'frames_to_uint8', 'normalize_frames']

_LUT: dict[torch.device, torch.Tensor] = {}  # per device: [3 * 256] float32


def frames_to_uint8(frames: Sequence[Image.Image | np.ndarray], resolution: int,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """The loader half of ``frames_to_tensor``: short side resized to R (bicubic), centre crop, ``uint8``.

    Args:
        frames: PIL images (any mode) or ``[H, W, 3]`` uint8 RGB arrays.
        resolution: output side R.
        out: optional contiguous uint8 ``[T, 3, R, R]`` to write into (e.g. the first T slots of a padded
            sample, which saves a copy per sample).

    Returns:
        uint8 ``[T, 3, R, R]``; ``normalize_frames`` of it equals ``frames_to_tensor(frames, R)`` exactly.
    """
    if not frames:
        raise ValueError('frames_to_uint8 needs at least one frame')
    shape = (len(frames), 3, resolution, resolution)
    if out is None:
        out = torch.empty(shape, dtype=torch.uint8)
    elif tuple(out.shape) != shape or out.dtype != torch.uint8 or not out.is_contiguous():
        raise ValueError(f'out must be a contiguous uint8 tensor of shape {shape}, got {out.dtype} '
                         f'{tuple(out.shape)}')
    target = out.numpy()  # [T, 3, R, R], shares memory with out
    for i, frame in enumerate(frames):
        if isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8 \
                and min(frame.shape[:2]) == resolution:
            crop = _center_crop_array(frame, resolution)  # stored at short side R: a slice, no PIL round trip
        else:
            image = Image.fromarray(frame) if isinstance(frame, np.ndarray) else frame
            if image.mode != 'RGB':
                image = image.convert('RGB')
            if min(image.size) == resolution:
                crop = _center_crop_array(np.asarray(image), resolution)
            else:
                crop = np.asarray(_resize_center_crop(image, resolution))
        target[i] = crop.transpose(2, 0, 1)  # [R, R, 3] -> [3, R, R]
    return out


def _center_crop_array(array: np.ndarray, resolution: int) -> np.ndarray:
    """``_resize_center_crop`` for an image whose short side already is R (same offsets as torchvision)."""
    height, width = array.shape[:2]
    left = int(round((width - resolution) / 2.0))
    top = int(round((height - resolution) / 2.0))
    return array[top:top + resolution, left:left + resolution]


def clip_lookup_table() -> torch.Tensor:
    """``[3, 256]`` float32: the CLIP-normalised value of every ``uint8`` level per channel, computed like
    ``frames_to_tensor`` does (float32, ``/255`` then ``-mean`` then ``/std``), on the CPU."""
    levels = torch.arange(256, dtype=torch.uint8).float().div_(255.0).view(1, 256).repeat(3, 1)  # [3, 256]
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1)
    return levels.sub_(mean).div_(std)


def _lut(device: torch.device) -> torch.Tensor:
    table = _LUT.get(device)
    if table is None:
        table = _LUT[device] = clip_lookup_table().flatten().to(device)  # [3 * 256]
    return table


def normalize_frames(video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
    """The device half: ``uint8 [B, T, 3, R, R]`` -> float32 CLIP-normalised frames, padding exactly 0.

    Float input is returned unchanged (already normalised, e.g. benchmarks' random frames). Frames whose
    ``video_mask`` is 0 are padding and come out as +0.0, as ``frames_to_tensor``'s zero padding did.
    """
    if video.dtype != torch.uint8:
        return video
    if video.dim() != 5 or video.shape[2] != 3:
        raise ValueError(f'expected uint8 frames [B, T, 3, R, R], got shape {tuple(video.shape)}')
    if tuple(video_mask.shape) != tuple(video.shape[:2]):
        raise ValueError(f'video_mask {tuple(video_mask.shape)} does not match the frames '
                         f'{tuple(video.shape[:2])} (expected [B, T])')
    offsets = torch.arange(0, 3 * 256, 256, dtype=torch.int32, device=video.device).view(1, 1, 3, 1, 1)
    out = _lut(video.device)[video.int() + offsets]  # [B, T, 3, R, R] float32
    return out.masked_fill_(~video_mask.bool()[:, :, None, None, None], 0.0)
