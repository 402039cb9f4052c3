"""Index memory benchmark: peak RSS and time of ``tempme-index`` on one huge-frame clip and one long video,
decoding every frame (the old way, ``full``) vs only the frames the model input needs (``bounded``), and the
long video indexed as moments (``--window``: one decoding pass holding the frames of the open windows).

    python -m tempme_composer.bench index-memory [--decode both|full|bounded]
        [--cases baseline,huge,long,long-windows] [--workdir DIR] [--rss-limit-gib 16] [--json FILE]

Cases (written here with libx264 ``ultrafast``/``zerolatency``, mostly flat content so they encode fast):

* ``baseline``: one second at 2 fps, 320x240: what ``tempme-index`` costs before any video (torch, the model).
* ``huge``: a 8000x8000 clip of 60 frames, indexed by a demo-style export (frame rule: every frame at full
  size). Decoding it whole holds 60 RGB frames of 192 MB.
* ``long``: a two-hour video at 2 fps, 320x240, indexed by an export with tempme-convert's default rule (1 fps,
  short side 224): 7,200 frames kept by the rule.
* ``long-windows``: the same video and export with ``tempme-index --window`` (the export's default window:
  ``max_frames`` frames at 1 fps, stride half a window), a row per moment. Only ``bounded``: the whole-video
  reference has no moments.

Each measurement is one fresh ``tempme-index`` process (``--workers 0``: decoding in that process, so its peak
RSS is the whole run's) whose peak RSS comes from ``wait4`` in a small stdlib-only parent; ``full`` runs the
same command with `video_from_file` swapped for the whole-video reference (`decode_video` +
`video_from_frames`). A run whose
RSS passes ``--rss-limit-gib`` is stopped and reported as over the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from tempme_composer.bench.common import fmt, machine_description, markdown_table, write_json

__all__ = ['Case', 'CASES', 'export_random_model', 'full_decode_video_from_file', 'index_command',
           'index_rows', 'index_with_full_decode', 'main', 'measure_process', 'write_huge_clip', 'write_long_video']

#: Peak RSS the bounded path must stay under, per case (MiB).
TARGET_MIB = {'huge': 2048, 'long': 1536, 'long-windows': 1536}


def _h264_stream(container: Any, rate: Fraction, width: int, height: int) -> Any:
    stream = container.add_stream('libx264', rate=rate, options={'preset': 'ultrafast', 'tune': 'zerolatency'})
    stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
    return stream


def _write_frames(path: Path, rate: Fraction, width: int, height: int, count: int,
                  paint: Callable[[np.ndarray, int], None]) -> Path:
    """Encode ``count`` yuv420p frames; ``paint(luma, i)`` draws frame ``i`` into the luma plane (chroma grey)."""
    import av

    planes = np.full((height * 3 // 2, width), 128, np.uint8)  # yuv420p as PyAV lays it out: Y, then U and V
    luma = planes[:height]
    tmp = path.with_suffix('.part' + path.suffix)
    with av.open(str(tmp), mode='w', format='mp4') as container:
        stream = _h264_stream(container, rate, width, height)
        for i in range(count):
            paint(luma, i)
            for packet in stream.encode(av.VideoFrame.from_ndarray(planes, format='yuv420p')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def _moving_square(side: int, steps: int) -> Callable[[np.ndarray, int], None]:
    """A bright square of ``side`` pixels on grey, moving along the diagonal, one of ``steps`` places a frame."""

    def paint(luma: np.ndarray, i: int) -> None:
        luma[:] = 60 + (i // steps) % 8 * 16  # the background changes every ``steps`` frames
        room = min(luma.shape) - side
        at = room * (i % steps) // max(1, steps - 1)
        luma[at : at + side, at : at + side] = 235

    return paint


def write_huge_clip(path: Path, side: int = 8000, frames: int = 60, fps: int = 30) -> Path:
    """A ``side`` x ``side`` H.264 clip of ``frames`` frames (flat grey, a moving square)."""
    return _write_frames(path, Fraction(fps), side, side, frames, _moving_square(side // 20, frames))


def write_long_video(path: Path, hours: float = 2.0, fps: int = 2, width: int = 320, height: int = 240) -> Path:
    """``hours`` of H.264 at ``fps`` frames per second (a square that crosses the frame every minute)."""
    return _write_frames(path, Fraction(fps), width, height, int(round(hours * 3600 * fps)),
                         _moving_square(min(width, height) // 6, 60 * fps))


@dataclass(frozen=True)
class Case:
    """One benchmark video, how it is written and the kind of export that indexes it."""

    name: str
    file: str
    write: Callable[[Path], Path]
    demo_rule: bool  # True: the demo's every-frame, full-size rule; False: tempme-convert's default rule
    describe: str
    index_args: tuple[str, ...] = ()  # extra tempme-index flags
    video_of: str | None = None  # another case whose video this one indexes (written once)
    full_decode: bool = True  # whether the whole-video reference applies


CASES = {
    'baseline': Case('baseline', 'short.mp4', lambda p: write_long_video(p, hours=1 / 3600), False,
                     'one second at 2 fps, 320x240: the fixed cost'),
    'huge': Case('huge', 'huge.mp4', write_huge_clip, True, '8000x8000, every frame at full size'),
    'long': Case('long', 'long.mp4', write_long_video, False, 'two hours at 2 fps, 320x240, 1 fps rule'),
    'long-windows': Case('long-windows', 'long.mp4', write_long_video, False,
                         'the long video as moments (--window: the default windows)', index_args=('--window',),
                         video_of='long', full_decode=False),
}


def _frames_in_file(path: Path) -> int:
    """Video packets in the file (one per frame), counted without decoding."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for p in container.demux(stream) if p.size)


