"""STOP's ``TemporalPrompt`` (``TemporalPrompt_3`` in the reference), stateless.

STOP paper (CVPR 2025); docs/reference/stop.md#intra-frame-prompt and #inter-frame-prompt.

Part 1, `TemporalPrompt.spatial` — the intra-frame prompt in pixel space: a Conv3d stack over the
``[B, 3, T, H, W]`` video, a per-pixel MLP → prompt ``R``; a saliency mask ``M`` from the untrained
``Cal_Net`` score pooled to the patch grid (top ``salient_cells`` cells); ``X' = X + 0.05·R + 0.05·R·M``.

Part 2, `TemporalPrompt.inter_frame` — the inter-frame prompt in token space: self-attention over all
patch tokens of a video, frame weights ``m_t`` from ``Cal_Net_Inter`` (boosted on salient patches),
``InterConv`` + ``InterMLP`` (patch axis → ``N_loc`` prompts), output ``0.05·(1 + m_t)·Q_t`` per frame.

Deviations from the reference, all options (defaults first):

- ``frame_weight_norm='video'``: ``m`` is min-max normalised over each video's T frames, so a video's
  embedding does not depend on its batch (exact evaluation). ``'batch'`` is the reference (over all B·T).
  A constant set of scores (e.g. one frame) gives ``m = 0`` instead of the reference's NaN.
- ``mask_pooling='lattice'`` reproduces the reference's pooling (cell ``(a, b)`` = mean of pixels with
  ``row ≡ a``, ``col ≡ b`` mod grid, docs/reference/stop.md, "Reference bugs" item 5); ``'patch'`` pools the
  pixels under each ViT patch.
- ``conv_impl='auto'`` runs the pixel Conv stack and the token-space convolutions (``InterConv``,
  ``Cal_Net_Inter``) as `fft_conv3d` (the same sums via FFT, identical up to fp32 rounding) on the devices
  where it measured faster (`FFT_CONV_DEVICES`: CPU and CUDA), else as Conv3d; ``'fft'`` and ``'direct'``
  force one. ``Cal_Net`` (forward only, one output channel) stays a Conv3d.
- ``spatial_stride=1`` is exact; ``s > 1`` runs the Conv stack and MLP on an ``s×``-average-pooled video and
  upsamples ``R`` (nearest) — ``s²×`` cheaper, accuracy unknown until trained (off by default).

Every size is derived from the tower: grid = ``H / patch``, ``P = grid²`` patches, width ``C``. Efficiency
(identical outputs and gradients): ``Cal_Net`` runs without autograd (its hard top-k mask gives it no
gradient anyway); with ``conv_impl='direct'`` the pixel Conv3d stack runs in ``channels_last_3d`` memory
format, whose backward is several times faster on CPU (oneDNN) than the default layout, and the token-space
convolutions use `token_conv3d`, whose weight gradient avoids PyTorch's 10-30 s CPU path.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tempme_composer.modules.fft_conv import fft_conv3d

__all__ = [
    'CONV_IMPLS',
    'FFT_CONV_DEVICES',
    'TemporalPrompt',
    'normalise_frame_weights',
    'pool_to_grid',
    'resolve_conv_impl',
    'top_cells_mask',
]

PROMPT_SCALE = 0.05  # the reference's fixed prompt weight (pixel and token prompts)
CONV_IMPLS = ('auto', 'direct', 'fft')
# Devices where `fft_conv3d` trains the pixel Conv stack faster than Conv3d (docs/benchmarks.md#stops-pixel-convolutions: bench conv on a
# 2-core CPU; H100 with the earlier FFT path, to be confirmed per GPU by scripts/gpu_check.sh).
FFT_CONV_DEVICES = ('cpu', 'cuda')


def resolve_conv_impl(conv_impl: str, device: torch.device) -> str:
    """``'direct'`` or ``'fft'`` for the pixel Conv stack on ``device`` (``'auto'``: fft on `FFT_CONV_DEVICES`)."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f'conv_impl must be one of {list(CONV_IMPLS)}, got {conv_impl!r}')
    if conv_impl == 'auto':
        return 'fft' if device.type in FFT_CONV_DEVICES else 'direct'
    return conv_impl


