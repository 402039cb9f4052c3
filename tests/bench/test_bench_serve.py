"""bench serve: the load benchmark starts the real ``tempme-serve`` on a loopback port, drives it with concurrent
HTTP clients with micro-batching on and off, and prints one table row per cell with zero errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tempme_composer.inference.text_padding import trim_block

REPO = Path(__file__).resolve().parents[2]


def _run_bench(tmp_path: Path, *args: str, out: Path) -> subprocess.CompletedProcess:
    """``python -m tempme_composer.bench serve ARGS --preset tiny`` in a subprocess on this checkout, bounded
    in time; its ``--work`` in ``tmp_path`` and its JSON to ``out``. The tiny preset: building and loading a
    ViT-B/32 export would take most of the time a test may take."""
    env = {
        **os.environ,
        'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])),
    }
    argv = ['-m', 'tempme_composer.bench', 'serve', *args, '--preset', 'tiny', '--work', str(tmp_path / 'work')]
    return subprocess.run(
        [sys.executable, *argv, '--json', str(out)],
        capture_output=True,
        text=True,
        timeout=55,
        cwd=tmp_path,
        env=env,
    )


def test_bench_serve_quick_drives_the_real_server(tmp_path):
    out = tmp_path / 'cells.json'
    run = _run_bench(tmp_path, '--quick', out=out)
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'Traceback' not in run.stderr, run.stderr[-3000:]

    cells = json.loads(out.read_text())
    assert [(c['rows'], c['search'], c['batching'], c['clients']) for c in cells] == [
        (10_000, 'exact', 'on', 1),
        (10_000, 'exact', 'on', 8),
        (10_000, 'exact', 'off', 1),
        (10_000, 'exact', 'off', 8),
    ]
    for c in cells:
        assert c['errors'] == 0, c['error_examples']
        assert c['queries'] > 0 and c['queries_per_s'] > 0 and 2.5 < c['seconds'] < 60
        assert 0 < c['p50_ms'] <= c['p95_ms'] <= c['p99_ms']
        assert c['rss_mib'] > 50  # read from /proc/PID/status of the server (torch alone is more)
        assert c['server_exit'] == 0  # SIGTERM drained and exited cleanly
    # the server really micro-batched with --max-batch 64 (8 clients) and never with --max-batch 1
    assert max(c['mean_batch'] for c in cells if c['batching'] == 'on') > 1.0
    assert all(c['mean_batch'] == 1.0 for c in cells if c['batching'] == 'off')

    table = [line for line in run.stdout.splitlines() if line.startswith('|')]
    assert table[0].startswith(
        '| rows | search | batching | clients | queries/s | p50 ms | p95 ms | p99 ms | errors'
    )
    assert len(table) == 2 + len(cells)
    for line, c in zip(table[2:], cells, strict=True):
        cols = [s.strip() for s in line.strip('|').split('|')]
        assert cols[0] == '10,000' and cols[3] == str(c['clients']) and cols[8] == '0'
        assert cols[4] == f'{c["queries_per_s"]:.1f}'
    assert re.search(
        r'^batching on/off queries/s at 8 clients, 10,000 rows: \d+\.\dx$', run.stdout, re.MULTILINE
    )
    assert 'target zero errors: 0 errors (met)' in run.stdout


@pytest.mark.parametrize(
    ('argv', 'message'),
    [
        (['--clients', '1,1000'], '--clients 1,1000: expected counts from 1 to 256'),
        (['--duration', '0'], '--duration 0.0: expected seconds above 0, at most 600'),
        (['--sizes', '5'], '--sizes 5: expected row counts of at least k=10'),
    ],
)
def test_bench_serve_refuses_unbounded_loads(argv, message, capsys):
    from tempme_composer.bench.serve import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(
    trim_block(torch.device('cpu'), torch.float32, prompted=False) is None,
    reason='a torch CPU dispatch the trim was not shown exact under: nothing is trimmed',
)
def test_bench_serve_encoder_times_the_text_encoder_padded_and_trimmed(tmp_path):
    out = tmp_path / 'encoder.json'
    run = _run_bench(tmp_path, '--encoder', '--encoder-batches', '1,4', out=out)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r['batch'] for r in rows] == [1, 4]
    for r in rows:
        # the benchmark's captions are far shorter than the 32 tokens they are padded to
        assert r['tokens'] == 32 and 0 < r['trimmed_tokens'] < r['tokens']
        assert r['padded_ms'] > 0 and r['trimmed_ms'] > 0
        assert r['queries_per_s_ceiling'] == pytest.approx(r['batch'] * 1e3 / r['trimmed_ms'])
    table = [line for line in run.stdout.splitlines() if line.startswith('|')]
    assert table[0].startswith('| batch | tokens | forward ms | trimmed to | trimmed ms')
    assert len(table) == 2 + len(rows)
    assert not list((tmp_path / 'work').glob('index-*'))  # no index and no server for the encoder alone
