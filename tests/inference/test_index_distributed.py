"""tempme-index on several ranks (torchrun): one index, the one a single process writes, whatever the split."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from video_fixtures import write_video

from tempme_composer.inference import load_exported
from tempme_composer.inference.index import _shares, index_videos, launched_world
from tempme_composer.inference.index import main as index_main
from tempme_composer.inference.store import IndexFolderError, IndexStore

REPO = Path(__file__).resolve().parents[2]
COLOURS = [(220, 40, 40), (40, 190, 60), (40, 80, 230), (235, 215, 40)]
LAUNCH_TIMEOUT_S = 120
#: Put first on a rank's PYTHONPATH, it makes rank 1 die (as a crash would: no cleanup) when it starts
#: decoding the video after its first decoded one, which is written as a pending batch by then.
DIE_ON_RANK_1 = '''import os

if os.environ.get('RANK') == '1':
    import tempme_composer.inference.preprocess as preprocess

    real, decoded = preprocess.video_from_file, []

    def dying(*args, **kwargs):
        if decoded:
            os._exit(17)
        video = real(*args, **kwargs)
        decoded.append(True)
        return video

    preprocess.video_from_file = dying
'''


@pytest.fixture(scope='module')
def export(tiny_export) -> Path:
    return tiny_export  # the session's tiny export (read-only)


@pytest.fixture(scope='module')
def model(export):
    return load_exported(export, device='cpu')


@pytest.fixture(scope='module')
def videos(tmp_path_factory) -> Path:
    """Six short videos of different sizes, two longer ones (several windows each), one that is no video."""
    root = tmp_path_factory.mktemp('videos')
    for i in range(6):
        write_video(root / f'clip{i}.mp4', seconds=2 + i % 3, colours=COLOURS[: 1 + i % 4])
    write_video(root / 'long' / 'a.mp4', seconds=9, colours=COLOURS)
    write_video(root / 'long' / 'b.mp4', seconds=7, colours=COLOURS[::-1])
    (root / 'broken.mp4').write_bytes(b'not a video container')
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _torchrun() -> list[str]:
    script = Path(sys.executable).with_name('torchrun')
    return [str(script)] if script.is_file() else [sys.executable, '-m', 'torch.distributed.run']


def _flags(export: Path, videos: Path, out: Path, *extra: str) -> list[str]:
    return ['--model', str(export), '--videos', str(videos), '--out', str(out), '--device', 'cpu',
            '--workers', '0', '--no-progress', '--dtype', 'float32', *extra]


def _launch(export: Path, videos: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m tempme_composer.inference.index ...``, which must succeed.

    ``--standalone`` lets torchrun bind its own free loopback port: a port picked here and closed before the
    launch could be taken by another process in between, and the ranks would wait on it until the timeout.
    """
    command = [*_torchrun(), '--standalone', '--nproc-per-node', '2', '-m', 'tempme_composer.inference.index',
               *_flags(export, videos, out, *extra)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return run


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run as a rank of torchrun runs (OMP_NUM_THREADS=1): the reference sees the same arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _reference(model, videos: Path, out: Path, **kwargs):
    with _threads(1):
        return index_videos(model, videos, out, dtype='float32', num_workers=0, progress=False, **kwargs)


def _index(out: Path) -> tuple[dict, list[dict], np.ndarray, list[dict]]:
    store = IndexStore(out)
    manifest = store.manifest()
    skipped = [json.loads(line) for line in (out / 'skipped.jsonl').read_text().splitlines()]
    return manifest, store.rows(manifest), np.array(store.embeddings(manifest)), skipped


def _same_index(got: Path, want: Path, *, exact: bool) -> None:
    got_manifest, got_rows, got_emb, got_skipped = _index(got)
    want_manifest, want_rows, want_emb, want_skipped = _index(want)
    assert got_rows == want_rows  # the same rows, in the same order (thumbnail names included)
    if exact:
        assert np.array_equal(got_emb, want_emb)
    else:
        np.testing.assert_allclose(got_emb, want_emb, atol=1e-6, rtol=0)
    # the decoder's message in parentheses depends on PyAV's log settings in the process (its last log line)
    assert [(s['path'], s['reason'].split('(')[0]) for s in got_skipped] == \
        [(s['path'], s['reason'].split('(')[0]) for s in want_skipped]
    for key in ('count', 'videos', 'embed_dim', 'dtype', 'model_hash', 'moments', 'skipped'):
        assert got_manifest[key] == want_manifest[key], key
    assert sorted(p.name for p in (got / 'thumbs').iterdir()) == sorted(p.name for p in (want / 'thumbs').iterdir())
    assert not list((got / 'pending').glob('*'))


# ---- one process -------------------------------------------------------------------------------------------


def test_the_split_is_deterministic_balanced_by_size_and_keeps_the_files_order():
    todo = [(f'v{n:02d}.mp4', size, 0) for n, size in enumerate([5, 90, 7, 40, 40, 3, 60, 1, 22, 8])]
    shares = _shares(todo, 3)
    assert shares == _shares(list(todo), 3)
    assert sorted(item for share in shares for item in share) == sorted(todo)  # every file once
    assert all(share == sorted(share) for share in shares)  # each in the to-do list's order
    assert [sum(size for _, size, _ in share) for share in shares] == [91, 92, 93]  # of 276 bytes
    assert [rel for rel, _, _ in shares[0]] == ['v01.mp4', 'v07.mp4']  # the largest file, then the smallest
    assert _shares(todo[:1], 3) == [todo[:1], [], []]  # fewer files than ranks: the others encode nothing
    assert _shares([], 2) == [[], []]


def test_pending_numbers_of_ranks_never_meet(tmp_path):
    store = IndexStore(tmp_path)
    taken = [n for rank in range(3) for n in _take(store.pending_numbers(7, rank, 3), 5)]
    assert len(set(taken)) == len(taken) and min(taken) == 7
    assert _take(store.pending_numbers(), 3) == [0, 1, 2]  # one process: consecutive, from past the last batch
    with pytest.raises(ValueError, match='rank 2 of 2'):
        store.pending_numbers(0, 2, 2)


def _take(numbers: Iterator[int], n: int) -> list[int]:
    return [next(numbers) for _ in range(n)]


def test_the_launchers_environment_is_read_and_checked():
    assert launched_world({}).size == 1
    world = launched_world({'WORLD_SIZE': '4', 'RANK': '3', 'LOCAL_RANK': '1', 'LOCAL_WORLD_SIZE': '2'})
    assert (world.rank, world.local_rank, world.size, world.local_size) == (3, 1, 4, 2)
    with pytest.raises(IndexFolderError, match="WORLD_SIZE='two': expected an integer"):
        launched_world({'WORLD_SIZE': 'two'})
    with pytest.raises(IndexFolderError, match='expected 0 <= RANK < WORLD_SIZE'):
        launched_world({'WORLD_SIZE': '2', 'RANK': '2'})


def test_an_mds_split_on_several_ranks_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '1')
    assert index_main(['--model', str(tmp_path / 'm'), '--mds', str(tmp_path / 's'), '--out', str(tmp_path / 'i')]) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: --mds runs in one process') and err.count('\n') == 1
    assert not (tmp_path / 'i').exists()


