"""Benchmark of exact-output ways to run STOP's pixel-prompt Conv3d stack, the component that dominates STOP's
cost (≈48 % of the reference's FLOPs; stop.md §7) and, above all, its training time.

    python -m tempme_composer.bench_conv [--batch 1] [--frames 12] [--size 224] [--iters 2] [--device cpu|cuda]
        [--bf16] [--impls direct channels_last fft]

For each implementation it prints forward and forward+backward seconds per video of the whole stack
(Conv3d 3→9→9→9→16, kernel 3×11×11, PReLU between as in `TemporalPrompt.Conv`; input frames need no gradient,
as in training), the largest deviation from the direct result, and the multiply-accumulates each counts:

- ``direct``: ``F.conv3d`` in the default NCDHW layout (what a straightforward implementation runs);
- ``channels_last``: the same convolution in ``channels_last_3d`` layout (oneDNN on CPU, cuDNN NDHWC on
  GPU) — what `TemporalPrompt` uses;
- ``fft``: `fft_conv3d` — 2-D FFT over the frame plane, the 3 temporal taps and the channel mixing as one
  batched complex matmul per frequency; exact up to float rounding, far fewer multiply-accumulates.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from tempme_composer.modules.fft_conv import _fast_length, fft_conv3d
from tempme_composer.modules.temporal_prompt import TemporalPrompt

__all__ = ['main']


def _run_stack(stack: nn.Sequential, x: torch.Tensor, impl: str) -> torch.Tensor:
    for layer in stack:
        if isinstance(layer, nn.Conv3d):
            if impl == 'fft':
                x = fft_conv3d(x, layer.weight, layer.bias)
            elif impl == 'channels_last':
                x = layer(x.contiguous(memory_format=torch.channels_last_3d))
            else:
                x = F.conv3d(x, layer.weight.contiguous(), layer.bias, padding=layer.padding)
        else:
            x = layer(x)
    return x


def _stack_macs(stack: nn.Sequential, voxels: int) -> int:
    return sum(voxels * layer.weight[0].numel() * layer.out_channels for layer in stack if isinstance(layer, nn.Conv3d))


def _fft_macs(stack: nn.Sequential, B: int, T: int, H: int, W: int) -> int:
    """Complex MACs of the channel mixing (4 real MACs each) plus FFT work (≈2.5·N·log2 N real MACs per transform)."""
    import math

    total = 0
    for layer in stack:
        if not isinstance(layer, nn.Conv3d):
            continue
        cout, cin, kt, kh, kw = layer.weight.shape
        hp, wp = _fast_length(H + kh - 1), _fast_length(W + kw - 1)
        n = hp * wp
        freqs = hp * (wp // 2 + 1)
        total += 4 * freqs * B * T * cin * kt * cout  # complex products
        total += int(2.5 * n * math.log2(n)) * (B * T * (cin + cout) + cout * cin * kt) // 2  # real FFTs ≈ half
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--frames', type=int, default=12)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--iters', type=int, default=2)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--bf16', action='store_true', help='autocast bf16 (direct/channels_last only)')
    parser.add_argument('--impls', nargs='+', default=['direct', 'channels_last', 'fft'])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)
    stack = TemporalPrompt(768, 12, 7, 4).Conv.to(device)
    stack.to(memory_format=torch.contiguous_format)
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    with torch.no_grad():
        reference = _run_stack(stack, x, 'direct')
    voxels = args.batch * args.frames * args.size * args.size
    print(f'Conv3d stack 3→9→9→9→16, kernel 3×11×11, batch {args.batch} × {args.frames} frames × '
          f'{args.size}² on {device} ({"bf16 autocast" if args.bf16 else "fp32"})')
    print('| impl | GMAC per video | forward s/video | forward+backward s/video | max abs diff vs direct |')
    print('|---|---|---|---|---|')
    for impl in args.impls:
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if args.bf16 and impl != 'fft'
            else contextlib.nullcontext()
        )
        times: dict[str, list[float]] = {'fwd': [], 'train': []}
        for it in range(args.iters + 1):
            for mode in ('fwd', 'train'):
                stack.zero_grad(set_to_none=True)
                if device.type == 'cuda':
                    torch.cuda.synchronize()
                start = time.perf_counter()
                with torch.set_grad_enabled(mode == 'train'), autocast:
                    y = _run_stack(stack, x, impl)
                    if mode == 'train':
                        y.float().square().mean().backward()
                if device.type == 'cuda':
                    torch.cuda.synchronize()
                if it:  # the first iteration warms up
                    times[mode].append(time.perf_counter() - start)
        with torch.no_grad(), autocast:
            diff = (_run_stack(stack, x, impl).float() - reference).abs().max().item()
        macs = _fft_macs(stack, args.batch, args.frames, args.size, args.size) if impl == 'fft' else _stack_macs(stack, voxels)
        fwd, train = (statistics.median(times[m]) / args.batch for m in ('fwd', 'train'))
        print(f'| {impl} | {macs / args.batch / 1e9:.1f} | {fwd:.3f} | {train:.3f} | {diff:.1e} |')


if __name__ == '__main__':
    main()
