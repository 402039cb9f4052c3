"""Modules added on top of the CLIP towers: LoRA (`lora`), token-merging primitives (`merging`) and TempMe's
merging video encoder (`tempme`)."""

from tempme_composer.modules.lora import LoRAAttention, apply_lora, fold_lora, lora_parameter_count
from tempme_composer.modules.merging import (
    bipartite_soft_matching,
    merge_wavg,
    proportional_attention_bias,
    regroup_sequences,
)
from tempme_composer.modules.tempme import LayerPlan, TempMeVideoEncoder, plan_merging, plan_table

__all__ = [
    'LayerPlan',
    'LoRAAttention',
    'TempMeVideoEncoder',
    'apply_lora',
    'bipartite_soft_matching',
    'fold_lora',
    'lora_parameter_count',
    'merge_wavg',
    'plan_merging',
    'plan_table',
    'proportional_attention_bias',
    'regroup_sequences',
]
