"""Benchmark of exact-output ways to run STOP's pixel-prompt Conv3d stack, the component that dominates STOP's
cost (≈48 % of the reference's FLOPs; docs/reference/stop.md#efficiency) and, above all, its training time.

    python -m tempme_composer.bench conv [--batch 1] [--frames 12] [--size 224] [--iters 2] [--device cpu|cuda]
        [--bf16] [--impls direct channels_last fft] [--threads N] [--json PATH]

For each implementation it prints forward and forward+backward seconds per video of the whole stack
(Conv3d 3→9→9→9→16, kernel 3×11×11, PReLU between as in `TemporalPrompt.Conv`; input frames need no gradient,
as in training), the largest deviation from the direct result, and the multiply-accumulates each counts:

- ``direct``: ``F.conv3d`` in the default NCDHW layout (what a straightforward implementation runs);
- ``channels_last``: the same convolution in ``channels_last_3d`` layout (oneDNN on CPU, cuDNN NDHWC on
  GPU) — what `TemporalPrompt` uses;
- ``fft``: `fft_conv3d` — 2-D FFTs of frame tiles, the temporal taps and the channel mixing as batched
  complex matmuls per frequency, forward and backward in the frequency domain; exact up to float rounding,
  far fewer multiply-accumulates (`conv_impl: auto` on CPU and CUDA).

The implementations are timed interleaved — each round runs every one once, forward then train step — and
each figure is the median over ``--iters`` rounds after a warm-up round, so a change of load on a shared
machine hits all alike; the ratios to ``channels_last`` are printed under the table (speed targets are
ratios measured in one run).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from tempme_composer.bench.common import markdown_table, sync, write_json
from tempme_composer.modules.fft_conv import fft_conv3d, tile_plan
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
    """Real MACs of `fft_conv3d`'s forward: the per-frequency complex products (4 real MACs each), the partial-DFT
    kernel spectra, and the FFTs (≈2.5·N·log2 N real MACs per real transform of N points)."""
    total = 0
    for layer in stack:
        if not isinstance(layer, nn.Conv3d):
            continue
        cout, cin, kt, kh, kw = layer.weight.shape
        (nh, _, hp), (nw, _, wp) = tile_plan(H, kh), tile_plan(W, kw)
        freqs, rows, n = hp * (wp // 2 + 1), T * B * nh * nw, hp * wp
        total += 4 * freqs * rows * cin * kt * cout  # channel and temporal mixing
        total += 4 * kt * cin * cout * (kh * kw * (wp // 2 + 1) + kh * freqs)  # kernel spectra
        total += int(2.5 * n * math.log2(n)) * rows * (cin + cout)  # tile FFTs in and out
    return total


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--frames', type=int, default=12)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--iters', type=int, default=2)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--bf16', action='store_true', help='autocast bf16 (direct/channels_last only)')
    parser.add_argument('--impls', nargs='+', default=['direct', 'channels_last', 'fft'])
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: all cores)')
    parser.add_argument('--json', default=None, help='also write the rows here')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
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
    steps = {}
    for impl in args.impls:
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if args.bf16 and impl != 'fft'
            else contextlib.nullcontext()
        )

        def step(train: bool, impl: str = impl, autocast=autocast) -> None:
            stack.zero_grad(set_to_none=True)
            with torch.set_grad_enabled(train), autocast:
                y = _run_stack(stack, x, impl)
                if train:
                    y.float().square().mean().backward()
            sync(device)

        steps[impl] = step
    # Interleaved: every round times each implementation once (forward, then train step), so that a change in
    # the machine's load during the run hits all of them alike; medians over the rounds.
    times = {(impl, train): [] for impl in args.impls for train in (False, True)}
    for round_ in range(1 + args.iters):
        for train in (False, True):
            for impl in args.impls:
                start = time.perf_counter()
                steps[impl](train)
                if round_:  # round 0 warms up
                    times[(impl, train)].append(time.perf_counter() - start)
    table, rows = [], []
    for impl in args.impls:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 and impl != 'fft' else contextlib.nullcontext()
        fwd, train = (statistics.median(times[(impl, m)]) / args.batch for m in (False, True))
        with torch.no_grad(), autocast:
            diff = (_run_stack(stack, x, impl).float() - reference).abs().max().item()
        macs = _fft_macs(stack, args.batch, args.frames, args.size, args.size) if impl == 'fft' else _stack_macs(stack, voxels)
        rows.append({'impl': impl, 'gmac_per_video': macs / args.batch / 1e9, 'fwd_s': fwd, 'train_s': train, 'max_abs_diff': diff})
        table.append([impl, f'{macs / args.batch / 1e9:.1f}', f'{fwd:.3f}', f'{train:.3f}', f'{diff:.1e}'])
    head = ['impl', 'GMAC per video', 'forward s/video', 'forward+backward s/video', 'max abs diff vs direct']
    print(markdown_table(head, table))
    base = next((r for r in rows if r['impl'] == 'channels_last'), None)
    if base is not None:
        for r in rows:
            print(f'{r["impl"]} / channels_last: forward {r["fwd_s"] / base["fwd_s"]:.2f}x, '
                  f'forward+backward {r["train_s"] / base["train_s"]:.2f}x')
    if args.json:
        write_json(args.json, {'settings': vars(args), 'rows': rows})
    return rows


if __name__ == '__main__':
    main()
