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
from torch.autograd.function import once_differentiable

__all__ = ['fft_conv3d']

_MAX_TILE = 128  # output pixels per tile and axis (see _tile_plan)


def _fast_length(n: int) -> int:
    """Smallest even integer >= n with no prime factor above 7: fast FFT sizes. Even matters: MKL's real
    transforms of odd lengths run 2-2.5× slower per point (measured: 125² tiles 3.0 ns/point, 126² and 128² 1.2-1.4)."""
    m = n + n % 2
    while True:
        k = m
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 2


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


def _gather_tiles(x: torch.Tensor, plan: tuple[tuple[int, int, int], tuple[int, int, int]], source: tuple[int, int],
                  length: tuple[int, int], place: tuple[int, int]) -> torch.Tensor:
    """``[B, C, T, H, W]`` frames → zero-padded tiles ``[C·T·B·nh·nw, hp, wp]`` (channel-major row order).

    Tile ``(i, j)`` holds, at ``place + (r, c)``, the frame pixel ``(i·th + source_h + r, j·tw + source_w + c)`` for
    ``0 <= r < length_h``, ``0 <= c < length_w``; pixels outside the frame are zero. One pass over the data.
    """
    B, C, T, H, W = x.shape
    (nh, th, hp), (nw, tw, wp) = plan
    tiles = x.new_zeros(C, T, B, nh, nw, hp, wp)
    frames = x.permute(1, 2, 0, 3, 4)
    for i in range(nh):
        r0 = i * th + source[0]
        top, bottom = max(0, r0), min(H, r0 + length[0])
        for j in range(nw):
            c0 = j * tw + source[1]
            left, right = max(0, c0), min(W, c0 + length[1])
            if bottom > top and right > left:
                tiles[:, :, :, i, j, place[0] + top - r0 : place[0] + bottom - r0,
                      place[1] + left - c0 : place[1] + right - c0].copy_(frames[..., top:bottom, left:right])
    return tiles.view(C * T * B * nh * nw, hp, wp)