# ---- two ranks ---------------------------------------------------------------------------------------------


@pytest.mark.multiprocess
def test_two_ranks_write_the_index_one_process_writes_and_a_rerun_encodes_nothing(export, model, videos, tmp_path):
    want, got = tmp_path / 'one', tmp_path / 'two'
    report = _reference(model, videos, want, batch_size=1)
    assert (report.encoded, len(report.skipped)) == (8, 1)

    run = _launch(export, videos, got, '--batch-size', '1')
    _same_index(got, want, exact=True)  # one video per forward: bit for bit
    assert run.stdout.count(f'{got}: 8 videos indexed (8 videos encoded now, 0 unchanged') == 1  # rank 0 only
    _, _, _, skipped = _index(got)
    assert [s['path'] for s in skipped] == ['broken.mp4']  # every rank's skipped videos, each once
    assert run.stdout.count('broken.mp4:') == 1

    again = _launch(export, videos, got, '--batch-size', '4')
    assert f'{got}: 8 videos indexed (0 videos encoded now, 8 unchanged' in again.stdout
    _same_index(got, want, exact=True)


@pytest.mark.multiprocess
def test_two_ranks_index_moments_as_one_process_does(export, model, videos, tmp_path):
    want_1, want_3, got_1, got_3 = (tmp_path / name for name in ('one-b1', 'one-b3', 'two-b1', 'two-b3'))
    report = _reference(model, videos, want_1, batch_size=1, window=4.0)
    assert report.indexed > report.videos == 8  # the long videos are several windows each
    _reference(model, videos, want_3, batch_size=3, window=4.0)
    _launch(export, videos, got_1, '--batch-size', '1', '--window', '4')
    _same_index(got_1, want_1, exact=True)
    _launch(export, videos, got_3, '--batch-size', '3', '--window', '4')
    _same_index(got_3, want_3, exact=False)  # other batch compositions: equal up to float32 rounding


