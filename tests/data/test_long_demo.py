"""The long demo (several clips per video, each caption with its [start, end]) and moment evaluation of an
index built from it, end to end: files -> ActivityNet-format conversion -> MDS -> index -> VCMR metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from streaming import LocalDataset

from tempme_composer.clip.tokenizer import tokenize
from tempme_composer.data.format import video_columns
from tempme_composer.data.frame_layout import StoredFrames
from tempme_composer.data.loader import LoaderOptions, build_video_text_dataloader
from tempme_composer.data.synthetic import COLOURS, generate_long_demo_dataset, main
from tempme_composer.inference.exported import ExportedModel, FrameRule, Preprocessing
from tempme_composer.inference.moment_eval import evaluate_moments, format_moment_lines
from tempme_composer.inference.search import VideoIndex
from tempme_composer.inference.store import IndexFolderError, IndexStore

PARAMS = dict(num_train=2, num_eval=4, seed=3, min_clips=3, max_clips=5)
IOUS = ('0.3', '0.5', '0.7')


@pytest.fixture(scope='module')
def long_demo(tmp_path_factory):
    return generate_long_demo_dataset(tmp_path_factory.mktemp('long') / 'ds', **PARAMS)


def _samples(split_dir: Path) -> list[dict]:
    ds = LocalDataset(local=str(split_dir))
    return [ds[i] for i in range(len(ds))]


def _clips(sample: dict) -> list[tuple[float, float, list[str]]]:
    """The sample's clips in order: each distinct [start, end] with the captions that carry it."""
    clips: list[tuple[float, float, list[str]]] = []
    for text, (start, end) in zip(sample['captions'], sample['timestamps'], strict=True):
        if clips and clips[-1][:2] == (start, end):
            clips[-1][2].append(text)
        else:
            clips.append((start, end, [text]))
    return clips


def _dominant_colour(frame: np.ndarray) -> str:
    """The demo colour most pixels of ``frame`` are close to (the moving shape; the background is grey)."""
    pixels = frame.reshape(-1, 3).astype(np.float64)
    near = {name: int((np.linalg.norm(pixels - np.asarray(rgb), axis=1) < 60).sum()) for name, rgb in COLOURS.items()}
    return max(near, key=near.get)


def test_long_split_reads_back_with_captions_and_timestamps(long_demo):
    notes = json.loads((long_demo.annotations_dir / 'val_1.json').read_text())
    samples = _samples(long_demo.eval_dir)
    assert [s['video_id'] for s in samples] == sorted(notes) == [f'long_val_{i:05d}' for i in range(4)]
    meta = json.loads((long_demo.eval_dir / 'tempme_dataset.json').read_text())
    assert meta['dataset'] == 'activitynet' and meta['kind'] == 'videos' and meta['split'] == 'val_1'
    assert meta['columns'] == video_columns('jpeg') and meta['settings']['fps'] == 4.0
    pairs = LocalDataset(local=str(long_demo.mds_dir / 'val_1_pairs'))
    assert len(pairs) == sum(len(s['captions']) for s in samples)
    canonical = []
    for sample in samples:
        note = notes[sample['video_id']]
        assert sample['captions'] == note['sentences'] and sample['timestamps'] == note['timestamps']
        assert sample['duration'] == pytest.approx(note['duration']) and sample['fps'] == 4.0
        frames = StoredFrames(sample['frames'], sample['video_id'])
        assert sample['num_frames'] == len(frames) == math.ceil(note['duration'] * 4)
        clips = _clips(sample)
        assert 3 <= len(clips) <= 5 and clips[0][0] == 0.0 and clips[-1][1] == note['duration']
        for (start, end, texts), following in zip(clips, clips[1:] + [None], strict=True):
            assert 12 / 8 <= end - start <= 24 / 8 and len(texts) == 2 and len(set(texts)) == 2
            assert following is None or following[0] == end  # clips follow each other without a gap
            words = texts[0].split()  # the canonical caption: "a[n] <colour> <shape> moves <direction>"
            assert words[3] == 'moves' and words[1] in COLOURS
            canonical.append(texts[0])
            # the stored frame at the clip's middle shows the clip's colour: the timestamps fit the pixels
            middle = np.asarray(frames[int((start + end) / 2 * sample['fps'])].convert('RGB'))
            assert _dominant_colour(middle) == words[1], (sample['video_id'], start, texts[0])
    assert len(canonical) == len(set(canonical))  # <= 72 clips: no class twice in the split


