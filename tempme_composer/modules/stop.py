"""STOP (Spatial–Temporal dynamic prOmPting, CVPR 2025) on top of DGL's prompts: the prompt parameters, the
deep text prompts and DGL's global–local attention (stop.md §2). Written from the spec, no reference code.

- `STOP` owns the shared `PromptGenerator` and the ``global_prompt`` tokens (names contain ``prompt``);
  the `TemporalPrompt` lives at ``clip.visual.TemporalPrompt`` and the bottleneck adapters at
  ``...resblocks.N.LoRA`` (`tempme_composer.modules.adapters`), as ARCHITECTURE.md names them.
- `encode_text_with_prompts`: ``[SOT, prefix prompts, tokens 1..L-1]`` with the prefix prompts replaced
  before every block (VPT-deep). The reference also appends ``N_txt/2`` postfix prompts after the text
  slots; under the causal mask no real token attends to them (stop.md §2.3: perturbing them changes
  nothing), so they are not run through the tower — identical output, 20 % fewer text tokens.
- `global_local_attention`: each frame (or TempMe clip) sequence attends to the global prompts and itself,
  the global prompts attend to all tokens of their video; Q/K/V are projected **once** per token through
  the block's ``project_qkv`` seam (the reference projects frame tokens twice and the global prompts once per
  frame), with proportional-attention bias ``log(size)`` on merged keys when TempMe merges.

The video path through the tower (prompts, merging, pooling) is `tempme_composer.modules.video_tower`.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tempme_composer.clip.model import Attention, ResidualAttentionBlock, TextTransformer
from tempme_composer.modules.prompt_generator import PromptGenerator, uniform_prompt_bound

__all__ = ['OUTPUT_TYPES', 'STOP', 'encode_text_with_prompts', 'global_local_attention']

log = logging.getLogger(__name__)

OUTPUT_TYPES = (
    'global_prompt0',  # first global prompt (STOP's default)
    'average_global_prompt',
    'average_frame_cls_token',
    'average_global_prompt_and_frame_cls_token',
    'frame_cls_mean',  # masked mean of the normalised frame-CLS embeddings (CLIP4Clip meanP / TempMe)
)


class STOP(nn.Module):
    """STOP's prompt parameters: the shared generator and the global visual prompts.

    Args:
        generator: the `PromptGenerator` (knows T, widths and layer counts).
        global_prompts: ``N_g`` video-level prompt tokens (uniform init, VPT bound of the patch size).
        patch_size: for the init bound.
        output_type: how a video embedding is read out (`OUTPUT_TYPES`).
    """

    def __init__(
        self,
        generator: PromptGenerator,
        *,
        global_prompts: int,
        patch_size: int,
        output_type: str = 'global_prompt0',
    ) -> None:
        super().__init__()
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f'STOP output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}')
        self.prompt_generator = generator
        bound = uniform_prompt_bound(patch_size, generator.vision_width)
        self.global_prompt = nn.Parameter(torch.empty(1, global_prompts, generator.vision_width).uniform_(-bound, bound))
        self.output_type = output_type

    @property
    def num_frames(self) -> int:
        return self.prompt_generator.num_frames

    @property
    def local_prompts(self) -> int:
        return self.prompt_generator.local_prompts

    @property
    def global_prompts(self) -> int:
        return self.global_prompt.shape[1]


def encode_text_with_prompts(text: TextTransformer, ids: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Text embeddings (unnormalised) with deep prefix prompts: ``[B, L]`` ids → ``[B, output_dim]``.

    Args:
        text: the CLIP text tower (its blocks may carry adapters / LoRA).
        ids: token ids, EOT = the row's largest id.
        prompts: ``[text_layers, N_txt, D_t]``; the first ``N_txt/2`` are the prefix prompts.
    """
    blocks = text.transformer.resblocks
    if prompts.shape[0] != len(blocks):
        raise ValueError(f'{prompts.shape[0]} layers of text prompts for a {len(blocks)}-block text tower')
    B = ids.shape[0]
    half = prompts.shape[1] // 2
    x = text.embed(ids)  # positional embeddings are added before the prompts are inserted
    prompts = prompts.to(x.dtype)
    for i, block in enumerate(blocks):
        prefix = prompts[i, :half].expand(B, half, -1)
        rest = x[:, 1:] if i == 0 else x[:, 1 + half :]
        x = block(torch.cat([x[:, :1], prefix, rest], dim=1), causal=True)
    x = text.ln_final(x)
    eot = ids.argmax(dim=-1) + half  # shifted by the prefix prompts
    return x[torch.arange(B, device=x.device), eot] @ text.text_projection


