"""The network's settings: the CLIP backbone, LoRA, TempMe and STOP (the ``model`` section of a recipe).

Plain dataclasses, read from a dict by `model_config_from_dict` (a recipe's ``model:`` section or an exported
model's ``config.json``) and checked by `check_model_config` for the rules that need no backbone; the rules
that do (a merge schedule or a prompt grid this backbone cannot run) are checked when
`tempme_composer.model.UnifiedModel.from_config` builds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tempme_composer.errors import ConfigError
from tempme_composer.schema import build_dataclass

__all__ = [
    'ClipConfig',
    'LoRAConfig',
    'ModelConfig',
    'StopConfig',
    'TempMeConfig',
    'check_model_config',
    'model_config_from_dict',
]


@dataclass
class ClipConfig:
    """CLIP backbone: OpenAI weights from a local file, or a random init of a named architecture."""

    #: A local OpenAI CLIP file (TorchScript archive or state dict); never downloaded.
    checkpoint: str | None = None
    preset: str = 'ViT-B/32'  # architecture used when checkpoint is null (tests and the demo use 'tiny')


@dataclass
class LoRAConfig:
    """TempMe's LoRA on the fused QKV projection of every attention layer, both towers
    (`tempme_composer.modules.lora`; no scaling, zero-initialised up-projection)."""

    enabled: bool = False
    rank: int = 8


@dataclass
class TempMeConfig:
    """TempMe token merging in the vision tower (`tempme_composer.modules.tempme`; the defaults of "TempMe: Video
    Temporal Token Merging for Efficient Text-Video Retrieval", ICLR 2025, for ViT-B/32 at 12 frames; docs/reference/tempme.md#defaults).

    The schedule is checked against the backbone and data.max_frames when the model is built, before training.
    """

    enabled: bool = False
    tome_r: int = 2  # ImgMe tokens merged per frame in each block before the first merge layer
    merge_layers: list[int] = field(default_factory=lambda: [8, 9, 10])  # 0-based ClipMe blocks
    merge_frame_num: list[int] = field(default_factory=lambda: [2, 2, 3])  # sequences fused at each of them
    #: Percent of tokens merged [across frames, within a frame].
    merge_token_proportion: list[float] = field(default_factory=lambda: [30.0, 10.0])


@dataclass
class StopConfig:
    """STOP spatial-temporal dynamic prompting (`tempme_composer.modules.stop`; the defaults of "STOP: Integrated
    Spatial-Temporal Dynamic Prompting for Video Understanding", CVPR 2025; docs/reference/stop.md#defaults).

    Sizes (widths, layers, patch grid, frames) come from the backbone and data.max_frames.
    """

    enabled: bool = False
    shared_latent_space: Literal['transformer', 'linear'] = 'transformer'  # prompt generator (DGL)
    text_prompt_length: int = 8  # deep text prompts per layer, half prefix / half postfix (linear: 2 x local)
    local_prompt_length: int = 4  # per-frame visual prompts, replaced at every block
    global_prompt_length: int = 4  # video-level prompts, inserted once, attend to every token
    adapters: bool = True  # STOP's bottleneck adapters ('LoRA') in every block of both towers
    adapter_dim: int = 32
    adapter_scale: float = 0.1
    #: TemporalPrompt (intra-frame pixel prompt + inter-frame prompt); false = DGL.
    temporal_prompt: bool = True
    output_type: Literal[
        'global_prompt0',
        'average_global_prompt',
        'average_frame_cls_token',
        'average_global_prompt_and_frame_cls_token',
        'frame_cls_mean',
    ] = 'global_prompt0'
    frame_weight_norm: Literal['video', 'batch'] = 'video'  # batch = reference (embedding depends on batch)
    mask_pooling: Literal['lattice', 'patch'] = 'lattice'  # lattice = reference's mod-grid pooling
    salient_cells: int = 6  # top-k patch cells of the saliency mask (reference eta = 6)
    spatial_stride: int = 1  # >1: pixel prompt Conv stack on a pooled video (cheaper, approximate)
    #: The pixel prompt's Conv3d; auto: fft on CPU/CUDA (faster).
    conv_impl: Literal['auto', 'direct', 'fft'] = 'auto'


@dataclass
class ModelConfig:
    clip: ClipConfig = field(default_factory=ClipConfig)
    sim_header: Literal['meanP'] = 'meanP'  # CLIP4Clip mean pooling of per-frame embeddings
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    tempme: TempMeConfig = field(default_factory=TempMeConfig)
    stop: StopConfig = field(default_factory=StopConfig)


def model_config_from_dict(raw: dict[str, Any], source: str = '<dict>') -> ModelConfig:
    """Validate the ``model`` section alone (an exported model's ``config.json``) into a `ModelConfig`.

    Raises:
        ConfigError: an unknown key or a wrong type, named as ``model.<key>`` in ``source``.
    """
    return build_dataclass(ModelConfig, raw, prefix='model.', source=source, cli_keys=set())


def check_model_config(model: ModelConfig, source: str, max_frames: int) -> None:
    """The LoRA, STOP and TempMe rules that need no backbone (the others run when the model is built).

    Args:
        model: the settings to check.
        source: the file named in messages.
        max_frames: frames per video (``data.max_frames``), which TempMe's merge groups must divide.

    Raises:
        ConfigError: naming the ``model.*`` key, the value and what was expected.
    """
    if model.lora.enabled and model.lora.rank <= 0:
        raise ConfigError(f"'model.lora.rank' in {source} must be positive, got {model.lora.rank}")
    _check_stop(model.stop, source)
    _check_tempme(model.tempme, source, max_frames)


def _check_tempme(t: TempMeConfig, source: str, max_frames: int) -> None:
    if not t.enabled:
        return
    if len(t.merge_layers) != len(t.merge_frame_num):
        raise ConfigError(
            f"'model.tempme.merge_layers' {t.merge_layers} and 'model.tempme.merge_frame_num' "
            f'{t.merge_frame_num} in {source} must have the same length'
        )
    product = 1
    for g in t.merge_frame_num:
        product *= g
    if min(t.merge_frame_num, default=1) < 1 or max_frames % product:
        raise ConfigError(
            f"'model.tempme.merge_frame_num' {t.merge_frame_num} in {source}: the groups must be "
            f'positive and their product must divide data.max_frames={max_frames}'
        )
    if len(t.merge_token_proportion) != 2 or not all(0 <= p < 100 for p in t.merge_token_proportion):
        raise ConfigError(
            f"'model.tempme.merge_token_proportion' in {source} must be two percentages in [0, 100), "
            f'got {t.merge_token_proportion}'
        )
    if t.tome_r < 0:
        raise ConfigError(f"'model.tempme.tome_r' in {source} must be >= 0, got {t.tome_r}")


def _check_stop(s: StopConfig, source: str) -> None:
    if not s.enabled:
        return
    counts = {
        'text_prompt_length': s.text_prompt_length,
        'local_prompt_length': s.local_prompt_length,
        'global_prompt_length': s.global_prompt_length,
        'adapter_dim': s.adapter_dim,
        'spatial_stride': s.spatial_stride,
    }
    for key, value in counts.items():
        if value <= 0:
            raise ConfigError(f"'model.stop.{key}' in {source} must be positive, got {value}")
    if s.text_prompt_length % 2:
        raise ConfigError(
            f"'model.stop.text_prompt_length' in {source} must be even (half prefix, half postfix), "
            f'got {s.text_prompt_length}'
        )
    if s.salient_cells < 0:
        raise ConfigError(f"'model.stop.salient_cells' in {source} must be >= 0, got {s.salient_cells}")
    if s.shared_latent_space == 'linear' and s.text_prompt_length != 2 * s.local_prompt_length:
        raise ConfigError(
            f'{source}: model.stop.shared_latent_space=linear derives the text prompts from the '
            f'local ones, so text_prompt_length must be 2 x local_prompt_length '
            f'({2 * s.local_prompt_length}), got {s.text_prompt_length}'
        )
