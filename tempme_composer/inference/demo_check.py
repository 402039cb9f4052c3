"""The demo's search check: one canonical query per colour × shape × direction ("a red circle moving left"),
and how often the top-1 video of an index of the demo's eval videos has exactly that combination.

    python -m tempme_composer.inference.demo_check INDEX --demo-root outputs/demo_data
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from tempme_composer.data.synthetic import COLOURS, DIRECTIONS, SHAPES, _combos
from tempme_composer.inference.search import VideoIndex, load_index_model, search

__all__ = ['canonical_queries', 'demo_top1', 'main']


def canonical_queries() -> dict[str, tuple[str, str, str]]:
    """``{"a red circle moving left": ("red", "circle", "left"), …}`` for every combination."""
    return {f'{"an" if c[0] in "aeiou" else "a"} {c} {s} moving {d}': (c, s, d)
            for c, s, d in itertools.product(COLOURS, SHAPES, DIRECTIONS)}


def demo_top1(index: VideoIndex, demo_root: str | Path, model_dir: str | None = None) -> tuple[float, int, int]:
    """(top-1 accuracy in %, hits, queries) over the canonical queries, on an index of the eval videos."""
    meta = json.loads((Path(demo_root) / 'demo_dataset.json').read_text())
    truth = {f'demo_eval_{i:05d}': combo for i, combo in enumerate(_combos('eval', meta['num_eval'], meta['seed']))}
    model = load_index_model(index, model_dir, None)
    queries = canonical_queries()
    results = search(index, model, list(queries), top_k=1)
    hits = sum(truth.get(Path(r.hits[0].path).stem) == queries[r.query] for r in results)
    return 100.0 * hits / len(results), hits, len(results)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('index')
    parser.add_argument('--demo-root', default='outputs/demo_data')
    parser.add_argument('--model', default=None)
    args = parser.parse_args(argv)
    accuracy, hits, n = demo_top1(VideoIndex(args.index), args.demo_root, args.model)
    print(f'top-1 is the right colour x shape x direction for {hits} of {n} canonical queries ({accuracy:.1f} %)')
    return accuracy


if __name__ == '__main__':
    main()
