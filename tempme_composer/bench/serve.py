"""Load on the real search service: ``tempme-serve`` started as a subprocess on a free loopback port and driven by
N concurrent HTTP clients, with micro-batching on (``--max-batch 64``) and off (``--max-batch 1``).

    python -m tempme_composer.bench serve [--sizes 10000,100000,1000000] [--clients 1,8,32] [--duration 8]
        [--work DIR] [--json FILE] [--quick]
    python -m tempme_composer.bench serve --encoder [--encoder-batches 1,8,16,32] [--work DIR]

Per index size one server with batching and one without are started; at each client count, that many clients
send ``GET /search?q=…&k=10`` back to back (every query a different sentence) for ``--duration`` seconds to the
one and then to the other (interleaved, so that a shared machine's load drifts less between them). Reported per
cell: queries/s (answered queries over the wall time), p50/p95/p99 latency of the requests, errors (any answer
but 200 with ``k`` results, or no answer within ``--timeout``), the mean micro-batch (from the server's
``/stats``) and the server's resident memory (``VmRSS`` of /proc/PID/status after the cell).

The model is a random-init ViT-B/32 export (text tower: width 512, 12 layers, context 77; queries are tokenized
to the export's ``max_words`` = 32), so that a query costs what it costs with the real weights. The indexes are
synthetic (`tempme_composer.bench.search.synthetic_index`: unit vectors clustered around topics), committed with
`IndexStore.commit` as ``tempme-index`` commits them: one row per video, row 0 a real tiny video file, the other
rows distinct names beside it (the load only calls ``/search``, which reads no video). Indexes of at least
``--approximate-from`` rows are searched approximately (HNSW, docs/benchmarks.md#search), where the server has
``--approximate``; their HNSW graph is built before the server starts (``--no-graph-build``: not measured
unless cached). Model, indexes and graphs are cached under ``--work`` so a rerun does not rebuild them. The
machine's 1-minute load average is printed per cell: on a shared machine it says what else ran meanwhile.

``--encoder`` starts no server: it times the text encoder in this process per batch size, at the full padded
length and trimmed as the service trims it (docs/serving.md#padding-trim) — the ceiling of the queries/s a
server can answer, against which the table's queries/s show what HTTP, JSON and the batcher cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tempme_composer.bench.common import fmt, machine_description, markdown_table, write_json

__all__ = [
    'ServerProcess',
    'build_index',
    'build_model',
    'drive',
    'encoder_timings',
    'main',
    'query_texts',
    'server_command',
]

#: What the server prints once it listens (the contract of ``tempme-serve``; docs/serving.md).
READY = re.compile(r'^serving (?P<index>.+) on (?P<url>http://[^\s:]+:\d+)\s*$')
MAX_CLIENTS = 256
BATCH_ON, BATCH_OFF = 64, 1

_SUBJECTS = (
    'a man',
    'a woman',
    'two children',
    'a dog',
    'a cat',
    'a chef',
    'a crowd',
    'a band',
    'an old car',
    'a cyclist',
    'a news anchor',
    'a horse',
    'a robot',
    'a surfer',
    'a teacher',
    'a toddler',
)
_ACTIONS = (
    'is cooking pasta',
    'plays the guitar',
    'runs across',
    'is talking about',
    'jumps over',
    'dances in',
    'is repairing',
    'rides through',
    'is painting',
    'explains',
    'falls into',
    'is swimming in',
    'is laughing at',
    'drives along',
    'is building',
    'sings about',
)
_PLACES = (
    'a busy kitchen',
    'a snowy street',
    'the beach at sunset',
    'a football stadium',
    'a small garage',
    'a crowded market',
    'a quiet library',
    'a mountain road',
    'a studio',
    'a rainy city',
    'a forest',
    'a swimming pool',
    'a classroom',
    'a desert highway',
    'a night club',
    'an airport',
)


def query_texts(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct short captions (subject, action, place and a number), as people type them."""
    rng = np.random.default_rng(seed)
    return [
        f'{_SUBJECTS[s]} {_ACTIONS[a]} {_PLACES[p]} {i}'
        for i, (s, a, p) in enumerate(rng.integers(0, 16, size=(count, 3)))
    ]


