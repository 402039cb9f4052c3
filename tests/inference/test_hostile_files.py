"""Export, index and search trust nothing they read: every hostile or broken file below is built here, and each
gets one ``error: …`` line (exit 1) or a reported skip — never a traceback, a deleted or leaked file, a locked
index or an exhausted memory."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import run_folder
from video_fixtures import write_video

from tempme_composer.inference import ExportError, load_exported
from tempme_composer.inference.export import main as export_main
from tempme_composer.inference.exported import model_hash, sha256_file
from tempme_composer.inference.index import index_videos
from tempme_composer.inference.index import main as index_main
from tempme_composer.inference.search import VideoIndex
from tempme_composer.inference.search_cli import main as search_main
from tempme_composer.inference.store import IndexFolderError, IndexLockedError, IndexStore
from tempme_composer.inference.terminal import printable

REPO = Path(__file__).resolve().parents[2]
COLOURS = ((220, 40, 40), (40, 190, 60), (40, 80, 230))


@pytest.fixture(scope='module')
def built(tmp_path_factory, tiny_export) -> dict[str, Path]:
    """An export, a folder of three videos and its committed index (copied by tests that change it)."""
    root = tmp_path_factory.mktemp('built')
    export = tiny_export  # the session's (read-only)
    videos = root / 'videos'
    for i, colour in enumerate(COLOURS):
        write_video(videos / f'v{i}.mp4', colours=(colour,))
    index = root / 'index'
    index_videos(load_exported(export), videos, index, dtype='float32', progress=False)
    return {'root': root, 'export': export, 'videos': videos, 'index': index}


def _copy_index(built: dict[str, Path], tmp_path: Path) -> Path:
    out = tmp_path / 'index'
    shutil.copytree(built['index'], out)
    return out


def _error_line(capsys) -> str:
    """The one ``error: …`` line a command printed (and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith('error: '), err
    assert 'Traceback' not in err, err
    return lines[-1]


def _edit_rows(index: Path, edit) -> Path:
    """Rewrite the committed metadata with ``edit(rows)`` (a file forged by hand); returns its path."""
    from tempme_composer.inference.metadata_db import MetadataRows, write_metadata_db

    path = index / json.loads((index / 'index.json').read_text())['metadata']
    rows = list(MetadataRows(path, 3, lambda row, where: None, ValueError))
    edit(rows)
    path.unlink()
    write_metadata_db(path, rows)
    return path


def _set_manifest(index: Path, **changes) -> dict:
    manifest = json.loads((index / 'index.json').read_text())
    manifest.update(changes)
    (index / 'index.json').write_text(json.dumps(manifest))
    return manifest


# ---- no output folder is replaced unless it is ours --------------------------------------------------------------
def test_export_refuses_the_run_folder_and_any_folder_that_is_not_an_export(tmp_path, capsys, monkeypatch):
    run, _ = run_folder(tmp_path, 'baseline', None)
    (run / 'notes.txt').write_text('my notes')
    before = sorted(p.relative_to(run) for p in run.rglob('*'))
    checkpoint = run / 'checkpoints' / 'best.pt'
    assert export_main([str(checkpoint), '--out', str(run)]) == 1
    assert f'--out {run} contains the input {checkpoint}' in _error_line(capsys)
    assert export_main([str(checkpoint), '--out', str(run), '--force']) == 1  # never, even with --force
    assert sorted(p.relative_to(run) for p in run.rglob('*')) == before
    assert (run / 'notes.txt').read_text() == 'my notes'

    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'keep.txt').write_text('x')
    assert export_main([str(checkpoint), '--out', str(mine)]) == 1
    line = _error_line(capsys)
    assert 'exists and is not an export of tempme-export (it holds keep.txt)' in line and '--force' in line
    assert (mine / 'keep.txt').read_text() == 'x'
    monkeypatch.chdir(mine)  # `--out .` is the same folder
    assert export_main([str(checkpoint), '--out', '.']) == 1
    assert 'is not an export' in _error_line(capsys)
    (tmp_path / 'file').write_text('x')
    assert export_main([str(checkpoint), '--out', str(tmp_path / 'file')]) == 1
    assert 'is a file, expected a folder' in _error_line(capsys)

    # an earlier export is replaced as before; --force replaces another folder
    out = tmp_path / 'export'
    assert export_main([str(checkpoint), '--out', str(out)]) == 0
    assert export_main([str(checkpoint), '--out', str(out)]) == 0
    (out / 'extra.txt').write_text('x')
    assert export_main([str(checkpoint), '--out', str(out)]) == 1
    assert 'an export with other files in it (it holds README.md, config.json, extra.txt' in _error_line(capsys)
    assert export_main([str(checkpoint), '--out', str(mine), '--force']) == 0
    assert sorted(os.listdir(mine)) == ['README.md', 'config.json', 'model.safetensors']
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(('.tmp-', '.old-'))]


