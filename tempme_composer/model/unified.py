"""UnifiedModel: the retrieval network (CLIP towers + similarity head), independent of Composer.

Four configs of one model (`from_config`): the CLIP4Clip "meanP" baseline (a video embedding is the mean of
the L2-normalised per-frame CLS embeddings over the valid frames), TempMe (token merging in the vision tower,
`tempme_composer.modules.tempme`), STOP (spatial–temporal prompts, `tempme_composer.modules.stop`) and the
unified TempMe-STOP model (both, docs/unified.md). Every video path except the baseline goes through
`tempme_composer.modules.video_tower.encode_video`. Either or both PEFT forms patch the CLIP towers in
place: TempMe's QKV LoRA (``model.lora``) and STOP's bottleneck adapters (``model.stop.adapters``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from tempme_composer.clip import CLIP
from tempme_composer.clip.preprocess import normalize_frames
from tempme_composer.model.config import ModelConfig, StopConfig
from tempme_composer.modules.adapters import apply_adapters
from tempme_composer.modules.lora import apply_lora
from tempme_composer.modules.prompt_generator import PromptGenerator
from tempme_composer.modules.stop import STOP, encode_text_with_prompts
from tempme_composer.modules.tempme import TempMeVideoEncoder
from tempme_composer.modules.temporal_prompt import TemporalPrompt
from tempme_composer.modules.video_tower import encode_video, pool_video, readout_needs_cls

__all__ = ['UnifiedModel', 'build_stop']

log = logging.getLogger(__name__)


def build_stop(clip: CLIP, stop_cfg: StopConfig, num_frames: int) -> STOP:
    """STOP's prompts for this backbone and ``num_frames``; attaches ``clip.visual.TemporalPrompt`` (if
    ``stop_cfg.temporal_prompt``) and the adapters (if ``stop_cfg.adapters``) to ``clip`` in place.

    Raises:
        ValueError: a setting this backbone cannot run (e.g. more salient cells than patches).
    """
    visual, text = clip.visual, clip.text
    generator = PromptGenerator(
        stop_cfg.shared_latent_space,
        vision_width=visual.width,
        text_width=text.width,
        vision_layers=len(visual.transformer.resblocks),
        text_layers=len(text.transformer.resblocks),
        patch_size=visual.patch_size,
        num_frames=num_frames,
        text_prompts=stop_cfg.text_prompt_length,
        local_prompts=stop_cfg.local_prompt_length,
    )
    stop = STOP(
        generator,
        global_prompts=stop_cfg.global_prompt_length,
        patch_size=visual.patch_size,
        output_type=stop_cfg.output_type,
    )
    if stop_cfg.temporal_prompt:
        if visual.image_resolution % (visual.grid_size * stop_cfg.spatial_stride):
            raise ValueError(f'model.stop.spatial_stride={stop_cfg.spatial_stride} must divide the patch size '
                             f'{visual.patch_size} (image {visual.image_resolution} px)')
        visual.TemporalPrompt = TemporalPrompt(
            visual.width,
            max(1, visual.width // 64),
            visual.grid_size,
            stop_cfg.local_prompt_length,
            salient_cells=stop_cfg.salient_cells,
            frame_weight_norm=stop_cfg.frame_weight_norm,
            mask_pooling=stop_cfg.mask_pooling,
            spatial_stride=stop_cfg.spatial_stride,
            conv_impl=stop_cfg.conv_impl,
        ).to(device=visual.proj.device)
    if stop_cfg.adapters:
        apply_adapters(visual.transformer, stop_cfg.adapter_dim, stop_cfg.adapter_scale)
        apply_adapters(text.transformer, stop_cfg.adapter_dim, stop_cfg.adapter_scale)
    return stop


class UnifiedModel(nn.Module):
    """Text and video encoders over one CLIP backbone (parameter names start with ``clip.``).

    Args:
        clip: the backbone (possibly LoRA/adapter-patched, with ``visual.TemporalPrompt`` for STOP).
        tempme: optional TempMe merging plan; its temporal position embeddings are named
            ``tempme.temporal_pos_prompt.<block>``.
        stop: optional STOP prompts (``stop.prompt_generator.*``, ``stop.global_prompt``).
    """

    def __init__(self, clip: CLIP, tempme: TempMeVideoEncoder | None = None, stop: STOP | None = None) -> None:
        super().__init__()
        self.clip = clip
        self.tempme = tempme
        self.stop = stop

    @property
    def output_type(self) -> str:
        """How the video embedding is read out: STOP's setting, ``frame_cls_mean`` otherwise."""
        return self.stop.output_type if self.stop is not None else 'frame_cls_mean'

    @property
    def blocks_called_whole(self) -> bool:
        """Whether every residual block runs through its own ``forward`` (the baseline).

        TempMe and STOP run the vision blocks piece by piece (merging between attention and MLP, prompts as extra
        keys), which wrappers around a block's ``forward`` — per-block FSDP units, activation checkpointing —
        never see (`tempme_composer.fsdp`).
        """
        return self.tempme is None and self.stop is None

    def gradient_free_parameters(self) -> list[nn.Parameter]:
        """Parameters no loss can reach: STOP's ``Cal_Net`` (its hard top-k mask has no gradient;
        docs/reference/stop.md, "Reference bugs" item 4).

        They count as trainable (the published parameter count includes them); DDP must then look for unused
        parameters.
        """
        temporal = getattr(self.clip.visual, 'TemporalPrompt', None)
        return list(temporal.Cal_Net.parameters()) if temporal is not None else []

    @classmethod
    def from_config(cls, clip: CLIP, model_cfg: ModelConfig, num_frames: int) -> UnifiedModel:
        """Apply ``model_cfg.lora``, ``.tempme`` and ``.stop`` (a `tempme_composer.model.config.ModelConfig`).

        Raises:
            ValueError: an impossible TempMe schedule or STOP setting for this backbone and ``num_frames``.
        """
        tempme = None
        if model_cfg.tempme.enabled:
            t = model_cfg.tempme
            tempme = TempMeVideoEncoder.for_tower(
                clip.visual,
                num_frames,
                tome_r=t.tome_r,
                merge_layers=t.merge_layers,
                merge_frame_num=t.merge_frame_num,
                merge_token_proportion=t.merge_token_proportion,
            )
        if model_cfg.lora.enabled:
            apply_lora(clip, model_cfg.lora.rank)  # before STOP: its TemporalPrompt attention stays un-patched
        stop = build_stop(clip, model_cfg.stop, num_frames) if model_cfg.stop.enabled else None
        return cls(clip, tempme, stop)

    def forward(self, text_ids: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{'text': [B_t, D], 'video': [B_v, D], 'logit_scale': 0-d exp(clip.logit_scale)}`` in one call.

        The training and evaluation entry point: FSDP (which wraps this module as one unit, its blocks as their
        own) gathers the sharded parameters only around ``forward``, so calling ``encode_text``/``encode_video``
        from outside would read shards. The scale is 0-d also when FSDP made the parameter 1-element
        (`tempme_composer.fsdp`).
        """
        return {
            'text': self.encode_text(text_ids),
            'video': self.encode_video(video, video_mask),
            'logit_scale': self.clip.logit_scale.exp().reshape(()),
        }

    def encode_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings from the EOT token.

        Args:
            text_ids: ``[B, L]`` int64 CLIP token ids (L <= the model's context length).

        Returns:
            ``[B, D]`` float32 unit vectors.
        """
        if self.stop is not None:
            prompts = self.stop.prompt_generator().text  # input-independent: once per batch
            return F.normalize(encode_text_with_prompts(self.clip.text, text_ids, prompts).float(), dim=-1)
        return F.normalize(self.clip.encode_text(text_ids).float(), dim=-1)

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised video embeddings, read out per `output_type`.

        Baseline (no TempMe, no STOP): the masked mean of normalised frame embeddings (CLIP4Clip meanP), and
        only valid frames go through the vision tower. With TempMe and/or STOP every slot is encoded (the merge
        plan and the prompts are fixed by T, as in the references); the mask enters only the ``frame_cls_mean``
        readout.

        Args:
            video: frames, padded with zeros: ``uint8 [B, T, H, W, 3]`` (channels last) as the loader hands
                them (normalised and moved to channels first here, on the model's device:
                `tempme_composer.clip.preprocess.normalize_frames`), or float32 ``[B, T, 3, H, W]`` already
                CLIP-normalised.
            video_mask: ``[B, T]`` 1 for real frames, 0 for padding.

        Returns:
            ``[B, D]`` float32 unit vectors.

        Raises:
            ValueError: if a video has no valid frame (its embedding would be undefined).
        """
        B, T = video_mask.shape
        valid = video_mask.bool()
        frames_per_video = valid.sum(dim=1)
        if bool((frames_per_video == 0).any()):
            empty = torch.nonzero(frames_per_video == 0).flatten().tolist()
            raise ValueError(f'videos at batch positions {empty} have no valid frame (all-zero video_mask)')
        video = normalize_frames(video, video_mask)
        if self.tempme is not None or self.stop is not None:
            # TempMe/STOP encode all T slots together (padding included, as the references do); the mask only
            # enters the frame_cls_mean readout.
            need_cls = readout_needs_cls(self.output_type)
            tokens = encode_video(self.clip.visual, video, tempme=self.tempme, stop=self.stop, need_cls=need_cls)
            return F.normalize(pool_video(self.clip.visual, tokens, video_mask, self.output_type).float(), dim=-1)
        frame_emb = F.normalize(self.clip.encode_image(video[valid]).float(), dim=-1)  # [num_valid, D]
        per_slot = frame_emb.new_zeros(B, T, frame_emb.shape[-1])  # [B, T, D]
        per_slot[valid] = frame_emb
        pooled = per_slot.sum(dim=1) / frames_per_video.unsqueeze(-1).to(per_slot.dtype)  # [B, D]
        return F.normalize(pooled, dim=-1)
