"""UnifiedModel: the retrieval network (CLIP towers + similarity head), independent of Composer.

For now it is CLIP4Clip's "meanP" baseline: a video embedding is the mean of the L2-normalised per-frame
CLS embeddings over the valid frames. TempMe merging, STOP prompts and LoRA plug into the CLIP towers'
seams in later issues; this class stays the one place that turns a batch into embeddings.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from tempme_composer.clip import CLIP

__all__ = ['UnifiedModel']

log = logging.getLogger(__name__)


class UnifiedModel(nn.Module):
    """Text and video encoders over one CLIP backbone (parameter names start with ``clip.``)."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.clip = clip

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

        Only valid frames go through the vision tower, so padding costs no compute.

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
        frame_emb = F.normalize(self.clip.encode_image(video[valid]).float(), dim=-1)  # [num_valid, D]
        per_slot = frame_emb.new_zeros(B, T, frame_emb.shape[-1])  # [B, T, D]
        per_slot[valid] = frame_emb
        pooled = per_slot.sum(dim=1) / frames_per_video.unsqueeze(-1).to(per_slot.dtype)  # [B, D]
        return F.normalize(pooled, dim=-1)