# --------------------------------------------------------------------------- the model and the indexes


def build_model(folder: Path, preset: str = 'ViT-B/32', max_words: int = 32) -> Path:
    """A random-init export of the baseline model on ``preset`` (every tensor in the file), made as
    ``tempme-export`` makes one from a run folder; reused when ``folder`` already holds one."""
    if (folder / 'config.json').is_file() and (folder / 'model.safetensors').is_file():
        return folder
    import torch

    from tempme_composer.clip import CLIP, CLIP_PRESETS
    from tempme_composer.config import config_from_dict, config_to_yaml
    from tempme_composer.inference.export import export_checkpoint
    from tempme_composer.model import UnifiedModel

    run = folder.parent / f'.run-{folder.name}'
    shutil.rmtree(run, ignore_errors=True)
    (run / 'checkpoints').mkdir(parents=True)
    data = str(run / 'data')
    cfg = config_from_dict(
        {
            'output_dir': str(run),
            'model': {'clip': {'checkpoint': None, 'preset': preset}},
            'data': {
                'datatype': 'msrvtt',
                'eval': {'local': data, 'split': 'test'},
                'train': {'local': data, 'split': 'train'},
                'max_frames': 12,
                'max_words': max_words,
            },
        }
    )
    (run / 'config.yaml').write_text(config_to_yaml(cfg))
    torch.manual_seed(0)
    model = UnifiedModel.from_config(CLIP(CLIP_PRESETS[preset]), cfg.model, num_frames=cfg.data.max_frames)
    state = {
        'state': {
            'model': {f'model.{k}': v for k, v in model.state_dict().items()},
            'integrations': {},
            'metadata': {},
        },
        'rng': None,
    }
    torch.save(state, run / 'checkpoints' / 'best.pt')
    del model, state
    export_checkpoint(run / 'checkpoints' / 'best.pt', folder)
    shutil.rmtree(run, ignore_errors=True)
    return folder


def _tiny_video(folder: Path) -> tuple[Path, bytes]:
    """A 2 s 96×64 H.264 clip (the file row 0 names) and a JPEG thumbnail of it."""
    from io import BytesIO

    from PIL import Image

    from tempme_composer.bench.data import make_clip

    folder.mkdir(parents=True, exist_ok=True)
    video = folder / 'clip-0000000.mp4'
    if not video.is_file():
        make_clip(
            video.with_suffix('.tmp.mp4'), np.random.default_rng(0), seconds=2.0, fps=8, width=96, height=64
        )
        video.with_suffix('.tmp.mp4').replace(video)
    jpeg = BytesIO()
    Image.new('RGB', (96, 64), (90, 120, 160)).save(jpeg, format='JPEG')
    return video, jpeg.getvalue()


def build_index(folder: Path, rows: int, model_dir: Path, videos: Path) -> Path:
    """An index of ``rows`` whole videos under ``folder``, committed for the model in ``model_dir``; reused when
    ``folder`` already holds a committed index of that many rows of that model."""
    from tempme_composer.bench.search import synthetic_index
    from tempme_composer.inference.exported import read_export_config
    from tempme_composer.inference.store import IndexFolderError, IndexStore

    model = read_export_config(model_dir)
    store = IndexStore(folder)
    with contextlib.suppress(IndexFolderError, OSError, KeyError):
        m = store.manifest()
        if m['count'] == rows and m['model_hash'] == model['model_hash']:
            return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    video, jpeg = _tiny_video(videos)
    stat = video.stat()
    thumb = store.write_thumbnail('bench-thumbnail', jpeg)
    dim = int(model['base_clip']['architecture']['embed_dim'])
    scratch = folder / 'synthetic.npy'
    emb = synthetic_index(scratch, rows, dim)
    meta = [
        {
            'path': f'clip-{i:07d}.mp4',
            'size': stat.st_size,
            'mtime_ns': stat.st_mtime_ns,
            'key': f'{i:020x}',
            'duration': 2.0,
            'frames': 16,
            'used_frames': 12,
            'warnings': [],
            'thumb': thumb,
            'model_hash': model['model_hash'],
            'start': 0.0,
            'end': 2.0,
            'moment': 0,
        }
        for i in range(rows)
    ]
    base = {
        'model_hash': model['model_hash'],
        'model_dir': str(model_dir.resolve()),
        'source': {'kind': 'videos', 'root': str(videos.resolve())},
        'preprocessing': model['preprocessing'],
        'evaluation': model.get('evaluation', {}),
        'moments': {'mode': 'whole', 'window': None, 'stride': None},
    }
    store.commit(base, emb, meta, None, [])
    del emb
    scratch.unlink()
    return folder


