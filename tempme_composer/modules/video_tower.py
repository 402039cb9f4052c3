"""One video path through the CLIP vision tower, every part switchable: STOP prompts, TempMe merging, both.

`encode_video` runs ``[B, T, 3, H, W]`` frames through ``clip.visual`` (weights never copied) with

- STOP (``stop`` given): the pixel prompt (``clip.visual.TemporalPrompt``, if present) before patchify,
  ``N_loc`` local prompts per frame inserted after each frame's CLS and replaced before every block with
  that layer's generated prompts + the inter-frame prompt, ``N_g`` global prompts carried through, and
  DGL's global–local attention (`tempme_composer.modules.stop.global_local_attention`);
- TempMe (``tempme`` given): its per-block plan (ImgMe, ClipMe fusion with the clip temporal position
  embedding, cross- and intra-clip merging, proportional attention).

Token layout per sequence: a **protected prefix** of one ``[CLS, local prompts]`` group per member frame
(frame order), then the mergeable patch tokens. Merging never touches the prefix; when ClipMe fuses
neighbouring frames into a clip, `regroup_sequences` concatenates the members' prefixes, so each frame's
local prompts travel with it and are still replaced per layer. Merge counts follow TempMe's plan for the
plain ``CLS + patches`` frame, so prompts do not change how many patch tokens merge (docs/unified.md).

Output: `VideoTokens` (frame-CLS and global-prompt hidden states); `pool_video` reads the embedding out
per ``output_type``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from tempme_composer.clip.model import VisionTransformer
from tempme_composer.modules.merging import (
    bipartite_soft_matching,
    merge_wavg,
    proportional_attention_bias,
    regroup_sequences,
)
from tempme_composer.modules.stop import global_local_attention

if TYPE_CHECKING:
    from tempme_composer.modules.stop import STOP
    from tempme_composer.modules.tempme import LayerPlan, TempMeVideoEncoder

__all__ = ['VideoTokens', 'encode_video', 'masked_mean_of_normalised', 'pool_video']


class VideoTokens(NamedTuple):
    """Final hidden states (before ``ln_post``/``proj``)."""

    frame_cls: torch.Tensor  # [B, T, C], frame order
    global_prompts: torch.Tensor | None  # [B, N_g, C] with STOP, else None


def encode_video(
    visual: VisionTransformer,
    video: torch.Tensor,
    *,
    tempme: TempMeVideoEncoder | None = None,
    stop: STOP | None = None,
) -> VideoTokens:
    """Run a video batch through the tower with the enabled parts (module doc).

    Args:
        visual: the CLIP vision tower (with ``TemporalPrompt`` attached when STOP uses it).
        video: ``[B, T, 3, H, W]`` normalised frames; every slot is encoded (padding included, like both
            references); ``T`` must equal the frames the plan / prompts were built for.
    """
    B, T = video.shape[:2]
    blocks = visual.transformer.resblocks
    for part, frames in (('TempMe', tempme and tempme.num_frames), ('STOP', stop and stop.num_frames)):
        if frames and frames != T:
            raise ValueError(f'{part} was built for {frames} frames per video (data.max_frames), got {T}')
    plans = tempme.plans if tempme is not None else None
    if plans is not None and len(plans) != len(blocks):
        raise ValueError(f'TempMe plan has {len(plans)} blocks, the vision tower {len(blocks)}')
    temporal = getattr(visual, 'TemporalPrompt', None) if stop is not None else None
    mask = None
    if temporal is not None:
        video, mask = temporal.spatial(video)
    x = visual.embed(video.flatten(0, 1))  # [B*T, 1 + P, C]
    C = x.shape[-1]
    n_loc, local, g = 0, None, None
    if stop is not None:
        n_loc = stop.local_prompts
        prompts = stop.prompt_generator()  # input-independent: once per batch
        local = prompts.visual.to(x.dtype).view(len(blocks), 1, T, n_loc, C)  # [layers, 1, T, N_loc, C]
        if temporal is not None:
            local = local + temporal.inter_frame(x.view(B, T, -1, C), mask).unsqueeze(0)  # [layers, B, T, ...]
        local = local.expand(-1, B, -1, -1, -1)
        g = stop.global_prompt.to(x.dtype).expand(B, -1, -1)
        x = torch.cat([x[:, :1], local[0].reshape(B * T, n_loc, C), x[:, 1:]], dim=1)
    prefix = 1 + n_loc  # protected tokens per member frame
    size = None  # [B*S, N, 1] once tokens merged
    for i, block in enumerate(blocks):
        plan = plans[i] if plans is not None else None
        if local is not None and i > 0:
            x = _replace_local_prompts(x, local[i], prefix)
        if plan is not None and plan.fuses:
            x, size = _fuse_clips(tempme, plan, x, size, B, prefix)
        if g is not None:
            x, g, keys = global_local_attention(block, x, g, size)
        else:
            x, keys = block.attention_residual(x, attn_bias=proportional_attention_bias(size), return_keys=True)
        if plan is not None and plan.r_intra:
            merge = bipartite_soft_matching(keys, plan.r_intra, plan.protected * prefix)
            x, size = merge_wavg(merge, x, size)
        x = block.mlp_residual(x)
        if g is not None:
            g = block.mlp_residual(g)
    members = T * B // x.shape[0]  # frames per sequence
    cls = x[:, : members * prefix].reshape(B, T, prefix, C)[:, :, 0]  # [B, T, C]
    return VideoTokens(frame_cls=cls, global_prompts=g)


def _replace_local_prompts(x: torch.Tensor, local: torch.Tensor, prefix: int) -> torch.Tensor:
    """Overwrite every member frame's local-prompt slots in the protected prefix (``local`` ``[B, T, N_loc, C]``)."""
    B, T, n_loc, C = local.shape
    S = x.shape[0]
    members = B * T // S
    head = x[:, : members * prefix].reshape(S, members, prefix, C)
    head = torch.cat([head[:, :, :1], local.reshape(S, members, n_loc, C)], dim=2).reshape(S, members * prefix, C)
    return torch.cat([head, x[:, members * prefix :]], dim=1)


