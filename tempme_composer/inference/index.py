"""``tempme-index --model DIR --videos FOLDER --out INDEX``: encode a folder of videos (or an MDS split) once.

Each video is one row, or with ``--window [SECONDS]`` (``--stride``, ``--segments windows|shots``) a row per
moment: overlapping windows, or shots split into windows (`tempme_composer.inference.moments`), decoded in
one pass that holds only the frames of the windows still open.

Incremental: a re-run encodes only new or changed files (path, size, mtime) and drops deleted ones (a changed
or deleted video takes all its moments with it); batches are committed as they finish
(`tempme_composer.inference.store`), so a crash loses at most the current batch (with moments: the videos not
yet encoded whole, as a pending batch holds complete videos only).
A video that cannot be decoded is skipped and listed with its reason, never indexed as zeros.
Symbolic links under ``--videos``: a link to a file is indexed under the link's own path; a link to a folder is
not followed (``os.walk``'s rule: no cycles, nothing outside the folder by accident); a dangling or looping link
is skipped with its reason. One run at a time per index (`IndexStore.writer_lock`).
No Composer import (streaming only to read an MDS split).

Several processes, or machines, with a launcher (``--videos`` and ``--out`` at the same path on every machine,
on a filesystem they all share)::

    torchrun --nproc-per-node 4 -m tempme_composer.inference.index --model M --videos V --out I [--window ...]
    composer -n 4 -m tempme_composer.inference.index --model M --videos V --out I
    # two machines, 8 GPUs each: the same command on both, --node-rank 0 and 1
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --master-port 29500 --nproc-per-node 8 \\
        -m tempme_composer.inference.index --model M --videos V --out I
    composer --world_size 16 --node_rank 0 --master_addr HOST --master_port 29500 -n 8 \\
        -m tempme_composer.inference.index --model M --videos V --out I

(``$(which tempme-index)`` in place of ``-m tempme_composer.inference.index`` works too: both launchers run it
as a Python script.) When the launcher's environment says ``WORLD_SIZE`` > 1, the ranks join a
process group (gloo; NCCL when the device is CUDA, each rank on ``cuda:LOCAL_RANK``). Rank 0 takes the writer
lock and decides what to encode before any rank writes; the files still to encode are split among the ranks by
size; each rank writes its batches to ``pending/`` under numbers of its own; rank 0 then reads them all and
commits one index, the one a single process writes (same rows in the same order, same embeddings up to float
rounding across batch compositions: bit for bit with ``--batch-size 1``), the skipped videos of every rank
listed once. Rank 0 alone prints the report; an error on any rank (the lock, the index, the model) stops
every rank with the same line. A rank that dies makes the others fail within ``--dist-timeout`` minutes (on
CPU at once), and the next run recovers the batches written so far. ``--mds`` runs in one process only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import heapq
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from tempme_composer.data.frame_layout import StoredFrames
from tempme_composer.data.video import VideoDecodeError
from tempme_composer.data.video_files import VIDEO_EXTENSIONS, video_file_stats
from tempme_composer.extras import reports_missing_extras, require_extra
from tempme_composer.inference.exported import ExportedModel, ExportError, Preprocessing, load_exported
from tempme_composer.inference.folders import describe_contents, is_inside
from tempme_composer.inference.moments import (
    MODES,
    Moment,
    MomentSettings,
    VideoEnd,
    detect_cuts,
    file_moments,
    moment_settings,
    moments_of,
    require_shot_detection,
    stored_moments,
)
from tempme_composer.inference.preprocess import VideoInput, video_from_file, video_from_frames
from tempme_composer.inference.store import (
    DTYPES,
    LOCK,
    MANIFEST,
    PENDING,
    IndexFolderError,
    IndexStore,
    PendingBatch,
)
from tempme_composer.inference.terminal import printable
from tempme_composer.model import UnifiedModel

__all__ = ['IndexReport', 'index_videos', 'index_videos_distributed', 'index_mds_split', 'World', 'launched_world',
           'main']

log = logging.getLogger(__name__)
_T = TypeVar('_T')

#: Pending rows carry the moment settings they were made with (dropped at commit), so that a run with other
#: settings never takes over an interrupted run's rows.
_PENDING_TAG = 'moments'
#: A run on several ranks tags its pending rows with its own id (dropped at commit): rank 0 tells the rows the
#: ranks encoded now from an interrupted run's batches still in ``pending/``.
_RUN_TAG = 'run'
#: How long rank 0 looks for the other ranks' batches before it says they are not in ``--out``.
_LATE_FILES_S = 90.0


@dataclass
class IndexReport:
    """What a run did: counts and every skipped video with its reason."""

    indexed: int = 0  # rows in the committed index (one per video, or one per moment)
    encoded: int = 0  # videos encoded by this run
    reused: int = 0  # unchanged videos kept from the index
    recovered: int = 0  # videos encoded by an interrupted run and committed now
    removed: int = 0  # videos dropped because their file is gone (or changed and re-encoded)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    videos: int = 0  # videos in the committed index
    mode: str = 'whole'  # how videos were cut into rows (`moments.MODES`)


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


class _FileMoments(IterableDataset):
    """Streams each video's moments (one decoding pass in a loader worker), then its `VideoEnd`; a video that
    cannot be decoded or cut into shots comes back as its reason instead, after any moments it gave."""

    def __init__(self, root: Path, items: Sequence[tuple[str, int, int]], prep: Preprocessing,
                 settings: MomentSettings) -> None:
        self.root, self.items, self.prep, self.settings = root, list(items), prep, settings

    def __iter__(self) -> Iterator[tuple[dict[str, Any], Moment | VideoEnd | str]]:
        info = get_worker_info()
        mine = self.items if info is None else self.items[info.id :: info.num_workers]
        for rel, size, mtime in mine:
            yield from self._video({'path': rel, 'size': size, 'mtime_ns': mtime})

    def _video(self, row: dict[str, Any]) -> Iterator[tuple[dict[str, Any], Moment | VideoEnd | str]]:
        path = self.root / row['path']
        try:
            cuts = detect_cuts(path) if self.settings.mode == 'shots' else ()
        except Exception as e:  # PySceneDetect's reader failing on one file must not stop the run
            yield row, f'cannot detect the shots of {str(path)!r}: {type(e).__name__}: {e}'
            return
        try:
            for item in file_moments(path, self.prep, self.settings, cuts=cuts):
                yield row, item
        except VideoDecodeError as e:
            yield row, str(e)
        except Exception as e:  # any decoder failure of one file must not stop the run
            yield row, f'cannot decode video {str(path)!r}: {type(e).__name__}: {e}'


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
    """``[Q, D]`` float32 unit vectors for token ids ``[Q, L]``, each batch's padding cut where that is exact
    (`text_padding`: the same bits as the untrimmed forward, at a fraction of its cost for short queries). The cut
    is shown exact for the CLIP text tower of a ``UnifiedModel`` only: any other text encoder gets its ids whole."""
    from tempme_composer.inference.text_padding import trim_block, trimmed_ids

    block = None
    if not bf16 and isinstance(model.model, UnifiedModel):
        dtype = next(model.model.parameters()).dtype
        block = trim_block(model.device, dtype, prompted=model.model.stop is not None)
    out = []
    with torch.inference_mode(), _autocast(model, bf16):
        for s in range(0, len(ids), batch_size):
            batch = trimmed_ids(ids[s : s + batch_size], block)
            out.append(model.model.encode_text(batch.to(model.device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.embed_dim), np.float32)


def _check_moments(store: IndexStore, manifest: dict[str, Any] | None, settings: MomentSettings) -> None:
    """Refuse to update an index whose rows were cut into moments another way (rows of two settings would mix)."""
    if manifest is None or moments_of(manifest) == settings.record():
        return
    built = MomentSettings.from_record(moments_of(manifest))
    raise IndexFolderError(f'{store.folder} was indexed as {built.describe()}; this run asks for {settings.describe()}: '
                      'use --rebuild to re-encode it that way, or another --out folder (or the same '
                      '--segments/--window/--stride as before)')


def _check_model(store: IndexStore, model: ExportedModel, rebuild: bool) -> dict[str, Any] | None:
    """The committed manifest to update (None: start empty); refuses an index of another model."""
    if not store.exists():
        return None
    if rebuild:
        return None  # replaced whole, even when damaged: the commit trusts none of its names
    manifest = store.manifest()
    if manifest['model_hash'] != model.model_hash:
        raise IndexFolderError(
            f'{store.folder} was built by another model (hash {manifest["model_hash"][:12]}, from '
            f'{manifest.get("model_dir")}) than {model.directory} (hash {model.model_hash[:12]}): embeddings of two '
            'models are not comparable. Use a new --out folder, or --rebuild to replace this index')
    return manifest


def check_index_out(out: Path, source: Path, force: bool) -> None:
    """Refuse an ``--out`` that is a file, holds the input, or is a non-empty folder that is not an index.

    Raises:
        IndexFolderError: naming what is there and the way through (a new folder, or ``--force``).
    """
    if out.exists() and not out.is_dir():
        raise IndexFolderError(f'--out {out} is a file, expected an index folder (a new one, or one tempme-index wrote)')
    if is_inside(source, out):
        raise IndexFolderError(f'--out {out} contains the input {source}: an index is written into its own folder; '
                          'choose an --out folder outside it')
    # an index, or the folder of a first run still encoding (its lock file is there before anything else)
    if force or not out.is_dir() or any((out / name).exists() for name in (MANIFEST, PENDING, LOCK)):
        return
    if os.listdir(out):
        contents = describe_contents(out)
        raise IndexFolderError(f'--out {out} exists and is not a video index (it holds {contents}): choose a new folder, '
                          'or add --force to write the index into it')


def _base(model: ExportedModel, source: dict[str, Any], settings: MomentSettings) -> dict[str, Any]:
    return {'model_hash': model.model_hash, 'model_dir': str(model.directory.resolve()), 'source': source,
            'preprocessing': model.config['preprocessing'],
            'evaluation': model.config.get('evaluation', {}), 'moments': settings.record()}


def _committed(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the index stores it: whole-video rows of an index written before moments existed gain their
    span (0 to the duration, moment 0); the pending tags are dropped."""
    out = {k: v for k, v in row.items() if k not in (_PENDING_TAG, _RUN_TAG)}
    if 'moment' not in out:
        out.update(start=0.0, end=out.get('duration'), moment=0)
    return out


