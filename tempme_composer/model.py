"""UnifiedModel: the retrieval network (CLIP towers + similarity head), independent of Composer.

Without TempMe it is CLIP4Clip's "meanP" baseline: a video embedding is the mean of the L2-normalised
per-frame CLS embeddings over the valid frames. With TempMe (`tempme_composer.modules.tempme`) the frames of a
video go through the vision tower together with token merging, and the embedding is the masked mean of the
normalised frame-CLS outputs (tempme.md §2.9). LoRA (`tempme_composer.modules.lora`) patches the CLIP towers
in place. `UnifiedModel.from_config` applies both from ``model.*`` config; this class stays the one place
that turns a batch into embeddings.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tempme_composer.clip import CLIP
from tempme_composer.modules.lora import apply_lora
from tempme_composer.modules.tempme import TempMeVideoEncoder, masked_mean_of_normalised

__all__ = ['UnifiedModel']

log = logging.getLogger(__name__)


class UnifiedModel(nn.Module):
    """Text and video encoders over one CLIP backbone (parameter names start with ``clip.``).

    Args:
        clip: the backbone (possibly LoRA-patched).
        tempme: optional TempMe video encoder; its temporal position embeddings are named
            ``tempme.temporal_pos_prompt.<block>``.
    """

    def __init__(self, clip: CLIP, tempme: TempMeVideoEncoder | None = None) -> None:
        super().__init__()
        self.clip = clip
        self.tempme = tempme

    @classmethod
    def from_config(cls, clip: CLIP, model_cfg: Any, num_frames: int) -> UnifiedModel:
        """Apply ``model_cfg.lora`` and ``model_cfg.tempme`` (a `tempme_composer.config.ModelConfig`).

        Raises:
            ValueError: an impossible TempMe schedule for this backbone and ``num_frames`` (with the reason).
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
            apply_lora(clip, model_cfg.lora.rank)
        return cls(clip, tempme)

    def encode_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings from the EOT token.

        Args:
            text_ids: ``[B, L]`` int64 CLIP token ids (L <= the model's context length).

        Returns:
            ``[B, D]`` float32 unit vectors.
        """
        return F.normalize(self.clip.encode_text(text_ids).float(), dim=-1)

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised video embeddings: masked mean of normalised frame embeddings (CLIP4Clip meanP).

        Without TempMe only valid frames go through the vision tower, so padding costs no compute; with TempMe
        every slot is encoded (the merge plan is fixed by T) and padding is excluded from the mean only.

        Args:
            video: ``[B, T, 3, H, W]`` normalised frames, padded with zeros.
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
        if self.tempme is not None:
            # TempMe encodes all T slots together (padding included, as the reference does) and masks only
            # the final mean over the frame-CLS outputs.
            return masked_mean_of_normalised(self.tempme(self.clip.visual, video), video_mask)
        frame_emb = F.normalize(self.clip.encode_image(video[valid]).float(), dim=-1)  # [num_valid, D]
        per_slot = frame_emb.new_zeros(B, T, frame_emb.shape[-1])  # [B, T, D]
        per_slot[valid] = frame_emb
        pooled = per_slot.sum(dim=1) / frames_per_video.unsqueeze(-1).to(per_slot.dtype)  # [B, D]
        return F.normalize(pooled, dim=-1)
