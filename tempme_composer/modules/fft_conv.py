"""'Same'-padded Conv3d (odd kernel, stride 1) computed in the frequency domain, forward and backward.

STOP's pixel-prompt stack convolves 12 × 224² volumes with 3 × 11 × 11 kernels and 3-16 channels: a poor fit
for direct convolution (cuDNN and oneDNN alike), ≈20× more multiply-adds than the same sums via 2-D FFTs of
the frame plane. `fft_conv3d` is a custom autograd function whose products all stay in the frequency domain
(the gradients of a convolution are convolutions too):

- output = input ⋆ kernel: ``rfft2`` of each zero-padded frame; per frequency, one batched complex matmul
  per temporal tap mixes the channels of the frames that tap reaches, summed at the tap's frame shift;
  ``irfft2``;
- grad-input = grad-output convolved with the flipped kernel: the same products with the kernel spectrum of
  the forward pass (conjugate-transposed: the conjugation is carried by the grad-output spectrum and by the
  direction of the final transform, the flip by where grad-output sits in the padded frame), skipped when
  the input needs no gradient (the first layer sees the video);
- grad-weight = correlation of input and grad-output, summed over batch and frames: the input spectrum kept
  from the forward pass times the conjugate grad-output spectrum, one batched matmul per temporal tap, and a
  partial inverse DFT (two small matmuls) that evaluates only the kernel's ``kh × kw`` lags;
- grad-bias = the sum of grad-output.

Kernel spectra are partial DFTs too (``kh × kw`` non-zero taps in a ``hp × wp`` plane: two matmuls instead of
a full FFT). Frames are zero-padded to ``hp × wp``, sizes with no prime factor above 5 and at least
``H + kh - 1`` (a linear, not circular, convolution). Spectra are laid out frequency-major,
``[hp, wq, T, B, C]`` (one copy after the FFT), so that the per-frequency matmuls are ``bmm`` over
well-shaped ``[T·B, C]`` blocks and a temporal tap is a slice: no tap-shifted copies of a spectrum.
Everything is computed in fp32 (also under autocast); results equal ``F.conv3d(x, w, b, padding='same')``
up to fp32 rounding.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ['fft_conv3d']

_MAX_TILE = 128  # output pixels per tile and axis (see _tile_plan)
_TO_FREQUENCY_MAJOR = (5, 6, 2, 0, 3, 4, 1)  # [B, C, T, nh, nw, u, v] -> [u, v, T, B, nh, nw, C]
_FROM_FREQUENCY_MAJOR = (3, 6, 2, 4, 5, 0, 1)  # and back


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


def _dft_matrix(freqs: int, positions: list[int], length: int, sign: int, device: torch.device) -> torch.Tensor:
    """``[freqs, len(positions)]`` complex64 ``exp(sign · 2πi · u · n / length)`` (built in float64)."""
    u = torch.arange(freqs, dtype=torch.float64, device=device)[:, None]
    n = torch.tensor(positions, dtype=torch.float64, device=device)[None, :]
    angle = (sign * 2 * math.pi / length) * u * n
    return torch.complex(torch.cos(angle), torch.sin(angle)).to(torch.complex64)


def _kernel_spectrum(weight: torch.Tensor, hp: int, wp: int) -> torch.Tensor:
    """Spectra of the spatially flipped kernel (correlation as convolution), laid out for `_mix`.

    ``[Cout, Cin, kt, kh, kw]`` → ``[kt, hp·wq, Cin, Cout]`` complex: the ``rfft2`` of each flipped ``kh × kw``
    kernel zero-padded to ``hp × wp``, as two matmuls with partial DFT matrices.
    """
    cout, cin, kt, kh, kw = weight.shape
    wq = wp // 2 + 1
    taps = weight.permute(2, 3, 4, 1, 0).reshape(kt, kh, kw, cin * cout).to(torch.complex64)
    along_w = torch.matmul(_dft_matrix(wq, [kw - 1 - q for q in range(kw)], wp, -1, weight.device), taps)
    both = torch.matmul(_dft_matrix(hp, [kh - 1 - p for p in range(kh)], hp, -1, weight.device), along_w.view(kt, kh, -1))
    return both.view(kt, hp * wq, cin, cout)


def _kernel_lags(spectrum: torch.Tensor, rows: list[int], cols: list[int], hp: int, wp: int) -> torch.Tensor:
    """``irfft2`` of ``[kt, hp·wq, A, C]`` spectra evaluated at the given (wrapped) row and column positions only.

    Returns ``[kt, len(rows), len(cols), A, C]`` real: two matmuls with partial inverse DFT matrices.
    """
    kt, _, a_dim, c_dim = spectrum.shape
    wq = wp // 2 + 1
    count = torch.full((wq,), 2.0, device=spectrum.device)  # the half spectrum stands for v and -v ...
    count[0] = 1.0  # ... except v = 0
    if wp % 2 == 0:
        count[-1] = 1.0  # ... and the Nyquist frequency
    inv_rows = _dft_matrix(hp, rows, hp, 1, spectrum.device).T  # [kh, hp]
    inv_cols = _dft_matrix(wq, cols, wp, 1, spectrum.device).T * (count / (hp * wp)).to(torch.complex64)  # [kw, wq]
    along_h = torch.matmul(inv_rows, spectrum.view(kt, hp, -1)).view(kt, len(rows), wq, -1)
    return torch.matmul(inv_cols, along_h).real.view(kt, len(rows), len(cols), a_dim, c_dim)


def _tile_plan(size: int, k: int) -> tuple[int, int, int]:
    """``(tiles, tile, fft_length)`` along one frame axis of ``size`` pixels for a ``k``-tap kernel.

    The frame is cut into ``tiles`` blocks of at most `_MAX_TILE` output pixels, each transformed with
    ``k - 1`` pixels of context at a fast FFT length (overlap-save). A few tiles cost a little more FFT work
    than one frame-sized transform but shrink the kernel spectra and give the per-frequency matmuls more rows
    (measured on 224² frames: 2 × 2 tiles of 112 beat one 240² transform on CPU; 4 × 4 tiles of 56 lose).
    """
    tiles = -(-size // _MAX_TILE)
    tile = -(-size // tiles)
    return tiles, tile, _fast_length(tile + k - 1)


def _tiles_spectrum(blocks: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, nh, nw, Nh, Nw]`` real tiles → frequency-major ``[Nh, Nw//2+1, T, B·nh·nw, C]`` spectra.

    The FFT writes frames last, so one copy turns the spectra frequency-major for the per-frequency matmuls.
    """
    B, C, T, nh, nw = blocks.shape[:5]
    spectrum = torch.fft.rfft2(blocks).permute(_TO_FREQUENCY_MAJOR).contiguous()
    return spectrum.view(*spectrum.shape[:3], B * nh * nw, C)


