"""The demo's search checks.

Text: one canonical query per colour × shape × direction ("a red circle moving left"), and how often the top-1
video of an index of the demo's eval videos has exactly that combination.

Image: one frame of each indexed video, saved as a PNG and searched with ``--image``, and how often its own
video comes back at top-1 — a check of the image path (decoding, the frame rule's resize, a one-frame video)
against the index's video path, on any index of a folder of videos.

    python -m tempme_composer.inference.demo_check INDEX --demo-root outputs/demo_data
    python -m tempme_composer.inference.demo_check INDEX --image-queries [--at 0.5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tempme_composer.data.format import DEMO_META_FILE
from tempme_composer.data.synthetic import COLOURS, DIRECTIONS, SHAPES, video_combos
from tempme_composer.inference.exported import ExportedModel
from tempme_composer.inference.search import VideoIndex, full_path, load_index_model, search
from tempme_composer.inference.terminal import printable

__all__ = ['canonical_queries', 'demo_top1', 'frame_at', 'ImageCheck', 'image_query_top1', 'main']


def canonical_queries() -> dict[str, tuple[str, str, str]]:
    """``{"a red circle moving left": ("red", "circle", "left"), …}`` for every combination."""
    return {f'{"an" if c[0] in "aeiou" else "a"} {c} {s} moving {d}': (c, s, d)
            for c, s, d in itertools.product(COLOURS, SHAPES, DIRECTIONS)}


def demo_top1(index: VideoIndex, demo_root: str | Path, model_dir: str | None = None) -> tuple[float, int, int]:
    """(top-1 accuracy in %, hits, queries) over the canonical queries, on an index of the eval videos."""
    meta = json.loads((Path(demo_root) / DEMO_META_FILE).read_text())
    truth = {f'demo_eval_{i:05d}': combo for i, combo in enumerate(video_combos('eval', meta['num_eval'], meta['seed']))}
    model = load_index_model(index, model_dir, None)
    queries = canonical_queries()
    results = search(index, model, list(queries), top_k=1)
    hits = sum(truth.get(Path(r.hits[0].path).stem) == queries[r.query] for r in results)
    return 100.0 * hits / len(results), hits, len(results)


def frame_at(video: str | os.PathLike, fraction: float) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of the first frame at or after ``fraction`` of the video's length, upright (the
    display rotation applied), at its stored size."""
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        length = float(stream.duration * stream.time_base) if stream.duration else float(container.duration or 0) / 1e6
        origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        target = origin + fraction * length
        container.seek(int(target / stream.time_base), stream=stream, backward=True)
        last = None
        for frame in container.decode(stream):
            last = frame
            if frame.pts is not None and float(frame.pts * stream.time_base) >= target - 1e-6:
                break
        if last is None:
            raise ValueError(f'{video}: no frame to take at {fraction:.0%} of its length')
        array = last.to_ndarray(format='rgb24')
        rotation = int(round(float(last.rotation or 0) / 90.0)) % 4
        return np.ascontiguousarray(np.rot90(array, k=rotation)) if rotation else array


@dataclass
class ImageCheck:
    """Outcome of `image_query_top1`."""

    share: float  # % of videos whose frame retrieves them at top-1
    hits: int
    videos: int
    misses: list[tuple[str, str]] = field(default_factory=list)  # (video, what came first instead)


def image_query_top1(index: VideoIndex, model: ExportedModel, fraction: float = 0.5,
                     limit: int | None = None) -> ImageCheck:
    """For each video of a folder index (the first ``limit``), a frame at ``fraction`` of its length, written
    as a PNG and searched with `queries.image_query`: how often that video is the top-1 result."""
    from PIL import Image

    from tempme_composer.inference.queries import image_query, search_by

    if index.manifest['source'].get('kind') != 'videos':
        raise ValueError(f'{index.folder} indexes an MDS split; the image check needs an index of a folder of videos')
    videos = list(dict.fromkeys(r['path'] for r in index.rows))[:limit]
    hits, misses = 0, []
    with tempfile.TemporaryDirectory(prefix='image-queries-') as tmp:
        for n, rel in enumerate(videos):
            png = Path(tmp) / f'{n}.png'
            Image.fromarray(frame_at(full_path(index, rel), fraction)).save(png)
            (result,) = search_by(index, [image_query(model, png)], top_k=1)
            top = result.hits[0].path if result.hits else ''
            if top == rel:
                hits += 1
            else:
                misses.append((rel, top))
    return ImageCheck(100.0 * hits / max(len(videos), 1), hits, len(videos), misses)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('index')
    parser.add_argument('--demo-root', default='outputs/demo_data')
    parser.add_argument('--model', default=None)
    parser.add_argument('--image-queries', action='store_true', help='the image check instead of the text one')
    parser.add_argument('--at', type=float, default=0.5, help='where the frame of each video is taken (0 to 1)')
    parser.add_argument('--limit', type=int, default=None, help='check only the first N videos')
    args = parser.parse_args(argv)
    index = VideoIndex(args.index)
    if args.image_queries:
        if not 0.0 <= args.at <= 1.0:
            parser.error(f'--at {args.at}: expected a fraction of the video\'s length from 0 to 1')
        check = image_query_top1(index, load_index_model(index, args.model, None), args.at, args.limit)
        print(f'a frame of its own (PNG at {args.at:.0%} of its length) retrieves the video at top-1 for '
              f'{check.hits} of {check.videos} videos ({check.share:.1f} %)')
        for video, top in check.misses[:10]:
            print(f'  miss: {printable(video)} -> {printable(top)}')
        return check.share
    accuracy, hits, n = demo_top1(index, args.demo_root, args.model)
    print(f'top-1 is the right colour x shape x direction for {hits} of {n} canonical queries ({accuracy:.1f} %)')
    return accuracy


if __name__ == '__main__':
    main()
