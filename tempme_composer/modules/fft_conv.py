"""'Same'-padded Conv3d (odd kernel, stride 1) computed in the frequency domain, forward and backward.

STOP's pixel-prompt stack convolves 12 × 224² volumes with 3 × 11 × 11 kernels and 3-16 channels: a poor fit
for direct convolution (cuDNN and oneDNN alike), ≈20× more multiply-adds than the same sums via 2-D FFTs of
the frame plane. `fft_conv3d` is a custom autograd function whose products all stay in the frequency domain
(the gradients of a convolution are convolutions too):

- output = input ⋆ kernel: ``rfft2`` of zero-padded frame tiles (overlap-save); per frequency, one batched
  matmul per temporal tap mixes the channels of the frames that tap reaches, summed at the tap's frame shift;
  inverse transforms of only the rows and columns kept;
- grad-input = grad-output correlated with the kernel (the conjugate kernel spectrum), skipped when the
  input needs no gradient (the first layer sees the video); blocks of grad-output overlap-added back;
- grad-weight = correlation of input and grad-output, summed over batch and frames: the input spectrum kept
  from the forward pass times the conjugate grad-output spectrum, one batched matmul per temporal tap, and a
  partial inverse DFT (two small matmuls) that evaluates only the kernel's ``kh × kw`` lags;
- grad-bias = the sum of grad-output.

Kernel spectra are partial DFTs too (``kh × kw`` non-zero taps in a ``hp × wp`` plane: two matmuls instead of
a full FFT). Tiles are zero-padded to ``hp × wp``, even sizes with no prime factor above 7 and at least
``tile + k - 1`` (a linear, not circular, convolution).

Layout, chosen for CPU memory traffic (each step measured): tiles are gathered channel-major
(``[C, T, B, nh, nw, hp, wp]``, one pass), transformed where the FFT is fastest (last two axes), and made
frequency-major by one 2-D transpose (PyTorch's cache-blocked copy, 3× faster than a general permute): per
frequency a ``[C, T·B·nh·nw]`` matrix, so a temporal tap is a column slice (no tap-shifted copies). The
inverse transforms run on that frequency-major layout as strided batches (rows, then columns) and the one
layout change back happens in the copy to the output (or the overlap-add): no transpose back to tiles, with
bit-identical results (measured 0.79-0.97× the forward and 0.89-0.95× the train step of transposing back).
Gathering tiles frequency-major instead measured slower than the transpose. (Real
block GEMMs ``[[Kr, -Ki], [Ki, Kr]]`` instead of complex ones measured slower: building the blocks costs as
much as the products.)
Everything is computed in fp32 (also under autocast); results equal ``F.conv3d(x, w, b, padding='same')``
up to fp32 rounding.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch.autograd.function import once_differentiable

__all__ = ['fft_conv3d', 'tile_plan']

_MAX_TILE = 128  # output pixels per tile and axis (see tile_plan)


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


def tile_plan(size: int, k: int) -> tuple[int, int, int]:
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
    """``[C·M, hp, wq]`` spectra → ``[hp·wq, C, M]``: one 2-D transpose (PyTorch's cache-blocked copy, 3× faster
    than a general permute), the layout of the per-frequency products."""
    rows = spectra.shape[0]
    return spectra.reshape(rows, -1).t().contiguous().view(-1, channels, rows // channels)


def _mix(spectrum: torch.Tensor, kernel: torch.Tensor, step: int, sign: int) -> torch.Tensor:
    """Channel and temporal mixing per frequency: ``out[t] = Σ_d kernel[d] @ spectrum[t + sign·(d - kt//2)]``.

    Frames outside ``0..T-1`` are zero. A frame is ``step`` consecutive columns (batch × tiles); one ``bmm``
    over frequencies per tap, on the frames that tap reaches.

    Args:
        spectrum: ``[F, Cin, T·step]``.
        kernel: ``[kt, F, Cout, Cin]`` (may be a transposed view).
    Returns:
        ``[F, Cout, T·step]``.
    """
    kt = kernel.shape[0]
    T = spectrum.shape[-1] // step
    pt = kt // 2
    out = torch.bmm(kernel[pt], spectrum)
    for d in range(kt):
        s = sign * (d - pt)  # output frame t reads input frame t + s
        if d == pt or abs(s) >= T:
            continue
        if s > 0:
            out[..., : (T - s) * step] += torch.bmm(kernel[d], spectrum[..., s * step :])
        else:
            out[..., -s * step :] += torch.bmm(kernel[d], spectrum[..., : (T + s) * step])
    return out


def _correlate(grad_conj: torch.Tensor, x: torch.Tensor, kt: int, step: int) -> torch.Tensor:
    """Per frequency and tap ``d``: ``Σ_{t, b} grad_conj[t] x[t + d - kt//2]ᵀ`` → ``[kt, F, Cout, Cin]``.

    Args:
        grad_conj: ``[F, Cout, T·step]``, the conjugate grad-output spectrum.
        x: ``[F, Cin, T·step]``, the input spectrum.
    """
    f, cout, m = grad_conj.shape
    T = m // step
    out = grad_conj.new_empty(kt, f, cout, x.shape[1])
    pt = kt // 2
    for d in range(kt):
        s = d - pt  # grad-output frame t meets input frame t + s
        if abs(s) >= T:
            out[d].zero_()
            continue
        g = grad_conj[..., max(0, -s) * step : (T - max(0, s)) * step]
        xs = x[..., max(0, s) * step : (T + min(0, s)) * step]
        torch.bmm(g, xs.transpose(1, 2), out=out[d])
    return out


class _FFTConv3d(torch.autograd.Function):
    """Forward and backward of the 'same' Conv3d in the frequency domain (see the module doc)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        B, cin, T, H, W = x.shape
        cout, _, _, kh, kw = weight.shape
        ph, pw = kh // 2, kw // 2
        plan = (nh, th, hp), (nw, tw, wp) = tile_plan(H, kh), tile_plan(W, kw)
        wq = wp // 2 + 1
        step = B * nh * nw
        # overlap-save: tile (i, j) holds input rows i·th - ph ... + hp (columns alike)
        tiles = _gather_tiles(x.float(), plan, (-ph, -pw), (hp, wp), (0, 0))
        xs = _frequency_major(torch.fft.rfft2(tiles), cin)  # [F, Cin, T·step]
        kernel = _kernel_spectrum(weight.detach().float(), hp, wp)  # [kt, F, Cin, Cout]
        mixed = _mix(xs, kernel.transpose(-1, -2), step, 1)  # [hp·wq, Cout, T·step]
        # inverse transforms in the frequency-major layout (strided batches: no transpose back to tiles)
        rows = torch.fft.ifft(mixed.view(hp, -1), dim=0)[kh - 1 : kh - 1 + th]  # only the rows kept
        kept = torch.fft.irfft(rows.view(th, wq, -1), n=wp, dim=1)[:, kw - 1 : kw - 1 + tw]  # [th, tw, Cout·M]
        y = x.new_empty(B, cout, T, nh * th, nw * tw, dtype=torch.float32)
        target = y.view(B, cout, T, nh, th, nw, tw).permute(1, 2, 0, 3, 5, 4, 6)
        kept = kept.view(th, tw, cout, T, B, nh, nw).permute(2, 3, 4, 5, 6, 0, 1)
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
        wq = wp // 2 + 1
        step = B * nh * nw
        g = grad.float()  # [B, Cout, T, H, W]
        grad_x = grad_w = grad_b = None
        if needs_b and b_dtype is not None:
            grad_b = g.sum(dim=(0, 2, 3, 4)).to(b_dtype)
        if not (needs_x or needs_w):
            return grad_x, grad_w, grad_b
        # grad-output cut into disjoint th × tw blocks, each at (2·ph, 2·pw) in its zero-padded tile; conjugate
        # spectra (rfft2 and an in-place conjugation: half the time of ihfft2, which is the same)
        blocks = _gather_tiles(g, plan, (0, 0), (th, tw), (2 * ph, 2 * pw))
        gs = _frequency_major(torch.fft.rfft2(blocks).conj_physical_(), cout)  # [F, Cout, T·step]
        if needs_w:  # correlation of each block with its input tile at lags (p - 2·ph, q - 2·pw)
            rows, cols = [p - 2 * ph for p in range(kh)], [q - 2 * pw for q in range(kw)]
            lags = _kernel_lags(_correlate(gs, xs, kt, step), rows, cols, hp, wp)  # [kt, kh, kw, Cout, Cin]
            grad_w = lags.permute(3, 4, 0, 1, 2).to(w_dtype)
        if needs_x:  # conj(grad) @ conj(kernel)ᵀ, conjugated back by the final transform; overlap-add
            bh, bw = th + kh - 1, tw + kw - 1  # each block reaches ph, pw pixels beyond its own
            mixed = _mix(gs, kernel, step, -1)  # [hp·wq, Cin, T·step]
            rows = torch.fft.fft(mixed.view(hp, -1), dim=0, norm='forward')[:bh]  # the inverse of the conjugate
            parts = torch.fft.hfft(rows.view(bh, wq, -1), n=wp, dim=1, norm='forward')[:, :bw]
            parts = parts.view(bh, bw, cin, T, B, nh, nw).permute(2, 3, 4, 5, 6, 0, 1)  # [Cin, T, B, nh, nw, ...]
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
