"""CLIP ViT image tower and causal text tower, batch-first, with seams for prompts, LoRA and token merging.

Submodule and parameter names equal OpenAI's checkpoint keys (``ln_1``, ``attn.in_proj_weight``, ``mlp.c_fc``,
``ln_pre``, ``proj``, ...), except that the text tower lives under ``text.`` (see
``weights.openai_to_ours``), so an OpenAI state dict loads with ``strict=True``.
This module never touches the filesystem.

Seams later modules override or wrap instead of re-implementing the towers:

- ``Attention.project_qkv``: the fused QKV projection (LoRA wraps it).
- ``Attention.forward(x, attn_bias, return_keys)``: an additive bias on the attention logits (proportional
  attention for token merging passes ``log(size)``), kept on the ``F.scaled_dot_product_attention`` path;
  ``return_keys`` also returns the head-averaged keys (the merging metric).
- ``ResidualAttentionBlock.attention_residual`` / ``mlp_residual``: the two halves of a block (token merging
  runs between them).
- ``VisionTransformer.embed`` -> ``transformer`` -> ``pool`` (``project`` = ``ln_post`` then ``@ proj``), and
  ``TextTransformer.embed`` -> ``transformer`` -> ``pool``.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from tempme_composer.clip.config import CLIPConfig

__all__ = [
    'CLIP',
    'Attention',
    'LayerNorm',
    'QuickGELU',
    'ResidualAttentionBlock',
    'TextTransformer',
    'Transformer',
    'VisionTransformer',
]

log = logging.getLogger(__name__)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back (OpenAI CLIP), so fp16 activations stay numerically safe."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation ``x * sigmoid(1.702 x)``; the pretrained weights expect exactly it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter layout, batch-first.

    The fused ``in_proj_weight`` stacks the Q, K and V projections along dim 0 (``[3C, C]``), exactly as
    ``nn.MultiheadAttention`` and OpenAI checkpoints store them.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f'attention width ({width}) must be divisible by heads ({heads})')
        dd = {'device': device, 'dtype': dtype}
        self.width = width
        self.heads = heads
        self.head_dim = width // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width, **dd))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width, **dd))
        self.out_proj = nn.Linear(width, width, **dd)
        # nn.MultiheadAttention's defaults; CLIP's tower init overrides the weights.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """Fused QKV projection ``[N, L, C] -> [N, L, 3C]`` (Q, K, V concatenated); override to add LoRA."""
        return F.linear(x, self.in_proj_weight, self.in_proj_bias)

    def forward(
        self,
        x: torch.Tensor,
        attn_bias: torch.Tensor | None = None,
        causal: bool = False,
        return_keys: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attend over ``x`` of shape ``[N, L, C]``.

        Args:
            x: tokens, ``[N, L, C]``.
            attn_bias: optional additive float bias on the attention logits, broadcastable to
                ``[N, heads, L, L]`` (e.g. ``log(size)`` as ``[N, 1, 1, L]`` for proportional attention).
            causal: mask out keys after each query (text tower).
            return_keys: also return the keys averaged over heads (before the ``head_dim**-0.5`` scaling),
                ``[N, L, head_dim]`` — the token-merging metric.

        Returns:
            ``[N, L, C]``, or ``(out, keys)`` with ``return_keys``.
        """
        N, L, C = x.shape
        qkv = self.project_qkv(x)  # [N, L, 3C]
        qkv = qkv.view(N, L, 3, self.heads, self.head_dim)  # [N, L, 3, heads, head_dim]
        qkv = qkv.permute(2, 0, 3, 1, 4)  # [3, N, heads, L, head_dim]
        q, k, v = qkv.unbind(0)  # each [N, heads, L, head_dim]
        mask = None
        if attn_bias is not None:
            mask = attn_bias.to(q.dtype)
            if causal:
                # SDPA refuses is_causal together with attn_mask, so fold the causal mask into the bias.
                future = torch.ones(L, L, dtype=torch.bool, device=x.device).triu(1)  # [L, L]
                mask = mask.masked_fill(future, float('-inf'))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        out = out.transpose(1, 2).reshape(N, L, C)  # [N, heads, L, head_dim] -> [N, L, C]
        if return_keys:
            return self.out_proj(out), k.mean(dim=1)  # keys [N, heads, L, head_dim] -> [N, L, head_dim]
        return self.out_proj(out)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``, OpenAI's names."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        *,
        attn_layer: type[nn.Module] = Attention,
        norm_layer: type[nn.Module] = LayerNorm,
        act_layer: type[nn.Module] = QuickGELU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        hidden = int(width * mlp_ratio)
        self.ln_1 = norm_layer(width, **dd)
        self.attn = attn_layer(width, heads, **dd)
        self.ln_2 = norm_layer(width, **dd)
        self.mlp = nn.Sequential()
        self.mlp.add_module('c_fc', nn.Linear(width, hidden, **dd))
        self.mlp.add_module('gelu', act_layer())
        self.mlp.add_module('c_proj', nn.Linear(hidden, width, **dd))

    def attention_residual(
        self,
        x: torch.Tensor,
        attn_bias: torch.Tensor | None = None,
        causal: bool = False,
        return_keys: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x + attn(ln_1(x))``; with ``return_keys`` also the head-averaged keys (token merging seam)."""
        if return_keys:
            out, keys = self.attn(self.ln_1(x), attn_bias=attn_bias, causal=causal, return_keys=True)
            return x + out, keys
        return x + self.attn(self.ln_1(x), attn_bias=attn_bias, causal=causal)

    def mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        """``x + mlp(ln_2(x))``."""
        return x + self.mlp(self.ln_2(x))

    def forward(
        self, x: torch.Tensor, attn_bias: torch.Tensor | None = None, causal: bool = False
    ) -> torch.Tensor:
        """``[N, L, C] -> [N, L, C]``; ``attn_bias`` and ``causal`` go to ``Attention.forward``."""
        return self.mlp_residual(self.attention_residual(x, attn_bias=attn_bias, causal=causal))


class Transformer(nn.Module):
    """A stack of ``ResidualAttentionBlock``s in ``resblocks`` (indexable: blocks can be swapped)."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, device=device, dtype=dtype) for _ in range(layers)
        )

    def forward(
        self, x: torch.Tensor, attn_bias: torch.Tensor | None = None, causal: bool = False
    ) -> torch.Tensor:
        """``[N, L, C] -> [N, L, C]``; the same bias/causality is applied in every block."""
        for block in self.resblocks:
            x = block(x, attn_bias=attn_bias, causal=causal)
        return x

    def init_weights(self) -> None:
        """OpenAI CLIP's init: normal weights with std scaled by width and depth, zero biases."""
        proj_std = self.width**-0.5 * (2 * self.layers) ** -0.5  # residual-branch outputs shrink with depth
        attn_std = self.width**-0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.zeros_(block.mlp.c_fc.bias)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            nn.init.zeros_(block.mlp.c_proj.bias)


