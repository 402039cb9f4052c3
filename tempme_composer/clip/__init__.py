"""CLIP for text-video retrieval: config and presets, ViT and text towers, OpenAI checkpoint loading, BPE."""

from tempme_composer.clip.config import CLIP_PRESETS, CLIPConfig, clip_config_from_dict
from tempme_composer.clip.tokenizer import EOT_ID, SOT_ID, VOCAB_SIZE, tokenize
from tempme_composer.clip.towers import (
    CLIP,
    Attention,
    LayerNorm,
    QuickGELU,
    ResidualAttentionBlock,
    TextTransformer,
    Transformer,
    VisionTransformer,
)
from tempme_composer.clip.weights import (
    CLIPCheckpointError,
    infer_clip_config,
    load_clip,
    load_openai_weights,
    openai_to_ours,
    ours_to_openai,
    read_openai_state_dict,
)

__all__ = [
    'CLIP',
    'CLIP_PRESETS',
    'EOT_ID',
    'SOT_ID',
    'VOCAB_SIZE',
    'Attention',
    'CLIPCheckpointError',
    'CLIPConfig',
    'LayerNorm',
    'QuickGELU',
    'ResidualAttentionBlock',
    'TextTransformer',
    'Transformer',
    'VisionTransformer',
    'clip_config_from_dict',
    'infer_clip_config',
    'load_clip',
    'load_openai_weights',
    'openai_to_ours',
    'ours_to_openai',
    'read_openai_state_dict',
    'tokenize',
]