def test_index_refuses_an_out_folder_that_is_not_an_index_or_holds_the_videos(built, tmp_path, capsys):
    model = ['--model', str(built['export']), '--no-progress', '--workers', '0']
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'thumbs').mkdir()
    (mine / 'thumbs' / 'holiday.jpg').write_bytes(b'my photo')
    assert index_main([*model, '--videos', str(built['videos']), '--out', str(mine)]) == 1
    assert 'exists and is not a video index (it holds thumbs)' in _error_line(capsys)
    assert index_main([*model, '--videos', str(built['videos']), '--out', str(built['videos'])]) == 1
    assert f'contains the input {built["videos"]}' in _error_line(capsys)
    assert (mine / 'thumbs' / 'holiday.jpg').read_bytes() == b'my photo'
    # an index inside the folder it indexes is left out of the videos it finds
    videos = tmp_path / 'videos'
    shutil.copytree(built['videos'], videos)
    assert index_main([*model, '--videos', str(videos), '--out', str(videos / 'idx'), '--all-files']) == 0
    assert index_main([*model, '--videos', str(videos), '--out', str(videos / 'idx'), '--all-files']) == 0
    assert sorted(r['path'] for r in VideoIndex(videos / 'idx').rows) == ['v0.mp4', 'v1.mp4', 'v2.mp4']


def test_search_html_replaces_only_its_own_page(built, tmp_path, capsys):
    page = tmp_path / 'notes.html'
    page.write_text('<html>my notes</html>')
    assert search_main([str(built['index']), 'a red square', '--html', str(page)]) == 1
    assert 'exists and is not a page tempme-search wrote' in _error_line(capsys)
    assert page.read_text() == '<html>my notes</html>'
    ours = tmp_path / 'results.html'
    assert search_main([str(built['index']), 'a red square', '--html', str(ours)]) == 0
    assert search_main([str(built['index']), 'a green square', '--html', str(ours)]) == 0  # ours: replaced
    assert 'a green square' in ours.read_text()
    assert search_main([str(built['index']), 'a red square', '--html', str(page), '--force']) == 0
    assert 'a red square' in page.read_text()


# ---- paths stay inside their folder ------------------------------------------------------------------------------
@pytest.mark.parametrize('entry,value', [('captions', '../../victim.txt'), ('embeddings', 'ABSOLUTE'),
                                         ('metadata', 'thumbs/../metadata-g1.sqlite')])
def test_manifest_names_outside_the_index_are_refused_and_nothing_is_deleted(built, tmp_path, capsys, entry, value):
    index = _copy_index(built, tmp_path / 'a' / 'b')
    victim = tmp_path / 'a' / 'victim.txt'
    victim.write_text('precious')
    value = str(victim) if value == 'ABSOLUTE' else value
    _set_manifest(index, **{entry: value})
    args = ['--model', str(built['export']), '--videos', str(built['videos']), '--out', str(index), '--no-progress']
    assert index_main(args) == 1
    assert f"index.json: '{entry}' is {value!r}, expected a file name inside the index" in _error_line(capsys)
    assert search_main([str(index), 'a red square']) == 1
    assert f"'{entry}' is {value!r}" in _error_line(capsys)
    assert victim.read_text() == 'precious'
    # --rebuild replaces the damaged index and still deletes nothing outside it
    assert index_main([*args, '--rebuild']) == 0
    assert victim.read_text() == 'precious' and len(VideoIndex(index).rows) == 3