def _settings(model: ExportedModel, segments: str | None, window: float | None,
              stride: float | None) -> MomentSettings:
    settings = moment_settings(model.preprocessing, segments=segments, window=window, stride=stride)
    if settings.mode == 'shots':
        require_shot_detection()
    return settings


def _progress(total: int | None, enabled: bool, what: str):
    from tqdm import tqdm

    return tqdm(total=total, unit='video', desc=what, disable=not enabled, dynamic_ncols=True)


def index_videos(model: ExportedModel, videos: str | os.PathLike, out: str | os.PathLike, *, dtype: str = 'float16',
                 batch_size: int = 16, num_workers: int = 0, bf16: bool = False, all_files: bool = False,
                 rebuild: bool = False, force: bool = False, progress: bool = True, segments: str | None = None,
                 window: float | None = None, stride: float | None = None) -> IndexReport:
    """Index (or update the index of) every video under ``videos`` into ``out``, holding its writer lock.

    ``segments`` / ``window`` / ``stride`` (seconds): cut each video into moments (`moments.moment_settings`;
    none of them: one row per video). ``batch_size`` counts moments per forward then.

    Raises:
        IndexFolderError: a bad ``segments``/``window``/``stride``; ``out`` belongs to another model, was cut into
            moments another way, is damaged, is not an index (without ``force``), is being updated by another
            run, or ``videos`` holds no readable video.
    """
    settings, root = _checked_args(model, videos, dtype, segments, window, stride)
    store = IndexStore(out)
    check_index_out(store.folder, root, force)
    with store.writer_lock():
        return _index_videos(model, root, store, settings, dtype=dtype, batch_size=batch_size,
                             num_workers=num_workers, bf16=bf16, all_files=all_files, rebuild=rebuild,
                             progress=progress)


def _checked_args(model: ExportedModel, videos: str | os.PathLike, dtype: str, segments: str | None,
                  window: float | None, stride: float | None) -> tuple[MomentSettings, Path]:
    """The run's moment settings and its resolved ``--videos`` folder; an error names the flag."""
    if dtype not in DTYPES:
        raise IndexFolderError(f'--dtype {dtype!r}: expected one of {", ".join(DTYPES)}')
    settings = _settings(model, segments, window, stride)
    root = Path(videos).resolve()
    if not root.is_dir():
        raise IndexFolderError(f'--videos {videos}: no such folder')
    return settings, root


