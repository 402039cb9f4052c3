"""The loader half of CLIP preprocessing: frames decoded and cropped to ``uint8 [T, R, R, 3]``.

The worker stops at the resized, centre-cropped ``uint8`` frames (:func:`frames_to_uint8`; channels last, the
layout JPEG decoders write, so each crop is one strided copy); the model's input path finishes with
`tempme_composer.clip.preprocess.normalize_frames` on the batch's device (docs/benchmarks.md#loader-throughput), and the
two together equal `tempme_composer.clip.preprocess.frames_to_tensor` bit for bit.

Stored JPEGs are decoded with libjpeg-turbo through ``simplejpeg`` (:func:`decode_jpeg`): accurate integer
IDCT and fancy upsampling, the settings PIL decodes with, so the pixels are PIL's bit for bit (tested) at about
half of PIL's cost per frame (no file object, no plugin machinery, no image object).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import simplejpeg
import torch
from PIL import Image

from tempme_composer.clip.preprocess import center_crop_array, resize_center_crop

__all__ = ['Frame', 'decode_jpeg', 'frames_to_uint8']

#: One frame as the loader meets it: a PIL image (any mode), an ``[H, W, 3]`` uint8 RGB array, or the bytes
#: of a JPEG file.
Frame = Image.Image | np.ndarray | bytes

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
            target[i] = center_crop_array(frame, resolution)  # stored at short side R: a slice, no PIL round trip
            continue
        image = Image.fromarray(frame) if isinstance(frame, np.ndarray) else frame
        if image.mode != 'RGB':
            image = image.convert('RGB')
        if min(image.size) == resolution:
            target[i] = center_crop_array(np.asarray(image), resolution)
        else:
            target[i] = np.asarray(resize_center_crop(image, resolution))
    return out
