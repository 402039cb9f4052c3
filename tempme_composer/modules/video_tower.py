"""One video path through the CLIP vision tower, every part switchable: STOP prompts, TempMe merging, both.

`encode_video` runs ``[B, T, 3, H, W]`` frames through ``clip.visual`` (weights never copied) with

- STOP (``stop`` given): the pixel prompt (``clip.visual.TemporalPrompt``, if present) before patchify;
  ``N_loc`` local prompts per frame = that layer's generated prompts + the inter-frame prompt, fresh in
  every block (VPT-deep); ``N_g`` global prompts carried through; DGL's global–local attention;
- TempMe (``tempme`` given): its per-block plan (ImgMe, ClipMe fusion with the clip temporal position
  embedding, cross- and intra-clip merging, proportional attention ``log(size)``).

Token layout (docs/unified.md): per video, **sequences** (one per frame, one per clip after a ClipMe fusion)
of ``[CLS of each member frame, patch tokens]`` — the CLS prefix is protected from merging — plus two kinds
of prompt tokens that are never merged: the **local prompts** of each member frame and the **global
prompts**. Attention per block:

- sequence tokens attend to ``[global prompts; local prompts of the member frames; the sequence]``;
- global prompts attend to ``[global prompts; all local prompts; all sequence tokens]`` of their video.

This is exactly DGL's attention (docs/reference/stop.md#global-local-attention), with exact-output savings
over the reference: Q/K/V are projected once per token and reused by both attentions; local prompts, whose
block outputs the reference computes and then overwrites with the next layer's prompts, only provide
keys/values; the last block computes queries and MLP only for the tokens the readout uses (the global
prompts, and the frame CLS tokens if the ``output_type`` reads them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from tempme_composer.clip.towers import ResidualAttentionBlock, VisionTransformer
from tempme_composer.modules.merging import bipartite_soft_matching, merge_wavg, regroup_sequences

if TYPE_CHECKING:
    from tempme_composer.modules.stop import STOP
    from tempme_composer.modules.tempme import LayerPlan, TempMeVideoEncoder

__all__ = ['VideoTokens', 'encode_video', 'masked_mean_of_normalised', 'pool_video', 'readout_needs_cls']

CLS_READOUTS = ('average_frame_cls_token', 'average_global_prompt_and_frame_cls_token', 'frame_cls_mean')


class VideoTokens(NamedTuple):
    """Final hidden states (before ``ln_post``/``proj``)."""

    frame_cls: torch.Tensor | None  # [B, T, C] in frame order; None when the readout does not need them
    global_prompts: torch.Tensor | None  # [B, N_g, C] with STOP, else None


def readout_needs_cls(output_type: str) -> bool:
    """Whether an ``output_type`` reads the frame CLS tokens (else only the global prompts)."""
    return output_type in CLS_READOUTS


def encode_video(
    visual: VisionTransformer,
    video: torch.Tensor,
    *,
    tempme: TempMeVideoEncoder | None = None,
    stop: STOP | None = None,
    need_cls: bool = True,
) -> VideoTokens:
    """Run a video batch through the tower with the enabled parts (module doc).

    Args:
        visual: the CLIP vision tower (with ``TemporalPrompt`` attached when STOP uses it).
        video: ``[B, T, 3, H, W]`` normalised frames; every slot is encoded (padding included, like both
            references); ``T`` must equal the frames the plan / prompts were built for.
        need_cls: compute the frame CLS outputs of the last block (False: only the global prompts').
    """
    B, T = video.shape[:2]
    blocks = visual.transformer.resblocks
    for part, frames in (('TempMe', tempme and tempme.num_frames), ('STOP', stop and stop.num_frames)):
        if frames and frames != T:
            raise ValueError(f'{part} was built for {frames} frames per video (data.max_frames), got {T}')
    plans = tempme.plans if tempme is not None else None
    if plans is not None and len(plans) != len(blocks):
        raise ValueError(f'TempMe plan has {len(plans)} blocks, the vision tower {len(blocks)}')
    if stop is None and not need_cls:
        raise ValueError('without STOP the frame CLS tokens are the only readout (need_cls=True)')
    temporal = getattr(visual, 'TemporalPrompt', None) if stop is not None else None
    mask = None
    if temporal is not None:
        video, mask = temporal.spatial(video)
    x = visual.embed(video.flatten(0, 1))  # [B*T, 1 + P, C]
    C = x.shape[-1]
    local, g = None, None
    if stop is not None:
        prompts = stop.prompt_generator()  # input-independent: once per batch
        local = prompts.visual.to(x.dtype).view(len(blocks), 1, T, stop.local_prompts, C)  # [layers, 1, T, N_loc, C]
        if temporal is not None:
            local = local + temporal.inter_frame(x.view(B, T, -1, C), mask).unsqueeze(0)
        local = local.expand(-1, B, -1, -1, -1)  # [layers, B, T, N_loc, C]
        g = stop.global_prompt.to(x.dtype).expand(B, -1, -1)
    size = None  # [B*S, N, 1] once tokens merged
    members = 1  # frames per sequence = CLS tokens at the front of each sequence
    last = len(blocks) - 1
    for i, block in enumerate(blocks):
        plan = plans[i] if plans is not None else None
        if plan is not None and plan.fuses:
            x, size = _fuse_clips(tempme, plan, x, size, B)
            members = plan.protected
        queries = None if i < last else (members if need_cls else 0)  # last block: only what is read out
        x, g, keys = _attention_residual(block, x, size, g=g, local=None if local is None else local[i], queries=queries)
        if plan is not None and plan.r_intra and queries is None:
            merge = bipartite_soft_matching(keys, plan.r_intra, plan.protected)
            x, size = merge_wavg(merge, x, size)
        if x.shape[1]:
            x = block.mlp_residual(x)
        if g is not None:
            g = block.mlp_residual(g)
    cls = x[:, :members].reshape(B, T, C) if need_cls else None
    return VideoTokens(frame_cls=cls, global_prompts=g)


def _split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[n, L, 3C]`` → q, k, v each ``[n, heads, L, head_dim]``."""
    n, L, three_c = qkv.shape
    q, k, v = qkv.view(n, L, 3, heads, three_c // (3 * heads)).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def _per_video(t: torch.Tensor, batch: int) -> torch.Tensor:
    """``[B·S, H, L, d]`` → ``[B, H, S·L, d]`` (all sequences of a video side by side)."""
    BS, H, L, d = t.shape
    return t.view(batch, BS // batch, H, L, d).transpose(1, 2).reshape(batch, H, -1, d)


def _attention_residual(
    block: ResidualAttentionBlock,
    x: torch.Tensor,
    size: torch.Tensor | None,
    *,
    g: torch.Tensor | None = None,
    local: torch.Tensor | None = None,
    queries: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One block's attention residual for sequences ``x`` plus optional global and local prompt tokens.

    Args:
        block: the frozen CLIP block (``ln_1``, ``attn``; ``attn.project_qkv`` may carry TempMe's LoRA).
        x: ``[B·S, N, C]`` sequences, ``S`` per video, in video order.
        size: ``[B·S, N, 1]`` merged-token sizes (None: all 1); gives keys the bias ``log(size)``.
        g: ``[B, G, C]`` global prompts (STOP) or None.
        local: ``[B, T, N_loc, C]`` this layer's local prompts (STOP) or None; keys/values only.
        queries: leading tokens of each sequence that need an output (None: all); the rest are dropped.

    Returns:
        ``(x', g', keys)``: updated sequences (``[B·S, queries, C]`` if ``queries`` is set), updated global
        prompts, and the head-averaged keys of ``x`` ``[B·S, N, head_dim]`` (TempMe's merge metric).
    """
    attn = block.attn
    BS, N, C = x.shape
    heads = attn.heads
    qx, kx, vx = _split_heads(attn.project_qkv(block.ln_1(x)), heads)  # [B·S, H, N, d]
    keys = kx.mean(dim=1)
    bias_x = None if size is None else size.log().to(qx.dtype).transpose(1, 2).unsqueeze(1)  # [B·S, 1, 1, N]
    if g is None and local is None:  # plain (TempMe) attention
        k1, v1, bias1 = kx, vx, bias_x
    else:
        B = g.shape[0] if g is not None else local.shape[0]
        S = BS // B
        ctx_k, ctx_v = [], []  # per-sequence context keys in front of the sequence's own
        if g is not None:
            qg, kg, vg = _split_heads(attn.project_qkv(block.ln_1(g)), heads)  # [B, H, G, d]
            ctx_k.append(kg.repeat_interleave(S, dim=0))
            ctx_v.append(vg.repeat_interleave(S, dim=0))
        if local is not None:
            _, kl, vl = _split_heads(attn.project_qkv(block.ln_1(local.reshape(BS, -1, C))), heads)  # [B·S, H, m·N_loc, d]
            ctx_k.append(kl)
            ctx_v.append(vl)
        k1, v1 = torch.cat([*ctx_k, kx], dim=2), torch.cat([*ctx_v, vx], dim=2)
        n_ctx = k1.shape[2] - N
        bias1 = None if bias_x is None else F.pad(bias_x, (n_ctx, 0))
    if queries is not None:
        qx = qx[:, :, :queries]
        x = x[:, :queries]
    if x.shape[1]:
        out = F.scaled_dot_product_attention(qx, k1, v1, attn_mask=bias1)  # [B·S, H, q, d]
        x = x + attn.out_proj(out.transpose(1, 2).reshape(BS, x.shape[1], C))
    if g is not None:
        # Global prompts: keys [G; all local prompts; all sequence tokens] of the video, in any order.
        parts_k, parts_v = [kg], [vg]
        if local is not None:
            parts_k.append(_per_video(kl, B))
            parts_v.append(_per_video(vl, B))
        parts_k.append(_per_video(kx, B))
        parts_v.append(_per_video(vx, B))
        k2, v2 = torch.cat(parts_k, dim=2), torch.cat(parts_v, dim=2)
        bias2 = None
        if bias_x is not None:
            bias2 = F.pad(bias_x.reshape(B, 1, 1, S * N), (k2.shape[2] - S * N, 0))
        out = F.scaled_dot_product_attention(qg, k2, v2, attn_mask=bias2)  # [B, H, G, d]
        g = g + attn.out_proj(out.transpose(1, 2).reshape(B, g.shape[1], C))
    return x, g, keys


def _fuse_clips(
    tempme: TempMeVideoEncoder,
    plan: LayerPlan,
    x: torch.Tensor,
    size: torch.Tensor | None,
    batch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ClipMe's fusion: temporal position embedding, regroup, cross-clip merge (docs/reference/tempme.md)."""
    S, N, C = x.shape  # S = batch * seqs_in
    if size is None:
        size = x.new_ones(S, N, 1)
    metric = x.detach()  # cross-clip metric: block input without the position embedding
    pos = tempme.temporal_pos_prompt[str(plan.index)].to(x.dtype)  # [seqs_in, C]
    x = (x.view(batch, plan.seqs_in, N, C) + pos[None, :, None, :]).view(S, N, C)
    x, metric, size = (regroup_sequences(t, plan.group, plan.protected_in) for t in (x, metric, size))
    merge = bipartite_soft_matching(metric, plan.r_cross, plan.protected)
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