def _kept_rows(store: IndexStore, manifest: dict[str, Any] | None,
               current: dict[str, tuple[int, int]]) -> tuple[list[dict[str, Any]], list[int], int]:
    """The committed rows of unchanged videos (every moment of each), their positions, and how many videos
    were dropped (gone, or changed: all their moments go)."""
    if manifest is None:
        return [], [], 0
    rows, positions, dropped = [], [], set()
    for i, row in enumerate(store.rows(manifest)):
        if current.get(row['path']) == (row['size'], row['mtime_ns']):
            rows.append(row)
            positions.append(i)
        else:
            dropped.add(row['path'])
    return rows, positions, len(dropped)


def _recover_pending(store: IndexStore, model: ExportedModel, current: dict[str, tuple[int, int]], done: set[str],
                     settings: MomentSettings) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """A crashed run's complete batches: the videos (all their rows) that still match their files, this model
    and these moment settings, and are not in ``done``."""
    whole = MomentSettings().record()
    rows, embeddings, taken = [], [], set(done)
    for batch in store.read_pending(model.embed_dim):
        by_path: dict[str, list[int]] = {}
        for n, row in enumerate(batch.rows):
            by_path.setdefault(row['path'], []).append(n)
        for path, ns in by_path.items():
            group = [batch.rows[n] for n in ns]
            if path in taken or not all(
                    r['model_hash'] == model.model_hash and current.get(path) == (r['size'], r['mtime_ns'])
                    and r.get(_PENDING_TAG, whole) == settings.record() for r in group):
                continue
            rows += group
            embeddings += [batch.embeddings[n] for n in ns]
            taken.add(path)
    return rows, embeddings


@dataclass
class _Plan:
    """What a run on a folder does, decided under the writer lock before anything is encoded: the rows it
    keeps, the interrupted run's rows it recovers, and the files still to encode (sorted by path)."""

    root: Path
    manifest: dict[str, Any] | None
    current: dict[str, tuple[int, int]]
    kept_rows: list[dict[str, Any]]
    kept_idx: list[int]
    recovered_rows: list[dict[str, Any]]
    recovered_emb: list[np.ndarray]
    todo: list[tuple[str, int, int]]
    report: IndexReport
    broken: int  # links under the folder that lead nowhere (skipped before any decoding)


def _plan_videos(model: ExportedModel, root: Path, store: IndexStore, settings: MomentSettings, *, dtype: str,
                 all_files: bool, rebuild: bool) -> _Plan:
    """Check the index against this run, then split the folder's videos into kept, recovered and to encode."""
    manifest = _check_model(store, model, rebuild)
    if manifest is not None and manifest['source'].get('kind') != 'videos':
        raise IndexFolderError(f'{store.folder} indexes an MDS split ({manifest["source"].get("root")}), not a folder of '
                          'videos: use another --out folder')
    if manifest is not None and manifest['dtype'] != dtype:
        raise IndexFolderError(f'{store.folder} stores {manifest["dtype"]} embeddings; --dtype {dtype} needs --rebuild '
                          'or another --out folder')
    _check_moments(store, manifest, settings)
    current, broken = video_file_stats(root, all_files, store.folder)
    report = IndexReport(skipped=list(broken), mode=settings.mode)

    kept_rows, kept_idx, report.removed = _kept_rows(store, manifest, current)
    done = {r['path'] for r in kept_rows}
    pending_rows, pending_emb = _recover_pending(store, model, current, done, settings)
    recovered = {r['path'] for r in pending_rows}
    report.recovered, report.reused = len(recovered), len(done)
    todo = [(rel, *current[rel]) for rel in sorted(current) if rel not in done and rel not in recovered]
    if not current and not broken:
        raise IndexFolderError(f'--videos {root}: no video files found (looked for {", ".join(sorted(VIDEO_EXTENSIONS))} '
                          'recursively; --all-files tries every file)')
    return _Plan(root, manifest, current, kept_rows, kept_idx, pending_rows, pending_emb, todo, report,
                 len(broken))


def _encode_todo(model: ExportedModel, root: Path, store: IndexStore, todo: list[tuple[str, int, int]],
                 settings: MomentSettings, report: IndexReport, numbers: Iterator[int], run: str | None = None, *,
                 dtype: str, batch_size: int, num_workers: int, bf16: bool,
                 progress: bool) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Encode ``todo`` (whole files or moments) into pending batches numbered from ``numbers``; the rows come
    back in `_new_row_order`. ``run`` tags the pending rows so that the run's own batches can be told apart."""
    tags = {_PENDING_TAG: settings.record(), **({_RUN_TAG: run} if run is not None else {})}
    encode = _encode_moment_files if settings.segmented else _encode_whole_files
    return encode(model, root, store, todo, settings, report, numbers, tags, dtype=dtype, batch_size=batch_size,
                  num_workers=num_workers, bf16=bf16, progress=progress)


def _new_row_order(todo: Sequence[tuple[str, int, int]], rows: Sequence[dict[str, Any]]) -> list[int]:
    """Positions of newly encoded ``rows`` in index order: their file's place in ``todo``, then the moment
    (loader workers and ranks finish videos in any order; the index does not depend on it)."""
    place = {rel: n for n, (rel, _, _) in enumerate(todo)}
    return sorted(range(len(rows)), key=lambda n: (place[rows[n]['path']], rows[n]['moment']))


def _commit_videos(model: ExportedModel, plan: _Plan, store: IndexStore, settings: MomentSettings, *, dtype: str,
                   rows: list[dict[str, Any]], embeddings: list[np.ndarray]) -> IndexReport:
    """Commit the kept rows, then the recovered ones, then ``rows`` (the new ones, in `_new_row_order`)."""
    report, root, manifest = plan.report, plan.root, plan.manifest
    pending_rows, pending_emb = plan.recovered_rows + rows, plan.recovered_emb + embeddings
    if not plan.kept_rows and not pending_rows:
        raise IndexFolderError(f'--videos {root}: none of the {len(plan.current) + plan.broken} video files could be '
                          f'decoded (first: {report.skipped[0]["path"]}: {report.skipped[0]["reason"]}); nothing was '
                          'indexed')
    old = store.embeddings(manifest)[plan.kept_idx] if manifest is not None and plan.kept_idx \
        else np.zeros((0, model.embed_dim), dtype)
    new = np.stack(pending_emb).astype(dtype) if pending_emb else np.zeros((0, model.embed_dim), dtype)
    embeddings_all = np.concatenate([np.asarray(old, dtype=dtype), new])
    committed_rows = [_committed(r) for r in plan.kept_rows + pending_rows]
    committed = store.commit(_base(model, {'kind': 'videos', 'root': str(root)}, settings), embeddings_all,
                             committed_rows, None, report.skipped)
    report.indexed, report.videos = committed['count'], len({r['path'] for r in committed_rows})
    return report


