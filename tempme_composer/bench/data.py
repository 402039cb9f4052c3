"""Data-path benchmark: conversion, frame storage, and the training loader's samples/s per loader core.

    python -m tempme_composer.bench data [--msrvtt-videos 8 --msrvtt-seconds 10,20,30]
        [--anet-videos 4 --anet-seconds 120] [--loader-workers 1] [--batch-size 4] [--seconds-per-path 4]

Generates textured, panning H.264 clips of two kinds: MSR-VTT-like (10-30 s, 12 frames used) and
ActivityNet-like (>= 2 min, 64 frames used); converts them with ``tempme-convert``'s pipeline (1 fps, short
side 224, JPEG q85; conversion videos/s is reported) and times three training loaders (224 px) on each kind,
in one process, one after the other, ``--repeats`` times each (the best run counts: the machine is shared):

- **today**: the loader before dataset format 2 — format-1 shards (``jpegarray``: MDS opens every stored
  frame), PIL decoding and float32 CLIP normalisation in the worker, float32 batches through worker IPC, and
  its per-sample work (caption tokenised every time, the caption draw even for one caption, streaming's
  locked shard check per sample);
- **MDS**: format-2 shards (only the used frames are decoded, by libjpeg-turbo through simplejpeg, each
  straight into its crop), ``uint8 [B, T, R, R, 3]`` batches (normalised on the device), the token cache, and
  workers that refill a few shared-memory frame buffers (``data/frame_pool.py``) — the training loader
  ``build_video_text_dataloader`` builds;
- **on the fly**: decoding the mp4 file per sample (the research codebases' way: every frame at 1 fps, then
  the same frame selection), ``uint8`` output like MDS.

Rates are samples per CPU second of the loader workers (= samples/s one loader core delivers; robust when
other jobs share the machine) and, in brackets, wall-clock samples/s divided by ``--loader-workers`` (one by
default); the ratios use the CPU rates. The training process's own CPU per sample is printed too: receiving the
batch and a first read of every page of its frames (as training's first use of a batch does; the MDS loader
lends the frames in place from the worker's reused, already mapped buffer), and the cost of stacking a batch into
a fresh shared-memory segment against a reused one. Then it prints how many loader cores one H100 needs at the
TempMe rates (591 train and 1,661 forward videos/s, 12 frames). ``--storage`` adds the JPEG-quality-vs-raw
table (CPU ms per frame; decoded with the loader's decoder). The on-the-fly path is timed once (its epochs
are long); each shard stores every clip ``--replicas`` times so that an epoch of the MDS paths is long enough
to time.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ['H100_VIDEOS_PER_S', 'OnTheFlyDecodeDataset', 'main', 'make_clip']

#: docs/benchmarks.md, "One H100": TempMe ViT-B/32, 12 frames, bf16, batch 32 on one H100.
H100_VIDEOS_PER_S = {'train': 591, 'forward': 1661}
_KINDS = {'msrvtt': ('MSR-VTT-like', 12), 'anet': ('ActivityNet-like', 64)}


def make_clip(path: Path, rng: np.random.Generator, *, seconds: float, fps: int, width: int,
              height: int) -> Path:
    """A textured clip (smooth random colour field + fine noise) panning one width over its length, H.264.

    The texture is rendered once and slid by whole pixels; 8 noise fields are cycled. This keeps generating
    minutes of video cheap while every frame still differs (real encode and decode work).
    """
    import av

    from tempme_composer.data.synthetic import video_codec

    coarse = rng.uniform(0, 255, size=(height // 8 + 2, 2 * width // 8 + 2, 3))
    yy = np.linspace(0, coarse.shape[0] - 2, height)
    xx = np.linspace(0, coarse.shape[1] - 2, 2 * width)
    y0, x0 = yy.astype(int), xx.astype(int)
    fy, fx = (yy - y0)[:, None, None], (xx - x0)[None, :, None]
    texture = (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1][:, x0] * fy * (1 - fx)
               + coarse[y0][:, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1][:, x0 + 1] * fy * fx)  # [H, 2W, 3]
    noise = rng.normal(0, 6, size=(8, height, width, 3))
    n = max(1, int(seconds * fps))
    with av.open(str(path), mode='w', format='mp4') as container:
        codec = video_codec()
        stream = container.add_stream(codec, rate=Fraction(fps), options={'crf': '23', 'preset': 'veryfast'}
                                      if codec == 'libx264' else {})
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        for t in range(n):
            shift = t * width // n
            img = np.clip(texture[:, shift:shift + width] + noise[t % 8], 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class OnTheFlyDecodeDataset:
    """Map-style dataset decoding the mp4 file per access (every frame at ``fps``), output like the MDS path."""

    def __init__(self, paths: list[Path], *, max_frames: int, resolution: int, fps: float, size: int):
        self.paths, self.max_frames, self.resolution, self.fps, self.size = paths, max_frames, resolution, fps, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int):
        import torch

        from tempme_composer.data.uint8_frames import frames_to_uint8
        from tempme_composer.data.video import decode_video, select_frame_indices

        frames = decode_video(self.paths[idx], fps=self.fps, short_side=self.size).frames
        keep = select_frame_indices(len(frames), self.max_frames, 2)
        video = torch.zeros(self.max_frames, self.resolution, self.resolution, 3, dtype=torch.uint8)
        frames_to_uint8([frames[i] for i in keep], self.resolution, out=video[: len(keep)])
        mask = torch.zeros(self.max_frames, dtype=torch.long)
        mask[: len(keep)] = 1
        return {'video': video, 'video_mask': mask}


def _today_dataset_class():
    """``VideoTextDataset`` as it was before format 2: float32 CLIP normalisation in the loader worker, PIL
    decoding (MDS opens each stored frame of a format-1 sample), the caption tokenised for every sample, the
    per-epoch caption draw even for a single caption, and streaming's locked shard check for every sample."""
    import numpy as np
    import torch

    from tempme_composer.clip.preprocess import frames_to_tensor
    from tempme_composer.clip.tokenizer import tokenize
    from tempme_composer.data.dataset import VideoTextDataset
    from tempme_composer.data.remote_shards import ShardErrors

    class TodayDataset(VideoTextDataset):
        def frames_tensor(self, frames):
            video = torch.zeros(self.max_frames, 3, self.image_resolution, self.image_resolution)  # float32
            video[: len(frames)] = frames_to_tensor(frames, self.image_resolution)
            return video

        def caption_choice(self, idx, num_captions, epoch=None):
            epoch = self.caption_epoch if epoch is None else epoch
            return int(np.random.default_rng([self.caption_seed, epoch, idx]).integers(num_captions))

        def caption_tokens(self, caption):
            ids, mask = tokenize(caption, self.max_words)
            return ids[0], mask[0]

        def prepare_shard(self, shard_id, blocking=True):
            ShardErrors.prepare_shard(self, shard_id, blocking)

    return TodayDataset


