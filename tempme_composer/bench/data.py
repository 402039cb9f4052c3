"""Data-path benchmark: conversion videos/s, frame storage (JPEG quality vs raw), MDS vs on-the-fly loading.

    python -m tempme_composer.data.bench [--videos 24] [--seconds 10] [--width 320 --height 240 --fps 30]

Generates ``--videos`` textured, moving test clips (H.264 mp4, like the compressed benchmark files), then

1. converts them with ``tempme-convert``'s pipeline (``--workers`` processes, 1 fps, short side 224) and
   reports videos/s;
2. measures the stored size per frame, encode and decode time and PSNR of JPEG quality 75/85/95 and of raw
   uint8 frames;
3. times the training loader (max_frames 12, 224 px, CLIP normalisation) reading the MDS shards against a
   loader that decodes the same mp4 files on the fly with the same frame selection (1 fps, linspace to 12),
   and prints the samples/s ratio.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ['main', 'make_clip', 'OnTheFlyDecodeDataset']


def make_clip(path: Path, rng: np.random.Generator, *, seconds: float, fps: int, width: int,
              height: int) -> Path:
    """A textured clip (smooth random colour field + fine noise, panning) encoded with libx264/mpeg4."""
    import av

    from tempme_composer.data.synthetic import _video_codec

    h2, w2 = height // 8 + 2, width // 8 + 2
    field = rng.uniform(0, 255, size=(h2, w2 * 2, 3))  # coarse field, panned horizontally
    yy = np.linspace(0, h2 - 2, height)
    n = int(seconds * fps)
    with av.open(str(path), mode='w', format='mp4') as container:
        codec = _video_codec()
        stream = container.add_stream(codec, rate=Fraction(fps), options={'crf': '23', 'preset': 'veryfast'}
                                      if codec == 'libx264' else {})
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        for t in range(n):
            xx = np.linspace(0, w2 - 2, width) + t * (w2 / n)
            y0, x0 = yy.astype(int), xx.astype(int)
            fy, fx = (yy - y0)[:, None, None], (xx - x0)[None, :, None]
            img = (field[y0][:, x0] * (1 - fy) * (1 - fx) + field[y0 + 1][:, x0] * fy * (1 - fx)
                   + field[y0][:, x0 + 1] * (1 - fy) * fx + field[y0 + 1][:, x0 + 1] * fy * fx)
            img += rng.normal(0, 6, size=img.shape)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format='rgb24')
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class OnTheFlyDecodeDataset:
    """Map-style dataset decoding mp4 files per access (the research codebases' way), same output as MDS."""

    def __init__(self, paths: list[Path], *, max_frames: int, resolution: int, fps: float, size: int):
        self.paths, self.max_frames, self.resolution, self.fps, self.size = paths, max_frames, resolution, fps, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int):
        import torch

        from tempme_composer.data.video import decode_video, frames_to_tensor, select_frame_indices

        frames = decode_video(self.paths[idx], fps=self.fps, short_side=self.size).frames
        keep = select_frame_indices(len(frames), self.max_frames, 2)
        video = torch.zeros(self.max_frames, 3, self.resolution, self.resolution)
        video[: len(keep)] = frames_to_tensor([frames[i] for i in keep], self.resolution)
        mask = torch.zeros(self.max_frames, dtype=torch.long)
        mask[: len(keep)] = 1
        return {'video': video, 'video_mask': mask}


def _time_loader(loader, epochs: int = 1) -> float:
    n, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            n += batch['video'].shape[0]
    return n / (time.perf_counter() - start)


