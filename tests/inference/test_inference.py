"""Using a trained model: export → load (safetensors + JSON, never unpickled), index a folder, search it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from clip_fixtures import save_openai_state_dict, tiny_clip
from export_fixtures import FRAMES, VARIANTS, run_folder
from omegaconf import OmegaConf
from video_fixtures import write_video

from tempme_composer.inference import ExportError, load_exported
from tempme_composer.inference.export import export_checkpoint
from tempme_composer.inference.index import index_videos
from tempme_composer.inference.preprocess import QueryError, video_from_file
from tempme_composer.inference.search import VideoIndex, exact_topk, search
from tempme_composer.inference.store import IndexFolderError, IndexStore

REPO = Path(__file__).resolve().parents[2]

def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(3, FRAMES, 3, 32, 32, generator=g)
    mask = torch.ones(3, FRAMES, dtype=torch.long)
    mask[2, 3:] = 0
    ids = torch.randint(1, 49000, (3, 16), generator=g)
    ids[:, 10] = 49407
    return video, mask, ids


@pytest.fixture(scope='module')
def base_clip_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('base') / 'tiny-openai.pt'
    save_openai_state_dict(tiny_clip(seed=1), path)
    return path


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_export_then_load_gives_the_training_models_embeddings(tmp_path, variant, base_clip_file):
    run, trained = run_folder(tmp_path, variant, base_clip_file)
    out = export_checkpoint(run / 'checkpoints' / 'best.pt', tmp_path / 'export')
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['weights']['contents'] == 'delta'
    assert 'clip.visual.ln_post.weight' in cfg['weights']['tensors']  # a trained CLIP tensor is kept
    assert 'clip.visual.conv1.weight' not in cfg['weights']['tensors']  # an untouched one comes from the base
    assert (out / 'README.md').read_text().count('Text-to-Video') == 1
    loaded = load_exported(out, clip_checkpoint=base_clip_file)
    video, mask, ids = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded.model.encode_video(video, mask), trained.encode_video(video, mask))
        assert torch.equal(loaded.model.encode_text(ids), trained.encode_text(ids))
    full = load_exported(export_checkpoint(run / 'checkpoints' / 'best.pt', tmp_path / 'full', full=True))
    with torch.no_grad():
        assert torch.equal(full.model.encode_video(video, mask), trained.encode_video(video, mask))
    assert full.model_hash != loaded.model_hash or cfg['weights']['contents'] == 'full'


def test_loading_refuses_a_wrong_base_or_a_tampered_export(tmp_path, base_clip_file):
    run, _ = run_folder(tmp_path, 'baseline', base_clip_file)
    out = export_checkpoint(run / 'checkpoints' / 'best.pt', tmp_path / 'export')
    with pytest.raises(ExportError, match='pass that file'):
        load_exported(out)  # a delta needs its base
    other = tmp_path / 'other.pt'
    save_openai_state_dict(tiny_clip(seed=2), other)
    with pytest.raises(ExportError, match=r'other\.pt is not the one this model was trained from'):
        load_exported(out, clip_checkpoint=other)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(out / 'model.safetensors'))
    tensors.pop(next(iter(tensors)))
    save_file(tensors, str(out / 'model.safetensors'))
    with pytest.raises(ExportError, match='model.safetensors does not match'):
        load_exported(out, clip_checkpoint=base_clip_file)
    cfg = json.loads((out / 'config.json').read_text())  # re-sign the weights' hash: the model hash no longer fits
    from tempme_composer.inference.exported import model_hash, sha256_file

    cfg['weights']['sha256'] = sha256_file(out / 'model.safetensors')
    (out / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match='records model_hash .* the export was altered after it was written'):
        load_exported(out, clip_checkpoint=base_clip_file)
    cfg['model_hash'] = model_hash(cfg['weights']['sha256'], cfg['model'], cfg['base_clip'])  # and re-sign that too
    (out / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match='holds other tensors than config.json lists'):
        load_exported(out, clip_checkpoint=base_clip_file)


def test_export_refuses_a_checkpoint_with_foreign_objects(tmp_path, base_clip_file):
    run, _ = run_folder(tmp_path, 'baseline', base_clip_file)
    marker = tmp_path / 'pwned'
    state = torch.load(run / 'checkpoints' / 'best.pt', weights_only=False)
    state['rng'] = _Exploit(str(marker))
    torch.save(state, run / 'checkpoints' / 'best.pt')
    with pytest.raises(ExportError, match='--trust-checkpoint'):
        export_checkpoint(run / 'checkpoints' / 'best.pt', tmp_path / 'export')
    assert not marker.exists()


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_index_is_incremental_and_search_is_exact(tiny_export, tmp_path):
    model = load_exported(tiny_export)
    videos = tmp_path / 'videos'
    write_video(videos / 'red.mp4', colours=((220, 40, 40),))
    write_video(videos / 'sub' / 'green.mkv', colours=((40, 220, 40),), container_format='matroska')
    write_video(videos / 'blue.mp4', colours=((40, 40, 220),))
    (videos / 'notes.txt').write_text('not a video')
    (videos / 'broken.mp4').write_bytes(b'this is text, not a video')
    out = tmp_path / 'index'
    report = index_videos(model, videos, out, dtype='float32', progress=False)
    assert (report.indexed, report.encoded) == (3, 3)
    assert [s['path'] for s in report.skipped] == ['broken.mp4']
    index = VideoIndex(out)
    assert sorted(r['path'] for r in index.rows) == ['blue.mp4', 'red.mp4', 'sub/green.mkv']
    assert all(index.thumbnail(i).is_file() for i in range(3))
    direct = video_from_file(videos / 'red.mp4', model.preprocessing)
    row = [r['path'] for r in index.rows].index('red.mp4')
    with torch.no_grad():
        want = model.model.encode_video(direct.video[None], direct.mask[None])[0].numpy()
    # the index encoded the three videos as one batch, this is a batch of one: BLAS may round differently by batch
    # size (seen with MKL on an AMD EPYC: 6e-8), so equal up to fp32 rounding
    np.testing.assert_allclose(index.embeddings[row], want, rtol=0, atol=1e-6)

    # Re-run: nothing changes. Then delete one, change one, add one.
    again = index_videos(model, videos, out, dtype='float32', progress=False)
    assert (again.encoded, again.reused) == (0, 3)
    (videos / 'blue.mp4').unlink()
    write_video(videos / 'red.mp4', seconds=2, colours=((200, 0, 0),))
    os.utime(videos / 'red.mp4', ns=(1, 1))
    write_video(videos / 'new.mp4', colours=((250, 250, 0),))
    third = index_videos(model, videos, out, dtype='float32', progress=False)
    assert (third.encoded, third.reused, third.removed) == (2, 1, 2)
    index = VideoIndex(out)
    assert sorted(r['path'] for r in index.rows) == ['new.mp4', 'red.mp4', 'sub/green.mkv']
    assert len(list((out / 'thumbs').glob('*.jpg'))) == 3

    results = search(index, model, ['a red square', 'a green circle'], top_k=2)
    from tempme_composer.inference.index import encode_texts
    from tempme_composer.inference.preprocess import tokenize_queries

    q = encode_texts(model, tokenize_queries(['a red square', 'a green circle'], model.preprocessing)[0])
    scores = q @ np.asarray(index.embeddings, np.float32).T
    for i, r in enumerate(results):
        order = np.argsort(-scores[i], kind='stable')[:2]
        assert [h.row for h in r.hits] == order.tolist()
        np.testing.assert_allclose([h.score for h in r.hits], scores[i, order], rtol=1e-6)
    # HNSW on a gallery this small visits every video: the same top-k with the same fp32 scores, and its graph
    # is cached per generation (read back memory-mapped by the next search)
    approx = search(index, model, ['a red square', 'a green circle'], top_k=2, approximate=True)
    assert [[h.row for h in r.hits] for r in approx] == [[h.row for h in r.hits] for r in results]
    for a, r in zip(approx, results, strict=True):
        np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in r.hits], rtol=1e-6)
    graph = f'ann-usearch-g{index.manifest["generation"]}.usearch'
    assert [p.name for p in out.glob('ann-usearch-*.usearch')] == [graph]
    again = search(VideoIndex(out), model, ['a red square', 'a green circle'], top_k=3, approximate=True,
                   expansion_search=16)
    assert [[h.row for h in r.hits][:2] for r in again] == [[h.row for h in r.hits] for r in results]


def test_exact_topk_over_chunks_equals_a_full_sort():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((1000, 16)).astype(np.float16)
    q = rng.standard_normal((5, 16)).astype(np.float32)
    scores, rows = exact_topk(q, emb, 7, chunk_rows=64)
    full = q @ emb.astype(np.float32).T
    want = np.argsort(-full, axis=1, kind='stable')[:, :7]
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-6)


def test_a_crash_mid_run_keeps_the_index_and_the_encoded_batches(tiny_export, tmp_path):
    model = load_exported(tiny_export)
    videos = tmp_path / 'videos'
    for i in range(4):
        write_video(videos / f'v{i}.mp4', colours=((60 * i, 40, 40),))
    out = tmp_path / 'index'
    index_videos(model, videos, out, dtype='float32', batch_size=2, progress=False)
    committed = (out / 'index.json').read_text()
    for i in range(4, 8):
        write_video(videos / f'v{i}.mp4', colours=((40, 60 * (i - 4), 40),))
    # Simulate a crash after the first new batch was encoded: run in a child process killed by the loader.
    code = ('import sys, os; from tempme_composer.inference import load_exported; '
            'from tempme_composer.inference import index as ix; m = load_exported(sys.argv[1]); '
            'orig = ix.encode_videos; n = [0]\n'
            'def boom(*a, **k):\n    n[0] += 1\n    if n[0] == 2: os._exit(9)\n    return orig(*a, **k)\n'
            'ix.encode_videos = boom; ix.index_videos(m, sys.argv[2], sys.argv[3], dtype="float32", batch_size=2, progress=False)')
    proc = subprocess.run([sys.executable, '-c', code, str(model.directory), str(videos), str(out)],
                          env={**os.environ, 'PYTHONPATH': str(REPO)}, capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert (out / 'index.json').read_text() == committed  # the committed index is untouched
    assert len(VideoIndex(out).rows) == 4
    report = index_videos(model, videos, out, dtype='float32', batch_size=2, progress=False)
    assert (report.recovered, report.encoded, report.indexed) == (2, 2, 8)
    assert not list((out / 'pending').glob('*'))
    # A first run that never committed: search says how to finish it, the next run does.
    fresh = tmp_path / 'fresh'
    (fresh / 'pending').mkdir(parents=True)
    IndexStore(fresh).write_pending(0, _one_batch(model, videos))
    with pytest.raises(IndexFolderError, match='stopped before its first commit.*re-run the same tempme-index command'):
        VideoIndex(fresh)
    assert index_videos(model, videos, fresh, dtype='float32', progress=False).recovered == 1


def _one_batch(model, videos: Path):
    from tempme_composer.inference.index import encode_videos
    from tempme_composer.inference.store import PendingBatch

    x = video_from_file(videos / 'v0.mp4', model.preprocessing)
    st = (videos / 'v0.mp4').stat()
    row = {'path': 'v0.mp4', 'size': st.st_size, 'mtime_ns': st.st_mtime_ns, 'key': 'k0', 'duration': x.duration,
           'frames': x.num_frames, 'used_frames': int(x.mask.sum()), 'warnings': [], 'thumb': None,
           'model_hash': model.model_hash}
    return PendingBatch([row], encode_videos(model, [x]).astype('float32'), [])


def test_bad_inputs_get_one_clear_error(tiny_export, tmp_path, capsys):
    export = tiny_export
    model = load_exported(export)
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'a.txt').write_text('x')
    with pytest.raises(IndexFolderError, match='no video files found'):
        index_videos(model, empty, tmp_path / 'i0', progress=False)
    junk = tmp_path / 'junk'
    junk.mkdir()
    (junk / 'a.mp4').write_bytes(b'\x00' * 100)
    with pytest.raises(IndexFolderError, match='none of the 1 video files could be decoded'):
        index_videos(model, junk, tmp_path / 'i1', progress=False)
    videos = tmp_path / 'videos'
    write_video(videos / 'a.mp4')
    out = tmp_path / 'index'
    index_videos(model, videos, out, progress=False)
    index = VideoIndex(out)
    with pytest.raises(QueryError, match='query 2 is empty'):
        search(index, model, ['a cat', '   '])
    long_query = ' '.join(['word'] * 40)
    (result,) = search(index, model, [long_query])
    assert 'truncated' in result.note and 'max_words=16' in result.note
    from tempme_composer.inference.search_cli import main as search_main

    assert search_main([str(out), 'a cat', '--expansion-search', '64']) == 1  # needs --approximate
    assert '--expansion-search 64: expected a number >= --top-k (10), together with --approximate' in capsys.readouterr().err
    assert search_main([str(out), 'a cat', '--approximate', '--expansion-search', '5']) == 1  # below top-k
    assert '--expansion-search 5: expected' in capsys.readouterr().err
    # another model's export is refused, on update and on search
    other_run, _ = run_folder(tmp_path / 'o', 'stop', None)
    other = load_exported(export_checkpoint(other_run / 'checkpoints' / 'best.pt', tmp_path / 'other'))
    with pytest.raises(IndexFolderError, match='built by another model'):
        index_videos(other, videos, out, progress=False)
    with pytest.raises(IndexFolderError, match='not comparable'):
        index.check_model(other)
    # a damaged manifest / a missing generation file
    (out / 'index.json').write_text('{"format": ')
    with pytest.raises(IndexFolderError, match='not valid JSON'):
        VideoIndex(out)
    assert IndexStore(out).folder.is_dir()


def test_queries_file_rejects_blank_lines(tmp_path):
    from tempme_composer.inference.search_cli import read_queries

    f = tmp_path / 'q.txt'
    f.write_text('a dog\n\na cat\n')
    with pytest.raises(QueryError, match='line.* 2 are blank'):
        read_queries(f)


def test_the_inference_path_does_not_import_composer(tiny_export, tmp_path):
    export = tiny_export
    videos = tmp_path / 'videos'
    write_video(videos / 'a.mp4')
    code = ('import sys; from tempme_composer.inference import load_exported; '
            'from tempme_composer.inference.index import index_videos; '
            'from tempme_composer.inference.search import VideoIndex, search; '
            'm = load_exported(sys.argv[1]); index_videos(m, sys.argv[2], sys.argv[3], progress=False); '
            'search(VideoIndex(sys.argv[3]), m, ["a red square"]); '
            'bad = sorted(k for k in sys.modules if k.split(".")[0] in ("composer", "streaming")); '
            'assert not bad, bad')
    proc = subprocess.run([sys.executable, '-c', code, str(export), str(videos), str(tmp_path / 'index')],
                          env={**os.environ, 'PYTHONPATH': str(REPO)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_model_card_states_the_protocol(tiny_export):
    card = (tiny_export / 'README.md').read_text()
    for phrase in ('selected as the best text→video R@1', 'no re-ranking (no DSL, no QB-Norm)', 'GMAC per video',
                   'random initialisation', 'Training config', "split `test`"):
        assert phrase in card, phrase
    front = card.split('---')[1]
    assert OmegaConf.create(front).library_name == 'tempme-composer'


@pytest.mark.e2e
def test_demo_train_export_index_eval_equals_best_json(demo_run, tmp_path):
    """The demo recipe end to end: train (the session's demo run), export best.pt, index the eval split in
    float32, --eval = best.json."""
    from tempme_composer.inference.html_page import results_page
    from tempme_composer.inference.index import index_mds_split
    from tempme_composer.inference.search import evaluate_index
    from tempme_composer.inference.search_cli import main as search_main

    run = demo_run.run
    best = json.loads((run / 'checkpoints' / 'best.json').read_text())
    model = load_exported(export_checkpoint(run / 'checkpoints' / 'best.pt', tmp_path / 'export'))
    index_mds_split(model, demo_run.data / 'mds' / 'eval', tmp_path / 'index', dtype='float32', progress=False)
    index = VideoIndex(tmp_path / 'index')
    assert evaluate_index(index, model) == best['results']
    caption = index.store.captions(index.manifest)[0]['text']
    (result,) = search(index, model, [caption], top_k=3)
    assert result.ground_truth == [0] and result.ground_truth_rank >= 1
    page = results_page([result], index)
    assert 'ground truth' in page and 'R@1' in page and 'data:image/jpeg;base64,' in page
    assert search_main([str(tmp_path / 'index'), '--eval']) == 0


def test_analysis_page_lists_the_worst_captions_first(tmp_path):
    from tempme_composer.inference.html_page import analysis_page, read_ranks
    from tempme_composer.inference.search_cli import main as search_main

    ranks = tmp_path / 'demo-ep1-ranks.jsonl'
    rows = [{'caption': f'caption {i}', 'video_id': f'v{i}', 'video_index': i, 'caption_index': 0, 'rank': r,
             'top_videos': [f'v{(i + j) % 5}' for j in range(3)]} for i, r in enumerate([1, 7, 2, 30, 1])]
    ranks.write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
    page = analysis_page(read_ranks(ranks), None, worst=2, source=str(ranks))
    assert page.index('caption 3') < page.index('caption 1') and 'caption 2' not in page
    assert 'ranked #30' in page and 'R@1' in page
    out = tmp_path / 'worst.html'
    assert search_main(['--analysis', str(ranks), '--html', str(out)]) == 0 and out.read_text() == \
        analysis_page(read_ranks(ranks), None, worst=20, source=str(ranks))
    ranks.write_text('{"caption": "x"}\n')
    with pytest.raises(ValueError, match='line 1: expected caption, video_id, rank and top_videos'):
        read_ranks(ranks)
