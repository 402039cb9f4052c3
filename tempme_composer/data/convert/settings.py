"""What a conversion decodes and stores: the settings recorded with the shards that also key the decode cache."""

from __future__ import annotations

from dataclasses import dataclass

from tempme_composer.data.convert.cache import CACHE_VERSION

__all__ = ['DEFAULT_JPEG_QUALITY', 'ConvertSettings']

#: Chosen from the measurements in docs/benchmarks.md#jpeg-quality-against-raw-frames (quality vs size vs read speed).
DEFAULT_JPEG_QUALITY = 85


@dataclass(frozen=True)
class ConvertSettings:
    """Decode/storage settings; they are recorded with the shards and key the per-video cache."""

    fps: float = 1.0
    size: int = 224
    frame_format: str = 'jpeg'  # 'jpeg' (one blob, frame_layout.py) or 'raw' (ndarray:uint8 [T, H, W, 3])
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    min_frames: int = 1
    apply_rotation: bool = True

    def cache_key(self) -> str:
        q = f'q{self.jpeg_quality}' if self.frame_format == 'jpeg' else 'raw'
        return f'v{CACHE_VERSION}-fps{self.fps:g}-s{self.size}-{q}-r{int(self.apply_rotation)}'
