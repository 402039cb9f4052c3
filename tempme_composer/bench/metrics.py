"""Benchmark of the exact retrieval metric: wall time and peak memory per evaluation size.

    python -m tempme_composer.bench metrics [--sizes 1k 10k 60kx3k 100k] [--dsl] [--device cpu|cuda]

A size is ``N`` (N captions × N videos, one caption each) or ``QxV`` (Q captions over V videos, Q/V each,
assigned round-robin so captions of a video are not contiguous); ``k`` means ×1000. Embeddings are random,
L2-normalised, D=512 (captions = their video + noise, so the recalls are not all zero). Each size runs in a
fresh subprocess, so peak memory is per size: on CPU the process's resident-set high-water mark
(``/proc/self/status`` VmHWM, reset after the inputs are built; ``getrusage`` otherwise), on CUDA
``torch.cuda.max_memory_allocated``. Prints a Markdown table; "wall time" is the evaluation alone, "process"
the whole subprocess (interpreter start, imports, CUDA initialisation, building the inputs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

from tempme_composer.bench.common import sync
from tempme_composer.metrics import embedding_metrics

DEFAULT_SIZES = ('1k', '10k', '60kx3k', '100k')


def parse_size(text: str) -> tuple[int, int]:
    """``'60kx3k'`` → ``(60000, 3000)``; ``'10k'`` → ``(10000, 10000)``."""

    def number(part: str) -> int:
        part = part.strip().lower()
        return int(float(part[:-1]) * 1000) if part.endswith('k') else int(part)

    q, _, v = text.partition('x')
    Q, V = number(q), number(v or q)
    if Q < V or Q % V:
        raise ValueError(f'size {text!r}: captions must be a multiple of videos')
    return Q, V


def make_inputs(Q: int, V: int, dim: int, device: str, seed: int = 0):
    """Random unit embeddings built in place (no full-size temporaries), and round-robin labels."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(V, dim, generator=g)
    video.div_(video.norm(dim=1, keepdim=True))
    labels = torch.arange(Q) % V
    text = torch.randn(Q, dim, generator=g).mul_(0.3)  # per-dimension noise: R@1 about 50% at 1k videos
    step = 8192
    for s in range(0, Q, step):
        part = text[s : s + step].add_(video[labels[s : s + step]])
        part.div_(part.norm(dim=1, keepdim=True))
    return text.to(device), video.to(device), labels


def _status_kib(field: str) -> int | None:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # Linux: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def run_one(size: str, dim: int, device: str, dsl: bool, chunk_size: int | None, tie_mode: str) -> dict:
    """Time one evaluation in this process; returns the table row as a dict."""
    Q, V = parse_size(size)
    text, video, labels = make_inputs(Q, V, dim, device)
    inputs_mib = (_status_kib('VmRSS') or 0) / 1024
    reset = _reset_peak_rss()
    sync(device)
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    results = embedding_metrics(text, video, labels, tie_mode, chunk_size=chunk_size, dsl=dsl)
    sync(device)
    seconds = time.perf_counter() - start
    if device.startswith('cuda'):
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
        extra_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
        kind = 'CUDA allocated'
    else:
        hwm = _status_kib('VmHWM') if reset else None
        peak_mib = (hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
        extra_mib = peak_mib - inputs_mib
        kind = 'RSS' if reset else 'RSS (ru_maxrss, incl. input build)'
    return {
        'size': size,
        'Q': Q,
        'V': V,
        'seconds': seconds,
        'inputs_mib': inputs_mib,
        'peak_mib': peak_mib,
        'extra_mib': extra_mib,
        'memory': kind,
        't2v_R@1': results['t2v_R@1'],
        'v2t_R@1': results['v2t_R@1'],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', nargs='+', default=list(DEFAULT_SIZES), help='N or QxV, k = thousand')
    parser.add_argument('--dim', type=int, default=512)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dsl', action='store_true', help='also compute the dual-softmax metrics')
    parser.add_argument('--chunk-size', type=int, default=None, help='queries per block (default: auto)')
    parser.add_argument(
        '--tie-mode', default='pessimistic', choices=('pessimistic', 'optimistic', 'reference')
    )
    parser.add_argument('--one', help=argparse.SUPPRESS)  # internal: run one size, print JSON
    args = parser.parse_args(argv)
    if args.one:
        row = run_one(args.one, args.dim, args.device, args.dsl, args.chunk_size, args.tie_mode)
        print(json.dumps(row))
        return

    print(
        f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, '
        f'{torch.get_num_threads()} threads, device {args.device}, D={args.dim}, dsl={args.dsl}, '
        f'chunk={args.chunk_size or "auto"}, tie_mode={args.tie_mode}\n'
    )
    print(
        '| captions × videos | wall time (s) | process (s) | inputs (MiB) | peak (MiB) | peak − inputs (MiB) '
        '| t2v R@1 | v2t R@1 |'
    )
    print('|---|---|---|---|---|---|---|---|')
    for size in args.sizes:
        cmd = [
            sys.executable,
            '-m',
            'tempme_composer.bench',
            'metrics',
            '--one',
            size,
            '--dim',
            str(args.dim),
            '--device',
            args.device,
            '--tie-mode',
            args.tie_mode,
        ]
        cmd += ['--dsl'] if args.dsl else []
        cmd += ['--chunk-size', str(args.chunk_size)] if args.chunk_size else []
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        process_s = time.perf_counter() - started  # with interpreter start, imports, device init, input build
        if proc.returncode != 0:
            print(f'| {size} | failed: {proc.stderr.strip().splitlines()[-1:]} | {process_s:.1f} | | | | | |',
                  flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f'| {r["Q"]:,} × {r["V"]:,} | {r["seconds"]:.2f} | {process_s:.1f} | {r["inputs_mib"]:.0f} '
            f'| {r["peak_mib"]:.0f} '
            f'| {r["extra_mib"]:.0f} | {r["t2v_R@1"]:.2f} | {r["v2t_R@1"]:.2f} |',
            flush=True,
        )
    print(
        '\npeak = '
        + (
            'CUDA max_memory_allocated'
            if args.device.startswith('cuda')
            else 'process RSS high-water mark after building the inputs (whole process, torch included)'
        )
    )


if __name__ == '__main__':
    main()
