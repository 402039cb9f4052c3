"""Index throughput benchmark: how fast ``tempme-index --window`` indexes a long video on this CPU, where the
time goes (decoding + preprocessing vs the model forward), and how many loader cores a GPU would need.

    python -m tempme_composer.bench index-throughput [--minutes 10] [--models demo,vit-b32] [--size 640x360]
        [--fps 25] [--workers 0,1,2] [--workdir DIR] [--json FILE]

The video: ``--minutes`` of H.264 at ``--fps`` and ``--size`` (libx264 ``ultrafast``, mostly flat content
with a moving square, written by `index_memory.write_long_video`). Flat synthetic content decodes faster than
camera footage, so the decoding figures here are an upper bound on speed.

The models, both random-init exports made by `index_memory.export_random_model` (random weights cost the same
time as trained ones):

* ``demo``: the demo's model (``preset: tiny``, ``max_frames`` 8) with the demo's frame rule, which the export
  records for a demo run: every frame at its decoded size. Its default window is 8 frames at the video's rate.
* ``vit-b32``: ``model.clip.preset: 'ViT-B/32'``, ``max_frames`` 12 (the config's default), with
  tempme-convert's default rule (1 fps, short side 224). Its default window is 12 s.

Per model:

* one fresh ``tempme-index --window`` process (the export's default window, stride half a window; CPU,
  float32) per ``--workers`` value: wall time (start-up included), moments indexed, peak RSS; the best is
  reported;
* decoding + preprocessing alone: `moments.file_moments` over the same video in this process, pinned to one
  core with one torch thread (what one loader worker does, thumbnails included): windows per CPU second, which
  other load on a shared machine does not inflate;
* the forward alone: `UnifiedModel.encode_video` on as many random ``uint8 [max_frames, R, R, 3]`` windows,
  in ``tempme-index``'s batches, after one warm-up batch, with torch's default threads.

Wall times count whatever else runs on the machine: the load average at the start and end is printed.

With the forward on a GPU what remains is decoding, so the loader cores a GPU needs are its windows/s over the
decode windows/s per core. The GPU figure is the repository's measured H100 forward rate for the meanP
baseline at the same backbone, frames and resolution (docs/benchmarks.md#one-h100); other models get none.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tempme_composer.bench.common import fmt, machine_description, markdown_table, write_json
from tempme_composer.bench.index_memory import (
    export_random_model,
    index_command,
    index_rows,
    measure_process,
    write_long_video,
)

__all__ = ['GPU_FORWARD', 'MODELS', 'GpuFigure', 'ModelCase', 'decode_windows', 'forward_seconds', 'main']


@dataclass(frozen=True)
class ModelCase:
    """One exported model to index with: its CLIP preset, frames per window and frame rule."""

    name: str
    preset: str
    max_frames: int | None  # None: the config's default
    demo_rule: bool  # True: every frame at its decoded size; False: tempme-convert's default rule
    describe: str


MODELS = {
    'demo': ModelCase('demo', 'tiny', 8, True, "demo: tiny CLIP, demo's rule (every frame, decoded size)"),
    'vit-b32': ModelCase('vit-b32', 'ViT-B/32', None, False, 'ViT-B/32, 1 fps rule, short side 224'),
}


@dataclass(frozen=True)
class GpuFigure:
    """A measured GPU forward rate and the conditions it holds for."""

    preset: str
    max_frames: int
    image_resolution: int
    windows_per_s: float
    source: str


#: docs/benchmarks.md, "One H100": meanP baseline forward on one NVIDIA H100 80GB HBM3 (bf16 autocast, batch 32).
GPU_FORWARD = (
    GpuFigure('ViT-B/32', 12, 224, 1680.0, 'H100 meanP ViT-B/32 forward (docs/benchmarks.md, One H100)'),
)


def gpu_figure(case: ModelCase, max_frames: int, image_resolution: int) -> GpuFigure | None:
    """The measured GPU rate for this model's backbone, frames and resolution; None when there is none."""
    for g in GPU_FORWARD:
        if (g.preset, g.max_frames, g.image_resolution) == (case.preset, max_frames, image_resolution):
            return g
    return None