def _tiles_signal(
    spectrum: torch.Tensor, batch: int, tiles: tuple[int, int], rows: slice, cols: slice, wp: int, conjugate: bool
) -> torch.Tensor:
    """Inverse of `_tiles_spectrum` (of its conjugate with ``conjugate``): ``[B, C, T, nh, nw, h, w]`` kept tiles.

    Two 1-D transforms (over rows, only the rows kept, then over columns): faster than ``irfft2`` with MKL on
    CPU. The inverse of a conjugate spectrum is a forward transform (``fft`` then ``hfft``), so the
    conjugation costs nothing.
    """
    hp, wq, T, _, C = spectrum.shape
    natural = spectrum.view(hp, wq, T, batch, *tiles, C).permute(_FROM_FREQUENCY_MAJOR)
    if conjugate:
        kept = torch.fft.fft(natural, dim=-2, norm='forward')[..., rows, :]
        return torch.fft.hfft(kept, n=wp, dim=-1, norm='forward')[..., cols]
    kept = torch.fft.ifft(natural, dim=-2)[..., rows, :]
    return torch.fft.irfft(kept, n=wp, dim=-1)[..., cols]


def _mix(spectrum: torch.Tensor, kernel: torch.Tensor, sign: int) -> torch.Tensor:
    """Channel and temporal mixing per frequency: ``out[t] = Σ_d spectrum[t + sign·(d - kt//2)] @ kernel[d]``.

    Frames outside ``0..T-1`` are zero. One ``bmm`` over frequencies per tap, on the frames that tap reaches.

    Args:
        spectrum: ``[hp, wq, T, B, Cin]``.
        kernel: ``[kt, hp·wq, Cin, Cout]`` (may be a transposed view).
    Returns:
        ``[hp, wq, T, B, Cout]``.
    """
    hp, wq, T, B, cin = spectrum.shape
    kt, f, _, cout = kernel.shape
    x = spectrum.view(f, T * B, cin)
    pt = kt // 2
    out = torch.bmm(x, kernel[pt])
    for d in range(kt):
        s = sign * (d - pt)  # output frame t reads input frame t + s
        if d == pt or abs(s) >= T:
            continue
        if s > 0:
            out[:, : (T - s) * B] += torch.bmm(x[:, s * B :], kernel[d])
        else:
            out[:, -s * B :] += torch.bmm(x[:, : (T + s) * B], kernel[d])
    return out.view(hp, wq, T, B, cout)


