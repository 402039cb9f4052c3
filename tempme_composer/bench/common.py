"""Helpers the benchmarks share: timing, Markdown tables, JSON output and the machine line.

Speed is reported as the median of repeated calls after warm-up (robust on a shared CPU), with the device
synchronised around each call; comparisons are ratios of paths measured in the same run.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    'PEAK_BF16_TFLOPS',
    'fmt',
    'machine_description',
    'markdown_table',
    'median_seconds',
    'peak_bf16_tflops',
    'sync',
    'write_json',
]

# Peak dense (no sparsity) bf16 tensor-core TFLOP/s by device-name substring, first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ('H100 PCIe', 756.0),
    ('H100 NVL', 835.0),
    ('GH200', 989.0),
    ('H100', 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ('H200', 989.0),
    ('H800', 989.0),
    ('B200', 2250.0),
    ('A100', 312.0),
    ('A800', 312.0),
    ('L40S', 362.0),
    ('A10G', 70.0),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """Peak dense bf16 TFLOP/s of a GPU from its ``torch.cuda.get_device_name``; None if unknown."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops
    return None


def sync(device: str | torch.device) -> None:
    """Wait for queued device work (CUDA), so that wall time covers it."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def median_seconds(
    step: Callable[[], Any], device: str | torch.device, warmup: int, iters: int, *, on_timed_start=None
) -> float:
    """Median wall seconds of ``iters`` calls of ``step`` after ``warmup`` untimed ones.

    ``on_timed_start``: called once between warm-up and the timed calls (e.g. to reset peak-memory counters).
    """
    for _ in range(warmup):
        step()
    sync(device)
    if on_timed_start is not None:
        on_timed_start()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fmt(value: Any, spec: str = '.2f') -> str:
    """A table cell: ``n/a`` for None, strings as they are, numbers by ``spec``."""
    if value is None:
        return 'n/a'
    if isinstance(value, str):
        return value
    return format(value, spec)


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table of already formatted cells."""
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (the same rows the table shows)."""
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2)


def machine_description(device: str) -> str:
    """CPU model, cores, torch threads and version; the GPU and its bf16 peak on CUDA."""
    cpu = platform.processor() or 'unknown CPU'
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    text = f'CPU: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; torch {torch.__version__}'
    if device == 'cuda' and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = peak_bf16_tflops(name)
        text += f'; GPU: {name} (peak dense bf16 {f"{peak:g} TFLOP/s" if peak else "unknown"}), CUDA {torch.version.cuda}'
    return text