def _size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` as two positive even numbers (yuv420p needs even sides)."""
    width, _, height = text.lower().partition('x')
    got = int(width), int(height)
    if min(got) <= 0 or any(n % 2 for n in got):
        raise ValueError(text)
    return got


def _video(workdir: Path, minutes: float, fps: int, width: int, height: int) -> Path:
    """The long video, alone in its folder (``--videos`` indexes a folder), written once per workdir."""
    folder = workdir / f'videos-{minutes:g}min-{width}x{height}-{fps}fps'
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / 'long.mp4'
    if not video.is_file():
        print(f'writing {video} ...', flush=True)
        start = time.perf_counter()
        write_long_video(video, hours=minutes / 60, fps=fps, width=width, height=height)
        print(f'  {time.perf_counter() - start:.1f} s, {video.stat().st_size / 2**20:.1f} MiB', flush=True)
    return video


@contextlib.contextmanager
def _one_core() -> Iterator[None]:
    """This thread pinned to one core with one torch thread (FFmpeg sizes its threads by the affinity), as a
    loader worker decodes; restored after."""
    cpus, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, {min(cpus)})
    torch.set_num_threads(1)
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)
        torch.set_num_threads(threads)


def decode_windows(video: Path, prep: Any, settings: Any) -> dict[str, float]:
    """Decode + preprocess the video's windows as a loader worker does, on one core: windows, seconds of
    video, wall and CPU seconds, and the window and stride the first two moments show."""
    from tempme_composer.inference.moments import Moment, VideoEnd, file_moments

    spans: list[tuple[float, float]] = []
    duration = 0.0
    with _one_core():
        wall, cpu = time.perf_counter(), time.process_time()
        for item in file_moments(video, prep, settings):
            if isinstance(item, Moment):
                spans.append((item.start, item.end))
            elif isinstance(item, VideoEnd):
                duration = item.duration
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    (start, end), (following, _) = spans[0], spans[min(1, len(spans) - 1)]
    return {'windows': len(spans), 'video_s': duration, 'wall_s': wall, 'cpu_s': cpu, 'window_s': end - start,
            'stride_s': following - start}


def _index_batch_size() -> int:
    """Moments per forward in ``tempme-index`` (its default)."""
    from tempme_composer.inference.index import index_videos

    return int(inspect.signature(index_videos).parameters['batch_size'].default)


def forward_seconds(model: Any, windows: int, batch: int) -> dict[str, float]:
    """Wall and CPU seconds `encode_video` takes for ``windows`` random uint8 windows in batches of ``batch`` (a
    last partial batch as the index has), after one warm-up batch."""
    prep = model.preprocessing
    T, R = prep.max_frames, prep.image_resolution
    video = torch.randint(0, 256, (batch, T, R, R, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, T, dtype=torch.long)
    sizes = [batch] * (windows // batch) + ([windows % batch] if windows % batch else [])
    with torch.no_grad():
        model.model.encode_video(video, mask)
        wall, cpu = time.perf_counter(), time.process_time()
        for n in sizes:
            model.model.encode_video(video[:n], mask[:n])
        return {'wall_s': time.perf_counter() - wall, 'cpu_s': time.process_time() - cpu}


def _children_cpu_s() -> float:
    """CPU seconds of every finished, waited-for descendant (the index process and its loader workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _index_runs(case: ModelCase, export: Path, video: Path, workdir: Path,
                workers: Sequence[int]) -> list[dict[str, Any]]:
    """One fresh ``tempme-index --window`` process per workers value."""
    runs = []
    for n in workers:
        out = workdir / f'index-{case.name}-w{n}'
        shutil.rmtree(out, ignore_errors=True)
        print(f'{case.name}: tempme-index --window --workers {n} ...', flush=True)
        cpu = _children_cpu_s()
        got = measure_process(index_command('bounded', export, video.parent, out, ('--window',), workers=n),
                              os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))
        if got['returncode'] != 0:
            print(got['output'][-4000:], flush=True)
        runs.append({'model': case.name, 'workers': n, 'seconds': got['seconds'], 'cpu_s': _children_cpu_s() - cpu,
                     'windows': index_rows(out),
                     'peak_rss_mib': got['peak_rss_mib'], 'returncode': got['returncode']})
        shutil.rmtree(out, ignore_errors=True)
    return runs


def bench_model(case: ModelCase, video: Path, workdir: Path, workers: Sequence[int]) -> dict[str, Any]:
    """Index runs, the decode-only and the forward-only measurements of one model, and what they imply."""
    from tempme_composer.inference.exported import load_exported
    from tempme_composer.inference.moments import moment_settings

    print(f'{case.name}: exporting a random-init {case.preset} ...', flush=True)
    export = export_random_model(workdir, case.demo_rule, preset=case.preset, max_frames=case.max_frames)
    runs = _index_runs(case, export, video, workdir, workers)
    model = load_exported(export, device='cpu')
    prep = model.preprocessing
    settings = moment_settings(prep, segments='windows')
    print(f'{case.name}: decoding + preprocessing on one core ...', flush=True)
    decode = decode_windows(video, prep, settings)
    batch = _index_batch_size()
    print(f'{case.name}: forward of {decode["windows"]} windows, batches of {batch} ...', flush=True)
    forward = forward_seconds(model, decode['windows'], batch)
    return _summary(case, prep, runs, decode, forward, batch)


def _summary(case: ModelCase, prep: Any, runs: list[dict[str, Any]], decode: dict[str, float],
             forward: dict[str, float], batch: int) -> dict[str, Any]:
    """What the measurements say: the best run, the decode and forward rates, the loader cores a GPU needs
    (decode per core counted in CPU seconds, which other load on the machine does not inflate)."""
    ok = [r for r in runs if r['returncode'] == 0 and r['windows']]
    best = min(ok, key=lambda r: r['seconds']) if ok else None
    decode_rate = decode['windows'] / decode['cpu_s']
    gpu = gpu_figure(case, prep.max_frames, prep.image_resolution)
    return {
        'model': case.name, 'describe': case.describe, 'preset': case.preset, 'max_frames': prep.max_frames,
        'image_resolution': prep.image_resolution, 'frame_fps': prep.frames.fps,
        'short_side': prep.frames.short_side, 'window_s': decode['window_s'], 'stride_s': decode['stride_s'],
        'batch': batch,
        'video_s': decode['video_s'], 'runs': runs,
        'best_workers': best['workers'] if best else None, 'best_seconds': best['seconds'] if best else None,
        'windows': best['windows'] if best else None,
        'windows_per_s': best['windows'] / best['seconds'] if best else None,
        'video_s_per_s': decode['video_s'] / best['seconds'] if best else None,
        'decode_windows': decode['windows'], 'decode_wall_s': decode['wall_s'], 'decode_cpu_s': decode['cpu_s'],
        'decode_windows_per_core_s': decode_rate,
        'forward_s': forward['wall_s'], 'forward_cpu_s': forward['cpu_s'],
        'forward_windows_per_s': decode['windows'] / forward['wall_s'],
        'decode_share': decode['cpu_s'] / (decode['cpu_s'] + forward['cpu_s']),
        'gpu_windows_per_s': gpu.windows_per_s if gpu else None, 'gpu_source': gpu.source if gpu else None,
        'gpu_loader_cores': gpu.windows_per_s / decode_rate if gpu else None,
    }


def format_runs(summaries: Sequence[dict[str, Any]]) -> str:
    """One row per ``tempme-index`` process."""
    head = ['model', 'workers', 'wall s', 'CPU s', 'windows', 'windows/s', 'video s/s', 'peak RSS MiB']
    cells = []
    for s in summaries:
        for r in s['runs']:
            ok = r['returncode'] == 0 and r['windows']
            cells.append([s['model'], r['workers'], fmt(r['seconds'], '.1f'), fmt(r['cpu_s'], '.1f'),
                          fmt(r['windows'], 'd'), fmt(r['windows'] / r['seconds'] if ok else None, '.1f'),
                          fmt(s['video_s'] / r['seconds'] if ok else None, '.1f'),
                          fmt(r['peak_rss_mib'], '.0f') if ok else f'failed (exit {r["returncode"]})'])
    return markdown_table(head, cells)


def format_throughput(summaries: Sequence[dict[str, Any]]) -> str:
    """Per model: the best run's rates (start-up included)."""
    head = ['model', 'frames × R, rule', 'window / stride s', 'video s', 'windows', 'best workers', 'windows/s',
            'h of video per h (= s/s)']
    cells = []
    for s in summaries:
        rule = 'every frame' if s['frame_fps'] is None else f'{s["frame_fps"]:g} fps, short side {s["short_side"]}'
        cells.append([s['describe'], f'{s["max_frames"]} × {s["image_resolution"]}, {rule}',
                      f'{s["window_s"]:.3g} / {s["stride_s"]:.3g}', fmt(s['video_s'], '.0f'),
                      fmt(s['windows'], 'd'), fmt(s['best_workers'], 'd'), fmt(s['windows_per_s'], '.2f'),
                      fmt(s['video_s_per_s'], '.1f')])
    return markdown_table(head, cells)


def format_split(summaries: Sequence[dict[str, Any]]) -> str:
    """Per model: decoding + preprocessing vs forward, and what a GPU leaves to the CPU."""
    head = ['model', 'decode+prep CPU s (1 core)', 'forward wall s', 'forward CPU s', 'decode share of CPU',
            'decode windows/s per core', 'forward windows/s (CPU)', 'GPU windows/s', 'loader cores per GPU']
    cells = [[s['model'], fmt(s['decode_cpu_s'], '.1f'), fmt(s['forward_s'], '.1f'), fmt(s['forward_cpu_s'], '.1f'),
              f'{100 * s["decode_share"]:.0f} %', fmt(s['decode_windows_per_core_s'], '.1f'),
              fmt(s['forward_windows_per_s'], '.2f'), fmt(s['gpu_windows_per_s'], '.0f'),
              fmt(s['gpu_loader_cores'], '.0f')] for s in summaries]
    return markdown_table(head, cells)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog='python -m tempme_composer.bench index-throughput',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--minutes', type=float, default=10.0, help='length of the test video')
    parser.add_argument('--size', type=_size, default='640x360', help='WIDTHxHEIGHT of the test video')
    parser.add_argument('--fps', type=int, default=25, help='frame rate of the test video')
    parser.add_argument('--models', default=','.join(MODELS), help=f'comma-separated, of {", ".join(MODELS)}')
    parser.add_argument('--workers', default='0,1,2', help='tempme-index --workers values to run, comma-separated')
    parser.add_argument('--workdir', default=None, help='keep the video and exports here for re-runs '
                        '(default: a temporary folder)')
    parser.add_argument('--json', default=None, help='also write the results here')
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(',') if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f'unknown model(s) {unknown}; choose from {", ".join(MODELS)}')
    workers = [int(n) for n in args.workers.split(',') if n]
    width, height = args.size
    summaries = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix='tempme-index-throughput-') as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        video = _video(workdir, args.minutes, args.fps, width, height)
        for name in names:
            summaries.append(bench_model(MODELS[name], video, workdir, workers))
    load = f'load average (1 min) {load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end'
    print(f'\n{machine_description("cpu")}; {load}; video: {args.minutes:g} min, {width}x{height}, {args.fps} fps, '
          f'H.264 ultrafast (synthetic, mostly flat)\n')
    for table in (format_runs, format_throughput, format_split):
        print(table(summaries), end='\n\n')
    if args.json:
        write_json(args.json, {'video': {'minutes': args.minutes, 'width': width, 'height': height, 'fps': args.fps},
                               'machine': machine_description('cpu'), 'load_average': [load_before, os.getloadavg()],
                               'models': summaries,
                               'gpu_figures': [asdict(g) for g in GPU_FORWARD]})
    return summaries


if __name__ == '__main__':
    main()
