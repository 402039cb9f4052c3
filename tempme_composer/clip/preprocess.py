"""CLIP's image preprocessing: short side resized to R (bicubic), centre crop, ``/255``, CLIP mean/std.

Two ways to run it, with bit-identical results. :func:`frames_to_tensor` does all of it on the CPU and
returns float32 ``[T, 3, R, R]``. The loader instead stops at the ``uint8`` crops (``frames_to_uint8`` in
`tempme_composer.data.uint8_frames`, built on :func:`resize_center_crop` and :func:`center_crop_array`) and
the model's input path finishes with :func:`normalize_frames` on whatever device the batch is on, which also
moves the channels in front: float32 frames are 4x the bytes of ``uint8`` through worker IPC, pinned memory
and the host-to-device copy.

:func:`normalize_frames` equals :func:`frames_to_tensor` bit for bit: each channel has only 256 possible
inputs, so the float arithmetic runs once, on the CPU, in the same op order (``/255``, ``-mean``, ``/std``;
:func:`clip_lookup_table`) and the device looks the results up. Recomputing it on the GPU would not be
identical: CUDA divides by a Python scalar as a multiplication by its reciprocal.

The mean and std are those of "Learning Transferable Visual Models From Natural Language Supervision"
(Radford et al., 2021), as released with the OpenAI CLIP weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = [
    'CLIP_MEAN',
    'CLIP_STD',
    'center_crop_array',
    'clip_lookup_table',
    'frames_to_tensor',
    'normalize_frames',
    'resize_center_crop',
    'scaled_size',
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_LOOKUP_TABLES: dict[torch.device, torch.Tensor] = {}  # per device: [3 * 256] float32


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Output (width, height) with the short side exactly ``short_side`` and the aspect ratio kept.

    The long side is truncated like torchvision's ``Resize(int)`` (long = int(short_side * long / short));
    ``short_side=None`` keeps the size.
    """
    if short_side is None:
        return width, height
    if width <= height:
        return short_side, max(1, int(short_side * height / width))
    return max(1, int(short_side * width / height)), short_side


def resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """torchvision ``Resize(R)`` (bicubic, long side truncated, no-op at short side R) + ``CenterCrop(R)``."""
    width, height = image.size
    if min(width, height) != resolution:
        image = image.resize(scaled_size(width, height, resolution), resample=Image.Resampling.BICUBIC)
        width, height = image.size
    # Same offsets as torchvision's center_crop: int(round((size - R) / 2)).
    left = int(round((width - resolution) / 2.0))
    top = int(round((height - resolution) / 2.0))
    return image.crop((left, top, left + resolution, top + resolution))


def center_crop_array(array: np.ndarray, resolution: int) -> np.ndarray:
    """`resize_center_crop` for an ``[H, W, 3]`` array whose short side already is R (same offsets as
    torchvision), as a view: no copy, no PIL round trip."""
    height, width = array.shape[:2]
    left = int(round((width - resolution) / 2.0))
    top = int(round((height - resolution) / 2.0))
    return array[top : top + resolution, left : left + resolution]


def frames_to_tensor(frames: Sequence[Image.Image | np.ndarray], resolution: int) -> torch.Tensor:
    """CLIP preprocessing of a frame list, all on the CPU (docs/reference/evaluation-protocol.md#clip-preprocessing).

    Args:
        frames: PIL images (any mode) or ``[H, W, 3]`` uint8 RGB arrays.
        resolution: output side R.

    Returns:
        float32 ``[T, 3, R, R]``: short side resized to R (bicubic), center-cropped, scaled to [0, 1] and
        normalised with the CLIP mean/std.
    """
    if not frames:
        raise ValueError('frames_to_tensor needs at least one frame')
    out = np.empty((len(frames), resolution, resolution, 3), dtype=np.uint8)  # [T, R, R, 3]
    for i, frame in enumerate(frames):
        image = Image.fromarray(frame) if isinstance(frame, np.ndarray) else frame
        if image.mode != 'RGB':
            image = image.convert('RGB')
        out[i] = np.asarray(resize_center_crop(image, resolution))
    video = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)  # [T, 3, R, R]
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return video.sub_(mean).div_(std).contiguous()


def clip_lookup_table() -> torch.Tensor:
    """``[3, 256]`` float32: the CLIP-normalised value of every ``uint8`` level per channel, computed like
    ``frames_to_tensor`` does (float32, ``/255`` then ``-mean`` then ``/std``), on the CPU."""
    levels = torch.arange(256, dtype=torch.uint8).float().div_(255.0).view(1, 256).repeat(3, 1)  # [3, 256]
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1)
    return levels.sub_(mean).div_(std)


def _lookup_table_on(device: torch.device) -> torch.Tensor:
    table = _LOOKUP_TABLES.get(device)
    if table is None:
        table = _LOOKUP_TABLES[device] = clip_lookup_table().flatten().to(device)  # [3 * 256]
    return table


def normalize_frames(video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
    """The device half: ``uint8 [B, T, R, R, 3]`` (channels last, as the loader hands them) -> float32
    CLIP-normalised frames ``[B, T, 3, R, R]`` (contiguous), padding exactly 0.

    Float input is returned unchanged (already normalised and channels first, e.g. benchmarks' random
    frames). Frames whose ``video_mask`` is 0 are padding and come out as +0.0, as ``frames_to_tensor``'s zero
    padding did.
    """
    if video.dtype != torch.uint8:
        return video
    if video.dim() != 5 or video.shape[-1] != 3:
        raise ValueError(
            f'expected uint8 frames [B, T, R, R, 3] (channels last), got shape {tuple(video.shape)}'
        )
    if tuple(video_mask.shape) != tuple(video.shape[:2]):
        raise ValueError(
            f'video_mask {tuple(video_mask.shape)} does not match the frames '
            f'{tuple(video.shape[:2])} (expected [B, T])'
        )
    # The channel move happens on the 1-byte levels: one pass that widens them to table indices.
    index = video.permute(0, 1, 4, 2, 3).to(
        torch.int32, memory_format=torch.contiguous_format
    )  # [B, T, 3, R, R]
    index += torch.arange(0, 3 * 256, 256, dtype=torch.int32, device=video.device).view(1, 1, 3, 1, 1)
    out = _lookup_table_on(video.device)[index]  # [B, T, 3, R, R] float32
    return out.masked_fill_(~video_mask.bool()[:, :, None, None, None], 0.0)