def _split_heads(qkv: torch.Tensor, attn: Attention) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[n, L, 3C]`` → q, k, v each ``[n, heads, L, head_dim]``."""
    n, L, _ = qkv.shape
    q, k, v = qkv.view(n, L, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def global_local_attention(
    block: ResidualAttentionBlock,
    x: torch.Tensor,
    g: torch.Tensor,
    size: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DGL's attention residual for one block (stop.md §2.5), K/V projected once.

    Args:
        block: the frozen CLIP block (``ln_1``, ``attn``; ``project_qkv`` may carry LoRA).
        x: ``[B·S, N, C]`` frame (or clip) sequences, ``S`` per video, in video order.
        g: ``[B, G, C]`` global prompts.
        size: ``[B·S, N, 1]`` merged-token sizes (None: all 1).

    Returns:
        ``(x + attn_x, g + attn_g, keys)`` with ``keys`` ``[B·S, N, head_dim]`` the head-averaged keys of
        ``x`` (TempMe's intra-merge metric).
    """
    attn = block.attn
    B, G, C = g.shape
    BS, N, _ = x.shape
    S = BS // B
    qx, kx, vx = _split_heads(attn.project_qkv(block.ln_1(x)), attn)  # [B·S, H, N, hd]
    qg, kg, vg = _split_heads(attn.project_qkv(block.ln_1(g)), attn)  # [B, H, G, hd]
    H, hd = kx.shape[1], kx.shape[3]
    # Frame/clip attention: keys and values [G; own sequence].
    k1 = torch.cat([kg.repeat_interleave(S, dim=0), kx], dim=2)
    v1 = torch.cat([vg.repeat_interleave(S, dim=0), vx], dim=2)
    # Global attention: keys and values [G; every token of the video].
    k2 = torch.cat([kg, kx.view(B, S, H, N, hd).transpose(1, 2).reshape(B, H, S * N, hd)], dim=2)
    v2 = torch.cat([vg, vx.view(B, S, H, N, hd).transpose(1, 2).reshape(B, H, S * N, hd)], dim=2)
    bias1 = bias2 = None
    if size is not None:
        log_size = size.log().to(qx.dtype).transpose(1, 2)  # [B·S, 1, N]
        bias1 = torch.cat([log_size.new_zeros(BS, 1, G), log_size], dim=2).unsqueeze(1)  # [B·S, 1, 1, G+N]
        bias2 = torch.cat([log_size.new_zeros(B, 1, G), log_size.reshape(B, 1, S * N)], dim=2).unsqueeze(1)
    out_x = F.scaled_dot_product_attention(qx, k1, v1, attn_mask=bias1)  # [B·S, H, N, hd]
    out_g = F.scaled_dot_product_attention(qg, k2, v2, attn_mask=bias2)  # [B, H, G, hd]
    out_x = attn.out_proj(out_x.transpose(1, 2).reshape(BS, N, C))
    out_g = attn.out_proj(out_g.transpose(1, 2).reshape(B, G, C))
    return x + out_x, g + out_g, kx.mean(dim=1)


OutputType = Literal[
    'global_prompt0',
    'average_global_prompt',
    'average_frame_cls_token',
    'average_global_prompt_and_frame_cls_token',
    'frame_cls_mean',
]
