"""Search benchmark: exact (fp32 scores over memory-mapped float16 chunks) vs approximate (usearch HNSW) at
10k / 100k / 1M indexed videos — queries/s, single-query latency, working memory, and recall@10 against exact.

    python -m tempme_composer.bench search [--sizes 10000,100000,1000000] [--dim 512] [--queries 200]

The embeddings are synthetic but shaped like a retrieval model's: unit vectors around a few thousand topic
centres (real galleries cluster by content), stored exactly as `tempme-index` stores them (a float16 ``.npy``
read through a memory map). Queries are unit vectors near stored videos, as text queries sit near their videos.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tempme_composer.inference.search import exact_topk

__all__ = ["main", "synthetic_index"]

#: Noise norm around a topic centre (unit norm): within-topic cosines ~ 0.3, as between related videos.
NOISE = 1.5


def synthetic_index(path: Path, n: int, dim: int, seed: int = 0, topics: int = 4096, chunk: int = 1 << 16) -> np.ndarray:
    """Write ``[n, dim]`` float16 unit vectors (topic centre + noise) to ``path`` and memory-map them."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(path, mode='w+', dtype=np.float16, shape=(n, dim))
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = centres[rng.integers(0, topics, m)] + NOISE * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        out[s : s + m] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    out.flush()
    del out
    return np.load(path, mmap_mode='r')


def _queries(emb: np.ndarray, q: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.asarray(emb[np.sort(rng.choice(len(emb), q, replace=False))], dtype=np.float32)
    x = rows + 0.5 * rng.standard_normal(rows.shape).astype(np.float32) / np.sqrt(rows.shape[1])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class _AnonPeak:
    """Peak anonymous (non file-backed) resident memory above the start, sampled every few ms: the memory a
    search allocates, not the page cache of the memory-mapped index."""

    def __enter__(self) -> _AnonPeak:
        self.base = self.peak = _rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_anon())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def _rss_anon() -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('RssAnon:'):
                return int(line.split()[1]) * 1024
    return 0


def _time_queries(run, queries: np.ndarray, singles: int) -> tuple[float, float]:
    """(median single-query latency in ms, queries/s of the whole batch at once)."""
    lat = []
    for i in range(min(singles, len(queries))):
        t = time.perf_counter()
        run(queries[i : i + 1])
        lat.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter()
    run(queries)
    return statistics.median(lat), len(queries) / (time.perf_counter() - t)


def bench_size(folder: Path, n: int, dim: int, queries: int, singles: int, k: int, expansion_search: list[int],
               approximate: bool) -> list[dict]:
    emb = synthetic_index(folder / f'emb-{n}.npy', n, dim)
    q = _queries(emb, queries)
    rows = []
    with _AnonPeak() as mem:
        latency, qps = _time_queries(lambda x: exact_topk(x, emb, k), q, singles)
    exact = exact_topk(q, emb, k)[1]
    rows.append({'videos': n, 'mode': 'exact (fp32 over fp16 memmap)', 'build_s': 0.0, 'latency_ms': latency,
                 'queries_per_s': qps, 'memory_mib': mem.mib, 'recall@10': 1.0})
    print(json.dumps(rows[-1]), flush=True)
    if approximate:
        from tempme_composer.inference.ann import CONNECTIVITY, EXPANSION_SEARCH, ann_search, build_ann

        t = time.perf_counter()
        ann = build_ann(emb)
        build = time.perf_counter() - t
        for ef in expansion_search:
            with _AnonPeak() as mem:
                latency, qps = _time_queries(lambda x, ef=ef: ann_search(ann, emb, x, k, ef), q, singles)
            found = ann_search(ann, emb, q, k, ef)[1]
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact, strict=True)]))
            default = ' (default)' if ef == EXPANSION_SEARCH else ''
            row = {'videos': n, 'mode': f'HNSW (usearch, M={CONNECTIVITY}, expansion_search={ef}){default}',
                   'build_s': build, 'latency_ms': latency, 'queries_per_s': qps, 'memory_mib': mem.mib,
                   'graph_mib': ann.memory_usage / 2**20, 'recall@10': recall}
            print(json.dumps(row), flush=True)
            rows.append(row)
        del ann
    (folder / f'emb-{n}.npy').unlink()
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ['| videos | mode | build s | graph MiB | latency ms (1 query) | queries/s (batch) | extra memory MiB '
             '| recall@10 |', '|---:|---|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        graph = f'{r["graph_mib"]:,.0f}' if 'graph_mib' in r else '—'
        lines.append(f'| {r["videos"]:,} | {r["mode"]} | {r["build_s"]:.1f} | {graph} | {r["latency_ms"]:.1f} | '
                     f'{r["queries_per_s"]:.0f} | {r["memory_mib"]:.0f} | {r["recall@10"]:.3f} |')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog='python -m tempme_composer.bench search', description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', default='10000,100000,1000000')
    parser.add_argument('--dim', type=int, default=512, help='embedding size (ViT-B: 512)')
    parser.add_argument('--queries', type=int, default=200, help='batch for queries/s and recall')
    parser.add_argument('--singles', type=int, default=20, help='one-at-a-time queries for latency')
    parser.add_argument('--k', type=int, default=10)
    parser.add_argument('--expansion-search', default='64,128,256,512', help='HNSW search breadths to measure')
    parser.add_argument('--no-approximate', action='store_true')
    parser.add_argument('--dir', default=None, help='scratch folder for the synthetic indexes (default: a temp dir)')
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in (int(s) for s in args.sizes.split(',')):
            rows += bench_size(Path(tmp), n, args.dim, args.queries, args.singles, args.k,
                               [int(e) for e in args.expansion_search.split(',')], not args.no_approximate)
    print(f'\n{os.cpu_count()} CPU threads, dim {args.dim}, top-{args.k}, {args.queries} queries\n')
    print(format_table(rows))
    return rows


if __name__ == '__main__':
    main()
