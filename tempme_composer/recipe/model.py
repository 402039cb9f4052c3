"""The retrieval network a config describes: CLIP (from its checkpoint, or a random preset) and the modules
the model section enables."""

from __future__ import annotations

import logging

from tempme_composer.clip import CLIP, CLIP_PRESETS, load_clip
from tempme_composer.config import TrainConfig
from tempme_composer.errors import ConfigError
from tempme_composer.model import UnifiedModel

__all__ = ['build_model']

log = logging.getLogger(__name__)


def build_model(cfg: TrainConfig) -> UnifiedModel:
    """CLIP from the local checkpoint (or a random init of the preset) wrapped as the retrieval network."""
    clip_cfg = cfg.model.clip
    if clip_cfg.checkpoint:
        clip = load_clip(clip_cfg.checkpoint)
    else:
        if clip_cfg.preset not in CLIP_PRESETS:
            raise ConfigError(f'model.clip.preset={clip_cfg.preset!r} is not one of {sorted(CLIP_PRESETS)}')
        log.warning('model.clip.checkpoint is null: CLIP %s starts from random weights', clip_cfg.preset)
        clip = CLIP(CLIP_PRESETS[clip_cfg.preset])
    if cfg.data.max_words > clip.config.context_length:
        raise ConfigError(
            f'data.max_words={cfg.data.max_words} exceeds the CLIP text context length {clip.config.context_length}'
        )
    # LoRA, TempMe and STOP as the model section enables them
    return UnifiedModel.from_config(clip, cfg.model, num_frames=cfg.data.max_frames)