class VisionTransformer(nn.Module):
    """CLIP's ViT image tower: ``embed`` (patches, CLS, positions) -> ``transformer`` -> ``pool`` (CLS@proj).

    Inside the tower tokens are ``[N, num_visual_tokens, width]`` with the class token first; for video,
    ``N`` is ``batch * frames``.
    """

    def __init__(
        self,
        image_resolution: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if image_resolution % patch_size:
            raise ValueError(
                f'image_resolution ({image_resolution}) must be divisible by patch_size ({patch_size})'
            )
        dd = {'device': device, 'dtype': dtype}
        self.image_resolution = image_resolution
        self.patch_size = patch_size
        self.grid_size = image_resolution // patch_size
        self.num_tokens = self.grid_size**2 + 1
        self.width = width
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False, **dd)
        self.class_embedding = nn.Parameter(torch.empty(width, **dd))
        self.positional_embedding = nn.Parameter(torch.empty(self.num_tokens, width, **dd))
        self.ln_pre = LayerNorm(width, **dd)
        self.transformer = Transformer(width, layers, heads, **dd)
        self.ln_post = LayerNorm(width, **dd)
        self.proj = nn.Parameter(torch.empty(width, output_dim, **dd))
        self.init_weights()

    def init_weights(self) -> None:
        """OpenAI's vision init: embeddings and projection ~ N(0, width^-1/2), blocks as ``Transformer``."""
        scale = self.width**-0.5
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding, std=scale)
        nn.init.normal_(self.proj, std=scale)
        self.transformer.init_weights()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patchify and embed ``[N, 3, H, W]`` images into ``[N, num_tokens, width]`` (``ln_pre`` applied)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f'expected images of shape [N, 3, H, W], got {list(images.shape)}')
        N, _, H, W = images.shape
        if (H, W) != (self.image_resolution, self.image_resolution):
            raise ValueError(
                f'image size {H}x{W} does not match the model image_resolution '
                f'{self.image_resolution}x{self.image_resolution}'
            )
        x = self.conv1(images.to(self.conv1.weight.dtype))  # [N, width, grid, grid]
        x = x.flatten(2).transpose(1, 2)  # [N, grid*grid, width]
        cls = self.class_embedding.to(x.dtype).expand(N, 1, -1)  # [N, 1, width]
        x = torch.cat([cls, x], dim=1)  # [N, num_tokens, width]
        x = x + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post`` then ``@ proj`` on any tokens: ``[..., width] -> [..., output_dim]`` (TempMe seam)."""
        return self.ln_post(tokens) @ self.proj

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Project the class token: ``[N, L, width] -> [N, output_dim]``."""
        return self.project(x[:, 0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W] -> [N, output_dim]`` image embeddings (unnormalised)."""
        return self.pool(self.transformer(self.embed(images)))


class TextTransformer(nn.Module):
    """CLIP's causal text tower, pooled at the end-of-text token (the highest id of each row, like OpenAI)."""

    def __init__(
        self,
        context_length: int,
        vocab_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.width = width
        self.output_dim = output_dim
        self.token_embedding = nn.Embedding(vocab_size, width, **dd)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width, **dd))
        self.transformer = Transformer(width, layers, heads, **dd)
        self.ln_final = LayerNorm(width, **dd)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim, **dd))
        self.init_weights()

    def init_weights(self) -> None:
        """OpenAI's text init (``CLIP.initialize_parameters``)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.width**-0.5)
        self.transformer.init_weights()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token plus positional embeddings: ``[B, L]`` ids -> ``[B, L, width]``, ``L <= context_length``."""
        if ids.ndim != 2:
            raise ValueError(f'expected token ids of shape [B, L], got {list(ids.shape)}')
        L = ids.shape[1]
        if L > self.context_length:
            raise ValueError(f'text length {L} exceeds the model context_length {self.context_length}')
        return self.token_embedding(ids) + self.positional_embedding[:L]

    def pool(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Project the hidden state at each row's EOT (argmax id): ``[B, L, width] -> [B, output_dim]``."""
        x = self.ln_final(x)
        eot = ids.argmax(dim=-1)  # [B]; EOT (49407) is the largest id in the vocabulary
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` token ids -> ``[B, output_dim]`` text embeddings (unnormalised)."""
        x = self.transformer(self.embed(ids), causal=True)
        return self.pool(x, ids)


class CLIP(nn.Module):
    """OpenAI-compatible ViT CLIP: ``visual`` and ``text`` towers and the learned temperature ``logit_scale``.

    Built from a ``CLIPConfig`` with random OpenAI-style init; load pretrained weights with
    ``tempme_composer.clip.weights.load_clip``.
    """

    def __init__(
        self,
        config: CLIPConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.config = config
        self.visual = VisionTransformer(
            image_resolution=config.image_resolution,
            patch_size=config.vision_patch_size,
            width=config.vision_width,
            layers=config.vision_layers,
            heads=config.vision_heads,
            output_dim=config.embed_dim,
            **dd,
        )
        self.text = TextTransformer(
            context_length=config.context_length,
            vocab_size=config.vocab_size,
            width=config.transformer_width,
            layers=config.transformer_layers,
            heads=config.transformer_heads,
            output_dim=config.embed_dim,
            **dd,
        )
        self.logit_scale = nn.Parameter(torch.full((), math.log(1 / 0.07), **dd))
        self.register_load_state_dict_pre_hook(CLIP._accept_either_logit_scale)

    @staticmethod
    def _accept_either_logit_scale(module: CLIP, state_dict: dict, prefix: str, *_: object) -> None:
        """Load a 0-d (OpenAI, DDP runs) or 1-element (FSDP runs, see ``tempme_composer.fsdp``) logit_scale."""
        key = prefix + 'logit_scale'
        value = state_dict.get(key)
        own = module.logit_scale
        if isinstance(value, torch.Tensor) and value.numel() == 1 == own.numel() and value.shape != own.shape:
            state_dict[key] = value.reshape(own.shape)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W] -> [N, embed_dim]`` (unnormalised)."""
        return self.visual(images)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` ids -> ``[B, embed_dim]`` (unnormalised)."""
        return self.text(ids)

    def forward(
        self, images: torch.Tensor, ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L2-normalised image and text features plus ``logit_scale.exp()`` (open_clip's convention)."""
        image_features = F.normalize(self.encode_image(images), dim=-1)
        text_features = F.normalize(self.encode_text(ids), dim=-1)
        return image_features, text_features, self.logit_scale.exp()
