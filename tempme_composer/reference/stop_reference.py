"""A straightforward, reference-shaped implementation of STOP's forward math.

The math is docs/reference/stop.md#forward-pass-in-brief.

This is the **baseline** that the efficient STOP path (`tempme_composer.modules.stop`,
`tempme_composer.modules.video_tower`, `tempme_composer.modules.temporal_prompt`) is tested and benchmarked
against. It is never used for training. It reads the *same* parameters from a `UnifiedModel` built with
STOP (``model.stop``, ``model.clip.visual.TemporalPrompt``, the ``LoRA`` adapters), so the outputs of both
paths are directly comparable, but it re-derives every step from that description and follows the structure
of the official code (commit ``7253928``) rather than the efficient code:

- the prompt generator is recomputed for every sample (`reference_prompts` expands the batch, as the
  reference's ``encode_prompt(B)`` does);
- the text sequence is ``L + N_txt`` long **with** the ``N_txt/2`` postfix prompts (they cannot change the
  output under the causal mask, docs/reference/stop.md#text-prompts); prefix and postfix prompts are replaced
  before every block ``ℓ ≥ 1``; EOT position = ``argmax(ids) + N_txt/2``;
- the pixel prompt runs in the default ``[B, 3, T, H, W]`` (NCDHW) layout with ``Cal_Net`` evaluated under
  autograd (its hard top-k mask still gives it no gradient); the mask pooling follows
  ``TemporalPrompt.mask_pooling`` and the top-k ``TemporalPrompt.salient_cells``; ``dropout1`` once and
  ``dropout2`` twice, in the reference's places;
- the inter-frame prompt is self-attention over all ``T·P`` patch tokens of a video, ``Cal_Net_Inter``
  frame weights with the ``(1 + mask)`` boost, min-max normalised over the whole batch when
  ``TemporalPrompt.frame_weight_norm == 'batch'`` (the reference) or per video otherwise (a constant set
  maps to 0);
- the visual sequence is token-major like the reference: ``[N_g global prompts]`` then token ``j`` of frame
  ``t`` at index ``N_g + j·T + t``; every block runs the frame attention as a Python loop over frames with
  keys/values ``[LN(G); LN(F_t)]`` projected per frame, then the global attention over
  ``[LN(G); all LN(F)]`` projected again, then ``x + mlp(ln_2(x)) + scale·LoRA(x)``;
- ``ln_post`` and ``proj`` run on **all** tokens, then the readout picks per ``model.stop.output_type``.

Attention is written out as explicit matmul + softmax (no fused kernel), so
`torch.utils.flop_counter.FlopCounterMode` also counts the attention-score matmuls.

**Meta device.** Nothing here reads tensor values on the host (no ``.item()``, no data-dependent Python
control flow), so both encoders run on ``device='meta'``: build the model with
``CLIP(CLIP_PRESETS['ViT-B/32'], device='meta')`` and ``UnifiedModel.from_config(...).to('meta')``, pass
``torch.empty(..., device='meta')`` inputs, and wrap the call in ``FlopCounterMode`` to count the
reference's FLOPs (e.g. ViT-B/32 at 12 frames) without allocating any memory.

Only STOP without TempMe is supported, with ``spatial_stride == 1`` (the reference has no stride), and the
reference's four output types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tempme_composer.clip.towers import Attention

if TYPE_CHECKING:
    from tempme_composer.model import UnifiedModel

__all__ = ['REFERENCE_OUTPUT_TYPES', 'ReferencePrompts', 'reference_encode_text', 'reference_encode_video',
           'reference_prompts']

PROMPT_WEIGHT = 0.05  # the reference's fixed weight of the pixel prompt and of the inter-frame prompt

REFERENCE_OUTPUT_TYPES = (
    'global_prompt0',
    'average_global_prompt',
    'average_frame_cls_token',
    'average_global_prompt_and_frame_cls_token',
)


class ReferencePrompts(NamedTuple):
    """Per-sample deep prompts, as the reference's ``encode_prompt(B)`` returns them (with a batch axis)."""

    text: torch.Tensor  # [B, text_layers, N_txt, D_t]: prefix rows [:N_txt/2], postfix rows [N_txt/2:]
    visual: torch.Tensor  # [B, vision_layers, T * N_loc, D_v], frame-major (row t·N_loc + k)