def _correlate(grad_conj: torch.Tensor, x: torch.Tensor, kt: int) -> torch.Tensor:
    """Per frequency and tap ``d``: ``Σ_{t, b} grad_conj[t]ᵀ x[t + d - kt//2]`` → ``[kt, hp·wq, Cout, Cin]``.

    Args:
        grad_conj: ``[hp, wq, T, B, Cout]``, the conjugate grad-output spectrum.
        x: ``[hp, wq, T, B, Cin]``, the input spectrum.
    """
    hp, wq, T, B, cout = grad_conj.shape
    cin = x.shape[-1]
    f = hp * wq
    g, xs = grad_conj.view(f, T * B, cout), x.view(f, T * B, cin)
    out = g.new_empty(kt, f, cout, cin)
    pt = kt // 2
    for d in range(kt):
        s = d - pt  # grad-output frame t meets input frame t + s
        if abs(s) >= T:
            out[d].zero_()
            continue
        g_rows = g[:, max(0, -s) * B : (T - max(0, s)) * B]
        x_rows = xs[:, max(0, s) * B : (T + min(0, s)) * B]
        torch.bmm(g_rows.transpose(1, 2), x_rows, out=out[d])
    return out


class _FFTConv3d(torch.autograd.Function):
    """Forward and backward of the 'same' Conv3d in the frequency domain (see the module doc)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        B, _, T, H, W = x.shape
        cout, _, _, kh, kw = weight.shape
        ph, pw = kh // 2, kw // 2
        (nh, th, hp), (nw, tw, wp) = _tile_plan(H, kh), _tile_plan(W, kw)
        # overlap-save: tile (i, j) holds input rows i·th - ph ... + hp (columns alike)
        padded = F.pad(x.float(), (pw, (nw - 1) * tw + wp - W - pw, ph, (nh - 1) * th + hp - H - ph))
        xs = _tiles_spectrum(padded.unfold(3, hp, th).unfold(4, wp, tw))  # [hp, wq, T, B·nh·nw, Cin]
        kernel = _kernel_spectrum(weight.detach().float(), hp, wp)  # [kt, hp·wq, Cin, Cout]
        y = _tiles_signal(_mix(xs, kernel, 1), B, (nh, nw), slice(kh - 1, kh - 1 + th), slice(kw - 1, kw - 1 + tw), wp, False)
        y = y.permute(0, 1, 2, 3, 5, 4, 6).reshape(B, cout, T, nh * th, nw * tw)[..., :H, :W]
        y = y + bias.detach().float().view(-1, 1, 1, 1) if bias is not None else y.contiguous()
        needs_x, needs_w = ctx.needs_input_grad[:2]
        ctx.save_for_backward(xs if needs_w else None, kernel if needs_x else None)
        ctx.geometry = (tuple(weight.shape), (nh, th, hp), (nw, tw, wp))
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xs, kernel = ctx.saved_tensors
        (cout, cin, kt, kh, kw), (nh, th, hp), (nw, tw, wp) = ctx.geometry
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        needs_x, needs_w, needs_b = ctx.needs_input_grad
        B, _, T, H, W = grad.shape
        ph, pw = kh // 2, kw // 2
        g = grad.float()  # [B, Cout, T, H, W]
        grad_x = grad_w = grad_b = None
        if needs_b and b_dtype is not None:
            grad_b = g.sum(dim=(0, 2, 3, 4)).to(b_dtype)
        if not (needs_x or needs_w):
            return grad_x, grad_w, grad_b
        # grad-output cut into disjoint th × tw blocks, each at (2·ph, 2·pw) in its zero-padded tile
        if (nh * th, nw * tw) != (H, W):
            g = F.pad(g, (0, nw * tw - W, 0, nh * th - H))
        blocks = g.view(B, cout, T, nh, th, nw, tw).transpose(4, 5)
        blocks = F.pad(blocks, (2 * pw, wp - tw - 2 * pw, 2 * ph, hp - th - 2 * ph))
        gs = _tiles_spectrum(blocks).conj_physical_()  # conjugate grad-output spectra
        if needs_w:  # correlation of each block with its input tile at lags (p - 2·ph, q - 2·pw)
            rows, cols = [p - 2 * ph for p in range(kh)], [q - 2 * pw for q in range(kw)]
            lags = _kernel_lags(_correlate(gs, xs, kt), rows, cols, hp, wp)  # [kt, kh, kw, Cout, Cin]
            grad_w = lags.permute(3, 4, 0, 1, 2).to(w_dtype)
        if needs_x:  # conj(grad) @ conj(kernel)ᵀ, conjugated back by the final transform; overlap-add
            bh, bw = th + kh - 1, tw + kw - 1  # each block reaches ph, pw pixels beyond its own
            mixed = _mix(gs, kernel.transpose(-1, -2), -1)
            parts = _tiles_signal(mixed, B, (nh, nw), slice(0, bh), slice(0, bw), wp, True)  # [B, Cin, T, nh, nw, bh, bw]
            if nh * nw == 1:
                summed = parts[:, :, :, 0, 0]
            else:
                out_size = ((nh - 1) * th + bh, (nw - 1) * tw + bw)
                summed = F.fold(
                    parts.permute(0, 1, 2, 5, 6, 3, 4).reshape(B * cin * T, bh * bw, nh * nw),
                    out_size,
                    (bh, bw),
                    stride=(th, tw),
                ).view(B, cin, T, *out_size)
            grad_x = summed[..., ph : ph + H, pw : pw + W]  # the blocks' reach starts ph, pw before the frame
            grad_x = grad_x.to(x_dtype, memory_format=torch.contiguous_format)
        return grad_x, grad_w, grad_b


def fft_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, padding='same')`` for odd kernels and stride 1, via FFT over the frame plane.

    Args:
        x: ``[B, Cin, T, H, W]``.
        weight: ``[Cout, Cin, kt, kh, kw]`` (odd sizes).
        bias: ``[Cout]`` or None.
    Returns:
        ``[B, Cout, T, H, W]`` in ``x``'s dtype (computed in fp32).
    """
    if x.ndim != 5 or weight.ndim != 5 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f'fft_conv3d expects x [B, Cin, T, H, W] and weight [Cout, Cin, kt, kh, kw], got {tuple(x.shape)} '
            f'and {tuple(weight.shape)}'
        )
    if any(k % 2 == 0 for k in weight.shape[2:]):
        raise ValueError(f"fft_conv3d needs odd kernel sizes ('same' padding), got {tuple(weight.shape[2:])}")
    if bias is not None and tuple(bias.shape) != tuple(weight.shape[:1]):
        raise ValueError(f'fft_conv3d bias must be [{weight.shape[0]}], got {tuple(bias.shape)}')
    no_autocast = torch.autocast(x.device.type, enabled=False) if x.device.type in ('cpu', 'cuda') else nullcontext()
    with no_autocast:
        return _FFTConv3d.apply(x, weight, bias)