def test_a_link_out_of_the_index_is_refused(built, tmp_path):
    index = _copy_index(built, tmp_path)
    outside = tmp_path / 'outside.sqlite'
    shutil.copy(index / 'metadata-g1.sqlite', outside)
    (index / 'metadata-g1.sqlite').unlink()
    (index / 'metadata-g1.sqlite').symlink_to(outside)
    with pytest.raises(IndexFolderError, match="'metadata' is 'metadata-g1.sqlite', which links outside"):
        VideoIndex(index)
    # the index's own sub-folders are never written or emptied through a link
    index = _copy_index(built, tmp_path / 'b')
    elsewhere = tmp_path / 'photos'
    elsewhere.mkdir()
    (elsewhere / 'holiday.jpg').write_bytes(b'x')
    shutil.rmtree(index / 'thumbs')
    (index / 'thumbs').symlink_to(elsewhere)
    with pytest.raises(IndexFolderError, match='thumbs is a link or a file'):
        index_videos(load_exported(built['export']), built['videos'], index, dtype='float32', rebuild=True,
                     progress=False)
    assert (elsewhere / 'holiday.jpg').read_bytes() == b'x'


@pytest.mark.parametrize('thumb', ['../../../../etc/passwd', '/etc/passwd', 'x.jpg/../../index.json'])
def test_a_thumbnail_outside_the_index_is_an_error_and_never_inlined(built, tmp_path, capsys, thumb):
    index = _copy_index(built, tmp_path)
    _edit_rows(index, lambda rows: rows[0].update(thumb=thumb))
    page = tmp_path / 'page.html'
    assert search_main([str(index), 'a red square', '--html', str(page)]) == 1
    assert f'metadata-g1.sqlite, row 0: "thumb" is {thumb!r}, expected a file name <key>.jpg' in _error_line(capsys)
    assert not page.exists()
    ranks = tmp_path / 'ranks.jsonl'
    ranks.write_text(json.dumps({'caption': 'c', 'video_id': 'v0.mp4', 'rank': 2, 'top_videos': ['v1.mp4']}) + '\n')
    assert search_main([str(index), '--analysis', str(ranks), '--html', str(page)]) == 1
    assert '"thumb" is' in _error_line(capsys)
    assert not page.exists()


def test_links_in_the_videos_folder_follow_one_rule(built, tmp_path, capsys):
    """A link to a file is indexed under its own path; a link to a folder is not followed; a dangling or
    looping link is skipped with its reason (it used to stop the whole run)."""
    videos = tmp_path / 'videos'
    shutil.copytree(built['videos'], videos)
    (videos / 'dangling.mp4').symlink_to(tmp_path / 'gone.mp4')
    (videos / 'loop.mp4').symlink_to(videos / 'loop.mp4')
    (videos / 'alias.mp4').symlink_to(videos / 'v0.mp4')
    elsewhere = tmp_path / 'elsewhere'
    write_video(elsewhere / 'far.mp4')
    (videos / 'linked-folder').symlink_to(elsewhere, target_is_directory=True)
    out = tmp_path / 'index'
    assert index_main(['--model', str(built['export']), '--videos', str(videos), '--out', str(out),
                       '--no-progress', '--workers', '0']) == 0
    printed = capsys.readouterr().out
    assert 'skipped 2 videos' in printed and 'dangling.mp4' in printed and 'loop.mp4' in printed
    assert sorted(r['path'] for r in VideoIndex(out).rows) == ['alias.mp4', 'v0.mp4', 'v1.mp4', 'v2.mp4']
    skipped = {json.loads(line)['path']: json.loads(line)['reason'] for line in (out / 'skipped.jsonl').open()}
    assert 'does not resolve' in skipped['dangling.mp4'] and 'loop.mp4' in skipped


