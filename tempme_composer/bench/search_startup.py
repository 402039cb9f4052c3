"""Search start-up over a large index: opening it and answering a first query, JSON-lines metadata (index
format 1) vs SQLite (format 2), in one run.

    python -m tempme_composer.bench search-startup [--rows 1000000] [--moments-per-video 20] [--dim 512]
        [--workdir DIR] [--json FILE]

Both indexes hold the same rows (moments of hour-long videos: path, start, end, thumbnail, …) and the same float16
embeddings; each is committed by `IndexStore.commit` (format 2) and then given a format-1 twin with the same rows
as JSON lines. Start-up = ``VideoIndex(folder)`` (manifest, memory-mapped embeddings, the metadata) + one exact
top-10 query + reading the 10 rows it shows; the model load, equal for both, is left out. Each format is
measured in a fresh process (``--repeats`` times; the best is reported) so that neither inherits the other's
warm Python objects; the files are in the page cache for both.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tempme_composer.bench.common import fmt, machine_description, markdown_table, write_json

__all__ = ['build_indexes', 'measure_startup', 'main']

_PROBE = '''
import sys, time
t0 = time.perf_counter()
import numpy as np
from tempme_composer.inference.search import VideoIndex, exact_topk
t1 = time.perf_counter()
index = VideoIndex(sys.argv[1])
t2 = time.perf_counter()
q = np.random.default_rng(0).standard_normal((1, index.embeddings.shape[1])).astype(np.float32)
scores, rows = exact_topk(q / np.linalg.norm(q), index.embeddings, 10)
shown = [index.rows[int(r)]['path'] for r in rows[0]]
t3 = time.perf_counter()
print(t2 - t1, t3 - t2, len(shown))
'''


def _rows(count: int, per_video: int) -> list[dict]:
    window = 12.0
    return [{'path': f'recordings/session-{i // per_video:06d}.mp4', 'size': 734_003_200, 'mtime_ns': 1_700_000_000_000_000_000,
             'key': f'{i // per_video:020x}', 'duration': 3600.0, 'frames': 3600, 'used_frames': 12, 'warnings': [],
             'thumb': f'{i // per_video:020x}-m{i % per_video}.jpg', 'model_hash': 'f' * 64,
             'start': (i % per_video) * window / 2, 'end': (i % per_video) * window / 2 + window, 'moment': i % per_video}
            for i in range(count)]


def build_indexes(root: Path, count: int, per_video: int, dim: int) -> dict[str, Path]:
    """A format-2 (SQLite) index of ``count`` rows and its format-1 (JSON lines) twin, under ``root``."""
    from tempme_composer.inference.store import IndexStore

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((count, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    rows = _rows(count, per_video)
    sqlite_dir, jsonl_dir = root / 'sqlite', root / 'jsonl'
    base = {'model_hash': 'f' * 64, 'model_dir': '/models/demo', 'source': {'kind': 'videos', 'root': '/videos'},
            'preprocessing': {}, 'evaluation': {}}
    sqlite_dir.mkdir(parents=True)
    IndexStore(sqlite_dir).commit(base, emb.astype(np.float16), rows, None, [])
    shutil.copytree(sqlite_dir, jsonl_dir)
    manifest = json.loads((jsonl_dir / 'index.json').read_text())
    (jsonl_dir / manifest['metadata']).unlink()
    manifest.update(format_version=1, metadata='metadata-g1.jsonl')
    with open(jsonl_dir / 'metadata-g1.jsonl', 'w', encoding='utf-8') as f:
        for r in rows:
            f.write(json.dumps(r) + '\n')
    (jsonl_dir / 'index.json').write_text(json.dumps(manifest, indent=2))
    return {'JSON lines (format 1)': jsonl_dir, 'SQLite (format 2)': sqlite_dir}


def measure_startup(folder: Path, repeats: int) -> tuple[float, float]:
    """Best (open seconds, first-query seconds) over ``repeats`` fresh processes."""
    best = (float('inf'), float('inf'))
    for _ in range(repeats):
        out = subprocess.run([sys.executable, '-c', _PROBE, str(folder)], check=True, capture_output=True, text=True)
        opened, query, _ = out.stdout.split()
        if float(opened) + float(query) < sum(best):
            best = (float(opened), float(query))
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m tempme_composer.bench search-startup', description=__doc__)
    parser.add_argument('--rows', type=int, default=1_000_000)
    parser.add_argument('--moments-per-video', type=int, default=20)
    parser.add_argument('--dim', type=int, default=512)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--workdir', help='keep the indexes here (default: a temporary folder)')
    parser.add_argument('--json', help='also write the rows as JSON')
    args = parser.parse_args(argv)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix='tempme-startup-'))
    try:
        t = time.perf_counter()
        folders = build_indexes(root / f'rows-{args.rows}', args.rows, args.moments_per_video, args.dim)
        print(f'built two indexes of {args.rows:,} rows in {time.perf_counter() - t:.0f} s', file=sys.stderr)
        results = []
        for label, folder in folders.items():
            opened, query = measure_startup(folder, args.repeats)
            size = sum(p.stat().st_size for p in folder.glob('metadata-*'))
            results.append({'metadata': label, 'rows': args.rows, 'metadata_mb': size / 1e6, 'open_s': opened,
                            'first_query_s': query, 'startup_s': opened + query})
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(machine_description('cpu'))
    print(markdown_table(['metadata', 'rows', 'metadata MB', 'open s', 'first query s', 'start-up s'],
                         [[r['metadata'], f'{r["rows"]:,}', fmt(r['metadata_mb'], '.0f'), fmt(r['open_s'], '.3f'),
                           fmt(r['first_query_s'], '.3f'), fmt(r['startup_s'], '.3f')] for r in results]))
    if len(results) == 2:
        print(f'start-up ratio JSON lines / SQLite: {results[0]["startup_s"] / results[1]["startup_s"]:.0f}x')
    if args.json:
        write_json(args.json, results)


if __name__ == '__main__':
    main()