def _index_videos(model: ExportedModel, root: Path, store: IndexStore, settings: MomentSettings, *, dtype: str,
                  batch_size: int, num_workers: int, bf16: bool, all_files: bool, rebuild: bool,
                  progress: bool) -> IndexReport:
    plan = _plan_videos(model, root, store, settings, dtype=dtype, all_files=all_files, rebuild=rebuild)
    rows, emb = _encode_todo(model, root, store, plan.todo, settings, plan.report, store.pending_numbers(),
                             dtype=dtype, batch_size=batch_size, num_workers=num_workers, bf16=bf16, progress=progress)
    return _commit_videos(model, plan, store, settings, dtype=dtype, rows=rows, embeddings=emb)


def _encode_whole_files(model: ExportedModel, root: Path, store: IndexStore, todo: list[tuple[str, int, int]],
                        settings: MomentSettings, report: IndexReport, numbers: Iterator[int], tags: dict[str, Any], *,
                        dtype: str, batch_size: int, num_workers: int, bf16: bool,
                        progress: bool) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """One row per video: ``batch_size`` videos decoded in the loader's workers, encoded per forward and
    written as a pending batch (numbered from ``numbers``, rows carrying ``tags``)."""
    loader = DataLoader(_FileVideos(root, todo, model), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate, pin_memory=model.device.type == 'cuda')
    out_rows, out_emb = [], []
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
                    duration = round(x.duration, 3)
                    rows.append({**row, 'key': key, 'duration': duration, 'frames': x.num_frames,
                                 'used_frames': int(x.mask.sum()), 'warnings': x.warnings,
                                 'thumb': store.write_thumbnail(key, x.thumbnail), 'model_hash': model.model_hash,
                                 'start': 0.0, 'end': duration, 'moment': 0, **tags})
                store.write_pending(next(numbers), PendingBatch(rows, emb, []))
                out_rows += rows
                out_emb.extend(emb)
                report.encoded += len(rows)
            bar.update(len(items))
    return out_rows, out_emb


class _MomentEncoder:
    """Encodes moments as they stream in, ``batch_size`` per forward. A video's rows reach a pending batch
    (what survives a crash) only once all its moments are encoded, so a recovered video is never partial."""

    def __init__(self, model: ExportedModel, store: IndexStore, numbers: Iterator[int], tags: dict[str, Any], *,
                 dtype: str, batch_size: int, bf16: bool) -> None:
        self.model, self.store, self.numbers, self.tags = model, store, numbers, tags
        self.dtype, self.batch_size, self.bf16 = dtype, batch_size, bf16
        self.queue: list[tuple[dict[str, Any], Moment]] = []
        self.encoded: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = {}
        self.ended: list[tuple[dict[str, Any], VideoEnd]] = []
        self.rows: list[dict[str, Any]] = []
        self.embeddings: list[np.ndarray] = []

    def add(self, row: dict[str, Any], item: Moment | VideoEnd) -> None:
        if isinstance(item, VideoEnd):
            self.ended.append((row, item))
            return
        self.queue.append((row, item))
        if len(self.queue) >= self.batch_size:
            self.flush()

    def drop(self, path: str) -> None:
        """Forget a video that failed part way (its thumbnails go at the commit: no row names them)."""
        self.queue = [(row, m) for row, m in self.queue if row['path'] != path]
        self.encoded.pop(path, None)

    def flush(self) -> None:
        """Encode the queued moments; write the videos that ended as one pending batch."""
        if self.queue:
            emb = encode_videos(self.model, [m.input for _, m in self.queue], self.bf16).astype(self.dtype)
            for (row, m), e in zip(self.queue, emb, strict=True):
                key = _row_key(row['path'])
                part = {'frames': m.input.num_frames, 'used_frames': int(m.input.mask.sum()),
                        'thumb': self.store.write_thumbnail(f'{key}-m{m.index}', m.input.thumbnail),
                        'start': round(m.start, 3), 'end': round(m.end, 3), 'moment': m.index}
                self.encoded.setdefault(row['path'], []).append((part, e))
            self.queue = []
        rows, embeddings = [], []
        for row, end in self.ended:
            key = _row_key(row['path'])
            for part, e in self.encoded.pop(row['path'], []):
                rows.append({**row, 'key': key, 'duration': round(end.duration, 3), 'frames': part['frames'],
                             'used_frames': part['used_frames'], 'warnings': end.warnings, 'thumb': part['thumb'],
                             'model_hash': self.model.model_hash, 'start': part['start'], 'end': part['end'],
                             'moment': part['moment'], **self.tags})
                embeddings.append(e)
        self.ended = []
        if rows:
            self.store.write_pending(next(self.numbers), PendingBatch(rows, np.stack(embeddings), []))
            self.rows += rows
            self.embeddings += embeddings


def _encode_moment_files(model: ExportedModel, root: Path, store: IndexStore, todo: list[tuple[str, int, int]],
                         settings: MomentSettings, report: IndexReport, numbers: Iterator[int],
                         tags: dict[str, Any], *, dtype: str, batch_size: int, num_workers: int, bf16: bool,
                         progress: bool) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """A row per moment: each video decoded once in a loader worker, its moments streamed to the model."""
    loader = DataLoader(_FileMoments(root, todo, model.preprocessing, settings), batch_size=None,
                        num_workers=num_workers, collate_fn=_collate)
    encoder = _MomentEncoder(model, store, numbers, tags, dtype=dtype, batch_size=batch_size, bf16=bf16)
    with _progress(len(todo), progress, 'indexing') as bar:
        for row, item in loader:
            if isinstance(item, str):
                report.skipped.append({'path': row['path'], 'reason': item})
                encoder.drop(row['path'])
                bar.update(1)
                continue
            encoder.add(row, item)
            if isinstance(item, VideoEnd):
                report.encoded += 1
                bar.update(1)
        encoder.flush()
    order = _new_row_order(todo, encoder.rows)
    return [encoder.rows[n] for n in order], [encoder.embeddings[n] for n in order]


# ---- several ranks (torchrun, composer -n) ------------------------------------------------------------------


