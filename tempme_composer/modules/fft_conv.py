"""Exact-output FFT form of a 'same'-padded Conv3d (used for STOP's pixel-prompt Conv stack, `conv_impl: fft`).

Frame-plane (H, W) convolution as a product of 2-D real FFTs, the few temporal taps and the channel mixing as
one batched complex matmul per frequency. ≈27x fewer multiply-accumulates than the direct 3x11x11
convolution of the pixel prompt, identical up to float rounding; measured 14x faster for a training step of
the stack on an H100, but slower on a 2-core CPU (`python -m tempme_composer.bench_conv`). Computed in fp32
(also under autocast).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

__all__ = ['fft_conv3d']


def _fast_length(n: int) -> int:
    """Smallest integer >= n with no prime factor above 5 (fast FFT sizes)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def fft_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, padding='same')`` for odd kernels, via FFT over the last two axes.

    Args:
        x: ``[B, Cin, T, H, W]``.
        weight: ``[Cout, Cin, kt, kh, kw]`` (odd sizes).
        bias: ``[Cout]`` or None.
    """
    no_autocast = torch.autocast(x.device.type, enabled=False) if x.device.type in ('cpu', 'cuda') else nullcontext()
    with no_autocast:
        return _fft_conv3d(x, weight, bias)


def _fft_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    B, Cin, T, H, W = x.shape
    Cout, _, kt, kh, kw = weight.shape
    pt, ph, pw = kt // 2, kh // 2, kw // 2
    Hp, Wp = _fast_length(H + kh - 1), _fast_length(W + kw - 1)  # linear (not circular) convolution
    Wq = Wp // 2 + 1
    xf = torch.fft.rfft2(x.float(), s=(Hp, Wp))  # [B, Cin, T, Hp, Wq]
    kf = torch.fft.rfft2(weight.float().flip(-2, -1), s=(Hp, Wp))  # correlation = convolution with the flip
    xf = F.pad(xf, (0, 0, 0, 0, pt, pt))  # zero frames before/after: the temporal padding
    taps = torch.stack([xf[:, :, d : d + T] for d in range(kt)], dim=2)  # [B, Cin, kt, T, Hp, Wq]
    taps = taps.reshape(B, Cin * kt, T, Hp * Wq).permute(3, 0, 2, 1).reshape(Hp * Wq, B * T, Cin * kt)
    kf = kf.reshape(Cout, Cin * kt, Hp * Wq).permute(2, 1, 0)  # [F, Cin*kt, Cout]
    yf = torch.bmm(taps, kf).reshape(Hp, Wq, B, T, Cout).permute(2, 4, 3, 0, 1)  # [B, Cout, T, Hp, Wq]
    y = torch.fft.irfft2(yf, s=(Hp, Wp))[..., ph : ph + H, pw : pw + W]
    if bias is not None:
        y = y + bias.float().view(1, -1, 1, 1, 1)
    return y.to(x.dtype)
