"""The retrieval network independent of Composer: `UnifiedModel`, its settings and its contrastive loss."""

from tempme_composer.model.config import (
    ClipConfig,
    LoRAConfig,
    ModelConfig,
    StopConfig,
    TempMeConfig,
    check_model_config,
    model_config_from_dict,
)
from tempme_composer.model.loss import symmetric_infonce
from tempme_composer.model.unified import UnifiedModel, build_stop

__all__ = [
    'ClipConfig',
    'LoRAConfig',
    'ModelConfig',
    'StopConfig',
    'TempMeConfig',
    'UnifiedModel',
    'build_stop',
    'check_model_config',
    'model_config_from_dict',
    'symmetric_infonce',
]