def test_the_recipe_loader_reads_the_long_split(long_demo):
    spec = build_video_text_dataloader(LoaderOptions(local=str(long_demo.eval_dir), batch_size=2, train=False, max_frames=8,
                                       image_resolution=32, max_words=32, num_workers=0))
    batches = list(spec.dataloader)
    texts = sum(int(b['text_ids'].shape[0]) for b in batches)
    assert texts == sum(len(s['captions']) for s in _samples(long_demo.eval_dir))


def test_long_demo_is_deterministic_reused_and_guarded(tmp_path, long_demo):
    again = generate_long_demo_dataset(tmp_path / 'a', **PARAMS)
    for rel in ('annotations/val_1.json', 'annotations/train.json', 'mds/val_1/shard.00000.mds',
                'mds/train/shard.00000.mds', 'mds/val_1_pairs/shard.00000.mds', 'videos/val_1/long_val_00002.mp4'):
        assert (again.root / rel).read_bytes() == (long_demo.root / rel).read_bytes(), rel
    other = generate_long_demo_dataset(tmp_path / 'b', **{**PARAMS, 'seed': 4})
    assert (other.annotations_dir / 'val_1.json').read_bytes() != (long_demo.annotations_dir / 'val_1.json').read_bytes()
    assert generate_long_demo_dataset(tmp_path / 'a', **PARAMS).reused
    with pytest.raises(ValueError, match='overwrite'):
        generate_long_demo_dataset(tmp_path / 'a', **{**PARAMS, 'seed': 9})
    (tmp_path / 'foreign').mkdir()
    (tmp_path / 'foreign' / 'keep.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='foreign'):
        generate_long_demo_dataset(tmp_path / 'foreign', **PARAMS, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no temporary folders left


def test_long_demo_cli(tmp_path, capsys):
    main(['--long', '--out', str(tmp_path / 'cli'), '--num-train', '1', '--num-eval', '1', '--min-clips', '3',
          '--max-clips', '3', '--captions-per-clip', '1'])
    printed = json.loads(capsys.readouterr().out)
    assert printed['eval_dir'].endswith('mds/val_1') and Path(printed['eval_dir'], 'index.json').is_file()
    (sample,) = _samples(Path(printed['eval_dir']))
    assert len(sample['captions']) == len(_clips(sample)) == 3


# ------------------------------------------------------------------------------------------------------------
# evaluate_moments on an index of the long split
# ------------------------------------------------------------------------------------------------------------


class _CaptionTable(torch.nn.Module):
    """A text encoder that knows the split's captions: the one-hot vector of the clip a caption describes."""

    def __init__(self, clip_of: dict[str, int], dim: int, max_words: int) -> None:
        super().__init__()
        ids, _ = tokenize(list(clip_of), max_words)
        self.table = {tuple(row): clip for row, clip in zip(ids.tolist(), clip_of.values(), strict=True)}
        self.dim = dim
        self.clip = torch.nn.Module()
        self.clip.logit_scale = torch.nn.Parameter(torch.zeros(()))  # ExportedModel.device reads it

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(ids), self.dim)
        for i, row in enumerate(ids.tolist()):
            out[i, self.table[tuple(row)]] = 1.0
        return out


def _table_model(samples: list[dict], tmp_path: Path) -> tuple[ExportedModel, int]:
    clip_of, n = {}, 0
    for sample in samples:
        for _, _, texts in _clips(sample):
            clip_of.update({t: n for t in texts})
            n += 1
    prep = Preprocessing(max_frames=8, max_words=32, slice_framepos=2, image_resolution=32,
                         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), frames=FrameRule(fps=4.0, short_side=None))
    return ExportedModel(_CaptionTable(clip_of, n, 32), prep, {}, 'caption-table', tmp_path), n