# ---- bounded memory: received config values ----------------------------------------------------------------------
@pytest.mark.parametrize('path,value,message', [
    (('preprocessing', 'frames', 'short_side'), 9000, 'preprocessing.frames.short_side is 9000, expected null'),
    (('preprocessing', 'max_frames'), 100000, 'preprocessing.max_frames is 100000, expected an integer from 1 to 1024'),
    (('preprocessing', 'max_frames'), '12', "preprocessing.max_frames is '12', expected an integer"),
    (('base_clip', 'architecture', 'vision_width'), 16384, 'base_clip.architecture.vision_width is 16384, expected an '
                                                           'integer from 1 to 8192'),
    (('base_clip', 'architecture', 'vision_layers'), 100000, 'base_clip.architecture.vision_layers is 100000'),
    (('preprocessing', 'max_words'), 500, 'preprocessing.max_words is 500, expected an integer from 3 to 32'),
    (('preprocessing', 'colour'), 'rgb', "preprocessing has unknown keys ['colour']"),
    (('model', 'lora'), {'enabled': True, 'rank': 10_000_000}, 'parameters, over the 3,000,000,000'),
])
def test_config_values_are_checked_before_anything_is_allocated(built, tmp_path, capsys, path, value, message):
    export = tmp_path / 'export'
    shutil.copytree(built['export'], export)
    cfg = json.loads((export / 'config.json').read_text())
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    cfg['model_hash'] = model_hash(cfg['weights']['sha256'], cfg['model'], cfg['base_clip'])  # a consistent forgery
    (export / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match='config.json') as info:
        load_exported(export)
    assert message in str(info.value)
    assert index_main(['--model', str(export), '--videos', str(built['videos']), '--out', str(tmp_path / 'i'),
                       '--no-progress']) == 1
    assert message in _error_line(capsys)


def test_missing_preprocessing_keys_are_named(built, tmp_path):
    export = tmp_path / 'export'
    shutil.copytree(built['export'], export)
    cfg = json.loads((export / 'config.json').read_text())
    del cfg['preprocessing']['slice_framepos']
    (export / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match=r"preprocessing has missing keys \['slice_framepos'\]"):
        load_exported(export)


