"""CLIP preprocessing split in two halves: ``uint8`` crops in the loader, the normalisation on the device.

:func:`~tempme_composer.data.video.frames_to_tensor` does both halves in a loader worker and ships float32
frames: 4x the bytes of ``uint8`` through worker IPC, pinned memory and the host-to-device copy, and the float
arithmetic costs a loader core more than decoding the JPEGs (README "Data throughput"). Here the worker stops
at the resized, centre-cropped ``uint8 [T, R, R, 3]`` frames (:func:`frames_to_uint8`; channels last, the
layout JPEG decoders write, so each crop is one strided copy) and the model's input path finishes with
:func:`normalize_frames` on whatever device the batch is on, which also moves the channels in front
(``[B, T, 3, R, R]`` float32, the layout the vision tower reads).

Stored JPEGs are decoded with libjpeg-turbo through ``simplejpeg`` (:func:`decode_jpeg`): accurate integer
IDCT and fancy upsampling, the settings PIL decodes with, so the pixels are PIL's bit for bit (tested) at about
half of PIL's cost per frame (no file object, no plugin machinery, no image object).

The normalised values are bit-identical to ``frames_to_tensor``: each channel has only 256 possible inputs,
so the float arithmetic runs once, on the CPU, in the same op order (``/255``, ``-mean``, ``/std``) and the
device looks the results up. Recomputing it on the GPU would not be identical: CUDA divides by a Python
scalar as a multiplication by its reciprocal.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import simplejpeg
import torch
from PIL import Image

from tempme_composer.data.video import CLIP_MEAN, CLIP_STD, _resize_center_crop

__all__ = ['Frame', 'clip_lookup_table', 'decode_jpeg', 'frames_to_uint8', 'normalize_frames']

#: One frame as the loader meets it: a PIL image (any mode), an ``[H, W, 3]`` uint8 RGB array, or the bytes
#: of a JPEG file.
Frame = Image.Image | np.ndarray | bytes

_LUT: dict[torch.device, torch.Tensor] = {}  # per device: [3 * 256] float32
#: JPEG colour spaces whose libjpeg-turbo RGB output through simplejpeg equals PIL's ``convert('RGB')``
#: (others, e.g. CMYK, go through PIL).
_SIMPLEJPEG_COLORSPACES = frozenset({'YCbCr', 'Gray', 'RGB'})


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> ``[H, W, 3]`` uint8 RGB, bit-identical to ``np.asarray(Image.open(...).convert('RGB'))``.

    ``fastdct=False, fastupsample=False`` select the accurate integer IDCT (``JDCT_ISLOW``) and fancy
    chroma upsampling, which is what PIL asks libjpeg for; colour spaces other than YCbCr, grey and RGB fall
    back to PIL.
    """
    if simplejpeg.decode_jpeg_header(data)[2] in _SIMPLEJPEG_COLORSPACES:
        return simplejpeg.decode_jpeg(data, colorspace='RGB', fastdct=False, fastupsample=False)
    return np.asarray(Image.open(io.BytesIO(data), formats=('JPEG',)).convert('RGB'))


def frames_to_uint8(frames: Sequence[Frame], resolution: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """The loader half of ``frames_to_tensor``: short side resized to R (bicubic), centre crop, ``uint8``.

    Each frame is decoded (if it is JPEG bytes) and cropped straight into its slot of ``out``; a frame whose
    short side already is R (how ``tempme-convert`` stores them at the default resolution) is never resized.

    Args:
        frames: PIL images (any mode), ``[H, W, 3]`` uint8 RGB arrays or JPEG bytes (e.g.
            :meth:`~tempme_composer.data.frame_layout.StoredFrames.select_stored`), decoded one at a time.
        resolution: output side R.
        out: optional contiguous uint8 ``[T, R, R, 3]`` to write into (e.g. the first T slots of a padded
            sample, which saves a copy per sample).

    Returns:
        uint8 ``[T, R, R, 3]`` (channels last); ``normalize_frames`` of it equals ``frames_to_tensor(frames,
        R)`` exactly.
    """
    if not len(frames):
        raise ValueError('frames_to_uint8 needs at least one frame')
    shape = (len(frames), resolution, resolution, 3)
    if out is None:
        out = torch.empty(shape, dtype=torch.uint8)
    elif tuple(out.shape) != shape or out.dtype != torch.uint8 or not out.is_contiguous():
        raise ValueError(f'out must be a contiguous uint8 tensor of shape {shape} ([T, R, R, 3]), got '
                         f'{out.dtype} {tuple(out.shape)}')
    target = out.numpy()  # [T, R, R, 3], shares memory with out
    for i in range(len(frames)):
        frame = frames[i]
        if isinstance(frame, bytes | bytearray | memoryview):
            frame = decode_jpeg(frame)
        if isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8 \
                and min(frame.shape[:2]) == resolution:
            target[i] = _center_crop_array(frame, resolution)  # stored at short side R: a slice, no PIL round trip
            continue
        image = Image.fromarray(frame) if isinstance(frame, np.ndarray) else frame
        if image.mode != 'RGB':
            image = image.convert('RGB')
        if min(image.size) == resolution:
            target[i] = _center_crop_array(np.asarray(image), resolution)
        else:
            target[i] = np.asarray(_resize_center_crop(image, resolution))
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
    """The device half: ``uint8 [B, T, R, R, 3]`` (channels last, as the loader hands them) -> float32
    CLIP-normalised frames ``[B, T, 3, R, R]`` (contiguous), padding exactly 0.

    Float input is returned unchanged (already normalised and channels first, e.g. benchmarks' random
    frames). Frames whose ``video_mask`` is 0 are padding and come out as +0.0, as ``frames_to_tensor``'s zero
    padding did.
    """
    if video.dtype != torch.uint8:
        return video
    if video.dim() != 5 or video.shape[-1] != 3:
        raise ValueError(f'expected uint8 frames [B, T, R, R, 3] (channels last), got shape {tuple(video.shape)}')
    if tuple(video_mask.shape) != tuple(video.shape[:2]):
        raise ValueError(f'video_mask {tuple(video_mask.shape)} does not match the frames '
                         f'{tuple(video.shape[:2])} (expected [B, T])')
    # The channel move happens on the 1-byte levels: one pass that widens them to table indices.
    index = video.permute(0, 1, 4, 2, 3).to(torch.int32, memory_format=torch.contiguous_format)  # [B, T, 3, R, R]
    index += torch.arange(0, 3 * 256, 256, dtype=torch.int32, device=video.device).view(1, 1, 3, 1, 1)
    out = _lut(video.device)[index]  # [B, T, 3, R, R] float32
    return out.masked_fill_(~video_mask.bool()[:, :, None, None, None], 0.0)