def _fuse_clips(
    tempme: TempMeVideoEncoder,
    plan: LayerPlan,
    x: torch.Tensor,
    size: torch.Tensor | None,
    batch: int,
    prefix: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ClipMe's fusion (tempme.md §2.6): temporal position embedding, regroup, cross-clip merge."""
    S, N, C = x.shape  # S = batch * seqs_in
    if size is None:
        size = x.new_ones(S, N, 1)
    metric = x.detach()  # cross-clip metric: block input without the position embedding
    pos = tempme.temporal_pos_prompt[str(plan.index)].to(x.dtype)  # [seqs_in, C]
    x = (x.view(batch, plan.seqs_in, N, C) + pos[None, :, None, :]).view(S, N, C)
    protected_in = plan.protected_in * prefix
    x, metric, size = (regroup_sequences(t, plan.group, protected_in) for t in (x, metric, size))
    merge = bipartite_soft_matching(metric, plan.r_cross, plan.protected * prefix)
    return merge_wavg(merge, x, size)


def masked_mean_of_normalised(frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T, D]`` frame embeddings, ``[B, T]`` mask -> ``[B, D]`` unit mean of the unit frame vectors."""
    frames = F.normalize(frames.float(), dim=-1)
    mask = video_mask.to(frames.dtype).unsqueeze(-1)  # [B, T, 1]
    pooled = (frames * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    return F.normalize(pooled, dim=-1)


def pool_video(
    visual: VisionTransformer, tokens: VideoTokens, video_mask: torch.Tensor, output_type: str
) -> torch.Tensor:
    """The ``[B, D]`` video embedding (not normalised) per ``output_type`` (`tempme_composer.modules.stop.OUTPUT_TYPES`).

    ``frame_cls_mean`` uses ``video_mask``; STOP's output types ignore it, as the reference does.
    """
    if output_type == 'frame_cls_mean':
        return masked_mean_of_normalised(visual.project(tokens.frame_cls), video_mask)
    g = tokens.global_prompts
    if g is None:
        raise ValueError(f'output_type {output_type!r} needs STOP global prompts (model.stop.enabled)')
    if output_type == 'global_prompt0':
        return visual.project(g[:, 0])
    if output_type == 'average_global_prompt':
        return visual.project(g).mean(dim=1)
    if output_type == 'average_frame_cls_token':
        return visual.project(tokens.frame_cls).mean(dim=1)
    if output_type == 'average_global_prompt_and_frame_cls_token':
        return visual.project(torch.cat([g, tokens.frame_cls], dim=1)).mean(dim=1)
    raise ValueError(f'unknown output_type {output_type!r}')