def _collate_today(samples):
    """The collate before this change: a plain stack (the worker copies the batch into shared memory)."""
    import torch

    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def _children_cpu_s() -> float:
    """User + system CPU seconds of this process's live children (the loader workers)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:  # a worker that just exited
            pass
    return total


def _touch_pages(frames) -> None:
    """Read one byte of every 4-KiB page of the frames, as training's first read of a batch does: a batch that
    arrives in a freshly mapped segment costs the training process a page fault per page there."""
    import torch

    flat = frames.reshape(-1).view(torch.uint8)
    int(flat[::4096].sum())


def _time_loader(loader, seconds: float) -> tuple[float, float, float]:
    """``(samples per wall second, samples per worker CPU second, main-process CPU ms per sample)`` over whole
    epochs (persistent workers), from the second batch on, for at least ``seconds`` of wall time.

    Whole epochs: an iterator left mid-epoch would keep its worker prefetching behind the next timing. CPU
    seconds of the workers measure a loader core's capacity even when other jobs share the machine (wall time
    then also counts the time the worker waited for a core).
    """
    n, elapsed, cpu, main_cpu, first = 0, 0.0, 0.0, 0.0, True
    while elapsed < seconds or n == 0:
        batches = iter(loader)
        if first:  # warm-up batch (worker start, page cache), not timed
            next(batches)
            first = False
        start, cpu0, main0 = time.perf_counter(), _children_cpu_s(), time.process_time()
        for batch in batches:
            n += batch['video'].shape[0]
            _touch_pages(batch['video'])
        elapsed += time.perf_counter() - start
        cpu += _children_cpu_s() - cpu0
        main_cpu += time.process_time() - main0
    return n / elapsed, n / cpu if cpu > 0 else float('nan'), 1000 * main_cpu / n


def _stack_costs(batch_size: int, frames: int, size: int = 224, rounds: int = 20) -> dict[str, float]:
    """CPU ms per sample to stack a batch of ``uint8`` frames into a fresh shared-memory segment (torch's
    DataLoader collate in a worker) and into one that is already mapped (the frame pool), timed interleaved."""
    import torch

    samples = [torch.randint(0, 256, (frames, size, size, 3), dtype=torch.uint8) for _ in range(batch_size)]
    reused = torch.empty(batch_size * samples[0].numel(), dtype=torch.uint8).share_memory_()
    times = {'fresh': 0.0, 'reused': 0.0}
    for _ in range(rounds):
        start = time.process_time()
        # as torch's default_collate allocates in a worker: straight into a new shared-memory segment
        storage = torch.UntypedStorage._new_shared(batch_size * samples[0].numel())
        fresh = torch.empty(0, dtype=torch.uint8).set_(storage)
        torch.stack(samples, out=fresh.view(batch_size, *samples[0].shape))
        del fresh
        times['fresh'] += time.process_time() - start
        start = time.process_time()
        torch.stack(samples, out=reused.view(batch_size, *samples[0].shape))
        times['reused'] += time.process_time() - start
    return {k: round(1000 * v / (rounds * batch_size), 3) for k, v in times.items()}


def _jpeg_table(frames: list[np.ndarray]) -> list[dict]:
    """Size, encode and decode cost (CPU ms of this process per frame; PIL encodes like ``tempme-convert``, the
    loader's ``decode_jpeg`` decodes) and PSNR per storage format."""
    from PIL import Image

    from tempme_composer.data.uint8_frames import decode_jpeg

    rows = []
    for quality in (75, 85, 95, None):
        start = time.process_time()
        blobs = []
        for f in frames:
            if quality is None:
                blobs.append(f.tobytes())
            else:
                buf = io.BytesIO()
                Image.fromarray(f).save(buf, format='JPEG', quality=quality)
                blobs.append(buf.getvalue())
        encode_ms = (time.process_time() - start) * 1000 / len(frames)
        start = time.process_time()
        decoded = []
        for f, b in zip(frames, blobs, strict=True):
            if quality is None:
                decoded.append(np.frombuffer(b, np.uint8).reshape(f.shape).copy())
            else:
                decoded.append(decode_jpeg(b))
        decode_ms = (time.process_time() - start) * 1000 / len(frames)
        mse = np.mean([np.mean((a.astype(np.float64) - d) ** 2) for a, d in zip(frames, decoded, strict=True)])
        psnr = float('inf') if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
        rows.append({'format': 'raw uint8' if quality is None else f'jpeg q{quality}',
                     'kb_per_frame': np.mean([len(b) for b in blobs]) / 1024, 'encode_ms': encode_ms,
                     'decode_ms': decode_ms, 'psnr_db': psnr})
    return rows


def _collate_uint8(samples):
    """Stack the on-the-fly samples like the MDS collate does (into shared memory in a worker)."""
    from torch.utils.data import default_collate

    return {k: default_collate([s[k] for s in samples]) for k in samples[0]}


def _retrying(make, attempts: int = 3):
    """``make()``, again after a second when streaming loses a shared-memory name race to another process
    creating a StreamingDataset at the same moment (FileExistsError on ``/NNNNNN_locals``; shared machines)."""
    for attempt in range(attempts):
        try:
            return make()
        except FileExistsError:
            if attempt == attempts - 1:
                raise
            time.sleep(1.0)


def _loaders(kind: str, mds: Path, paths: list[Path], args: argparse.Namespace) -> dict:
    """The three loaders over one kind of clip, keyed today / mds / fly."""
    from torch.utils.data import DataLoader

    from tempme_composer.data.frame_layout import write_format1_copy
    from tempme_composer.data.loader import LoaderOptions, build_video_text_dataloader

    max_frames = _KINDS[kind][1]
    common = dict(max_frames=max_frames, image_resolution=224, max_words=32)
    loader_kw = dict(num_workers=args.loader_workers, drop_last=True, persistent_workers=args.loader_workers > 0)
    v1 = _retrying(lambda: write_format1_copy(mds / kind, mds / f'{kind}_format1'))
    today = _retrying(lambda: _today_dataset_class()(local=str(v1), train=True, shuffle=True,
                                                     batch_size=args.batch_size, **common))
    # The training loader itself (with loader workers: its workers refill shared-memory frame buffers).
    options = LoaderOptions(local=str(mds), split=kind, batch_size=args.batch_size, train=True,
                            num_workers=args.loader_workers, drop_last=True, **common)
    new = _retrying(lambda: build_video_text_dataloader(options).dataloader)
    fly = OnTheFlyDecodeDataset(paths, max_frames=max_frames, resolution=224, fps=1, size=224)
    return {
        'today': DataLoader(today, batch_size=args.batch_size, collate_fn=_collate_today, **loader_kw),
        'mds': new,
        'fly': DataLoader(fly, batch_size=1, shuffle=True, collate_fn=_collate_uint8, **loader_kw),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog='python -m tempme_composer.bench data', description=__doc__.split('\n')[0])
    parser.add_argument('--msrvtt-videos', type=int, default=8)
    parser.add_argument('--msrvtt-seconds', default='10,20,30', help='clip lengths, cycled (MSR-VTT: 10-30 s)')
    parser.add_argument('--anet-videos', type=int, default=4)
    parser.add_argument('--anet-seconds', default='120', help='clip lengths, cycled (ActivityNet-like: >= 120)')
    parser.add_argument('--replicas', type=int, default=8,
                        help='samples per clip in the shards (an epoch long enough to time mid-epoch, no extra '
                             'decoding)')
    parser.add_argument('--width', type=int, default=320)
    parser.add_argument('--height', type=int, default=240)
    parser.add_argument('--fps', type=int, default=30, help='frame rate of the generated source clips')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1, help='conversion processes')
    parser.add_argument('--loader-workers', type=int, default=1, help='DataLoader workers of every loader')
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--seconds-per-path', type=float, default=4.0, help='minimum timed seconds per loader')
    parser.add_argument('--repeats', type=int, default=2,
                        help='timed runs of the today and MDS loaders (on the fly: one); the best counts')
    parser.add_argument('--storage', action='store_true', help='also print the JPEG quality vs raw table')
    parser.add_argument('--work', help='scratch folder (default: a temporary one)')
    args = parser.parse_args(argv)
    for kind in ('msrvtt', 'anet'):
        if getattr(args, f'{kind}_videos') * args.replicas < args.batch_size:
            parser.error(f'--{kind}-videos x --replicas must be at least --batch-size (one full batch)')

    from tempme_composer.data.annotations import Annotations, VideoRecord
    from tempme_composer.data.convert import ConvertSettings, convert_records
    from tempme_composer.data.video import decode_video

    counts = {'msrvtt': args.msrvtt_videos, 'anet': args.anet_videos}
    lengths = {'msrvtt': [float(s) for s in args.msrvtt_seconds.split(',')],
               'anet': [float(s) for s in args.anet_seconds.split(',')]}
    result: dict = {'machine': f'{os.cpu_count()} CPUs', 'loader_workers': args.loader_workers,
                    'batch_size': args.batch_size, 'kinds': {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        rng = np.random.default_rng(0)
        paths: dict[str, list[Path]] = {}
        start = time.perf_counter()
        for kind, count in counts.items():
            folder = work / 'videos' / kind
            folder.mkdir(parents=True, exist_ok=True)
            paths[kind] = [make_clip(folder / f'{kind}{i}.mp4', rng, seconds=lengths[kind][i % len(lengths[kind])],
                                     fps=args.fps, width=args.width, height=args.height) for i in range(count)]
        result['generate_s'] = round(time.perf_counter() - start, 1)
        print(f"generated the clips in {result['generate_s']} s", flush=True)
        ann = Annotations({kind: [VideoRecord(f'{p.stem}_{r}', p.stem, [f'caption {i}'], None, kind)
                                  for r in range(args.replicas) for i, p in enumerate(ps)]
                           for kind, ps in paths.items()})
        start = time.perf_counter()
        convert_records('bench', ann, work / 'videos', work / 'mds', settings=ConvertSettings(),
                        workers=args.workers, progress=False)
        convert_s = time.perf_counter() - start
        result['conversion_videos_per_s'] = round(sum(counts.values()) / convert_s, 2)
        result['source'] = (f'{args.width}x{args.height} @ {args.fps} fps H.264; MSR-VTT-like '
                            f'{args.msrvtt_videos} x {args.msrvtt_seconds} s, ActivityNet-like '
                            f'{args.anet_videos} x {args.anet_seconds} s')
        if args.storage:
            frames = decode_video(paths['msrvtt'][0], fps=1, short_side=224).frames
            result['storage'] = [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}
                                 for r in _jpeg_table(frames)]

        for kind in counts:
            loaders = _loaders(kind, work / 'mds', paths[kind], args)
            wall, core = dict.fromkeys(loaders, 0.0), dict.fromkeys(loaders, 0.0)
            main_ms = dict.fromkeys(loaders, float('inf'))
            for repeat in range(args.repeats):
                for name, loader in loaders.items():
                    if name != 'fly' or repeat == 0:
                        w, c, m = _time_loader(loader, args.seconds_per_path)
                        wall[name], core[name] = max(wall[name], w), max(core[name], c)
                        main_ms[name] = min(main_ms[name], m)
            per_worker = {k: v / max(args.loader_workers, 1) for k, v in wall.items()}
            if args.loader_workers == 0:  # everything ran in this process: no worker CPU to count
                core = dict(per_worker)
            stored = [decode_video(p, fps=1, short_side=224) for p in paths[kind][:1]]
            result['kinds'][kind] = {
                'name': _KINDS[kind][0], 'frames_used': _KINDS[kind][1],
                'frames_stored_first_clip': len(stored[0].frames),
                'samples_per_s_per_worker': {k: round(v, 2) for k, v in per_worker.items()},
                'samples_per_cpu_s': {k: round(v, 2) for k, v in core.items()},
                'main_process_cpu_ms_per_sample': {k: round(v, 3) for k, v in main_ms.items()},
                'mds_over_today': round(core['mds'] / core['today'], 2),
                'mds_over_fly': round(core['mds'] / core['fly'], 2),
                'wall_mds_over_today': round(per_worker['mds'] / per_worker['today'], 2),
                'wall_mds_over_fly': round(per_worker['mds'] / per_worker['fly'], 2),
            }
    result['stack_ms_per_sample'] = {kind: _stack_costs(args.batch_size, _KINDS[kind][1]) for kind in counts}
    msrvtt = result['kinds']['msrvtt']['samples_per_cpu_s']['mds']
    result['h100_loader_cores'] = {k: math.ceil(v / msrvtt) for k, v in H100_VIDEOS_PER_S.items()}
    _print(result, args)
    return result


def _print(result: dict, args: argparse.Namespace) -> None:
    print(f"conversion: {result['conversion_videos_per_s']} videos/s ({args.workers} workers; {result['source']})")
    if 'storage' in result:
        print(f"{'format':<10} {'KiB/frame':>9} {'encode ms':>9} {'decode ms':>9} {'PSNR dB':>8}")
        for r in result['storage']:
            print(f"{r['format']:<10} {r['kb_per_frame']:>9.1f} {r['encode_ms']:>9.2f} {r['decode_ms']:>9.2f} "
                  f"{r['psnr_db']:>8.1f}")
    print(f"\ntraining loader, samples per CPU second of a loader worker = samples/s per loader core "
          f"(wall-clock samples/s per worker in brackets; {args.loader_workers} worker(s), batch {args.batch_size}, "
          f"224 px, best of {args.repeats})")
    print(f"{'clips':<18} {'stored':>6} {'used':>4} {'today':>15} {'MDS':>15} {'on the fly':>13} "
          f"{'MDS/today':>9} {'MDS/fly':>8}")
    for k in result['kinds'].values():
        c, w = k['samples_per_cpu_s'], k['samples_per_s_per_worker']
        cells = ' '.join(f"{c[p]:>7.2f} ({w[p]:>5.1f})" for p in ('today', 'mds')) + f" {c['fly']:>6.2f} ({w['fly']:>4.1f})"
        print(f"{k['name']:<18} {k['frames_stored_first_clip']:>6} {k['frames_used']:>4} {cells} "
              f"{k['mds_over_today']:>8.2f}x {k['mds_over_fly']:>7.1f}x")
    for k in result['kinds'].values():
        m = k['main_process_cpu_ms_per_sample']
        print(f"{k['name']}: the training process's own CPU per sample (receiving the batch, first read): "
              f"today {m['today']:.3f} ms, MDS {m['mds']:.3f} ms (frames lent in place from the worker's reused buffer"
              f"{'' if args.loader_workers else '; no workers'}), on the fly {m['fly']:.3f} ms")
    for kind, ms in result['stack_ms_per_sample'].items():
        print(f"stacking a {_KINDS[kind][0]} batch ({_KINDS[kind][1]} frames, 224 px): {ms['fresh']:.2f} ms per sample "
              f"into a fresh shared-memory segment, {ms['reused']:.2f} into a reused one (CPU, this process)")
    cores = result['h100_loader_cores']
    print(f"loader cores per H100 at TempMe's rates (12 frames): train {H100_VIDEOS_PER_S['train']}/s -> "
          f"{cores['train']}, forward {H100_VIDEOS_PER_S['forward']}/s -> {cores['forward']}")
    print(json.dumps(result))


if __name__ == '__main__':
    main()