# ---- identity is computed, not copied ----------------------------------------------------------------------------
def test_swapped_weights_with_a_matching_sha_are_refused(built, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    export = tmp_path / 'export'
    shutil.copytree(built['export'], export)
    tensors = load_file(str(export / 'model.safetensors'))
    tensors['clip.logit_scale'] = tensors['clip.logit_scale'] + 1.0
    save_file(tensors, str(export / 'model.safetensors'), metadata={'format': 'tempme-composer-export'})
    cfg = json.loads((export / 'config.json').read_text())
    cfg['weights']['sha256'] = sha256_file(export / 'model.safetensors')
    (export / 'config.json').write_text(json.dumps(cfg))
    assert search_main([str(built['index']), 'a red square', '--model', str(export)]) == 1
    assert 'records model_hash' in _error_line(capsys)
    cfg['model_hash'] = model_hash(cfg['weights']['sha256'], cfg['model'], cfg['base_clip'])
    (export / 'config.json').write_text(json.dumps(cfg))  # re-signed whole: another model, refused by the index
    assert search_main([str(built['index']), 'a red square', '--model', str(export)]) == 1
    assert 'embeddings of two models are not comparable' in _error_line(capsys)


# ---- one writer at a time ----------------------------------------------------------------------------------------
_HOLD_LOCK = ('import sys, time; from tempme_composer.inference.store import IndexStore\n'
              'with IndexStore(sys.argv[1]).writer_lock():\n'
              '    print("locked", flush=True); time.sleep(120)\n')


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_lock(built, tmp_path, capsys):
    index = _copy_index(built, tmp_path)
    holder = subprocess.Popen([sys.executable, '-c', _HOLD_LOCK, str(index)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, 'PYTHONPATH': str(REPO)})
    try:
        assert holder.stdout.readline().strip() == 'locked'
        args = ['--model', str(built['export']), '--videos', str(built['videos']), '--out', str(index),
                '--no-progress', '--dtype', 'float32']
        assert index_main(args) == 1
        assert f'is being updated by another tempme-index run (pid {holder.pid})' in _error_line(capsys)
        assert len(VideoIndex(index).rows) == 3  # readers take no lock
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert index_main(args) == 0  # the kernel released the dead process's lock
    with IndexStore(index).writer_lock(), pytest.raises(IndexLockedError):
        index_videos(load_exported(built['export']), built['videos'], index, dtype='float32', progress=False)


def test_searching_while_the_index_is_updated_reads_a_committed_generation(built, tmp_path):
    """A writer commits generations in a loop (each deletes the one before) while readers open the index:
    every reader gets one whole generation, never a missing file or a mix."""
    index = _copy_index(built, tmp_path)
    store = IndexStore(index)
    manifest = store.manifest()
    rows, emb = store.rows(manifest), np.array(store.embeddings(manifest))
    base = {k: manifest[k] for k in ('model_hash', 'model_dir', 'source', 'preprocessing', 'evaluation')}
    stop, errors, opened = threading.Event(), [], []

    def write() -> None:
        with store.writer_lock():
            for g in range(40):
                store.commit(base, emb * (1 + g % 2), rows, None, [])
        stop.set()

    def read() -> None:
        while not stop.is_set():
            try:
                ix = VideoIndex(index)
                scale = float(np.asarray(ix.embeddings[0], np.float32)[0] / emb[0, 0])
                opened.append((ix.manifest['generation'], scale))
            except Exception as e:  # any failure of a reader is the bug this test looks for
                errors.append(e)
                return

    readers = [threading.Thread(target=read) for _ in range(2)]
    writer = threading.Thread(target=write)
    for t in (*readers, writer):
        t.start()
    for t in (*readers, writer):
        t.join(timeout=120)
    assert not errors, errors
    assert opened
    for generation, scale in opened:  # generation 1 (the copy) and 2 hold emb * 1, generation 3 emb * 2, …
        assert scale == pytest.approx(1 + (generation - 2) % 2 if generation > 1 else 1)


def test_temporary_names_are_unique_per_process(tmp_path):
    from tempme_composer.inference.store import atomic_write_bytes

    seen = []
    real_replace = os.replace

    def record(src, dst):
        seen.append(Path(src).name)
        return real_replace(src, dst)

    try:
        os.replace = record
        atomic_write_bytes(tmp_path / 'thumb.jpg', b'x')
    finally:
        os.replace = real_replace
    assert seen == [f'.tmp-{os.getpid()}-thumb.jpg']


# ---- errors, not tracebacks --------------------------------------------------------------------------------------
def test_every_bad_index_file_is_one_error_line(built, tmp_path, capsys):
    def fails(index: Path, expected: str) -> None:
        assert search_main([str(index), 'a red square']) == 1
        assert expected in _error_line(capsys)

    index = _copy_index(built, tmp_path / 'generation')
    _set_manifest(index, generation='2')
    fails(index, "index.json: 'generation' is '2', expected an integer")
    index = _copy_index(built, tmp_path / 'count')
    _set_manifest(index, count='3')
    fails(index, "index.json: 'count' is '3', expected an integer")
    index = _copy_index(built, tmp_path / 'truncated')
    data = (index / 'embeddings-g1.npy').read_bytes()
    (index / 'embeddings-g1.npy').write_bytes(data[: len(data) // 2])
    fails(index, 'embeddings-g1.npy is not a readable .npy array')
    index = _copy_index(built, tmp_path / 'shape')
    np.save(index / 'embeddings-g1.npy', np.zeros((2, 64), np.float32))
    fails(index, 'embeddings-g1.npy holds an array of shape (2, 64) and dtype float32, but index.json says shape (3, 64)')
    index = _copy_index(built, tmp_path / 'json')
    db = sqlite3.connect(index / 'metadata-g1.sqlite')
    db.execute("UPDATE rows SET row = '{not json' WHERE id = 0")
    db.commit()
    db.close()
    fails(index, 'metadata-g1.sqlite, row 0: not JSON')
    index = _copy_index(built, tmp_path / 'nopath')
    _edit_rows(index, lambda rows: rows[1].pop('path'))
    fails(index, 'metadata-g1.sqlite, row 1: row has no "path"')
    index = _copy_index(built, tmp_path / 'notdb')
    (index / 'metadata-g1.sqlite').write_bytes(b'not a database' * 100)
    fails(index, 'metadata-g1.sqlite is not a readable metadata database')


def test_bad_analysis_files_are_one_error_line(built, tmp_path, capsys):
    page = str(tmp_path / 'page.html')
    assert search_main(['--analysis', str(tmp_path / 'missing.jsonl'), '--html', page]) == 1
    assert 'missing.jsonl: no such file' in _error_line(capsys)
    ranks = tmp_path / 'ranks.jsonl'
    for row, expected in [({'caption': 'c', 'video_id': 'v', 'rank': 'first', 'top_videos': []}, "rank is 'first'"),
                          ({'caption': 'c', 'video_id': 'v', 'rank': 1, 'top_videos': 'v0'}, "top_videos is 'v0'"),
                          (['a', 'list'], 'expected caption, video_id, rank and top_videos')]:
        ranks.write_text(json.dumps(row) + '\n')
        assert search_main(['--analysis', str(ranks), '--html', page]) == 1
        assert f'ranks.jsonl, line 1: {expected}' in _error_line(capsys)


def test_a_corrupt_search_graph_is_rebuilt_with_a_note(built, tmp_path, capsys, caplog):
    pytest.importorskip('usearch')
    index = _copy_index(built, tmp_path)
    assert search_main([str(index), 'a red square', '--approximate', '--json']) == 0
    want = json.loads(capsys.readouterr().out)
    (graph,) = index.glob('ann-usearch-g*.usearch')
    graph.write_bytes(b'\x00garbage' * 10)
    assert search_main([str(index), 'a red square', '--approximate', '--json']) == 0
    assert json.loads(capsys.readouterr().out) == want
    assert 'is damaged' in caplog.text and 'rebuilding it' in caplog.text


def test_control_characters_in_names_are_escaped_on_the_terminal(built, tmp_path, capfd):
    videos = tmp_path / 'videos'
    name = 'evil\x1b]0;owned\x07\x1b[2J.mp4'
    write_video(videos / name)
    (videos / 'broken\x1b[2J.mp4').write_bytes(b'not a video')
    out = tmp_path / 'index'
    assert index_main(['--model', str(built['export']), '--videos', str(videos), '--out', str(out),
                       '--no-progress', '--workers', '0']) == 0
    assert search_main([str(out), 'a red square']) == 0
    printed = capfd.readouterr()
    assert '\x1b' not in printed.out and '\x07' not in printed.out
    assert printable(name) in printed.out and 'broken\\x1b[2J.mp4' in printed.out
    assert printable(name) == 'evil\\x1b]0;owned\\x07\\x1b[2J.mp4'
    assert printable('café ☕.mp4') == 'café ☕.mp4'


# ---- the page is as big as what it shows -------------------------------------------------------------------------
def test_each_thumbnail_is_inlined_once_and_cards_link_their_video(built, tmp_path):
    queries = tmp_path / 'q.txt'
    queries.write_text(''.join(f'query number {i}\n' for i in range(60)))
    page = tmp_path / 'page.html'
    assert search_main([str(built['index']), '--queries', str(queries), '--top-k', '3', '--html', str(page)]) == 0
    text = page.read_text()
    assert text.count('data:image/jpeg;base64,') == 3  # three videos, 180 cards
    assert text.count('<div class="hit">') == 180
    for i in range(3):
        uri = (built['videos'] / f'v{i}.mp4').resolve().as_uri()
        assert text.count(f'href="{uri}"') == 60


def test_a_version_1_index_with_json_lines_metadata_is_still_read(built, tmp_path):
    index = _copy_index(built, tmp_path)
    want = list(VideoIndex(index).rows)
    (index / 'metadata-g1.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in want))
    (index / 'metadata-g1.sqlite').unlink()
    _set_manifest(index, format_version=1, metadata='metadata-g1.jsonl')
    assert list(VideoIndex(index).rows) == want
    assert search_main([str(index), 'a red square']) == 0
