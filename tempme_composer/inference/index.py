"""``tempme-index --model DIR --videos FOLDER --out INDEX``: encode a folder of videos (or an MDS split) once.

Incremental: a re-run encodes only new or changed files (path, size, mtime) and drops deleted ones; batches
are committed as they finish (`tempme_composer.inference.store`), so a crash loses at most the current batch.
A video that cannot be decoded is skipped and listed with its reason, never indexed as zeros.
Symbolic links under ``--videos``: a link to a file is indexed under the link's own path; a link to a folder is
not followed (``os.walk``'s rule: no cycles, nothing outside the folder by accident); a dangling or looping link
is skipped with its reason. One run at a time per index (`IndexStore.writer_lock`).
No Composer import (streaming only to read an MDS split).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tempme_composer.data.frame_layout import StoredFrames
from tempme_composer.data.video import VideoDecodeError
from tempme_composer.inference.exported import ExportedModel, ExportError, load_exported
from tempme_composer.inference.folders import describe_contents, is_inside
from tempme_composer.inference.preprocess import VideoInput, video_from_file, video_from_frames
from tempme_composer.inference.store import DTYPES, MANIFEST, PENDING, IndexError_, IndexStore, PendingBatch
from tempme_composer.inference.terminal import printable

__all__ = ['VIDEO_EXTENSIONS', 'IndexReport', 'index_videos', 'index_mds_split', 'find_videos', 'main']

log = logging.getLogger(__name__)

#: Containers indexed from a folder (searched recursively); ``--all-files`` tries every file instead.
VIDEO_EXTENSIONS = frozenset({
    '.mp4', '.m4v', '.mov', '.avi', '.mkv', '.webm', '.flv', '.wmv', '.mpg', '.mpeg', '.ts', '.m2ts', '.mts',
    '.3gp', '.ogv', '.vob', '.asf', '.divx', '.gif',
})


@dataclass
class IndexReport:
    """What a run did: counts and every skipped video with its reason."""

    indexed: int = 0  # rows in the committed index
    encoded: int = 0  # videos encoded by this run
    reused: int = 0  # unchanged videos kept from the index
    recovered: int = 0  # videos encoded by an interrupted run and committed now
    removed: int = 0  # rows dropped because their file is gone (or changed and re-encoded)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def find_videos(root: Path, all_files: bool = False, exclude: Path | None = None) -> list[Path]:
    """Video files under ``root`` (recursive, hidden files and folders left out, links to folders not followed,
    ``exclude`` — the index being written, when it lies inside ``root`` — left out), sorted."""
    out = []
    skip = exclude.resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.')
                             and (skip is None or (Path(dirpath) / d).resolve() != skip))
        for name in sorted(filenames):
            if name.startswith('.'):
                continue
            if all_files or Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                out.append(Path(dirpath) / name)
    return out


def _row_key(identity: str) -> str:
    return hashlib.sha1(identity.encode('utf-8')).hexdigest()[:20]


class _FileVideos(Dataset):
    """Decodes one video per item in a loader worker; failures come back as a reason, not an exception."""

    def __init__(self, root: Path, items: Sequence[tuple[str, int, int]], model: ExportedModel) -> None:
        self.root, self.items, self.prep = root, list(items), model.preprocessing

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[dict[str, Any], VideoInput | str]:
        rel, size, mtime = self.items[i]
        row = {'path': rel, 'size': size, 'mtime_ns': mtime}
        try:
            return row, video_from_file(self.root / rel, self.prep)
        except VideoDecodeError as e:
            return row, str(e)
        except Exception as e:  # any decoder failure of one file must not stop the run
            return row, f'cannot decode video {str(self.root / rel)!r}: {type(e).__name__}: {e}'


def _collate(items: list[Any]) -> list[Any]:
    return items


def _autocast(model: ExportedModel, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=model.device.type, dtype=torch.bfloat16)


def encode_videos(model: ExportedModel, inputs: Sequence[VideoInput], bf16: bool = False) -> np.ndarray:
    """``[B, D]`` float32 unit vectors for a batch of preprocessed videos."""
    video = torch.stack([x.video for x in inputs]).to(model.device, non_blocking=True)
    mask = torch.stack([x.mask for x in inputs]).to(model.device, non_blocking=True)
    with torch.no_grad(), _autocast(model, bf16):
        return model.model.encode_video(video, mask).float().cpu().numpy()


def encode_texts(model: ExportedModel, ids: torch.Tensor, bf16: bool = False, batch_size: int = 256) -> np.ndarray:
    """``[Q, D]`` float32 unit vectors for token ids ``[Q, L]``."""
    out = []
    with torch.no_grad(), _autocast(model, bf16):
        for s in range(0, len(ids), batch_size):
            out.append(model.model.encode_text(ids[s : s + batch_size].to(model.device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.embed_dim), np.float32)


def _check_model(store: IndexStore, model: ExportedModel, rebuild: bool) -> dict[str, Any] | None:
    """The committed manifest to update (None: start empty); refuses an index of another model."""
    if not store.exists():
        return None
    if rebuild:
        return None  # replaced whole, even when damaged: the commit trusts none of its names
    manifest = store.manifest()
    if manifest['model_hash'] != model.model_hash:
        raise IndexError_(
            f'{store.folder} was built by another model (hash {manifest["model_hash"][:12]}, from '
            f'{manifest.get("model_dir")}) than {model.directory} (hash {model.model_hash[:12]}): embeddings of two '
            'models are not comparable. Use a new --out folder, or --rebuild to replace this index')
    return manifest


def check_index_out(out: Path, source: Path, force: bool) -> None:
    """Refuse an ``--out`` that is a file, holds the input, or is a non-empty folder that is not an index.

    Raises:
        IndexError_: naming what is there and the way through (a new folder, or ``--force``).
    """
    if out.exists() and not out.is_dir():
        raise IndexError_(f'--out {out} is a file, expected an index folder (a new one, or one tempme-index wrote)')
    if is_inside(source, out):
        raise IndexError_(f'--out {out} contains the input {source}: an index is written into its own folder; '
                          'choose an --out folder outside it')
    if force or not out.is_dir() or (out / MANIFEST).is_file() or (out / PENDING).is_dir():
        return
    contents = describe_contents(out)
    if contents:
        raise IndexError_(f'--out {out} exists and is not a video index (it holds {contents}): choose a new folder, '
                          'or add --force to write the index into it')


def _base(model: ExportedModel, source: dict[str, Any]) -> dict[str, Any]:
    return {'model_hash': model.model_hash, 'model_dir': str(model.directory.resolve()), 'source': source,
            'preprocessing': model.config['preprocessing'],
            'evaluation': model.config.get('evaluation', {})}


def _progress(total: int, enabled: bool, what: str):
    from tqdm import tqdm

    return tqdm(total=total, unit='video', desc=what, disable=not enabled, dynamic_ncols=True)


def index_videos(model: ExportedModel, videos: str | os.PathLike, out: str | os.PathLike, *, dtype: str = 'float16',
                 batch_size: int = 16, num_workers: int = 0, bf16: bool = False, all_files: bool = False,
                 rebuild: bool = False, force: bool = False, progress: bool = True) -> IndexReport:
    """Index (or update the index of) every video under ``videos`` into ``out``, holding its writer lock.

    Raises:
        IndexError_: ``out`` belongs to another model, is damaged, is not an index (without ``force``), is
            being updated by another run, or ``videos`` holds no readable video.
    """
    if dtype not in DTYPES:
        raise IndexError_(f'--dtype {dtype!r}: expected one of {", ".join(DTYPES)}')
    root = Path(videos).resolve()
    if not root.is_dir():
        raise IndexError_(f'--videos {videos}: no such folder')
    store = IndexStore(out)
    check_index_out(store.folder, root, force)
    with store.writer_lock():
        return _index_videos(model, root, store, dtype=dtype, batch_size=batch_size, num_workers=num_workers,
                             bf16=bf16, all_files=all_files, rebuild=rebuild, progress=progress)


def _video_files(root: Path, all_files: bool, exclude: Path) -> tuple[dict[str, tuple[int, int]], list[dict[str, Any]]]:
    """``{relative path: (size, mtime_ns)}`` of the videos under ``root``, and the links that lead nowhere."""
    current, broken = {}, []
    for p in find_videos(root, all_files, exclude=exclude):
        rel = str(p.relative_to(root))
        try:
            st = p.stat()
        except OSError as e:  # a dangling or looping symbolic link
            target = os.readlink(p) if p.is_symlink() else None
            why = e.strerror if target is None else f'{e.strerror}: a symbolic link to {target!r} that does not resolve'
            broken.append({'path': rel, 'reason': f'cannot read {str(p)!r} ({why})'})
            continue
        current[rel] = (st.st_size, st.st_mtime_ns)
    return current, broken


def _index_videos(model: ExportedModel, root: Path, store: IndexStore, *, dtype: str, batch_size: int,
                  num_workers: int, bf16: bool, all_files: bool, rebuild: bool, progress: bool) -> IndexReport:
    manifest = _check_model(store, model, rebuild)
    if manifest is not None and manifest['source'].get('kind') != 'videos':
        raise IndexError_(f'{store.folder} indexes an MDS split ({manifest["source"].get("root")}), not a folder of '
                          'videos: use another --out folder')
    if manifest is not None and manifest['dtype'] != dtype:
        raise IndexError_(f'{store.folder} stores {manifest["dtype"]} embeddings; --dtype {dtype} needs --rebuild '
                          'or another --out folder')
    current, broken = _video_files(root, all_files, store.folder)
    report = IndexReport(skipped=list(broken))

    kept_rows, kept_idx = [], []
    if manifest is not None:
        for i, row in enumerate(store.rows(manifest)):
            if current.get(row['path']) == (row['size'], row['mtime_ns']):
                kept_rows.append(row)
                kept_idx.append(i)
            else:
                report.removed += 1
    done = {r['path'] for r in kept_rows}
    pending_rows, pending_emb = [], []
    for batch in store.read_pending(model.embed_dim):  # a crashed run's complete batches: keep what still matches the files
        for row, emb in zip(batch.rows, batch.embeddings, strict=True):
            if row['model_hash'] == model.model_hash and current.get(row['path']) == (row['size'], row['mtime_ns']) \
                    and row['path'] not in done:
                pending_rows.append(row)
                pending_emb.append(emb)
                done.add(row['path'])
    report.recovered = len(pending_rows)
    todo = [(rel, *current[rel]) for rel in sorted(current) if rel not in done]
    report.reused = len(kept_rows)
    if not current and not broken:
        raise IndexError_(f'--videos {root}: no video files found (looked for {", ".join(sorted(VIDEO_EXTENSIONS))} '
                          'recursively; --all-files tries every file)')

    loader = DataLoader(_FileVideos(root, todo, model), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate, pin_memory=model.device.type == 'cuda')
    number = store.next_pending_number()
    with _progress(len(todo), progress, 'indexing') as bar:
        for items in loader:
            ok = [(row, x) for row, x in items if not isinstance(x, str)]
            for row, reason in ((row, x) for row, x in items if isinstance(x, str)):
                report.skipped.append({'path': row['path'], 'reason': reason})
            if ok:
                emb = encode_videos(model, [x for _, x in ok], bf16).astype(dtype)
                rows = []
                for row, x in ok:
                    key = _row_key(row['path'])
                    rows.append({**row, 'key': key, 'duration': round(x.duration, 3), 'frames': x.num_frames,
                                 'used_frames': int(x.mask.sum()), 'warnings': x.warnings,
                                 'thumb': store.write_thumbnail(key, x.thumbnail), 'model_hash': model.model_hash})
                store.write_pending(number, PendingBatch(rows, emb, []))
                number += 1
                pending_rows += rows
                pending_emb.extend(emb)
                report.encoded += len(rows)
            bar.update(len(items))
    if not kept_rows and not pending_rows:
        raise IndexError_(f'--videos {root}: none of the {len(current) + len(broken)} video files could be decoded '
                          f'(first: {report.skipped[0]["path"]}: {report.skipped[0]["reason"]}); nothing was indexed')
    old = store.embeddings(manifest)[kept_idx] if manifest is not None and kept_idx else np.zeros((0, model.embed_dim), dtype)
    new = np.stack(pending_emb).astype(dtype) if pending_emb else np.zeros((0, model.embed_dim), dtype)
    embeddings = np.concatenate([np.asarray(old, dtype=dtype), new])
    committed = store.commit(_base(model, {'kind': 'videos', 'root': str(root)}), embeddings, kept_rows + pending_rows,
                             None, report.skipped)
    report.indexed = committed['count']
    return report


def _mds_samples(split: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    from streaming import LocalDataset

    dataset = LocalDataset(local=str(split))
    for i in range(len(dataset)):
        yield i, dataset[i]


def index_mds_split(model: ExportedModel, split: str | os.PathLike, out: str | os.PathLike, *,
                    dtype: str = 'float16', batch_size: int | None = None, bf16: bool = False, rebuild: bool = False,
                    force: bool = False, progress: bool = True) -> IndexReport:
    """Index every video of a converted MDS split (stored frames, the eval path's preprocessing) with its captions.

    Videos are encoded in the order and batches evaluation uses (``batch_size`` defaults to the run's global
    ``batch_size_val``), so a float32 index reproduces the evaluation's embeddings. The split is re-encoded
    whole when its ``index.json`` changed.
    """
    if dtype not in DTYPES:
        raise IndexError_(f'--dtype {dtype!r}: expected one of {", ".join(DTYPES)}')
    split = Path(split).resolve()
    if not (split / 'index.json').is_file():
        raise IndexError_(f'--mds {split}: not an MDS split folder (no index.json)')
    store = IndexStore(out)
    check_index_out(store.folder, split, force)
    with store.writer_lock():
        return _index_mds_split(model, split, store, dtype=dtype, batch_size=batch_size, bf16=bf16, rebuild=rebuild,
                                progress=progress)


def _index_mds_split(model: ExportedModel, split: Path, store: IndexStore, *, dtype: str, batch_size: int | None,
                     bf16: bool, rebuild: bool, progress: bool) -> IndexReport:
    manifest = _check_model(store, model, rebuild)
    signature = hashlib.sha256((split / 'index.json').read_bytes()).hexdigest()
    batch_size = batch_size or int(model.config.get('evaluation', {}).get('batch_size_val') or 16)
    if manifest is not None and manifest['source'].get('signature') == signature and manifest['dtype'] == dtype \
            and manifest['source'].get('batch_size') == batch_size:
        return IndexReport(indexed=manifest['count'], reused=manifest['count'])
    source = {'kind': 'mds', 'root': str(split), 'signature': signature, 'batch_size': batch_size}
    report = IndexReport()
    rows, embeddings, captions = [], [], []
    paragraph = model.preprocessing.paragraph
    samples = list(_mds_samples(split))
    with _progress(len(samples), progress, 'indexing') as bar:
        for s in range(0, len(samples), batch_size):
            inputs = []
            for i, sample in samples[s : s + batch_size]:
                frames = StoredFrames(sample['frames'], f'{split} sample {i} (video_id {sample["video_id"]!r})')
                texts = sample['captions']
                texts = [texts] if isinstance(texts, str) else list(texts)
                if paragraph:
                    texts = [' '.join(str(t) for t in texts)]
                duration = sample.get('duration') or (len(frames) / float(sample['fps']) if sample.get('fps') else 0.0)
                x = video_from_frames(frames, model.preprocessing, duration=float(duration))
                key = _row_key(f'{split}:{sample["video_id"]}')
                rows.append({'path': str(sample['video_id']), 'video_id': str(sample['video_id']), 'key': key,
                             'sample': i, 'duration': round(x.duration, 3), 'frames': x.num_frames,
                             'used_frames': int(x.mask.sum()), 'thumb': store.write_thumbnail(key, x.thumbnail),
                             'model_hash': model.model_hash})
                captions += [{'row': len(rows) - 1, 'caption_index': k, 'text': str(t)} for k, t in enumerate(texts)]
                inputs.append(x)
            embeddings.append(encode_videos(model, inputs, bf16).astype(dtype))
            report.encoded += len(inputs)
            bar.update(len(inputs))
    committed = store.commit(_base(model, source), np.concatenate(embeddings), rows, captions, [])
    report.indexed = committed['count']
    return report


def print_report(report: IndexReport, out: str) -> None:
    out = printable(out)
    print(f'{out}: {report.indexed} videos indexed ({report.encoded} encoded now, {report.reused} unchanged, '
          f'{report.recovered} recovered from an interrupted run, {report.removed} removed or changed)')
    if report.skipped:
        print(f'skipped {len(report.skipped)} videos that could not be decoded (listed in {out}/skipped.jsonl):')
        for s in report.skipped[:20]:
            print(f'  {printable(s["path"])}: {printable(s["reason"])}')
        if len(report.skipped) > 20:
            print(f'  … and {len(report.skipped) - 20} more')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='tempme-index', description=__doc__.split('\n')[0])
    parser.add_argument('--model', required=True, help='folder written by tempme-export')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--videos', help='folder of videos (searched recursively)')
    source.add_argument('--mds', help='an MDS split folder written by tempme-convert (captions enable --eval)')
    parser.add_argument('--out', required=True, help='index folder (created, or updated incrementally)')
    parser.add_argument('--clip-checkpoint', help='base CLIP file, for a model exported without --full')
    parser.add_argument('--dtype', default='float16', choices=DTYPES, help='stored embeddings (float32: exact)')
    parser.add_argument('--batch-size', type=int, default=None, help='videos per forward (default 16; MDS: the '
                        "run's batch_size_val)")
    parser.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1), help='decoding processes')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--bf16', action='store_true', help='bf16 autocast (GPU)')
    parser.add_argument('--all-files', action='store_true', help='try every file, not only video extensions')
    parser.add_argument('--rebuild', action='store_true', help='replace an index built by another model or dtype, '
                        'or a damaged one')
    parser.add_argument('--force', action='store_true', help='write into an --out folder that exists and is not '
                        'an index (its own thumbs/ and pending/ names may be replaced)')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    try:
        model = load_exported(args.model, args.clip_checkpoint, device=args.device)
        if args.videos:
            report = index_videos(model, args.videos, args.out, dtype=args.dtype, batch_size=args.batch_size or 16,
                                  num_workers=args.workers, bf16=args.bf16, all_files=args.all_files,
                                  rebuild=args.rebuild, force=args.force, progress=not args.no_progress)
        else:
            report = index_mds_split(model, args.mds, args.out, dtype=args.dtype, batch_size=args.batch_size,
                                     bf16=args.bf16, rebuild=args.rebuild, force=args.force,
                                     progress=not args.no_progress)
    except (ExportError, IndexError_) as e:
        print(f'error: {printable(e)}', file=sys.stderr)
        return 1
    except OSError as e:  # a folder we cannot read or write
        print(f'error: {printable(e.filename or "")}: {e.strerror}', file=sys.stderr)
        return 1
    print_report(report, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