@dataclass
class World:
    """This process's place among the ranks a launcher started (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1


def launched_world(env: Mapping[str, str] = os.environ) -> World:
    """The launcher's ranks from ``env``; one process when no launcher set ``WORLD_SIZE``.

    Raises:
        IndexFolderError: a ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` that is not a rank of the world.
    """
    values = {}
    for key, default in (('WORLD_SIZE', '1'), ('RANK', '0'), ('LOCAL_RANK', '0'), ('LOCAL_WORLD_SIZE', '1')):
        text = env.get(key, default)
        try:
            values[key] = int(text)
        except ValueError:
            raise IndexFolderError(f'environment variable {key}={text!r}: expected an integer (set by torchrun or '
                              'composer -n)') from None
    world = World(values['RANK'], values['LOCAL_RANK'], values['WORLD_SIZE'], max(1, values['LOCAL_WORLD_SIZE']))
    if world.size < 1 or not 0 <= world.rank < world.size or world.local_rank < 0:
        raise IndexFolderError(f'RANK={world.rank}, LOCAL_RANK={world.local_rank}, WORLD_SIZE={world.size}: expected '
                          '0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0')
    return world


@dataclass
class _RankJob:
    """What rank 0 deals each rank: its share of the files, the run's first batch number and the run's id."""

    todo: list[tuple[str, int, int]]
    first: int
    run: str


@dataclass
class _RankResult:
    """What a rank reports back once its share is encoded (its rows wait in ``pending/``)."""

    encoded: int = 0
    rows: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def _error_text(e: BaseException) -> str:
    """The one line `main` prints for an error: an OSError names its file and reason."""
    if isinstance(e, OSError):
        return f'{e.filename or ""}: {e.strerror}'
    return str(e)


def _attempt(step: Callable[[], _T]) -> tuple[_T | None, str | None]:
    """Run one rank's step; an error the run reports (not a bug) comes back as its line, for the other ranks."""
    try:
        return step(), None
    except (ExportError, IndexFolderError, OSError) as e:
        return None, _error_text(e)


def _exchange(what: str, call: Callable[[], _T]) -> _T:
    """One exchange with the other ranks; a rank that died, or never came within the timeout, is one error line."""
    try:
        return call()
    except RuntimeError as e:  # torch.distributed's errors (timeouts, closed connections) are RuntimeErrors
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise IndexFolderError(f'lost contact with the other tempme-index ranks while {what} ({reason}); the batches '
                          f'encoded so far stay in {PENDING}/ and the next run recovers them') from e


def _agree(error: str | None) -> None:
    """Every rank hears every rank's failure: all fail with the first one (in rank order), or all go on."""
    errors: list[str | None] = [None] * dist.get_world_size()
    _exchange('comparing their outcomes', lambda: dist.all_gather_object(errors, error))
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise IndexFolderError(first)


def _shares(todo: Sequence[tuple[str, int, int]], ranks: int) -> list[list[tuple[str, int, int]]]:
    """Each rank's part of ``todo``: the largest files first, each to the rank with the fewest bytes so far
    (ties: the lower rank), each part then in ``todo``'s order. Deterministic: the same list splits alike."""
    loads = [(0, r) for r in range(ranks)]
    parts: list[list[int]] = [[] for _ in range(ranks)]
    for n in sorted(range(len(todo)), key=lambda n: (-todo[n][1], n)):
        load, r = heapq.heappop(loads)
        parts[r].append(n)
        heapq.heappush(loads, (load + todo[n][1], r))
    return [[todo[n] for n in sorted(part)] for part in parts]


def _deal(plan: _Plan | None, store: IndexStore) -> _RankJob:
    """Rank 0 splits the files still to encode and hands each rank its share (others pass ``plan=None``)."""
    jobs = None
    if plan is not None:
        first, run = store.next_pending_number(), secrets.token_hex(8)
        jobs = [_RankJob(share, first, run) for share in _shares(plan.todo, dist.get_world_size())]
    mine: list[_RankJob | None] = [None]
    _exchange('sharing out the files', lambda: dist.scatter_object_list(mine, jobs, src=0))
    assert mine[0] is not None
    return mine[0]


def _run_rows(store: IndexStore, model: ExportedModel, run: str) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Every rank's rows of this run (tagged ``run``) from ``pending/``, not yet in index order."""
    rows, embeddings = [], []
    for batch in store.read_pending(model.embed_dim):
        for row, e in zip(batch.rows, batch.embeddings, strict=True):
            if row.get(_RUN_TAG) == run:
                rows.append(row)
                embeddings.append(e)
    return rows, embeddings


def _all_run_rows(store: IndexStore, model: ExportedModel, run: str,
                  expected: int) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """`_run_rows`, looked for again for a while when some are missing: a shared filesystem may list another
    machine's new files late (NFS caches a folder's listing for up to a minute)."""
    deadline = time.monotonic() + _LATE_FILES_S
    while True:
        rows, embeddings = _run_rows(store, model, run)
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows, embeddings
        time.sleep(2.0)


def _commit_ranks(model: ExportedModel, plan: _Plan, store: IndexStore, settings: MomentSettings, job: _RankJob,
                  results: Sequence[_RankResult], *, dtype: str) -> IndexReport:
    """Rank 0: every rank's pending rows and skipped videos, ordered as one process orders them, committed."""
    expected = sum(r.rows for r in results)
    rows, embeddings = _all_run_rows(store, model, job.run, expected)
    if len(rows) != expected:
        raise IndexFolderError(f'{store.folder / PENDING} holds {len(rows)} of the {expected} rows the ranks encoded: '
                          'every rank must write to the same --out folder (on a filesystem all machines share)')
    order = _new_row_order(plan.todo, rows)
    place = {rel: n for n, (rel, _, _) in enumerate(plan.todo)}
    skipped = [s for r in results for s in r.skipped]
    plan.report.skipped += sorted(skipped, key=lambda s: place.get(s['path'], len(place)))
    plan.report.encoded = sum(r.encoded for r in results)
    return _commit_videos(model, plan, store, settings, dtype=dtype, rows=[rows[n] for n in order],
                          embeddings=[embeddings[n] for n in order])


def index_videos_distributed(load_model: Callable[[], ExportedModel], videos: str | os.PathLike,
                             out: str | os.PathLike, *, dtype: str = 'float16', batch_size: int = 16,
                             num_workers: int = 0, bf16: bool = False, all_files: bool = False,
                             rebuild: bool = False, force: bool = False, progress: bool = True,
                             segments: str | None = None, window: float | None = None,
                             stride: float | None = None) -> IndexReport | None:
    """`index_videos` on every rank of the initialised process group, one index as one process writes it.

    Rank 0 takes the writer lock and decides what to encode before any rank writes; each rank loads the model
    (``load_model``) and encodes its share of the files into pending batches of its own numbers; after they
    meet, rank 0 reads them all and commits. A rank that stops leaves its batches for the next run to recover.

    Returns:
        The report on rank 0, None on the other ranks.

    Raises:
        IndexFolderError: on every rank the same: the first failure of any rank (the lock, the index, the model, a
            folder one machine cannot read), or lost contact with a rank.
    """
    rank, size = dist.get_rank(), dist.get_world_size()
    store = IndexStore(out)
    with contextlib.ExitStack() as lock:
        ready, error = _attempt(lambda: _rank_setup(load_model, videos, dtype, segments, window, stride))
        plan = None
        if rank == 0 and error is None:
            plan, error = _attempt(lambda: _lead(*ready, store, lock, force=force, dtype=dtype, all_files=all_files,
                                                 rebuild=rebuild))
        _agree(error)  # nothing is written before every rank is ready and rank 0 holds the lock
        model, settings, root = ready
        job = _deal(plan, store)
        report = IndexReport(mode=settings.mode)
        numbers = store.pending_numbers(job.first, rank, size)
        encoded, error = _attempt(lambda: _encode_todo(
            model, root, store, job.todo, settings, report, numbers, job.run, dtype=dtype, batch_size=batch_size,
            num_workers=num_workers, bf16=bf16, progress=progress and rank == 0))
        mine = _RankResult(report.encoded, len(encoded[0]) if encoded else 0, report.skipped, error)
        results: list[_RankResult | None] = [None] * size
        _exchange('waiting for every rank to finish its share', lambda: dist.all_gather_object(results, mine))
        error = next((r.error for r in results if r.error is not None), None)
        committed = None
        if rank == 0 and error is None:
            committed, error = _attempt(lambda: _commit_ranks(model, plan, store, settings, job, results, dtype=dtype))
        _agree(error)
        return committed


def _rank_setup(load_model: Callable[[], ExportedModel], videos: str | os.PathLike, dtype: str,
                segments: str | None, window: float | None,
                stride: float | None) -> tuple[ExportedModel, MomentSettings, Path]:
    """What every rank needs before encoding: the model on its device, the moment settings, the folder."""
    model = load_model()
    settings, root = _checked_args(model, videos, dtype, segments, window, stride)
    return model, settings, root


def _lead(model: ExportedModel, settings: MomentSettings, root: Path, store: IndexStore,
          lock: contextlib.ExitStack, *, force: bool, dtype: str, all_files: bool, rebuild: bool) -> _Plan:
    """Rank 0: take the writer lock (held until ``lock`` closes, after the commit) and plan the run."""
    check_index_out(store.folder, root, force)
    lock.enter_context(store.writer_lock())
    return _plan_videos(model, root, store, settings, dtype=dtype, all_files=all_files, rebuild=rebuild)


def _mds_samples(split: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    from streaming import LocalDataset

    dataset = LocalDataset(local=str(split))
    for i in range(len(dataset)):
        yield i, dataset[i]


def index_mds_split(model: ExportedModel, split: str | os.PathLike, out: str | os.PathLike, *,
                    dtype: str = 'float16', batch_size: int | None = None, bf16: bool = False, rebuild: bool = False,
                    force: bool = False, progress: bool = True, window: float | None = None,
                    stride: float | None = None, segments: str | None = None) -> IndexReport:
    """Index every video of a converted MDS split (stored frames, the eval path's preprocessing) with its captions.

    Videos are encoded in the order and batches evaluation uses (``batch_size`` defaults to the run's global
    ``batch_size_val``), so a float32 index reproduces the evaluation's embeddings. The split is re-encoded
    whole when its ``index.json`` changed. With ``window``/``stride`` (seconds) each video is cut into windows
    over its stored frames (frame i at i / the sample's fps), ``batch_size`` moments per forward.

    Raises:
        IndexFolderError: as `index_videos`; ``segments='shots'`` (shots are detected in video files, and a split
            holds frames).
    """
    if dtype not in DTYPES:
        raise IndexFolderError(f'--dtype {dtype!r}: expected one of {", ".join(DTYPES)}')
    settings = moment_settings(model.preprocessing, segments=segments, window=window, stride=stride)
    if settings.mode == 'shots':
        raise IndexFolderError('--segments shots needs video files (--videos): an MDS split stores frames, not the videos '
                          'PySceneDetect reads; use --segments windows')
    split = Path(split).resolve()
    if not (split / 'index.json').is_file():
        raise IndexFolderError(f'--mds {split}: not an MDS split folder (no index.json)')
    store = IndexStore(out)
    check_index_out(store.folder, split, force)
    with store.writer_lock():
        return _index_mds_split(model, split, store, settings, dtype=dtype, batch_size=batch_size, bf16=bf16,
                                rebuild=rebuild, progress=progress)


def _sample_texts(sample: dict[str, Any], paragraph: bool) -> list[str]:
    texts = sample['captions']
    texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
    return [' '.join(texts)] if paragraph else texts


def _spans(value: Any) -> list[list[float]]:
    """``[[start, end], ...]`` of one stored caption timestamp: one ``[s, e]`` pair or a list of them."""
    def pair(v: Any) -> bool:
        return isinstance(v, list | tuple) and len(v) == 2 and all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in v)

    if pair(value):
        return [[float(value[0]), float(value[1])]]
    if isinstance(value, list | tuple):
        return [[float(v[0]), float(v[1])] for v in value if pair(v)]
    return []


def _caption_rows(sample: dict[str, Any], row: int, paragraph: bool) -> list[dict[str, Any]]:
    """The captions of a sample, each pointing at the video's first row, with the time ranges it describes
    (``timestamps``: ``[[start, end], ...]``, or None when the dataset has none; a paragraph has them all)."""
    texts = _sample_texts(sample, paragraph)
    stored = sample.get('timestamps')
    stored = list(stored) if isinstance(stored, list | tuple) else []
    spans = [_spans(v) for v in stored]
    if paragraph:
        spans = [[s for each in spans for s in each]]
    video_id = str(sample['video_id'])
    return [{'row': row, 'video_id': video_id, 'caption_index': k, 'text': text,
             'timestamps': (spans[k] or None) if k < len(spans) else None} for k, text in enumerate(texts)]


def _sample_duration(sample: dict[str, Any], frames: StoredFrames) -> float:
    return float(sample.get('duration') or (len(frames) / float(sample['fps']) if sample.get('fps') else 0.0))


def _index_mds_split(model: ExportedModel, split: Path, store: IndexStore, settings: MomentSettings, *, dtype: str,
                     batch_size: int | None, bf16: bool, rebuild: bool, progress: bool) -> IndexReport:
    manifest = _check_model(store, model, rebuild)
    _check_moments(store, manifest, settings)
    signature = hashlib.sha256((split / 'index.json').read_bytes()).hexdigest()
    batch_size = batch_size or int(model.config.get('evaluation', {}).get('batch_size_val') or 16)
    if manifest is not None and manifest['source'].get('signature') == signature and manifest['dtype'] == dtype \
            and manifest['source'].get('batch_size') == batch_size:
        videos = len({r['path'] for r in store.rows(manifest)})
        return IndexReport(indexed=manifest['count'], reused=videos, videos=videos, mode=settings.mode)
    source = {'kind': 'mds', 'root': str(split), 'signature': signature, 'batch_size': batch_size}
    report = IndexReport(mode=settings.mode)
    encode = _encode_mds_moments if settings.segmented else _encode_mds_videos
    rows, embeddings, captions = encode(model, split, store, settings, report, dtype=dtype, batch_size=batch_size,
                                        bf16=bf16, progress=progress)
    committed = store.commit(_base(model, source, settings), np.concatenate(embeddings), rows, captions, [])
    report.indexed, report.videos = committed['count'], report.encoded
    return report


def _encode_mds_videos(model: ExportedModel, split: Path, store: IndexStore, settings: MomentSettings,
                       report: IndexReport, *, dtype: str, batch_size: int, bf16: bool,
                       progress: bool) -> tuple[list[dict[str, Any]], list[np.ndarray], list[dict[str, Any]]]:
    """One row per video, in evaluation's order and batches."""
    rows, embeddings, captions = [], [], []
    paragraph = model.preprocessing.paragraph
    samples = list(_mds_samples(split))
    with _progress(len(samples), progress, 'indexing') as bar:
        for s in range(0, len(samples), batch_size):
            inputs = []
            for i, sample in samples[s : s + batch_size]:
                frames = StoredFrames(sample['frames'], f'{split} sample {i} (video_id {sample["video_id"]!r})')
                x = video_from_frames(frames, model.preprocessing, duration=_sample_duration(sample, frames))
                key = _row_key(f'{split}:{sample["video_id"]}')
                duration = round(x.duration, 3)
                rows.append({'path': str(sample['video_id']), 'video_id': str(sample['video_id']), 'key': key,
                             'sample': i, 'duration': duration, 'frames': x.num_frames,
                             'used_frames': int(x.mask.sum()), 'thumb': store.write_thumbnail(key, x.thumbnail),
                             'model_hash': model.model_hash, 'start': 0.0, 'end': duration, 'moment': 0})
                captions += _caption_rows(sample, len(rows) - 1, paragraph)
                inputs.append(x)
            embeddings.append(encode_videos(model, inputs, bf16).astype(dtype))
            report.encoded += len(inputs)
            bar.update(len(inputs))
    return rows, embeddings, captions


def _encode_mds_moments(model: ExportedModel, split: Path, store: IndexStore, settings: MomentSettings,
                        report: IndexReport, *, dtype: str, batch_size: int, bf16: bool,
                        progress: bool) -> tuple[list[dict[str, Any]], list[np.ndarray], list[dict[str, Any]]]:
    """A row per window of each video's stored frames, ``batch_size`` moments per forward; the captions point
    at their video's first row."""
    rows, embeddings, captions, inputs = [], [], [], []
    prep = model.preprocessing

    def encode() -> None:
        if inputs:
            embeddings.append(encode_videos(model, inputs, bf16).astype(dtype))
            inputs.clear()

    with _progress(None, progress, 'indexing') as bar:
        for i, sample in _mds_samples(split):
            where = f'{split} sample {i} (video_id {sample["video_id"]!r})'
            frames = StoredFrames(sample['frames'], where)
            fps = float(sample.get('fps') or 0.0)
            if not fps > 0:
                raise IndexFolderError(f'--window: {where} stores no frame rate ("fps" is {sample.get("fps")!r}), so its '
                                  'frames cannot be placed in time; index it without --window')
            duration = _sample_duration(sample, frames)
            key = _row_key(f'{split}:{sample["video_id"]}')
            captions += _caption_rows(sample, len(rows), prep.paragraph)
            for m in stored_moments(frames, fps, duration, prep, settings):
                x = m.input
                rows.append({'path': str(sample['video_id']), 'video_id': str(sample['video_id']), 'key': key,
                             'sample': i, 'duration': round(duration, 3), 'frames': x.num_frames,
                             'used_frames': int(x.mask.sum()),
                             'thumb': store.write_thumbnail(f'{key}-m{m.index}', x.thumbnail),
                             'model_hash': model.model_hash, 'start': round(m.start, 3), 'end': round(m.end, 3),
                             'moment': m.index})
                inputs.append(x)
                if len(inputs) >= batch_size:
                    encode()
            report.encoded += 1
            bar.update(1)
        encode()
    return rows, embeddings, captions


def print_report(report: IndexReport, out: str) -> None:
    out = printable(out)
    what = f'{report.indexed} videos' if report.mode == 'whole' else \
        f'{report.indexed} moments ({report.mode}) of {report.videos} videos'
    print(f'{out}: {what} indexed ({report.encoded} videos encoded now, {report.reused} unchanged, '
          f'{report.recovered} recovered from an interrupted run, {report.removed} removed or changed)')
    if report.skipped:
        print(f'skipped {len(report.skipped)} videos that could not be decoded (listed in {out}/skipped.jsonl):')
        for s in report.skipped[:20]:
            print(f'  {printable(s["path"])}: {printable(s["reason"])}')
        if len(report.skipped) > 20:
            print(f'  … and {len(report.skipped) - 20} more')


#: ``--window`` given without a value: the export's default window (not text: argparse would parse text as
#: the flag's float).
_EXPORT_WINDOW = object()


@reports_missing_extras('tempme-index')
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='tempme-index', description=__doc__.split('\n')[0])
    parser.add_argument('--model', required=True, help='folder written by tempme-export')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--videos', help='folder of videos (searched recursively)')
    source.add_argument('--mds', help='an MDS split folder written by tempme-convert (captions enable --eval)')
    parser.add_argument('--out', required=True, help='index folder (created, or updated incrementally)')
    parser.add_argument('--clip-checkpoint', help='base CLIP file, for a model exported without --full')
    parser.add_argument('--dtype', default='float16', choices=DTYPES, help='stored embeddings (float32: exact)')
    parser.add_argument('--batch-size', type=int, default=None, help='videos (or moments) per forward (default '
                        "16; MDS: the run's batch_size_val)")
    parser.add_argument('--window', type=float, nargs='?', const=_EXPORT_WINDOW, default=None, metavar='SECONDS',
                        help='index each video as overlapping windows of SECONDS, a row each (no value: the '
                        "max_frames frames the model reads, at the export's frame rate)")
    parser.add_argument('--stride', type=float, default=None, metavar='SECONDS',
                        help='start a window every SECONDS (default: half the window)')
    parser.add_argument('--segments', choices=MODES[1:], default=None,
                        help='windows (the default with --window/--stride), or shots: cut at the shot changes '
                        'PySceneDetect finds, a shot longer than a window split into windows')
    parser.add_argument('--workers', type=int, default=None, help='decoding processes (default: up to 4, the '
                        "machine's cores shared among the ranks a launcher started on it)")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='with a launcher, "cuda" means cuda:LOCAL_RANK')
    parser.add_argument('--dist-timeout', type=float, default=60.0, metavar='MINUTES',
                        help='with a launcher: how long a rank waits for the others (to start, and for the slowest '
                        'to finish its share) before failing (default 60)')
    parser.add_argument('--bf16', action='store_true', help='bf16 autocast (GPU)')
    parser.add_argument('--all-files', action='store_true', help='try every file, not only video extensions')
    parser.add_argument('--rebuild', action='store_true', help='replace an index built by another model or dtype, '
                        'or a damaged one')
    parser.add_argument('--force', action='store_true', help='write into an --out folder that exists and is not '
                        'an index (its own thumbs/ and pending/ names may be replaced)')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    if args.mds:
        require_extra('streaming', 'reading an MDS split (--mds)')
    window = None if args.window is _EXPORT_WINDOW else args.window
    segments = args.segments or ('windows' if args.window is not None or args.stride is not None else None)
    moments = {'segments': segments, 'window': window, 'stride': args.stride}
    try:
        world = launched_world()
    except IndexFolderError as e:
        return _fail(str(e))
    if args.workers is None:
        args.workers = min(4, max(1, (os.cpu_count() or 1) // world.local_size))
    if world.size > 1:
        return _main_ranks(args, moments, world)
    try:
        model = load_exported(args.model, args.clip_checkpoint, device=args.device)
        if args.videos:
            report = index_videos(model, args.videos, args.out, dtype=args.dtype, batch_size=args.batch_size or 16,
                                  num_workers=args.workers, bf16=args.bf16, all_files=args.all_files,
                                  rebuild=args.rebuild, force=args.force, progress=not args.no_progress, **moments)
        else:
            report = index_mds_split(model, args.mds, args.out, dtype=args.dtype, batch_size=args.batch_size,
                                     bf16=args.bf16, rebuild=args.rebuild, force=args.force,
                                     progress=not args.no_progress, **moments)
    except (ExportError, IndexFolderError, OSError) as e:  # OSError: a folder we cannot read or write
        return _fail(_error_text(e))
    print_report(report, args.out)
    return 0


def _fail(message: str) -> int:
    print(f'error: {printable(message)}', file=sys.stderr)
    return 1


def _rank_device(device: str, local_rank: int) -> torch.device:
    """The device of one rank: plain ``cuda`` is the rank's own GPU, ``cuda:LOCAL_RANK``."""
    chosen = torch.device(device)
    return torch.device('cuda', local_rank) if chosen.type == 'cuda' and chosen.index is None else chosen


def _join(device: torch.device, minutes: float) -> bool:
    """Join the launcher's process group (NCCL for a GPU rank, gloo on CPU) unless the caller already has one;
    every exchange fails after ``minutes`` rather than waiting forever for a rank that died.

    Returns:
        Whether this call created the group (and so destroys it).
    """
    if dist.is_initialized():
        return False
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', timeout=timedelta(minutes=minutes))
    return True


def _main_ranks(args: argparse.Namespace, moments: dict[str, Any], world: World) -> int:
    """`main` on one rank of a launcher's run: every rank prints the same error; rank 0 alone the report."""
    if args.mds:
        return _fail(f'--mds runs in one process (this is rank {world.rank} of WORLD_SIZE={world.size}): run '
                     'tempme-index --mds without torchrun or composer -n')
    if not args.dist_timeout > 0:
        return _fail(f'--dist-timeout {args.dist_timeout}: expected a positive number of minutes')
    try:
        device = _rank_device(args.device, world.local_rank)
        created = _join(device, args.dist_timeout)
    except (RuntimeError, ValueError) as e:  # a bad --device, no MASTER_ADDR, a rendezvous that timed out
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return _fail(f'rank {world.rank} of {world.size} cannot join the other tempme-index ranks ({reason})')
    try:
        report = index_videos_distributed(
            lambda: load_exported(args.model, args.clip_checkpoint, device=device), args.videos, args.out,
            dtype=args.dtype, batch_size=args.batch_size or 16, num_workers=args.workers, bf16=args.bf16,
            all_files=args.all_files, rebuild=args.rebuild, force=args.force, progress=not args.no_progress,
            **moments)
    except IndexFolderError as e:  # the same error on every rank, or a rank lost
        _leave(created)
        return _fail(str(e))
    if report is not None:
        print_report(report, args.out)
    _leave(created)
    return 0


def _leave(created: bool) -> None:
    """Tear down the process group this run created, once every rank that is still there has arrived.

    Without the meeting a rank can start tearing down while a peer is still finishing its last exchange, and
    gloo's teardown may then wait for that peer forever (seen a few times in many runs on a loaded 2-core
    machine, after a commit and after an error every rank shared). A rank that is gone makes the meeting fail at
    once; then there is nobody to wait for.
    """
    if created:
        with contextlib.suppress(RuntimeError):
            dist.barrier()
        dist.destroy_process_group()


if __name__ == '__main__':
    sys.exit(main())