def _ranks_by_hand(export: Path, videos: Path, out: Path, *extra: str,
                   pythonpath: Path | None = None) -> list[tuple[int, str, str]]:
    """Two ranks started as a launcher starts them (its environment), without a launcher that would stop the
    survivor: (exit status, stdout, stderr) of each."""
    port, ranks = _free_port(), []
    for rank in range(2):
        env = {**os.environ, 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port), 'WORLD_SIZE': '2',
               'RANK': str(rank), 'LOCAL_RANK': str(rank), 'LOCAL_WORLD_SIZE': '2', 'OMP_NUM_THREADS': '1'}
        if pythonpath is not None:
            env['PYTHONPATH'] = os.pathsep.join([str(pythonpath), os.environ.get('PYTHONPATH', '')])
        command = [sys.executable, '-m', 'tempme_composer.inference.index', *_flags(export, videos, out, *extra)]
        ranks.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outputs = [p.communicate(timeout=LAUNCH_TIMEOUT_S) for p in ranks]
    return [(p.returncode, *output) for p, output in zip(ranks, outputs, strict=True)]


@pytest.mark.multiprocess
def test_every_rank_fails_with_one_line_when_rank_0_cannot_lock_the_index(export, model, videos, tmp_path):
    out = tmp_path / 'index'
    _reference(model, videos / 'long', out, batch_size=4)
    before = sorted(p.relative_to(out) for p in out.rglob('*'))
    with IndexStore(out).writer_lock():  # another run is updating the index
        (rc0, _, err0), (rc1, _, err1) = _ranks_by_hand(export, videos, out, '--dist-timeout', '1')
    assert (rc0, rc1) == (1, 1)
    assert err0 == err1 and err0.count('\n') == 1, (err0, err1)
    assert err0.startswith(f'error: {out} is being updated by another tempme-index run (pid {os.getpid()})')
    assert sorted(p.relative_to(out) for p in out.rglob('*')) == before  # no rank wrote anything


@pytest.mark.multiprocess
def test_a_rank_that_dies_stops_the_other_and_the_next_run_recovers_its_batches(export, model, videos, tmp_path):
    hook, out = tmp_path / 'hook', tmp_path / 'index'
    hook.mkdir()
    (hook / 'sitecustomize.py').write_text(DIE_ON_RANK_1)
    started = time.monotonic()
    (rc0, _, err0), (rc1, _, err1) = _ranks_by_hand(export, videos, out, '--batch-size', '1', '--dist-timeout', '1',
                                                    pythonpath=hook)
    assert rc1 == 17, err1
    assert rc0 == 1 and err0.startswith('error: lost contact with the other tempme-index ranks'), err0
    assert time.monotonic() - started < 50  # the survivor noticed at once, it did not wait for the timeout
    assert not (out / 'index.json').exists()
    written = sorted(int(p.stem.split('-')[1]) for p in (out / 'pending').glob('batch-*.jsonl'))
    assert {n % 2 for n in written} == {0, 1}  # both ranks' batches, under numbers of their own

    report = _reference(model, videos, out, batch_size=1)
    assert (report.recovered, report.encoded) == (len(written), 8 - len(written))
    want = tmp_path / 'one'
    _reference(model, videos, want, batch_size=1)
    _, got_rows, got_emb, _ = _index(out)
    _, want_rows, want_emb, _ = _index(want)
    by_path = {r['path']: n for n, r in enumerate(want_rows)}
    order = [by_path[r['path']] for r in got_rows]  # recovered videos come first: the same rows, reordered
    assert got_rows == [want_rows[n] for n in order]
    assert np.array_equal(got_emb, want_emb[order])