def export_random_model(workdir: Path, demo_rule: bool, *, preset: str = 'tiny',
                        max_frames: int | None = None) -> Path:
    """A randomly initialised model (CLIP ``preset``, ``max_frames``: None keeps the config's default) exported
    by `export_checkpoint` from a run folder as training leaves it, once per workdir. ``demo_rule``: a demo run
    (every frame, full size); else an MSR-VTT run whose converted dataset is not on this machine, so the export
    records tempme-convert's default rule. Random weights cost the same time as trained ones."""
    import torch

    from tempme_composer.clip import CLIP, CLIP_PRESETS
    from tempme_composer.config import config_from_dict, config_to_yaml
    from tempme_composer.inference.export import export_checkpoint
    from tempme_composer.model import UnifiedModel

    name = 'demo' if demo_rule else 'convert-default'
    if preset != 'tiny' or max_frames is not None:
        name += f'-{preset.replace("/", "").lower()}-{max_frames or "default"}'
    out = workdir / f'export-{name}'
    if (out / 'config.json').is_file():
        return out
    run = workdir / f'run-{name}'
    (run / 'checkpoints').mkdir(parents=True, exist_ok=True)
    if demo_rule:
        data = {'datatype': 'demo', 'demo': {'root': str(workdir / 'demo_data')}}
    else:
        source = {'local': str(workdir / 'not-converted'), 'split': 'test'}
        data = {'datatype': 'msrvtt', 'eval': source, 'train': {**source, 'split': 'train'}}
    if max_frames is not None:
        data['max_frames'] = max_frames
    cfg = config_from_dict({'output_dir': str(run), 'model': {'clip': {'checkpoint': None, 'preset': preset}},
                            'data': data})
    (run / 'config.yaml').write_text(config_to_yaml(cfg))
    torch.manual_seed(0)
    model = UnifiedModel.from_config(CLIP(CLIP_PRESETS[cfg.model.clip.preset]), cfg.model,
                                     num_frames=cfg.data.max_frames)
    state = {'state': {'model': {f'model.{k}': v for k, v in model.state_dict().items()}, 'integrations': {},
                       'metadata': {}}, 'rng': None}
    torch.save(state, run / 'checkpoints' / 'best.pt')
    return export_checkpoint(run / 'checkpoints' / 'best.pt', out)