# --------------------------------------------------------------------------- the server


def server_command() -> list[str]:
    """How to start ``tempme-serve`` with this interpreter (the console script runs the same entry)."""
    return [sys.executable, '-m', 'tempme_composer.serve']


def server_flags() -> str:
    """``tempme-serve --help``: which options this server has."""
    out = subprocess.run([*server_command(), '--help'], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f'tempme-serve --help exited {out.returncode}: {out.stderr.strip()[-2000:]}')
    return out.stdout


class ServerProcess:
    """``tempme-serve INDEX --port 0 …`` in a subprocess; ``url`` once it printed its ``serving … on URL`` line.

    Its stderr (logs) goes to ``log``; stdout is read for that line and then drained. ``stop`` sends SIGTERM
    and waits for the drain; ``exit_code`` is what it exited with.
    """

    def __init__(
        self, index: Path, model: Path, args: list[str], log: Path, start_timeout: float = 300.0
    ) -> None:
        self.log = log
        self._log = open(log, 'wb')  # noqa: SIM115 - closed by stop()
        cmd = [
            *server_command(),
            str(index),
            '--model',
            str(model),
            '--host',
            '127.0.0.1',
            '--port',
            '0',
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, text=True, bufsize=1
        )
        self.exit_code: int | None = None
        self.url = self._wait_ready(start_timeout)
        self._drain = threading.Thread(target=self._drain_stdout, daemon=True)
        self._drain.start()

    def _wait_ready(self, timeout: float) -> str:
        found: list[str] = []
        seen: list[str] = []

        def read() -> None:
            for line in self.proc.stdout:
                seen.append(line)
                if m := READY.match(line.strip()):
                    found.append(m['url'])
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.stop(grace=10.0)
            tail = self.log.read_text(errors='replace')[-3000:]
            raise RuntimeError(
                f'tempme-serve did not print "serving … on http://HOST:PORT" within {timeout:.0f} s '
                f'(exit code {self.exit_code}); stdout: {"".join(seen)[-1000:]!r}; log {self.log}:\n{tail}'
            )
        return found[0]

    def _drain_stdout(self) -> None:
        for _ in self.proc.stdout:
            pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    def memory_mib(self) -> tuple[float | None, float | None]:
        """(VmRSS, VmHWM) of the server process in MiB (None once it is gone)."""
        values: dict[str, float] = {}
        with contextlib.suppress(OSError):
            with open(f'/proc/{self.pid}/status') as f:
                for line in f:
                    key, _, rest = line.partition(':')
                    if key in ('VmRSS', 'VmHWM'):
                        values[key] = int(rest.split()[0]) / 1024
        return values.get('VmRSS'), values.get('VmHWM')

    def stop(self, grace: float = 60.0) -> int | None:
        """SIGTERM, then wait up to ``grace`` s for it to drain and exit (SIGKILL after that: exit code None)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.exit_code = None
                self._log.close()
                return None
        self.exit_code = self.proc.returncode
        self._log.close()
        return self.exit_code


# --------------------------------------------------------------------------- the clients


async def _client(
    http: Any,
    url: str,
    queries: list[str],
    start: int,
    step: int,
    k: int,
    deadline: float,
    latencies: list[float],
    errors: list[str],
) -> None:
    i = start
    while time.perf_counter() < deadline:
        q = queries[i % len(queries)]
        i += step
        t = time.perf_counter()
        try:
            r = await http.get(f'{url}/search', params={'q': q, 'k': k})
            ok = r.status_code == 200
            body = r.json() if ok else None
            ok = ok and body.get('query') == q and len(body.get('results', ())) == k
            problem = None if ok else f'HTTP {r.status_code}: {r.text[:200]}'
        except Exception as e:  # a refused, reset or timed-out request is one error of the cell
            problem = f'{type(e).__name__}: {e}'
        if problem is None:
            latencies.append(time.perf_counter() - t)
        else:
            errors.append(problem)


async def _drive(
    url: str, clients: int, duration: float, queries: list[str], k: int, timeout: float, token: str | None
) -> dict[str, Any]:
    import httpx

    headers = {'Authorization': f'Bearer {token}'} if token else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    errors: list[str] = []
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers, trust_env=False) as http:
        stats0 = (await http.get(f'{url}/stats')).json()
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                _client(http, url, queries, c, clients, k, t0 + duration, latencies, errors)
                for c in range(clients)
            )
        )
        wall = time.perf_counter() - t0
        stats1 = (await http.get(f'{url}/stats')).json()
    served = stats1['queries_served'] - stats0['queries_served']
    batches = stats1['batches'] - stats0['batches']
    lat = np.asarray(latencies) * 1e3
    pct = np.percentile(lat, [50, 95, 99]) if len(lat) else [None] * 3
    return {
        'clients': clients,
        'seconds': wall,
        'queries': len(latencies),
        'queries_per_s': len(latencies) / wall,
        'p50_ms': pct[0],
        'p95_ms': pct[1],
        'p99_ms': pct[2],
        'errors': len(errors),
        'error_examples': list(dict.fromkeys(errors))[:3],
        'mean_batch': served / batches if batches else None,
    }


def drive(
    url: str,
    clients: int,
    duration: float,
    queries: list[str],
    k: int = 10,
    timeout: float = 30.0,
    token: str | None = None,
) -> dict[str, Any]:
    """``clients`` concurrent clients sending ``GET /search`` back to back for ``duration`` s (a request started
    before the end is waited for, at most ``timeout`` s): queries/s, latency percentiles, errors, mean batch."""
    if not 1 <= clients <= MAX_CLIENTS:
        raise ValueError(f'clients {clients}: expected 1 to {MAX_CLIENTS}')
    return asyncio.run(_drive(url, clients, duration, queries, k, timeout, token))


# --------------------------------------------------------------------------- the encoder alone


def encoder_timings(model_dir: Path, batches: list[int], repeats: int = 5) -> list[dict[str, Any]]:
    """The text encoder in this process, per batch size: the median forward over ``repeats`` (after one warm-up)
    at the full padded length and cut as `text_padding` cuts it, on the benchmark's queries. Its queries/s is the
    ceiling of a server that batches that many; what a server answers below it is the server's own cost."""
    import torch

    from tempme_composer.inference.exported import load_exported
    from tempme_composer.inference.preprocess import tokenize_queries
    from tempme_composer.inference.text_padding import trim_block, trimmed_ids

    model = load_exported(model_dir)
    ids, _ = tokenize_queries(query_texts(max(batches)), model.preprocessing)
    dtype = next(model.model.parameters()).dtype
    block = trim_block(model.device, dtype, prompted=model.model.stop is not None)

    def median_s(batch: torch.Tensor) -> float:
        times = []
        for _ in range(repeats + 1):
            t = time.perf_counter()
            model.model.encode_text(batch)
            times.append(time.perf_counter() - t)
        return float(np.median(times[1:]))

    rows = []
    with torch.inference_mode():
        for b in batches:
            full = ids[:b]
            cut = trimmed_ids(full, block)
            padded, trimmed = median_s(full), median_s(cut)
            rows.append(
                {
                    'batch': b,
                    'tokens': int(full.shape[1]),
                    'trimmed_tokens': int(cut.shape[1]),
                    'padded_ms': padded * 1e3,
                    'trimmed_ms': trimmed * 1e3,
                    'trimmed_ms_per_query': trimmed * 1e3 / b,
                    'queries_per_s_ceiling': b / trimmed,
                    'torch_threads': torch.get_num_threads(),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def format_encoder_table(rows: list[dict[str, Any]]) -> str:
    head = ['batch', 'tokens', 'forward ms', 'trimmed to', 'trimmed ms', 'ms per query', 'queries/s ceiling']
    return markdown_table(
        head,
        [
            [
                r['batch'],
                r['tokens'],
                fmt(r['padded_ms'], '.0f'),
                r['trimmed_tokens'],
                fmt(r['trimmed_ms'], '.0f'),
                fmt(r['trimmed_ms_per_query'], '.1f'),
                fmt(r['queries_per_s_ceiling'], '.1f'),
            ]
            for r in rows
        ],
    )


# --------------------------------------------------------------------------- the run


def _warm_up(url: str, queries: list[str], k: int) -> None:
    import httpx

    with httpx.Client(timeout=120, trust_env=False) as http:
        for q in queries[-3:]:
            http.get(f'{url}/search', params={'q': q, 'k': k}).raise_for_status()


def run_cells(
    work: Path,
    sizes: list[int],
    clients: list[int],
    duration: float,
    k: int,
    approximate_from: int,
    approximate_ok: bool,
    model_dir: Path,
    timeout: float,
    build_graphs: bool = True,
) -> list[dict[str, Any]]:
    queries = query_texts(20_000)
    results = []
    for n in sizes:
        approximate = n >= approximate_from
        search = 'approximate (HNSW)' if approximate else 'exact'
        if approximate and not approximate_ok:
            results.append(
                {
                    'rows': n,
                    'search': search,
                    'batching': None,
                    'clients': None,
                    'not_measured': 'this tempme-serve has no --approximate',
                }
            )
            print(
                f'{n:,} rows: not measured (this tempme-serve has no --approximate)',
                file=sys.stderr,
                flush=True,
            )
            continue
        t = time.perf_counter()
        index = build_index(work / f'index-{n}', n, model_dir, work / 'videos')
        print(f'index of {n:,} rows ready in {time.perf_counter() - t:.0f} s', file=sys.stderr, flush=True)
        if approximate:
            from tempme_composer.inference.ann import ann_index
            from tempme_composer.inference.search import VideoIndex

            opened = VideoIndex(index)
            graph = index / f'ann-usearch-g{opened.manifest["generation"]}.usearch'
            if not graph.is_file() and not build_graphs:
                why = 'its HNSW graph is not built (--no-graph-build)'
                results.append({'rows': n, 'search': search, 'not_measured': why})
                print(f'{n:,} rows: not measured ({why})', file=sys.stderr, flush=True)
                continue
            t = time.perf_counter()
            ann_index(opened)  # built once and cached beside the index, as the server's start would
            del opened
            print(
                f'HNSW graph of {n:,} rows ready in {time.perf_counter() - t:.0f} s',
                file=sys.stderr,
                flush=True,
            )
        # both servers up at once and their cells interleaved (on, off at each client count): on a shared
        # machine the load then drifts less between the two cells a ratio compares
        servers: dict[str, ServerProcess] = {}
        started: dict[str, float] = {}
        codes: dict[str, int | None] = {}
        try:
            for batching, max_batch in (('on', BATCH_ON), ('off', BATCH_OFF)):
                args = ['--max-batch', str(max_batch), *(['--approximate'] if approximate else [])]
                t = time.perf_counter()
                log = work / f'serve-{n}-batch-{batching}.log'
                servers[batching] = ServerProcess(index, model_dir, args, log)
                started[batching] = time.perf_counter() - t
                _warm_up(servers[batching].url, queries, k)
            cells = []
            for c in clients:
                for batching, max_batch in (('on', BATCH_ON), ('off', BATCH_OFF)):
                    server = servers[batching]
                    cell = drive(server.url, c, duration, queries, k, timeout)
                    cell['rss_mib'], cell['peak_rss_mib'] = server.memory_mib()
                    cell['load_1min'] = os.getloadavg()[0]  # a shared machine: what else ran meanwhile
                    cell.update(
                        rows=n,
                        search=search,
                        batching=batching,
                        max_batch=max_batch,
                        start_s=started[batching],
                    )
                    cells.append(cell)
                    print(json.dumps(cell), file=sys.stderr, flush=True)
        finally:
            for batching, server in servers.items():
                codes[batching] = server.stop()
        for cell in cells:
            cell['server_exit'] = codes[cell['batching']]
        results += sorted(cells, key=lambda cell: (cell['batching'] != 'on', cell['clients']))
    return results


def ratios(results: list[dict[str, Any]], clients: int) -> dict[int, float]:
    """Per index size: queries/s with batching on over off, at ``clients`` clients."""
    out = {}
    for n in dict.fromkeys(r['rows'] for r in results):
        qps = {
            r['batching']: r['queries_per_s']
            for r in results
            if r['rows'] == n and r.get('clients') == clients and 'queries_per_s' in r
        }
        if qps.get('off'):
            out[n] = qps['on'] / qps['off']
    return out


def format_table(results: list[dict[str, Any]]) -> str:
    head = [
        'rows',
        'search',
        'batching',
        'clients',
        'queries/s',
        'p50 ms',
        'p95 ms',
        'p99 ms',
        'errors',
        'mean batch',
        'server RSS MiB',
        'load avg',
    ]
    rows = []
    for r in results:
        if 'not_measured' in r:
            rows.append(
                [f'{r["rows"]:,}', r['search'], '—', '—', f'not measured: {r["not_measured"]}', *['—'] * 7]
            )
            continue
        rows.append(
            [
                f'{r["rows"]:,}',
                r['search'],
                f'{r["batching"]} (--max-batch {r["max_batch"]})',
                r['clients'],
                fmt(r['queries_per_s'], '.1f'),
                fmt(r['p50_ms'], '.0f'),
                fmt(r['p95_ms'], '.0f'),
                fmt(r['p99_ms'], '.0f'),
                r['errors'],
                fmt(r['mean_batch'], '.1f'),
                fmt(r['rss_mib'], '.0f'),
                fmt(r['load_1min'], '.1f'),
            ]
        )
    return markdown_table(head, rows)


def summary(results: list[dict[str, Any]], clients: list[int]) -> list[str]:
    """The ratio lines and the targets of docs/serving.md#load, measured."""
    top = max(clients)
    lines = [
        f'batching on/off queries/s at {top} clients, {n:,} rows: {x:.1f}x'
        for n, x in ratios(results, top).items()
    ]
    measured = [r for r in results if 'not_measured' not in r]
    if measured:
        errors = sum(r['errors'] for r in measured)
        lines.append(f'target zero errors: {errors} errors ({"met" if errors == 0 else "MISSED"})')
        exits = sorted({r.get('server_exit') for r in measured}, key=str)
        lines.append(f'server exit codes after SIGTERM: {", ".join(str(c) for c in exits)}')
    if top == 32:
        for n, x in ratios(results, top).items():
            lines.append(
                f'target batching >= 3x at 32 clients, {n:,} rows: {x:.1f}x ({"met" if x >= 3 else "MISSED"})'
            )
    for r in measured:
        if r['rows'] == 100_000 and r['clients'] == 32 and r['batching'] == 'on' and r['search'] == 'exact':
            ok = r['p99_ms'] is not None and r['p99_ms'] <= 1000
            lines.append(
                f'target p99 <= 1 s at 32 clients, 100,000 rows exact: {fmt(r["p99_ms"], ".0f")} ms '
                f'({"met" if ok else "MISSED"})'
            )
    for r in measured:
        for example in r['error_examples']:
            lines.append(
                f'error ({r["rows"]:,} rows, batching {r["batching"]}, {r["clients"]} clients): {example}'
            )
    return lines


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(',') if s.strip()]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog='python -m tempme_composer.bench serve', description=__doc__.split('\n')[0]
    )
    parser.add_argument('--sizes', default='10000,100000,1000000', help='index rows, comma-separated')
    parser.add_argument(
        '--clients', default='1,8,32', help=f'concurrent clients per cell (1 to {MAX_CLIENTS})'
    )
    parser.add_argument('--duration', type=float, default=8.0, help='seconds of load per cell')
    parser.add_argument('--k', type=int, default=10)
    parser.add_argument(
        '--timeout', type=float, default=30.0, help='seconds a request may take before it is an error'
    )
    parser.add_argument(
        '--approximate-from',
        type=int,
        default=1_000_000,
        help='indexes of at least this many rows are searched approximately (HNSW)',
    )
    parser.add_argument(
        '--no-graph-build',
        action='store_true',
        help='report an approximate size as not measured unless its HNSW graph is cached in --work '
        '(building it takes about 80 minutes per million rows on 2 cores: docs/benchmarks.md#search)',
    )
    parser.add_argument('--preset', default='ViT-B/32', help='the CLIP preset of the random-init model')
    parser.add_argument(
        '--work', help='keep the model and indexes here for later runs (default: a temporary folder)'
    )
    parser.add_argument('--json', help='also write the cells as JSON')
    parser.add_argument(
        '--encoder',
        action='store_true',
        help='instead of the servers: time the text encoder in this process per batch of --encoder-batches, '
        'padded and trimmed (the ceiling a server can reach)',
    )
    parser.add_argument('--encoder-batches', default='1,8,16,32', help='batch sizes for --encoder')
    parser.add_argument(
        '--quick', action='store_true', help='10k rows, 1 and 8 clients, 3 s per cell (the test)'
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.clients, args.duration = '10000', '1,8', 3.0
    sizes, clients = _ints(args.sizes), _ints(args.clients)
    if not sizes or min(sizes) < args.k:
        parser.error(f'--sizes {args.sizes}: expected row counts of at least k={args.k}')
    if not clients or not all(1 <= c <= MAX_CLIENTS for c in clients):
        parser.error(f'--clients {args.clients}: expected counts from 1 to {MAX_CLIENTS}')
    if not 0 < args.duration <= 600:
        parser.error(f'--duration {args.duration}: expected seconds above 0, at most 600')
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix='tempme-bench-serve-'))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        model_dir = build_model(work / f'model-{re.sub(r"[^A-Za-z0-9]+", "-", args.preset)}', args.preset)
        print(f'model {model_dir} ready in {time.perf_counter() - t:.0f} s', file=sys.stderr, flush=True)
        if args.encoder:
            batches = _ints(args.encoder_batches)
            if not batches or min(batches) < 1:
                parser.error(f'--encoder-batches {args.encoder_batches}: expected batch sizes of at least 1')
            encoder = encoder_timings(model_dir, batches)
            print(machine_description('cpu'))
            print(f'{args.preset} random-init text encoder, in process, {time.strftime("%Y-%m-%d %H:%M")}')
            print(format_encoder_table(encoder))
            if args.json:
                write_json(args.json, encoder)
            return encoder
        approximate_ok = '--approximate' in server_flags() if max(sizes) >= args.approximate_from else False
        results = run_cells(
            work,
            sizes,
            clients,
            args.duration,
            args.k,
            args.approximate_from,
            approximate_ok,
            model_dir,
            args.timeout,
            not args.no_graph_build,
        )
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(machine_description('cpu'))
    print(
        f'{args.preset} random-init model, top-{args.k}, {args.duration:g} s per cell, clients {args.clients}, '
        f'{time.strftime("%Y-%m-%d")}'
    )
    print(format_table(results))
    for line in summary(results, clients):
        print(line)
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == '__main__':
    main()