def _jpeg_table(frames: list[np.ndarray]) -> list[dict]:
    from PIL import Image

    rows = []
    for quality in (75, 85, 95, None):
        start = time.perf_counter()
        blobs = []
        for f in frames:
            if quality is None:
                blobs.append(f.tobytes())
            else:
                buf = io.BytesIO()
                Image.fromarray(f).save(buf, format='JPEG', quality=quality)
                blobs.append(buf.getvalue())
        encode_ms = (time.perf_counter() - start) * 1000 / len(frames)
        start = time.perf_counter()
        decoded = []
        for f, b in zip(frames, blobs, strict=True):
            if quality is None:
                decoded.append(np.frombuffer(b, np.uint8).reshape(f.shape).copy())
            else:
                decoded.append(np.asarray(Image.open(io.BytesIO(b)).convert('RGB')))
        decode_ms = (time.perf_counter() - start) * 1000 / len(frames)
        mse = np.mean([np.mean((a.astype(np.float64) - d) ** 2) for a, d in zip(frames, decoded, strict=True)])
        psnr = float('inf') if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
        rows.append({'format': 'raw uint8' if quality is None else f'jpeg q{quality}',
                     'kb_per_frame': np.mean([len(b) for b in blobs]) / 1024, 'encode_ms': encode_ms,
                     'decode_ms': decode_ms, 'psnr_db': psnr})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog='python -m tempme_composer.data.bench', description=__doc__.split('\n')[0])
    parser.add_argument('--videos', type=int, default=24)
    parser.add_argument('--seconds', type=float, default=10.0)
    parser.add_argument('--width', type=int, default=320)
    parser.add_argument('--height', type=int, default=240)
    parser.add_argument('--fps', type=int, default=30, help='frame rate of the generated source clips')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1, help='conversion processes')
    parser.add_argument('--loader-workers', type=int, default=2, help='DataLoader workers for both loaders')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--work', help='scratch folder (default: a temporary one)')
    args = parser.parse_args(argv)

    from torch.utils.data import DataLoader

    from tempme_composer.data.annotations import Annotations, VideoRecord
    from tempme_composer.data.convert import ConvertSettings, _cache_name, _read_cache, convert_records
    from tempme_composer.data.streaming import build_video_text_dataloader
    from tempme_composer.data.video import decode_video

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        videos = work / 'videos'
        videos.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        paths = [make_clip(videos / f'video{i}.mp4', rng, seconds=args.seconds, fps=args.fps, width=args.width,
                           height=args.height) for i in range(args.videos)]
        gen_s = time.perf_counter() - start
        ann = Annotations({'train': [VideoRecord(p.stem, p.stem, [f'caption {i}'], None, 'train')
                                     for i, p in enumerate(paths)]})
        settings = ConvertSettings()
        start = time.perf_counter()
        convert_records('bench', ann, videos, work / 'mds', settings=settings, workers=args.workers,
                        progress=False)
        convert_s = time.perf_counter() - start
        convert_vps = args.videos / convert_s

        frames = decode_video(paths[0], fps=1, short_side=224).frames + decode_video(paths[1], fps=1,
                                                                                     short_side=224).frames
        storage = _jpeg_table(frames)
        header, _ = _read_cache(work / 'mds' / '.tempme_work' / settings.cache_key() / f'{_cache_name(paths[0])}.bin')

        common = dict(max_frames=12, image_resolution=224, max_words=32)
        mds = build_video_text_dataloader(local=str(work / 'mds'), split='train', batch_size=args.batch_size,
                                          train=True, num_workers=args.loader_workers, **common).dataloader
        _time_loader(mds)  # warm-up (page cache, worker start)
        mds_sps = _time_loader(mds, epochs=2)
        fly = DataLoader(OnTheFlyDecodeDataset(paths, max_frames=12, resolution=224, fps=1, size=224),
                         batch_size=args.batch_size, shuffle=True, num_workers=args.loader_workers, drop_last=True,
                         persistent_workers=args.loader_workers > 0)
        fly_sps = _time_loader(fly)

    result = {
        'machine': f'{os.cpu_count()} CPUs',
        'source': f'{args.videos} clips {args.width}x{args.height} @ {args.fps} fps, {args.seconds:g} s (H.264)',
        'generate_s': round(gen_s, 1),
        'conversion_videos_per_s': round(convert_vps, 2),
        'conversion_workers': args.workers,
        'stored_frame': f"{header['width']}x{header['height']}, {header['num_frames']} frames at 1 fps",
        'storage': [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in storage],
        'loader_samples_per_s': {'mds': round(mds_sps, 1), 'decode_mp4_on_the_fly': round(fly_sps, 1),
                                 'ratio': round(mds_sps / fly_sps, 2)},
        'loader_workers': args.loader_workers,
    }
    print(f"conversion: {result['conversion_videos_per_s']} videos/s ({args.workers} workers; {result['source']})")
    print(f"{'format':<10} {'KiB/frame':>9} {'encode ms':>9} {'decode ms':>9} {'PSNR dB':>8}   ({result['stored_frame']})")
    for r in result['storage']:
        print(f"{r['format']:<10} {r['kb_per_frame']:>9.1f} {r['encode_ms']:>9.2f} {r['decode_ms']:>9.2f} "
              f"{r['psnr_db']:>8.1f}")
    lo = result['loader_samples_per_s']
    print(f"train loader (12 frames, 224 px, {args.loader_workers} workers): MDS {lo['mds']} samples/s, "
          f"decode mp4 on the fly {lo['decode_mp4_on_the_fly']} samples/s, ratio {lo['ratio']}x")
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main()