# ----------------------------------------------------------------------------------------------------------
# Small explicit building blocks
# ----------------------------------------------------------------------------------------------------------


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    out_proj: nn.Linear,
    causal: bool = False,
) -> torch.Tensor:
    """Multi-head attention of projected queries ``[N, Lq, C]`` over projected keys/values ``[N, L, C]``.

    Explicit ``softmax(q kᵀ / sqrt(d)) v`` per head, then ``out_proj``; returns ``[N, Lq, C]``.
    """
    N, Lq, C = q.shape
    L = k.shape[1]
    hd = C // heads
    q = q.reshape(N, Lq, heads, hd).transpose(1, 2)  # [N, h, Lq, hd]
    k = k.reshape(N, L, heads, hd).transpose(1, 2)
    v = v.reshape(N, L, heads, hd).transpose(1, 2)
    scores = (q * hd**-0.5) @ k.transpose(-2, -1)  # [N, h, Lq, L]
    if causal:
        future = torch.ones(Lq, L, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float('-inf'))
    out = scores.softmax(dim=-1) @ v  # [N, h, Lq, hd]
    return out_proj(out.transpose(1, 2).reshape(N, Lq, C))


def _project(attn: nn.Module, x: torch.Tensor, part: str) -> torch.Tensor:
    """Input projection of a CLIP `Attention` or an ``nn.MultiheadAttention``: ``part`` in ``q``, ``kv``, ``qkv``.

    Like ``nn.MultiheadAttention`` with separate query and key inputs (the reference), only the rows of
    ``in_proj_weight`` that are needed are applied: Q for the query tokens, K/V for the key tokens. A CLIP
    attention whose ``project_qkv`` is overridden (TempMe's QKV LoRA) is projected through that seam and
    sliced, so the update applies (at the cost of computing the unused part).
    """
    C = x.shape[-1]
    rows = {'q': slice(0, C), 'kv': slice(C, 3 * C), 'qkv': slice(0, 3 * C)}[part]
    if isinstance(attn, Attention) and type(attn).project_qkv is not Attention.project_qkv:
        return attn.project_qkv(x)[..., rows]
    return F.linear(x, attn.in_proj_weight[rows], attn.in_proj_bias[rows])


def _self_attention(attn: nn.Module, x: torch.Tensor, heads: int, causal: bool = False) -> torch.Tensor:
    """Self-attention of ``x`` ``[N, L, C]`` with ``attn``'s weights (no LN, no residual)."""
    q, k, v = _project(attn, x, 'qkv').chunk(3, dim=-1)
    return _attend(q, k, v, heads, attn.out_proj, causal=causal)