def _frequency_major(spectra: torch.Tensor, channels: int) -> torch.Tensor:
    """``[C·M, hp, wq]`` complex spectra → ``[hp·wq, 2·C, M]`` real: per frequency, the real parts of the ``C``
    channels, then their imaginary parts. One 2-D transpose (PyTorch's cache-blocked copy) does both the
    reordering and the split into real and imaginary planes."""
    rows = spectra.shape[0]
    planar = torch.view_as_real(spectra.contiguous()).view(rows, -1).t().contiguous()  # [(f, re/im), C·M]
    return planar.view(-1, 2 * channels, rows // channels)


def _tile_major(planar: torch.Tensor, hp: int) -> torch.Tensor:
    """Inverse of `_frequency_major`: ``[hp·wq, 2·C, M]`` real → ``[C·M, hp, wq]`` complex."""
    f, two_c, m = planar.shape
    rows = two_c // 2 * m
    return torch.view_as_complex(planar.view(2 * f, rows).t().contiguous().view(rows, f, 2)).view(rows, hp, f // hp)


def _real_blocks(matrices: torch.Tensor) -> torch.Tensor:
    """Complex ``[..., A, B]`` matrices ``K`` → real ``[..., 2A, 2B]`` ``[[Kr, -Ki], [Ki, Kr]]``, which maps stacked
    (real; imaginary) parts of ``z`` to those of ``K @ z``: real GEMMs run these small products 1.5-2× faster
    than complex ones on CPU (MKL)."""
    kr, ki = matrices.real, matrices.imag
    return torch.cat([torch.cat([kr, -ki], -1), torch.cat([ki, kr], -1)], -2)


def _mix(planar: torch.Tensor, blocks: torch.Tensor, step: int, sign: int) -> torch.Tensor:
    """Channel and temporal mixing per frequency: ``out[t] = Σ_d blocks[d] @ planar[t + sign·(d - kt//2)]``.

    Frames outside ``0..T-1`` are zero. A frame is ``step`` consecutive columns (batch × tiles); one ``bmm``
    over frequencies per tap, on the frames that tap reaches.

    Args:
        planar: ``[F, 2·Cin, T·step]`` (`_frequency_major`).
        blocks: ``[kt, F, 2·Cout, 2·Cin]`` (`_real_blocks`).
    Returns:
        ``[F, 2·Cout, T·step]``.
    """
    kt = blocks.shape[0]
    T = planar.shape[-1] // step
    pt = kt // 2
    out = torch.bmm(blocks[pt], planar)
    for d in range(kt):
        s = sign * (d - pt)  # output frame t reads input frame t + s
        if d == pt or abs(s) >= T:
            continue
        if s > 0:
            out[..., : (T - s) * step] += torch.bmm(blocks[d], planar[..., s * step :])
        else:
            out[..., -s * step :] += torch.bmm(blocks[d], planar[..., : (T + s) * step])
    return out


def _correlate(grad: torch.Tensor, x: torch.Tensor, kt: int, step: int) -> torch.Tensor:
    """Per frequency and tap ``d``: ``Σ_{t, b} conj(grad[t]) x[t + d - kt//2]ᵀ`` → ``[kt, F, Cout, Cin]`` complex.

    Args:
        grad: ``[F, 2·Cout, T·step]``, the grad-output spectrum (`_frequency_major`).
        x: ``[F, 2·Cin, T·step]``, the input spectrum.
    """
    f, two_cout, m = grad.shape
    cout, cin = two_cout // 2, x.shape[1] // 2
    T = m // step
    products = grad.new_empty(kt, f, two_cout, 2 * cin)  # [[Gr Xrᵀ, Gr Xiᵀ], [Gi Xrᵀ, Gi Xiᵀ]]
    pt = kt // 2
    for d in range(kt):
        s = d - pt  # grad-output frame t meets input frame t + s
        if abs(s) >= T:
            products[d].zero_()
            continue
        g = grad[..., max(0, -s) * step : (T - max(0, s)) * step]
        xs = x[..., max(0, s) * step : (T + min(0, s)) * step]
        torch.bmm(g, xs.transpose(1, 2), out=products[d])
    q = products.view(kt, f, 2, cout, 2, cin)
    return torch.complex(q[:, :, 0, :, 0] + q[:, :, 1, :, 1], q[:, :, 0, :, 1] - q[:, :, 1, :, 0])


class _FFTConv3d(torch.autograd.Function):
    """Forward and backward of the 'same' Conv3d in the frequency domain (see the module doc)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        B, cin, T, H, W = x.shape
        cout, _, _, kh, kw = weight.shape
        ph, pw = kh // 2, kw // 2
        plan = (nh, th, hp), (nw, tw, wp) = _tile_plan(H, kh), _tile_plan(W, kw)
        step = B * nh * nw
        # overlap-save: tile (i, j) holds input rows i·th - ph ... + hp (columns alike)
        tiles = _gather_tiles(x.float(), plan, (-ph, -pw), (hp, wp), (0, 0))
        xs = _frequency_major(torch.fft.rfft2(tiles), cin)  # [F, 2·Cin, T·step]
        kernel = _kernel_spectrum(weight.detach().float(), hp, wp)  # [kt, F, Cin, Cout]
        mixed = _tile_major(_mix(xs, _real_blocks(kernel.transpose(-1, -2)), step, 1), hp)  # [Cout·T·step, hp, wq]
        rows = torch.fft.ifft(mixed, dim=-2)[:, kh - 1 : kh - 1 + th]  # only the rows kept
        kept = torch.fft.irfft(rows, n=wp, dim=-1)[..., kw - 1 : kw - 1 + tw]
        y = x.new_empty(B, cout, T, nh * th, nw * tw, dtype=torch.float32)
        target = y.view(B, cout, T, nh, th, nw, tw).permute(1, 2, 0, 3, 5, 4, 6)
        kept = kept.view(cout, T, B, nh, nw, th, tw)
        if bias is not None:
            torch.add(kept, bias.detach().float().view(-1, 1, 1, 1, 1, 1, 1), out=target)
        else:
            target.copy_(kept)
        if (nh * th, nw * tw) != (H, W):
            y = y[..., :H, :W].contiguous()
        needs_x, needs_w = ctx.needs_input_grad[:2]
        ctx.save_for_backward(xs if needs_w else None, kernel if needs_x else None)
        ctx.geometry = (tuple(weight.shape), plan)
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xs, kernel = ctx.saved_tensors
        (cout, cin, kt, kh, kw), plan = ctx.geometry
        (nh, th, hp), (nw, tw, wp) = plan
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        needs_x, needs_w, needs_b = ctx.needs_input_grad
        B, _, T, H, W = grad.shape
        ph, pw = kh // 2, kw // 2
        step = B * nh * nw
        g = grad.float()  # [B, Cout, T, H, W]
        grad_x = grad_w = grad_b = None
        if needs_b and b_dtype is not None:
            grad_b = g.sum(dim=(0, 2, 3, 4)).to(b_dtype)
        if not (needs_x or needs_w):
            return grad_x, grad_w, grad_b
        # grad-output cut into disjoint th × tw blocks, each at (2·ph, 2·pw) in its zero-padded tile
        blocks = _gather_tiles(g, plan, (0, 0), (th, tw), (2 * ph, 2 * pw))
        gs = _frequency_major(torch.fft.rfft2(blocks), cout)  # [F, 2·Cout, T·step]
        if needs_w:  # correlation of each block with its input tile at lags (p - 2·ph, q - 2·pw)
            rows, cols = [p - 2 * ph for p in range(kh)], [q - 2 * pw for q in range(kw)]
            lags = _kernel_lags(_correlate(gs, xs, kt, step), rows, cols, hp, wp)  # [kt, kh, kw, Cout, Cin]
            grad_w = lags.permute(3, 4, 0, 1, 2).to(w_dtype)
        if needs_x:  # conj(kernel) @ grad (a correlation: the kernel flipped), then overlap-add of the blocks
            bh, bw = th + kh - 1, tw + kw - 1  # each block reaches ph, pw pixels beyond its own
            mixed = _tile_major(_mix(gs, _real_blocks(kernel.conj_physical()), step, -1), hp)  # [Cin·T·step, hp, wq]
            rows = torch.fft.ifft(mixed, dim=-2)[:, :bh]
            parts = torch.fft.irfft(rows, n=wp, dim=-1)[..., :bw]
            parts = parts.view(cin, T, B, nh, nw, bh, bw)
            grad_x = g.new_zeros(B, cin, T, H, W)
            frames = grad_x.permute(1, 2, 0, 3, 4)  # [Cin, T, B, H, W] view
            for i in range(nh):  # block (i, j) covers frame rows i·th - ph ... + bh (columns alike)
                r0 = i * th - ph
                top, bottom = max(0, r0), min(H, r0 + bh)
                for j in range(nw):
                    c0 = j * tw - pw
                    left, right = max(0, c0), min(W, c0 + bw)
                    if bottom > top and right > left:
                        frames[..., top:bottom, left:right] += parts[:, :, :, i, j, top - r0 : bottom - r0,
                                                                     left - c0 : right - c0]
            grad_x = grad_x.to(x_dtype)
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