def full_decode_video_from_file(path: str | os.PathLike, prep: Any) -> Any:
    """`video_from_file` as it was: every frame the rule keeps decoded into a list, then the selection."""
    from tempme_composer.data.video import decode_video
    from tempme_composer.inference.preprocess import video_from_frames

    rule = prep.frames
    decoded = decode_video(path, fps=rule.fps, short_side=rule.short_side, apply_rotation=rule.apply_rotation)
    return video_from_frames(decoded.frames, prep, duration=decoded.duration_s, warnings=decoded.warnings)


def index_with_full_decode(argv: Sequence[str]) -> int:
    """``tempme-index`` with the whole-video decode: the ``full`` side of the comparison."""
    from tempme_composer.inference import index

    index.video_from_file = full_decode_video_from_file
    return index.main(list(argv))


#: Runs one measured command (stdlib only, so that it starts small): Linux carries a process's RSS high-water
#: mark across ``exec``, so a command spawned straight from this benchmark (torch imported) would report this
#: process's RSS as its own peak. argv: result file, RSS limit in bytes, the command.
_MEASURER = r"""
import json, os, subprocess, sys, threading, time

def rss(pid):
    try:
        with open(f'/proc/{pid}/status') as f:
            return next((int(l.split()[1]) * 1024 for l in f if l.startswith('VmRSS:')), 0)
    except OSError:
        return 0

result, limit, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
start = time.perf_counter()
proc = subprocess.Popen(cmd)
done, stopped = threading.Event(), threading.Event()

def guard():
    while not done.wait(0.05):
        if rss(proc.pid) > limit:
            stopped.set()
            proc.kill()
            return

watcher = threading.Thread(target=guard, daemon=True)
watcher.start()
_, status, usage = os.wait4(proc.pid, 0)
seconds = time.perf_counter() - start
done.set()
with open(result, 'w') as f:
    json.dump({'peak_rss_mib': usage.ru_maxrss / 1024, 'seconds': seconds,
               'returncode': os.waitstatus_to_exitcode(status), 'stopped_over_limit': stopped.is_set()}, f)
"""