def _moment_index(folder: Path, model: ExportedModel, split: Path, samples: list[dict], dim: int, *,
                  shift: float = 0.0, permute: int | None = None, timestamps: str = 'pairs',
                  captions: bool = True) -> VideoIndex:
    """An index of the split whose rows are moments: per video, the whole video, each clip (moved by ``shift``
    of its length; embedding: that clip's one-hot) and each window from one clip's middle to the next one's
    (half of each neighbour). ``permute``: shuffle the embeddings over the rows with that seed."""
    rows, vectors, caps, clip = [], [], [], 0
    for i, sample in enumerate(samples):
        vid, clips, first = sample['video_id'], _clips(sample), len(rows)
        one_hots = np.eye(dim, dtype=np.float32)[clip : clip + len(clips)]
        moments = [(0.0, float(sample['duration']), one_hots.sum(0))]
        for j, (start, end, _) in enumerate(clips):
            moments.append((start + shift * (end - start), end + shift * (end - start), one_hots[j]))
            if j + 1 < len(clips):
                nxt = clips[j + 1]
                moments.append(((start + end) / 2, (nxt[0] + nxt[1]) / 2, one_hots[j] + one_hots[j + 1]))
        for k, (start, end, vector) in enumerate(moments):
            rows.append({'path': vid, 'video_id': vid, 'key': f'k{i}x{k}', 'sample': i, 'start': start, 'end': end,
                         'moment': k, 'duration': float(sample['duration'])})
            vectors.append(vector / np.linalg.norm(vector))
        for n, (text, pair) in enumerate(zip(sample['captions'], sample['timestamps'], strict=True)):
            stamp = {'pairs': [pair], 'flat': pair, 'none': None}[timestamps]
            caps.append({'row': first, 'video_id': vid, 'caption_index': n, 'text': text, 'timestamps': stamp})
        clip += len(clips)
    embeddings = np.stack(vectors)
    if permute is not None:
        embeddings = embeddings[np.random.default_rng(permute).permutation(len(embeddings))]
    base = {'model_hash': model.model_hash, 'model_dir': str(model.directory), 'preprocessing': {},
            'source': {'kind': 'mds', 'root': str(split)}, 'evaluation': {}}
    folder.mkdir()
    IndexStore(folder).commit(base, embeddings, rows, caps if captions else None, [])
    return VideoIndex(folder)


def _at_1(results: dict[str, float]) -> list[float]:
    return [results[f'moment_R@1_tIoU{m}'] for m in IOUS] + [results['video_R@1']]


def test_perfect_moment_embeddings_score_100_and_shuffled_ones_do_not(long_demo, tmp_path):
    samples = _samples(long_demo.eval_dir)
    model, clips = _table_model(samples, tmp_path)
    num_captions = sum(len(s['captions']) for s in samples)

    perfect = evaluate_moments(_moment_index(tmp_path / 'perfect', model, long_demo.eval_dir, samples, clips), model)
    assert all(perfect[f'moment_R@{k}_tIoU{m}'] == 100.0 for k in (1, 5, 10) for m in IOUS)
    assert perfect['video_R@1'] == 100.0
    assert perfect['num_captions'] == num_captions and perfect['num_videos'] == 4
    assert perfect['num_moments'] == sum(2 * len(_clips(s)) for s in samples)  # whole + clips + (clips - 1)
    assert perfect['num_captions_without_timestamps'] == 0

    # The same embeddings on moments moved by a quarter of their length: tIoU 0.75 / 1.25 = 0.6 with the
    # truth; no other row reaches 0.7 (the windows stay below 0.5, the whole video at or below 0.5).
    moved = evaluate_moments(_moment_index(tmp_path / 'moved', model, long_demo.eval_dir, samples, clips,
                                           shift=0.25), model)
    assert _at_1(moved) == [100.0, 100.0, 0.0, 100.0] and moved['moment_R@10_tIoU0.7'] == 0.0

    shuffled = evaluate_moments(_moment_index(tmp_path / 'shuffled', model, long_demo.eval_dir, samples, clips,
                                              permute=0), model)
    assert all(value < 50.0 for value in _at_1(shuffled)), _at_1(shuffled)

    # A caption stored with one flat [start, end] (an ActivityNet sample's form) reads the same.
    flat = evaluate_moments(_moment_index(tmp_path / 'flat', model, long_demo.eval_dir, samples, clips,
                                          timestamps='flat'), model)
    assert flat == perfect
    lines = format_moment_lines(perfect)
    assert lines[0] == ('Moments: R@1/5/10 at tIoU 0.3: 100.0/100.0/100.0 | 0.5: 100.0/100.0/100.0 | '
                        '0.7: 100.0/100.0/100.0')
    assert lines[1].startswith('Videos: R@1/5/10 100.0/100.0/100.0')
    assert f'{num_captions} captions against' in lines[2] and 'ties count against' in lines[2]