def _cross_attention(attn: nn.Module, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``queries`` ``[N, Lq, C]`` attend over ``keys`` ``[N, L, C]`` (also the values), ``attn``'s weights."""
    k, v = _project(attn, keys, 'kv').chunk(2, dim=-1)
    return _attend(_project(attn, queries, 'q'), k, v, attn.heads, attn.out_proj)


def _mlp_residual(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x + mlp(ln_2(x)) (+ scale · LoRA(x))``: the adapter reads the un-normalised stream.

    docs/reference/stop.md#adapters.
    """
    out = x + block.mlp(block.ln_2(x))
    adapter = getattr(block, 'LoRA', None)
    if adapter is not None:
        out = out + block.adapter_scale * adapter(x)
    return out


def _min_max(m: torch.Tensor, over_batch: bool) -> torch.Tensor:
    """Min-max normalise ``[B, T]`` over all ``B·T`` values (reference) or per row; a constant set → 0."""
    if over_batch:
        lo, hi = m.amin(), m.amax()
    else:
        lo, hi = m.amin(dim=1, keepdim=True), m.amax(dim=1, keepdim=True)
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (m - lo) / safe, torch.zeros_like(m))


def _check_model(model: UnifiedModel) -> None:
    if model.stop is None:
        raise ValueError('the STOP reference needs a model built with model.stop.enabled')
    if model.tempme is not None:
        raise ValueError('the STOP reference supports STOP without TempMe only')


# ----------------------------------------------------------------------------------------------------------
# Prompt generator, recomputed per sample
# ----------------------------------------------------------------------------------------------------------


def reference_prompts(model: UnifiedModel, batch_size: int) -> ReferencePrompts:
    """The shared generator's prompts, recomputed for each of ``batch_size`` samples.

    docs/reference/stop.md#shared-prompt-generator.

    Transformer mode: embedding rows ``0..N_u-1`` looked up per sample, viewed ``[N_u, layers, D_v]``; every
    (sample, layer) pair is an independent ``N_u``-token sequence through the pre-LN prompt block; text
    prompts through ``unified_prompt_mlp``. Linear mode: ``V_ℓ`` per layer; text = ``[prefix(V), postfix(V)]``,
    visual = ``V`` tiled over the ``T`` frames.
    """
    _check_model(model)
    gen = model.stop.prompt_generator
    B, layers, D_v = batch_size, gen.layers, gen.vision_width
    T, n_loc = gen.num_frames, gen.local_prompts
    if gen.mode == 'transformer':
        weight = gen.unified_prompt_embedding.weight  # [N_u, layers * D_v]
        N_u = weight.shape[0]
        tokens = torch.arange(N_u, device=weight.device).unsqueeze(0).expand(B, N_u)
        e = F.embedding(tokens, weight)  # [B, N_u, layers * D_v]
        e = e.view(B, N_u, layers, D_v).permute(0, 2, 1, 3).reshape(B * layers, N_u, D_v)
        block = gen.prompt_transformer
        a = e + _self_attention(block.attn, block.ln_1(e), block.attn.heads)
        z = _mlp_residual(block, a).view(B, layers, N_u, D_v)
        n_txt = gen.text_prompts
        text = gen.unified_prompt_mlp(z[:, :, :n_txt])  # [B, layers, N_txt, D_t]
        visual = z[:, :, n_txt:]  # [B, layers, T * N_loc, D_v]
    else:
        v = gen.visual_prompt_embedding.expand(B, -1, -1)  # [B, N_loc, layers * D_v]
        v = v.reshape(B, n_loc, layers, D_v).permute(0, 2, 1, 3)  # [B, layers, N_loc, D_v]
        text = torch.cat([gen.prefix_text_prompt_proj(v), gen.postfix_text_prompt_proj(v)], dim=2)
        visual = v.repeat(1, 1, T, 1)  # frame t, prompt k at row t·N_loc + k
    return ReferencePrompts(text=text[:, : gen.text_layers], visual=visual[:, : gen.vision_layers])


# ----------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------


def reference_encode_text(
    model: UnifiedModel, ids: torch.Tensor, prompts: ReferencePrompts | None = None
) -> torch.Tensor:
    """``[B, L]`` token ids → **unnormalised** ``[B, D]`` text features (docs/reference/stop.md#text-prompts).

    Args:
        model: a `UnifiedModel` with STOP.
        ids: CLIP token ids, EOT = the largest id of each row (after SOT at position 0).
        prompts: per-sample prompts (default: `reference_prompts` for this batch); pass modified ones to probe
            e.g. that the postfix prompts have no effect.
    """
    _check_model(model)
    text = model.clip.text
    B, L = ids.shape
    if prompts is None:
        prompts = reference_prompts(model, B)
    p = prompts.text  # [B, layers, N_txt, D_t]
    n_txt = p.shape[2]
    half = n_txt // 2
    e = text.token_embedding(ids) + text.positional_embedding[:L]  # positions added before the insertion
    p = p.to(e.dtype)
    # [SOT, prefix prompts, text tokens 1..L-1, postfix prompts]: L + N_txt tokens.
    h = torch.cat([e[:, :1], p[:, 0, :half], e[:, 1:], p[:, 0, half:]], dim=1)
    for i, block in enumerate(text.transformer.resblocks):
        if i > 0:  # deep prompts: overwrite the prefix and postfix slots with this layer's prompts
            h = torch.cat([h[:, :1], p[:, i, :half], h[:, 1 + half : L + half], p[:, i, half:]], dim=1)
        a = h + _self_attention(block.attn, block.ln_1(h), block.attn.heads, causal=True)
        h = _mlp_residual(block, a)
    h = text.ln_final(h)
    eot = ids.argmax(dim=-1) + half  # argmax of the reference's prompt_token vector (0 at prompt slots)
    return h[torch.arange(B, device=h.device), eot] @ text.text_projection


# ----------------------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------------------


def _grid_index(size: int, grid: int, pooling: str, device: torch.device) -> torch.Tensor:
    """Cell index of each pixel along one axis: ``r mod grid`` (lattice) or ``r // (size/grid)`` (patch)."""
    r = torch.arange(size, device=device)
    return r % grid if pooling == 'lattice' else r // (size // grid)


def _pixel_prompt(tp: nn.Module, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intra-frame prompt: ``[B, T, 3, H, W]`` → (prompted frames, bool mask ``[B, T, g, g]``).

    docs/reference/stop.md#intra-frame-prompt.
    """
    B, T, _, H, W = video.shape
    g, k = tp.grid, tp.salient_cells
    x = video.permute(0, 2, 1, 3, 4)  # [B, 3, T, H, W], the reference's NCDHW layout
    # Region mask from the (untrained) Cal_Net score, evaluated under autograd like the reference.
    score = tp.Cal_Net(x)[:, 0]  # [B, T, H, W]
    if tp.mask_pooling == 'lattice':  # each axis viewed as (H/g, g), mean over the first: a mod-g lattice
        cells = score.reshape(B, T, H // g, g, W // g, g).mean(dim=(2, 4))
    else:  # the pixels under each ViT patch
        cells = score.reshape(B, T, g, H // g, g, W // g).mean(dim=(3, 5))
    flat = cells.reshape(B, T, g * g)
    threshold = flat.sort(dim=-1, descending=True).values[..., k : k + 1]  # the (k+1)-th largest
    mask = (flat > threshold).reshape(B, T, g, g)
    rows = _grid_index(H, g, tp.mask_pooling, video.device)
    cols = _grid_index(W, g, tp.mask_pooling, video.device)
    pixel_mask = mask.index_select(2, rows).index_select(3, cols)  # [B, T, H, W]
    # Prompt R: Conv stack → dropout1 → per-pixel MLP → dropout2 twice.
    feats = tp.dropout1(tp.Conv(x))  # [B, 16, T, H, W]
    r = tp.MLP(feats.permute(0, 2, 3, 4, 1))  # [B, T, H, W, 3]
    r = tp.dropout2(r)
    r = tp.dropout2(r)
    r = r.permute(0, 1, 4, 2, 3)  # [B, T, 3, H, W]
    m = pixel_mask.unsqueeze(2).to(r.dtype)
    return video + PROMPT_WEIGHT * r + PROMPT_WEIGHT * r * m, mask


def _inter_frame_prompt(tp: nn.Module, tokens: torch.Tensor, mask: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """Inter-frame prompt: ``[B·T, 1 + P, C]`` embedded tokens → ``[B, T, N_loc, C]``.

    docs/reference/stop.md#inter-frame-prompt.
    """
    _, N, C = tokens.shape
    P = N - 1
    patches = tokens[:, 1:].reshape(B, T * P, C)  # one sequence of all patch tokens per video
    h = _self_attention(tp.Attention, patches, tp.Attention.num_heads)  # no LN, no residual
    vol = h.reshape(B, 1, T, P, C)  # a 1-channel (T, P, C) volume
    cal = tp.Cal_Net_Inter(vol)[:, 0]  # [B, T, P, C]
    cal = cal * (1.0 + mask.reshape(B, T, P, 1).to(cal.dtype))
    m = _min_max(cal.mean(dim=(2, 3)), over_batch=tp.frame_weight_norm == 'batch')  # [B, T]
    q = tp.InterConv(vol)[:, 0]  # [B, T, P, C]
    q = tp.InterMLP(q.transpose(2, 3)).transpose(2, 3)  # patch axis → N_loc prompts: [B, T, N_loc, C]
    q = q * (1.0 + m)[:, :, None, None]
    return PROMPT_WEIGHT * q


def reference_encode_video(
    model: UnifiedModel, video: torch.Tensor, prompts: ReferencePrompts | None = None
) -> torch.Tensor:
    """``[B, T, 3, H, W]`` normalised frames → **unnormalised** ``[B, D]`` video features.

    docs/reference/stop.md, from "Visual prompts" to "Output pooling".

    Args:
        model: a `UnifiedModel` with STOP (``TemporalPrompt`` optional) and without TempMe.
        video: frames; ``T`` must be the number of frames the model was built for.
        prompts: per-sample prompts (default: `reference_prompts` for this batch).

    Raises:
        ValueError: wrong frame count, an unsupported model (TempMe, ``spatial_stride > 1``) or output type.
    """
    _check_model(model)
    stop = model.stop
    visual = model.clip.visual
    if video.ndim != 5:
        raise ValueError(f'expected video of shape [B, T, 3, H, W], got {list(video.shape)}')
    B, T = video.shape[:2]
    if T != stop.num_frames:
        raise ValueError(f'STOP was built for {stop.num_frames} frames per video, got a video of {T} frames')
    output_type = stop.output_type
    if output_type not in REFERENCE_OUTPUT_TYPES:
        raise ValueError(f'the STOP reference reads out {list(REFERENCE_OUTPUT_TYPES)}, not {output_type!r}')
    tp = getattr(visual, 'TemporalPrompt', None)
    if tp is not None and tp.spatial_stride != 1:
        raise ValueError(f'the STOP reference has no spatial_stride (got {tp.spatial_stride}); use 1')
    if prompts is None:
        prompts = reference_prompts(model, B)
    blocks = visual.transformer.resblocks
    n_loc = stop.local_prompts

    mask = None
    if tp is not None:
        video, mask = _pixel_prompt(tp, video)
    tokens = visual.embed(video.reshape(B * T, *video.shape[2:]))  # [B·T, 1 + P, C] (CLS, pos, ln_pre)
    C = tokens.shape[-1]
    P = tokens.shape[1] - 1
    local = prompts.visual.to(tokens.dtype).reshape(B, len(blocks), T, n_loc, C)  # [B, layers, T, N_loc, C]
    if tp is not None:
        local = local + _inter_frame_prompt(tp, tokens, mask, B, T).unsqueeze(1)  # same for every layer
    g = stop.global_prompt.to(tokens.dtype).expand(B, -1, -1)  # [B, N_g, C]
    G = g.shape[1]

    # Per-frame tokens [CLS, N_loc local prompts, P patches], then token-major: token j of frame t at N_g + j·T + t.
    frames = tokens.reshape(B, T, 1 + P, C)
    frames = torch.cat([frames[:, :, :1], local[:, 0], frames[:, :, 1:]], dim=2)  # [B, T, N_f, C]
    N_f = frames.shape[2]
    x = torch.cat([g, frames.transpose(1, 2).reshape(B, N_f * T, C)], dim=1)  # [B, N_g + N_f·T, C]

    for i, block in enumerate(blocks):
        if i > 0:  # replace every frame's local prompts (token-major slots j = 1..N_loc)
            f = x[:, G:].reshape(B, N_f, T, C)
            f = torch.cat([f[:, :1], local[:, i].transpose(1, 2), f[:, 1 + n_loc :]], dim=1)
            x = torch.cat([x[:, :G], f.reshape(B, N_f * T, C)], dim=1)
        xl = block.ln_1(x)
        g_ln = xl[:, :G]
        f_ln = xl[:, G:].reshape(B, N_f, T, C)
        # Frame attention, frame by frame: queries F_t, keys/values [LN(G); LN(F_t)] projected for this frame.
        outs = []
        for t in range(T):
            keys = torch.cat([g_ln, f_ln[:, :, t]], dim=1)  # [B, N_g + N_f, C]
            outs.append(_cross_attention(block.attn, f_ln[:, :, t], keys))
        frame_out = torch.stack(outs, dim=2)  # [B, N_f, T, C] (token-major)
        # Global attention: queries G, keys/values [LN(G); every frame token of the video], projected again.
        global_out = _cross_attention(block.attn, g_ln, xl)  # xl = [LN(G); all LN(F)]: [B, N_g, C]
        x = x + torch.cat([global_out, frame_out.reshape(B, N_f * T, C)], dim=1)
        x = _mlp_residual(block, x)

    y = visual.ln_post(x) @ visual.proj  # every token: [B, N_g + N_f·T, D]
    if output_type == 'global_prompt0':
        return y[:, 0]
    if output_type == 'average_global_prompt':
        return y[:, :G].mean(dim=1)
    if output_type == 'average_frame_cls_token':  # the T frame-CLS tokens are j = 0: indices N_g .. N_g+T-1
        return y[:, G : G + T].mean(dim=1)
    return y[:, : G + T].mean(dim=1)  # average_global_prompt_and_frame_cls_token