def measure_process(cmd: Sequence[str], limit_bytes: int) -> dict[str, Any]:
    """Run ``cmd`` as a fresh child of a small stdlib-only process: its peak RSS (``wait4``), wall seconds, exit
    code and output; stopped (SIGKILL) once its RSS passes ``limit_bytes``."""
    with tempfile.TemporaryDirectory(prefix='tempme-measure-') as tmp:
        result = Path(tmp) / 'result.json'
        run = subprocess.run([sys.executable, '-I', '-c', _MEASURER, str(result), str(limit_bytes), *cmd],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        got = json.loads(result.read_text())
    return {**got, 'output': run.stdout.decode('utf-8', 'replace')}


def index_command(mode: str, model: Path, videos: Path, out: Path, extra: Sequence[str] = (),
                  workers: int = 0) -> list[str]:
    """The ``tempme-index`` command line (CPU, float32, no progress bar); ``mode`` ``full`` swaps in the
    whole-video decode."""
    args = ['--model', str(model), '--videos', str(videos), '--out', str(out), '--workers', str(workers),
            '--device', 'cpu', '--dtype', 'float32', '--no-progress', *extra]
    if mode == 'bounded':
        exe = shutil.which('tempme-index', path=str(Path(sys.executable).parent)) or shutil.which('tempme-index')
        return [exe, *args] if exe else [sys.executable, '-m', 'tempme_composer.inference.index', *args]
    code = ('import sys; from tempme_composer.bench.index_memory import index_with_full_decode; '
            'sys.exit(index_with_full_decode(sys.argv[1:]))')
    return [sys.executable, '-c', code, *args]


def _prepare(workdir: Path, case: Case) -> tuple[Path, Path]:
    """The case's video (alone in its folder, written once per workdir) and its export."""
    folder = workdir / f'videos-{case.video_of or case.name}'
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / case.file
    if not video.is_file():
        print(f'writing {video} ...', flush=True)
        case.write(video)
    return video, export_random_model(workdir, case.demo_rule)


def bench_case(workdir: Path, case: Case, modes: Sequence[str], limit_bytes: int) -> list[dict[str, Any]]:
    video, model = _prepare(workdir, case)
    frames = _frames_in_file(video)
    rows = []
    for mode in [m for m in modes if case.full_decode or m == 'bounded']:
        out = workdir / f'index-{case.name}-{mode}'
        shutil.rmtree(out, ignore_errors=True)
        print(f'{case.name}: tempme-index {" ".join(case.index_args)}, {mode} decode ...', flush=True)
        got = measure_process(index_command(mode, model, video.parent, out, case.index_args), limit_bytes)
        if got['returncode'] != 0 and not got['stopped_over_limit']:
            print(got['output'][-4000:], file=sys.stderr)
        rows.append({'case': case.name, 'video': case.describe, 'decode': mode, 'frames_in_file': frames,
                     'file_mib': video.stat().st_size / 2**20, **{k: v for k, v in got.items() if k != 'output'},
                     'index_rows': index_rows(out),
                     'target_mib': TARGET_MIB.get(case.name) if mode == 'bounded' else None})
    return rows


def index_rows(out: Path) -> int | None:
    """Rows the run committed (one per video, or per moment); None when it wrote no index."""
    try:
        return int(json.loads((out / 'index.json').read_text())['count'])
    except (OSError, ValueError, KeyError):
        return None


def format_table(rows: Sequence[dict[str, Any]], limit_gib: float) -> str:
    head = ['case', 'video', 'decode', 'frames in file', 'file MiB', 'index rows', 'peak RSS MiB', 'seconds',
            'target MiB']
    cells = []
    for r in rows:
        if r['stopped_over_limit']:
            peak = f'> {limit_gib * 1024:.0f} (stopped)'
        elif r['returncode'] != 0:
            peak = f'failed (exit {r["returncode"]})'
        else:
            peak = fmt(r['peak_rss_mib'], '.0f')
        cells.append([r['case'], r['video'], r['decode'], r['frames_in_file'], fmt(r['file_mib'], '.1f'),
                      fmt(r.get('index_rows'), 'd'), peak, fmt(r['seconds'], '.1f'), fmt(r['target_mib'], 'd')])
    return markdown_table(head, cells)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog='python -m tempme_composer.bench index-memory',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--decode', default='both', choices=['both', 'full', 'bounded'],
                        help='full: every frame kept (the old way); bounded: only the needed frames')
    parser.add_argument('--cases', default=','.join(CASES), help=f'comma-separated, of {", ".join(CASES)}')
    parser.add_argument('--workdir', default=None, help='keep the videos and exports here for re-runs '
                        '(default: a temporary folder)')
    parser.add_argument('--rss-limit-gib', type=float, default=16.0,
                        help='stop a run whose RSS passes this (the full decode of the huge clip needs ~11 GiB)')
    parser.add_argument('--json', default=None, help='also write the rows here')
    args = parser.parse_args(argv)
    modes = ['full', 'bounded'] if args.decode == 'both' else [args.decode]
    names = [n for n in args.cases.split(',') if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f'unknown case(s) {unknown}; choose from {", ".join(CASES)}')
    limit = int(args.rss_limit_gib * 2**30)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix='tempme-index-memory-') as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in names:
            rows += bench_case(workdir, CASES[name], modes, limit)
    print(f'\n{machine_description("cpu")}; RAM {_ram_gib():.0f} GiB\n')
    print(format_table(rows, args.rss_limit_gib))
    if args.json:
        write_json(args.json, rows)
    return rows


def _ram_gib() -> float:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30


if __name__ == '__main__':
    main()