def test_an_index_without_captions_or_timestamps_is_refused(long_demo, tmp_path):
    samples = _samples(long_demo.eval_dir)
    model, clips = _table_model(samples, tmp_path)
    bare = _moment_index(tmp_path / 'bare', model, long_demo.eval_dir, samples, clips, captions=False)
    with pytest.raises(IndexFolderError, match='has no captions'):
        evaluate_moments(bare, model)
    undated = _moment_index(tmp_path / 'undated', model, long_demo.eval_dir, samples, clips, timestamps='none')
    with pytest.raises(IndexFolderError, match=r'none of the \d+ captions .* has \[start, end\] timestamps'):
        evaluate_moments(undated, model)
    other = ExportedModel(model.model, model.preprocessing, {}, 'another-model', tmp_path)
    with pytest.raises(IndexFolderError, match='not comparable'):
        evaluate_moments(VideoIndex(tmp_path / 'undated'), other)


def test_evaluate_moments_with_a_real_exported_model(long_demo, tiny_export, tmp_path):
    """The real tokenizer and text tower of a (random, tiny) exported model; moments embedded at random."""
    from tempme_composer.inference import load_exported

    model = load_exported(tiny_export)
    samples = _samples(long_demo.eval_dir)
    index = _moment_index(tmp_path / 'index', model, long_demo.eval_dir, samples, sum(len(_clips(s)) for s in samples))
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((len(index.rows), model.embed_dim)).astype(np.float16)
    base = {k: index.manifest[k] for k in ('model_hash', 'model_dir', 'preprocessing', 'source', 'evaluation')}
    index.store.commit(base, vectors, index.rows, index.store.captions(index.manifest), [])
    results = evaluate_moments(VideoIndex(index.folder), model)
    assert results['num_captions'] == sum(len(s['captions']) for s in samples)
    assert all(0.0 <= results[f'moment_R@{k}_tIoU{m}'] <= results[f'moment_R@{k}_tIoU0.3'] <= 100.0
               for k in (1, 5, 10) for m in IOUS)
    assert results['video_R@1'] <= results['video_R@5'] <= results['video_R@10'] <= 100.0


def test_eval_moments_of_a_folder_index_with_an_annotations_file(long_demo, tiny_export, tmp_path, capsys):
    """`tempme-index --videos … --window` then `tempme-search --eval-moments --annotations FILE`: the captions
    and time ranges come from the ActivityNet-style file, matched to the indexed files by name."""
    from tempme_composer.inference.index import main as index_main
    from tempme_composer.inference.search_cli import main as search_main

    export = tiny_export
    videos, annotations = long_demo.videos_dir / 'val_1', long_demo.annotations_dir / 'val_1.json'
    index = tmp_path / 'index'
    assert index_main(['--model', str(export), '--videos', str(videos), '--out', str(index), '--window',
                       '--no-progress', '--workers', '0']) == 0
    capsys.readouterr()
    assert search_main([str(index), '--eval-moments', '--annotations', str(annotations), '--json']) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith('Moments: R@1/5/10 at tIoU 0.3: ')
    results = json.loads(printed[-1])
    want = sum(len(v['sentences']) for v in json.loads(annotations.read_text()).values())
    assert results['num_captions'] == want and results['num_videos'] == PARAMS['num_eval']
    assert results['num_moments'] > PARAMS['num_eval']  # several windows per long video
    other = tmp_path / 'other.json'
    other.write_text(json.dumps({'elsewhere': {'timestamps': [[0, 1]], 'sentences': ['a red circle']}}))
    assert search_main([str(index), '--eval-moments', '--annotations', str(other)]) == 1
    assert 'none of its 1 videos is in the index' in capsys.readouterr().err
    assert search_main([str(index), '--eval-moments', '--annotations', str(tmp_path / 'missing.json')]) == 1
    assert 'missing.json: cannot read it as JSON' in capsys.readouterr().err
    assert search_main([str(index), '--eval', '--annotations', str(annotations)]) == 1
    assert '--annotations goes with --eval-moments' in capsys.readouterr().err
