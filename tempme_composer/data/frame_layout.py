"""On-disk layout of a video's frames in an MDS sample, and access that decodes only the frames used.

Dataset format 1 (``tempme_dataset.json`` ``format_version: 1``) stored JPEG frames as an MDS ``jpegarray``
column: reading a sample makes MDS open every stored frame (a ``PIL`` object per frame), although a sample
uses ``max_frames`` of them — 64 of an ActivityNet video's minutes of frames, 12 of MSR-VTT's 10-30. Format 2
stores the same bytes (``uint32`` count, ``uint32`` size per frame, the JPEGs back to back) as a plain
``bytes`` column, so MDS hands the blob over untouched and :class:`StoredFrames` decodes only the frames
asked for (the loader hands their bytes to ``uint8_frames.frames_to_uint8``: libjpeg-turbo through
simplejpeg, PIL's pixels exactly). Raw frames (``--frame-format raw``) are an ``ndarray:uint8 [T, H, W, 3]``
column in both formats; indexing it decodes nothing.

The loader tells the layouts apart by what MDS returns for ``frames`` (bytes, a list of images, an array),
so the demo data (which has no ``tempme_dataset.json``) and both format versions read alike.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tempme_composer.data.format import MDS_INDEX_FILE, META_FILE, SHARD_HASHES, SKIPPED_FILE

__all__ = ['StoredFrames', 'pack_jpeg_frames', 'write_format1_copy']

_U32 = np.dtype('<u4')


def pack_jpeg_frames(blobs: Sequence[bytes]) -> bytes:
    """Format-2 ``frames`` value: ``uint32`` count, ``uint32`` byte size per frame, then the JPEG bytes.

    The same bytes MDS's ``jpegarray`` encoding writes, so a format-1 column converts by re-declaring it.
    """
    if not blobs:
        raise ValueError('pack_jpeg_frames needs at least one frame')
    sizes = np.asarray([len(b) for b in blobs], dtype=_U32)
    return b''.join([np.asarray(len(blobs), dtype=_U32).tobytes(), sizes.tobytes(), *blobs])


class StoredFrames:
    """The stored frames of one sample, decoded one at a time on request.

    Args:
        value: what MDS returned for the ``frames`` column: ``bytes`` (format 2 JPEGs), a list of
            images (format 1 ``jpegarray``), or a ``uint8 [T, H, W, 3]`` array (raw frames).
        where: names the sample in error messages (e.g. ``"sample 3 (video_id 'v1')"``).

    Raises:
        ValueError: a truncated or inconsistent format-2 blob, or a value of another type.
    """

    def __init__(self, value: object, where: str) -> None:
        self._where = where
        self._data: bytes | None = None
        self._frames: Sequence[Image.Image | np.ndarray] | None = None
        if isinstance(value, bytes | bytearray | memoryview):
            self._data = value if isinstance(value, bytes) else bytes(value)  # MDS hands bytes: no copy
            self._offsets = self._parse(self._data)
        elif isinstance(value, np.ndarray):
            if value.ndim != 4 or value.shape[-1] != 3 or value.dtype != np.uint8:
                raise ValueError(f'{where}: raw frames must be uint8 [T, H, W, 3], got {value.dtype} '
                                 f'{tuple(value.shape)}')
            self._frames = value
        elif isinstance(value, list | tuple):
            self._frames = value
        else:
            raise ValueError(f'{where}: the frames column holds {type(value).__name__}; expected bytes (format '
                             '2), a list of JPEG images (format 1) or a uint8 array (raw frames)')

    def _parse(self, data: bytes) -> np.ndarray:
        """Byte offsets ``[T + 1]`` of the frames in a format-2 blob."""
        if len(data) < 4:
            raise ValueError(f'{self._where}: the frames blob has {len(data)} bytes, too short for a frame count')
        count = int(np.frombuffer(data, _U32, count=1)[0])
        head = 4 + 4 * count
        if count == 0 or len(data) < head:
            raise ValueError(f'{self._where}: the frames blob holds {count} frames in {len(data)} bytes; '
                             'expected at least one frame and its size table')
        sizes = np.frombuffer(data, _U32, count=count, offset=4).astype(np.int64)
        offsets = np.concatenate([[head], head + np.cumsum(sizes)])
        if offsets[-1] != len(data):
            raise ValueError(f'{self._where}: the frame sizes add up to {int(offsets[-1])} bytes but the blob '
                             f'has {len(data)} (truncated or corrupt); convert the video again')
        return offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1 if self._data is not None else len(self._frames)

    def __getitem__(self, i: int) -> Image.Image | np.ndarray:
        """Frame ``i``: a PIL image (JPEG, decoded lazily by PIL when read) or a ``[H, W, 3]`` uint8 array."""
        if self._data is None:
            return self._frames[i]
        return Image.open(io.BytesIO(self.jpeg_bytes(i)), formats=('JPEG',))  # no probing of other formats

    def jpeg_bytes(self, i: int) -> bytes:
        """The stored JPEG of frame ``i`` (format 2 only)."""
        if self._data is None:
            raise TypeError(f'{self._where}: jpeg_bytes needs format-2 frames')
        if not -len(self) <= i < len(self):
            raise IndexError(f'{self._where}: frame {i} of {len(self)}')
        i %= len(self)
        return self._data[int(self._offsets[i]):int(self._offsets[i + 1])]

    def select(self, indices: Sequence[int]) -> list[Image.Image | np.ndarray]:
        """The frames at ``indices`` (only those are touched)."""
        return [self[int(i)] for i in indices]

    def select_stored(self, indices: Sequence[int]) -> list[bytes | Image.Image | np.ndarray]:
        """The frames at ``indices`` as stored, nothing decoded: JPEG bytes (format 2), the PIL images MDS
        opened (format 1) or arrays (raw). `frames_to_uint8` takes them as they are and decodes a JPEG with
        `decode_jpeg`, straight into its crop (the loader's path; ``select`` gives the same pixels)."""
        if self._data is None:
            return [self._frames[int(i)] for i in indices]
        return [self.jpeg_bytes(int(i)) for i in indices]


def write_format1_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Rewrite a format-2 video split as format 1 (``jpegarray`` frames): the layout older
    ``tempme-convert`` versions wrote, for compatibility tests and the data benchmark's "today" path.
    """
    from streaming import MDSWriter, StreamingDataset

    src, dst = Path(src), Path(dst)
    index = json.loads((src / MDS_INDEX_FILE).read_text())
    shard = index['shards'][0]
    columns = dict(zip(shard['column_names'], shard['column_encodings'], strict=True))
    if columns.get('frames') != 'bytes':
        raise ValueError(f'{src}: frames column is {columns.get("frames")!r}; expected format 2 JPEG bytes')
    columns['frames'] = 'jpegarray'
    dataset = StreamingDataset(local=str(src), batch_size=1)
    with MDSWriter(out=str(dst), columns=columns, compression=None, hashes=SHARD_HASHES,
                   progress_bar=False) as writer:
        for i in range(dataset.size):
            sample = dataset[i]
            frames = StoredFrames(sample['frames'], f'{src} sample {i}')
            sample['frames'] = [frames.jpeg_bytes(k) for k in range(len(frames))]
            writer.write(sample)
    meta_path = src / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        meta.update(format_version=1, columns=columns)
        (dst / META_FILE).write_text(json.dumps(meta, indent=2) + '\n')
    for extra in (SKIPPED_FILE,):
        if (src / extra).is_file():
            shutil.copy(src / extra, dst / extra)
    return dst
