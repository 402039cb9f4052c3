"""Typed CLIP architecture config and the named presets (presets are data, not ``if backbone == ...`` code).

Field names follow OpenAI's ``CLIP.__init__`` so a config reads like the checkpoint it describes. Everything
shape-dependent elsewhere (token counts, widths, layer counts) is derived from a ``CLIPConfig``.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ['CLIPConfig', 'CLIP_PRESETS', 'clip_config_from_dict']

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CLIPConfig:
    """Architecture of a ViT CLIP model (both towers and the shared embedding size).

    ``vision_heads=0`` means "derive it": OpenAI uses one head per 64 channels (``vision_width // 64``).
    """

    embed_dim: int  # size of the joint image-text embedding space
    image_resolution: int  # square input side in pixels
    vision_layers: int  # residual attention blocks in the vision tower
    vision_width: int  # channels of the vision tower
    vision_patch_size: int  # side of the square patches cut by conv1 (stride = kernel)
    context_length: int  # maximum number of text tokens (size of the text positional embedding)
    vocab_size: int  # BPE vocabulary size (49408 for OpenAI CLIP)
    transformer_width: int  # channels of the text tower
    transformer_heads: int  # attention heads of the text tower
    transformer_layers: int  # residual attention blocks in the text tower
    vision_heads: int = 0  # attention heads of the vision tower; 0 = vision_width // 64 (OpenAI's rule)

    def __post_init__(self) -> None:
        if (
            self.vision_heads == 0
            and isinstance(self.vision_width, int)
            and not isinstance(self.vision_width, bool)
        ):
            # Frozen dataclass: resolve the derived default in place, once, at construction.
            object.__setattr__(self, 'vision_heads', max(self.vision_width // 64, 1))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f'CLIPConfig.{field.name} must be a positive int, got {value!r}')
        if self.image_resolution % self.vision_patch_size:
            raise ValueError(
                f'CLIPConfig.image_resolution ({self.image_resolution}) must be divisible by '
                f'vision_patch_size ({self.vision_patch_size})'
            )
        if self.vision_width % self.vision_heads:
            raise ValueError(
                f'CLIPConfig.vision_width ({self.vision_width}) must be divisible by '
                f'vision_heads ({self.vision_heads})'
            )
        if self.transformer_width % self.transformer_heads:
            raise ValueError(
                f'CLIPConfig.transformer_width ({self.transformer_width}) must be divisible by '
                f'transformer_heads ({self.transformer_heads})'
            )

    @property
    def grid_size(self) -> int:
        """Patches per image side."""
        return self.image_resolution // self.vision_patch_size

    @property
    def num_visual_tokens(self) -> int:
        """Tokens per frame entering the vision transformer: one per patch plus the class token."""
        return self.grid_size**2 + 1


# fmt: off
CLIP_PRESETS: dict[str, CLIPConfig] = {
    'ViT-B/32': CLIPConfig(
        embed_dim=512, image_resolution=224, vision_patch_size=32, vision_width=768, vision_layers=12,
        context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12,
    ),
    'ViT-B/16': CLIPConfig(
        embed_dim=512, image_resolution=224, vision_patch_size=16, vision_width=768, vision_layers=12,
        context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12,
    ),
    'ViT-L/14': CLIPConfig(
        embed_dim=768, image_resolution=224, vision_patch_size=14, vision_width=1024, vision_layers=24,
        context_length=77, vocab_size=49408, transformer_width=768, transformer_heads=12, transformer_layers=12,
    ),
    # Random-init model for tests and the CPU demo: 4x4 patches + CLS = 17 visual tokens, full BPE vocabulary
    # so real tokenized captions fit.
    'tiny': CLIPConfig(
        embed_dim=64, image_resolution=32, vision_patch_size=8, vision_width=128, vision_layers=2,
        context_length=32, vocab_size=49408, transformer_width=128, transformer_heads=2, transformer_layers=2,
    ),
}
# fmt: on


def clip_config_from_dict(d: Mapping[str, Any]) -> CLIPConfig:
    """Build a ``CLIPConfig`` from a YAML-style mapping: an optional ``preset`` name plus field overrides.

    Without ``preset`` every field except ``vision_heads`` must be given. When a preset's ``vision_width`` is
    overridden but ``vision_heads`` is not, the heads are re-derived rather than kept from the preset.

    Raises:
        ValueError: on an unknown preset or key (with the closest valid name), a missing field, or a value the
            config rejects.
    """
    if isinstance(d, CLIPConfig):
        return d
    overrides = dict(d)
    preset = overrides.pop('preset', None)
    names = [f.name for f in dataclasses.fields(CLIPConfig)]
    unknown = [k for k in overrides if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), [*names, 'preset'], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ''
        raise ValueError(f"unknown CLIP config key '{key}'{hint} Valid keys: preset, {', '.join(names)}")
    if preset is None:
        missing = [n for n in names if n != 'vision_heads' and n not in overrides]
        if missing:
            raise ValueError(
                f'CLIP config needs a preset ({", ".join(CLIP_PRESETS)}) or the fields: {", ".join(missing)}'
            )
        return CLIPConfig(**overrides)
    if preset not in CLIP_PRESETS:
        close = difflib.get_close_matches(str(preset), list(CLIP_PRESETS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ''
        raise ValueError(f"unknown CLIP preset '{preset}'{hint} Valid presets: {', '.join(CLIP_PRESETS)}")
    if 'vision_width' in overrides and 'vision_heads' not in overrides:
        overrides['vision_heads'] = 0  # re-derive from the new width
    return dataclasses.replace(CLIP_PRESETS[preset], **overrides)