def _conv3d(cin: int, cout: int, kernel: tuple[int, int, int]) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel, padding=tuple(k // 2 for k in kernel))


class _TapGradConv3d(torch.autograd.Function):
    """``F.conv3d`` with 'same' padding (odd kernel, stride 1) whose backward avoids PyTorch's slow CPU paths.

    The token-space convolutions of the inter-frame prompt have 1 input or 1 output channel and large
    kernels (3x15x25); PyTorch's Conv3d weight gradient for them takes 10-30 s per video on a 2-core CPU.
    Same sums, different order: the input gradient is the 'same' convolution of the output gradient with the
    flipped, transposed kernel, and the weight gradient is one ``conv2d`` per temporal tap (batch x frames
    as the contraction axis). Outputs are bit-identical; gradients agree to float rounding.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        no_autocast = torch.autocast(x.device.type, enabled=False) if x.device.type in ('cpu', 'cuda') else nullcontext()
        with no_autocast:  # run in the activations' dtype (bf16 under autocast), weights cast to it
            w = weight.to(x.dtype)
            b = bias.to(x.dtype) if bias is not None else None
            ctx.save_for_backward(x, w)
            ctx.has_bias, ctx.weight_dtype = bias is not None, weight.dtype
            x = x.contiguous(memory_format=torch.channels_last_3d)
            w = w.contiguous(memory_format=torch.channels_last_3d)
            return F.conv3d(x, w, b, padding=tuple(k // 2 for k in weight.shape[2:]))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        kt, kh, kw = w.shape[2:]
        pt, ph, pw = kt // 2, kh // 2, kw // 2
        grad = grad.to(x.dtype).contiguous(memory_format=torch.channels_last_3d)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            flipped = w.flip(2, 3, 4).transpose(0, 1).contiguous(memory_format=torch.channels_last_3d)
            grad_x = F.conv3d(grad, flipped, None, padding=(pt, ph, pw))
        if ctx.needs_input_grad[1]:
            B, Cin, T, H, W = x.shape
            Cout = w.shape[0]
            padded = F.pad(x, (0, 0, 0, 0, pt, pt))
            g = grad.transpose(1, 2).reshape(B * T, Cout, H, W).transpose(0, 1)  # [Cout, B*T, H, W]
            taps = []
            for d in range(kt):
                xs = padded[:, :, d : d + T].transpose(1, 2).reshape(B * T, Cin, H, W).transpose(0, 1)
                taps.append(F.conv2d(xs, g, None, padding=(ph, pw)))  # [Cin, Cout, kh, kw]
            grad_w = torch.stack(taps, dim=2).transpose(0, 1).to(ctx.weight_dtype)  # [Cout, Cin, kt, kh, kw]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3, 4)).to(ctx.weight_dtype)
        return grad_x, grad_w, grad_b


def token_conv3d(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """Apply a 'same'-padded ``conv`` through `_TapGradConv3d` (identical output, faster CPU backward)."""
    return _TapGradConv3d.apply(x, conv.weight, conv.bias)


def pool_to_grid(score: torch.Tensor, grid: int, mode: Literal['lattice', 'patch']) -> torch.Tensor:
    """``[..., H, W]`` pixel scores → ``[..., grid, grid]`` cell means (see module doc for the two modes)."""
    *lead, H, W = score.shape
    if mode == 'lattice':  # view each axis as (H/grid, grid), average over the first: a mod-grid lattice
        return score.reshape(*lead, H // grid, grid, W // grid, grid).mean(dim=(-4, -2))
    return score.reshape(*lead, grid, H // grid, grid, W // grid).mean(dim=(-3, -1))


def expand_from_grid(mask: torch.Tensor, H: int, W: int, mode: Literal['lattice', 'patch']) -> torch.Tensor:
    """``[..., grid, grid]`` → ``[..., H, W]`` with the same pixel↔cell mapping as `pool_to_grid`."""
    grid = mask.shape[-1]
    if mode == 'lattice':
        return mask.repeat(*([1] * (mask.ndim - 2)), H // grid, W // grid)
    return mask.repeat_interleave(H // grid, dim=-2).repeat_interleave(W // grid, dim=-1)


def top_cells_mask(cells: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean ``[..., g, g]``: cells scoring above the (k+1)-th largest (normally the top ``k``)."""
    flat = cells.flatten(-2)
    threshold = flat.sort(dim=-1, descending=True).values[..., k : k + 1]  # [..., 1]
    return (flat > threshold).view_as(cells)


def normalise_frame_weights(m: torch.Tensor, over: Literal['video', 'batch']) -> torch.Tensor:
    """Min-max normalise ``[B, T]`` frame scores per video (default) or over the whole batch (reference).

    A constant set maps to 0 (the reference divides by zero).
    """
    dims = (1,) if over == 'video' else (0, 1)
    lo = m.amin(dim=dims, keepdim=True)
    span = m.amax(dim=dims, keepdim=True) - lo
    return torch.where(span > 0, (m - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0 * m)


class TemporalPrompt(nn.Module):
    """Pixel-space intra-frame prompt and token-space inter-frame prompt (docs/reference/stop.md).

    Args:
        width: vision width ``C``.
        heads: heads of the inter-frame self-attention (``C // 64``).
        grid: patch grid side; ``patches = grid²``.
        local_prompts: ``N_loc`` prompts per frame produced by ``InterMLP``.
        salient_cells: ``k`` of the top-k saliency mask (the reference's ``eta`` = 6).
        frame_weight_norm / mask_pooling / spatial_stride: see module doc.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        grid: int,
        local_prompts: int,
        *,
        salient_cells: int = 6,
        frame_weight_norm: Literal['video', 'batch'] = 'video',
        mask_pooling: Literal['lattice', 'patch'] = 'lattice',
        spatial_stride: int = 1,
        conv_impl: Literal['auto', 'direct', 'fft'] = 'auto',
    ) -> None:
        super().__init__()
        if not 0 <= salient_cells < grid * grid:
            raise ValueError(f'salient_cells must be in [0, {grid * grid}) for a {grid}x{grid} grid')
        self.grid, self.local_prompts, self.salient_cells = grid, local_prompts, salient_cells
        self.frame_weight_norm, self.mask_pooling, self.spatial_stride = frame_weight_norm, mask_pooling, spatial_stride
        resolve_conv_impl(conv_impl, torch.device('cpu'))  # validates
        self.conv_impl = conv_impl
        k = (3, 11, 11)
        self.Conv = nn.Sequential(
            _conv3d(3, 9, k), _conv3d(9, 9, k), nn.PReLU(), _conv3d(9, 9, k), nn.PReLU(), _conv3d(9, 16, k)
        )
        self.dropout1 = nn.Dropout(0.5)
        self.MLP = nn.Sequential(nn.Linear(16, 16), nn.PReLU(), nn.Linear(16, 3))
        self.dropout2 = nn.Dropout(0.5)
        self.Cal_Net = _conv3d(3, 1, (5, 11, 11))
        self.Attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.InterConv = nn.Sequential(_conv3d(1, 9, (3, 15, 25)), nn.PReLU(), _conv3d(9, 1, (3, 15, 25)))
        self.InterMLP = nn.Sequential(nn.Linear(grid * grid, 16), nn.PReLU(), nn.Linear(16, local_prompts))
        self.Cal_Net_Inter = _conv3d(1, 1, (5, 11, 11))
        for conv in (self.Conv, self.Cal_Net, self.InterConv, self.Cal_Net_Inter):
            conv.to(memory_format=torch.channels_last_3d)  # weights (and so their grads) match the activations

    @staticmethod
    def _layout(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last_3d)

    def saliency_mask(self, video: torch.Tensor) -> torch.Tensor:
        """Boolean ``[B, T, grid, grid]`` top-k cells of the ``Cal_Net`` score (no gradient by construction)."""
        with torch.no_grad():
            score = self.Cal_Net(self._layout(video.transpose(1, 2)))[:, 0]  # [B, T, H, W]
            return top_cells_mask(pool_to_grid(score.float(), self.grid, self.mask_pooling), self.salient_cells)

    def pixel_prompt(self, video: torch.Tensor) -> torch.Tensor:
        """The prompt ``R`` ``[B, T, 3, H, W]`` (Conv stack, dropout, per-pixel MLP, dropout twice)."""
        B, T, _, H, W = video.shape
        s = self.spatial_stride
        x = video.transpose(1, 2)  # [B, 3, T, H, W]
        if s > 1:
            x = F.avg_pool3d(x, (1, s, s))
        if resolve_conv_impl(self.conv_impl, x.device) == 'fft':  # same sums via FFT (fft_conv.py), fewer MACs
            feats = x
            for layer in self.Conv:
                feats = fft_conv3d(feats, layer.weight, layer.bias) if isinstance(layer, nn.Conv3d) else layer(feats)
            feats = self._layout(feats)  # the direct path's layout: dropout draws its mask in memory order
        else:
            feats = self.Conv(self._layout(x))
        feats = self.dropout1(feats)  # [B, 16, T, h, w]
        r = self.MLP(feats.permute(0, 2, 3, 4, 1))  # [B, T, h, w, 3]
        r = self.dropout2(self.dropout2(r)).permute(0, 1, 4, 2, 3)  # [B, T, 3, h, w]
        if s > 1:
            r = r.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)
        return r

    def spatial(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T, 3, H, W]`` normalised frames → (prompted frames, boolean ``[B, T, grid, grid]`` mask)."""
        B, T, _, H, W = video.shape
        mask = self.saliency_mask(video)
        r = self.pixel_prompt(video)
        pixel_mask = expand_from_grid(mask, H, W, self.mask_pooling).unsqueeze(2).to(r.dtype)  # [B, T, 1, H, W]
        return video + PROMPT_SCALE * r + PROMPT_SCALE * r * pixel_mask, mask

    def _token_conv(self, device: torch.device):
        """The token-space 'same' Conv3d (``InterConv``, ``Cal_Net_Inter``): `fft_conv3d` where ``conv_impl``
        resolves to fft (kernels of 3×15×25 over 49 × width planes: far fewer MACs), else `token_conv3d`."""
        if resolve_conv_impl(self.conv_impl, device) == 'fft':
            return lambda conv, x: fft_conv3d(x, conv.weight, conv.bias)
        return token_conv3d

    def inter_frame(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-frame prompt offsets ``[B, T, N_loc, C]`` from ``[B, T, 1 + P, C]`` embedded tokens (CLS first)."""
        B, T, N, C = tokens.shape
        patches = tokens[:, :, 1:].reshape(B, T * (N - 1), C)
        h, _ = self.Attention(patches, patches, patches, need_weights=False)  # no LN, no residual
        h = h.reshape(B, 1, T, N - 1, C)  # a 1-channel (T, P, C) volume per video
        conv = self._token_conv(h.device)
        cal = conv(self.Cal_Net_Inter, h)[:, 0]  # [B, T, P, C]
        boost = 1.0 + mask.reshape(B, T, N - 1, 1).to(cal.dtype)
        m = normalise_frame_weights((cal * boost).float().mean(dim=(2, 3)), self.frame_weight_norm)  # [B, T]
        conv1, act, conv2 = self.InterConv
        q = conv(conv2, act(conv(conv1, h)))[:, 0]  # [B, T, P, C]
        q = self.InterMLP(q.transpose(2, 3)).transpose(2, 3)  # [B, T, N_loc, C]
        return PROMPT_SCALE * q * (1.0 + m).to(q.dtype)[:, :, None, None]
