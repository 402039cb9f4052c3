"""Text → video search over an index: exact by default (fp32 scores over memory-mapped chunks, bounded memory),
an approximate HNSW mode (usearch) for galleries where exact search stops being interactive, and ``--eval``: the
recipe's retrieval metrics for an index built from an annotated MDS split, with the same ranking code.

An index row is a moment of a video (``start``/``end`` seconds, ``moment`` number; a row written before
moments existed is its whole file). A search returns moments: overlapping moments of one video that answer the
same query are reduced to the best one (temporal non-maximum suppression, `suppress`), and a video gives at
most its quota of results (`video_quota`). No Composer import.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tempme_composer.inference.exported import ExportedModel, load_exported
from tempme_composer.inference.store import IndexFolderError, IndexStore

__all__ = ['Hit', 'QueryResult', 'VideoIndex', 'exact_topk', 'search', 'search_vectors', 'evaluate_index',
           'load_index_model', 'full_path', 'display_path', 'clock', 'media_fragment', 'result_dicts',
           'moment_of', 'temporal_iou', 'video_quota', 'suppress', 'check_moment_options', 'NMS_IOU',
           'PER_VIDEO_AUTO', 'SECONDS_PER_RESULT', 'CANDIDATE_FACTOR']

#: fp32 rows converted at once during exact search (64 MiB of scores' inputs per chunk at D = 512).
DEFAULT_CHUNK_ELEMENTS = 1 << 24
#: A moment is dropped when its temporal IoU with a better kept moment of the same video exceeds this.
NMS_IOU = 0.5
#: ``per_video`` default: a quota that grows with the video's length (`video_quota`).
PER_VIDEO_AUTO = 'auto'
#: Under ``per_video='auto'`` a video gives one result per started span of this many seconds.
SECONDS_PER_RESULT = 60.0
#: Candidates fetched per wanted result when a video has several rows, and the growth while too few survive.
CANDIDATE_FACTOR = 4


@dataclass
class Hit:
    rank: int  # 1-based
    score: float  # cosine similarity (fp32)
    row: int  # row in the index
    path: str
    duration: float  # the whole video's, seconds
    thumb: str | None
    start: float = 0.0  # the moment, seconds from the video's start
    end: float = 0.0
    moment: int = 0  # 0-based within its video


@dataclass
class QueryResult:
    query: str
    hits: list[Hit]
    note: str | None = None  # e.g. "truncated to the model's max_words"
    # every row (moment) of the videos whose captions equal the query (MDS index), best-scoring first
    ground_truth: list[int] = field(default_factory=list)
    # pessimistic 1-based rank of the ground-truth video among videos, each ranked by its best moment
    ground_truth_rank: int | None = None


def exact_topk(queries: np.ndarray, embeddings: np.ndarray | torch.Tensor, k: int,
               chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product: ``(scores [Q, k] float32, rows [Q, k] int64)``, best first, ties by row.

    ``embeddings`` may be a float16 memory map: each chunk of rows is converted to fp32 on its own, so memory
    stays bounded by the chunk whatever the gallery size. A float32 tensor (`VideoIndex.hold_in_memory`) is
    searched in place, chunk by chunk in the same order: the same scores, without a copy per search.
    """
    Q, (N, D) = len(queries), embeddings.shape
    k = min(k, N)
    chunk_rows = chunk_rows or max(1, DEFAULT_CHUNK_ELEMENTS // max(D, 1))
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best_s = torch.full((Q, 0), -float('inf'))
    best_i = torch.zeros((Q, 0), dtype=torch.long)
    for s in range(0, N, chunk_rows):
        if isinstance(embeddings, torch.Tensor):
            block = embeddings[s : s + chunk_rows]
        else:  # copy the stored rows as they are, then widen in torch: 5x faster than numpy's float16 -> float32
            block = torch.from_numpy(np.array(embeddings[s : s + chunk_rows])).float()
        scores = q @ block.T  # [Q, n] fp32
        top_s, top_i = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        best_s = torch.cat([best_s, top_s], dim=1)
        best_i = torch.cat([best_i, top_i + s], dim=1)
        if best_s.shape[1] > k:
            best_s, keep = torch.topk(best_s, k, dim=1)
            best_i = torch.gather(best_i, 1, keep)
    scores, rows = best_s.numpy(), best_i.numpy()
    order = np.lexsort((rows, -scores), axis=1)  # score descending, then row ascending: deterministic ties
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


class VideoIndex:
    """A committed index folder opened for search (embeddings memory-mapped)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.store = IndexStore(folder)
        self.manifest, self.embeddings, self.rows = self.store.open_committed()
        self._in_memory: torch.Tensor | None = None

    def hold_in_memory(self) -> None:
        """Widen the stored embeddings to fp32 in memory once, for a process that searches many times (a
        server): exact searches then read them in place instead of copying and widening the stored rows each
        time; the scores are the same (widening float16 to float32 is exact)."""
        self._in_memory = torch.from_numpy(np.array(self.embeddings, dtype=np.float32))

    @property
    def folder(self) -> Path:
        return self.store.folder

    @property
    def model_hash(self) -> str:
        return self.manifest['model_hash']

    @property
    def is_annotated(self) -> bool:
        return bool(self.manifest.get('captions'))

    def check_model(self, model: ExportedModel) -> None:
        if model.model_hash != self.model_hash:
            raise IndexFolderError(
                f'{self.folder} was built by model {self.model_hash[:12]} ({self.manifest.get("model_dir")}) but '
                f'{model.directory} is {model.model_hash[:12]}: embeddings of two models are not comparable; '
                'search with the model that built the index, or rebuild it with tempme-index --rebuild')

    def thumbnail(self, row: int) -> Path | None:
        return self.store.thumbnail_path(self.rows[row])

    def rows_by_video(self) -> dict[str, list[int]]:
        """The rows (moments) of each video, by its stored path."""
        if not hasattr(self, '_rows_by_video'):
            self._rows_by_video: dict[str, list[int]] = {}
            for i, row in enumerate(self.rows):
                self._rows_by_video.setdefault(row['path'], []).append(i)
        return self._rows_by_video

    @property
    def num_videos(self) -> int:
        """Distinct videos: recorded by the commit (no scan of a million rows), else counted."""
        videos = self.manifest.get('videos')
        if isinstance(videos, int) and not isinstance(videos, bool) and 0 <= videos <= len(self.rows):
            return videos
        return len(self.rows_by_video())

    @property
    def one_row_per_video(self) -> bool:
        """Whether no video has several moments (then nothing can be suppressed and k candidates suffice)."""
        return self.num_videos == len(self.rows)

    def search_embeddings(self, queries: np.ndarray, k: int, approximate: bool = False,
                          expansion_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        if approximate:
            from tempme_composer.inference.ann import EXPANSION_SEARCH, ann_index, ann_search

            return ann_search(ann_index(self), self.embeddings, queries, k, expansion_search or EXPANSION_SEARCH)
        return exact_topk(queries, self.embeddings if self._in_memory is None else self._in_memory, k)


def load_index_model(index: VideoIndex, model_dir: str | os.PathLike | None, clip_checkpoint: str | None,
                     device: str = 'cpu') -> ExportedModel:
    """The exported model an index was built with (its recorded folder unless ``model_dir``), hash-checked."""
    folder = model_dir or index.manifest.get('model_dir')
    model = load_exported(folder, clip_checkpoint, device=device)
    index.check_model(model)
    return model


def moment_of(row: dict[str, Any]) -> tuple[float, float, int]:
    """``(start, end, moment)`` of an index row; a row of an index built before moments is its whole file."""
    duration = float(row.get('duration') or 0.0)
    start = float(row['start']) if row.get('start') is not None else 0.0
    end = float(row['end']) if row.get('end') is not None else max(duration, start)
    return start, end, int(row.get('moment') or 0)


def temporal_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """|a ∩ b| / |a ∪ b| of two time ranges in seconds (two equal empty ranges: 1)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    if union <= 0:
        return 1.0 if a == b else 0.0
    return inter / union


def video_quota(duration: float, per_video: int | str) -> int | None:
    """Results one video may give (None: no limit).

    ``'auto'``: one per started `SECONDS_PER_RESULT` of the video. A clip (a minute or less) gives one result, so
    a clip collection lists distinct clips however it was cut into moments; a two-hour film may give its many
    distinct scenes, so a few long videos still fill the top-k. ``0``: no limit (only suppression).
    """
    if per_video == PER_VIDEO_AUTO:
        return max(1, math.ceil(duration / SECONDS_PER_RESULT))
    return None if per_video == 0 else int(per_video)


def check_moment_options(nms_iou: float, per_video: int | str) -> None:
    """Refuse values the suppression cannot use, naming the flag.

    Raises:
        QueryError: ``nms_iou`` outside [0, 1], ``per_video`` neither ``'auto'`` nor an integer >= 0.
    """
    from tempme_composer.inference.preprocess import QueryError

    if not (isinstance(nms_iou, int | float) and 0.0 <= nms_iou <= 1.0):
        raise QueryError(f'--nms-iou {nms_iou}: expected a number from 0 to 1 (1 keeps overlapping moments)')
    if per_video != PER_VIDEO_AUTO and not (isinstance(per_video, int) and not isinstance(per_video, bool)
                                            and per_video >= 0):
        raise QueryError(f'--per-video {per_video}: expected auto or a whole number >= 0 (0: no limit)')


def suppress(candidates: Sequence[int], rows: Sequence[dict[str, Any]], k: int, nms_iou: float = NMS_IOU,
             per_video: int | str = PER_VIDEO_AUTO) -> list[int]:
    """Positions in ``candidates`` (rows, best first; -1 = none) of the first ``k`` that survive: a moment is
    dropped when its video already gave its quota, or when its temporal IoU with a kept moment of the same
    video exceeds ``nms_iou``. Greedy in score order, so the survivors of a best-first prefix are the first
    survivors of the whole ranking."""
    kept_spans: dict[str, list[tuple[float, float]]] = {}
    out: list[int] = []
    for pos, r in enumerate(candidates):
        if r < 0:
            continue
        row = rows[r]
        start, end, _ = moment_of(row)
        spans = kept_spans.setdefault(row['path'], [])
        quota = video_quota(float(row.get('duration') or end), per_video)
        if quota is not None and len(spans) >= quota:
            continue
        if any(temporal_iou((start, end), span) > nms_iou for span in spans):
            continue
        spans.append((start, end))
        out.append(pos)
        if len(out) == k:
            break
    return out


def _moment_topk(index: VideoIndex, q: np.ndarray, k: int, approximate: bool, expansion_search: int | None,
                 nms_iou: float, per_video: int | str) -> list[list[tuple[float, int]]]:
    """Per query the ``k`` best surviving moments ``(score, row)``: fetch ``k`` x `CANDIDATE_FACTOR` best
    rows, and fetch `CANDIDATE_FACTOR` times more for the queries where fewer than ``k`` survive, until the
    index is exhausted."""
    n = len(index.rows)
    fetch = k if index.one_row_per_video else k * CANDIDATE_FACTOR
    out: list[list[tuple[float, int]]] = [[] for _ in range(len(q))]
    todo = list(range(len(q)))
    first = True
    while todo and n:
        fetch = min(fetch, n)
        # grown to every row: the exact search is the exhaustive one (and the graph may not reach every node)
        scores, rows = index.search_embeddings(q[todo], fetch, approximate=approximate and (first or fetch < n),
                                               expansion_search=expansion_search)
        first = False
        short = []
        for j, i in enumerate(todo):
            kept = suppress(rows[j], index.rows, k, nms_iou, per_video)
            if len(kept) < k and fetch < n:
                short.append(i)
            else:
                out[i] = [(float(scores[j, p]), int(rows[j, p])) for p in kept]
        todo, fetch = short, fetch * CANDIDATE_FACTOR
    return out


def _hit(index: VideoIndex, rank: int, score: float, r: int) -> Hit:
    row = index.rows[r]
    start, end, moment = moment_of(row)
    return Hit(rank=rank, score=score, row=r, path=row['path'], duration=float(row.get('duration') or 0.0),
               thumb=row.get('thumb'), start=start, end=end, moment=moment)


def search_vectors(index: VideoIndex, vectors: np.ndarray, labels: Sequence[str], top_k: int = 10,
                   approximate: bool = False, expansion_search: int | None = None, *, nms_iou: float = NMS_IOU,
                   per_video: int | str = PER_VIDEO_AUTO, notes: Sequence[str | None] | None = None,
                   captions: Sequence[str] | None = None) -> list[QueryResult]:
    """Top-``k`` moments for query embeddings ``[Q, D]`` (text, image, video or a stored moment), each result
    labelled by ``labels``. ``captions``: the query texts, whose ground truth is marked on an annotated index."""
    check_moment_options(nms_iou, per_video)
    q = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(labels), -1)
    ranked = _moment_topk(index, q, top_k, approximate, expansion_search, nms_iou, per_video)
    truth = _caption_owners(index) if index.is_annotated and captions is not None else {}
    results = []
    for i, label in enumerate(labels):
        hits = [_hit(index, j + 1, score, r) for j, (score, r) in enumerate(ranked[i])]
        owners = truth.get(captions[i].strip(), ()) if captions is not None else ()
        gt = sorted({m for r in owners for m in index.rows_by_video()[index.rows[r]['path']]})
        rank = None
        if gt:
            block = np.asarray(index.embeddings[gt], dtype=np.float32) @ q[i]
            gt = [gt[o] for o in np.lexsort((gt, -block))]
            rank = _videos_at_least(index, q[i], float(block.max()))  # pessimistic: every tie ranks ahead
        results.append(QueryResult(label, hits, notes[i] if notes else None, gt, rank))
    return results


def search(index: VideoIndex, model: ExportedModel, queries: list[str], top_k: int = 10,
           approximate: bool = False, expansion_search: int | None = None, *, nms_iou: float = NMS_IOU,
           per_video: int | str = PER_VIDEO_AUTO) -> list[QueryResult]:
    """Top-``k`` moments per text query (see `search_vectors`). On an annotated (MDS) index, queries equal to a
    caption get its video marked as ground truth with its exact (pessimistic) rank. ``expansion_search``: the
    HNSW candidate list of the approximate mode (default `ann.EXPANSION_SEARCH`; larger: slower, higher recall).

    Raises:
        QueryError: an empty query, or a ``nms_iou``/``per_video`` it cannot use.
    """
    from tempme_composer.inference.index import encode_texts
    from tempme_composer.inference.preprocess import tokenize_queries

    check_moment_options(nms_iou, per_video)
    ids, notes = tokenize_queries(queries, model.preprocessing)
    q = encode_texts(model, ids)
    return search_vectors(index, q, queries, top_k, approximate, expansion_search, nms_iou=nms_iou,
                          per_video=per_video, notes=notes, captions=queries)


def _videos_at_least(index: VideoIndex, q: np.ndarray, value: float, chunk: int = 1 << 16) -> int:
    """Videos with a moment scoring at least ``value`` (one per row in an index of whole videos)."""
    if index.one_row_per_video:
        return sum(int((np.asarray(index.embeddings[s : s + chunk], dtype=np.float32) @ q >= value).sum())
                   for s in range(0, len(index.embeddings), chunk))
    videos: set[str] = set()
    for s in range(0, len(index.embeddings), chunk):
        above = np.flatnonzero(np.asarray(index.embeddings[s : s + chunk], dtype=np.float32) @ q >= value)
        videos.update(index.rows[s + int(r)]['path'] for r in above)
    return len(videos)


def _caption_owners(index: VideoIndex) -> dict[str, set[int]]:
    owners: dict[str, set[int]] = {}
    for c in index.store.captions(index.manifest) or []:
        owners.setdefault(c['text'].strip(), set()).add(int(c['row']))
    return owners


def evaluate_index(index: VideoIndex, model: ExportedModel, tie_mode: str | None = None) -> dict[str, float]:
    """The recipe's retrieval metrics over an annotated index (captions encoded per video batch, as evaluation
    does), with `tempme_composer.metrics.embedding_metrics`.

    Raises:
        IndexFolderError: the index was built from a folder of videos (no captions), or holds moments.
    """
    from tempme_composer.clip.tokenizer import tokenize
    from tempme_composer.inference.index import encode_texts
    from tempme_composer.metrics.summary import embedding_metrics

    if not index.one_row_per_video:
        mode = (index.manifest.get('moments') or {}).get('mode', 'windows')
        raise IndexFolderError(f'{index.folder} holds moments ({mode}: {len(index.rows)} rows of {index.num_videos} videos), '
                          'and --eval ranks whole videos: use --eval-moments, or index the split without --window')
    captions = index.store.captions(index.manifest)
    if not captions:
        raise IndexFolderError(f'{index.folder} was built from a folder of videos, which has no captions: --eval needs an '
                          'index built with tempme-index --mds SPLIT_FOLDER')
    batch = int(index.manifest['source'].get('batch_size') or len(index.rows))
    by_row: dict[int, list[str]] = {}
    for c in captions:
        by_row.setdefault(int(c['row']), []).append(c['text'])
    text, column = [], []
    for s in range(0, len(index.rows), batch):
        texts = [(r, t) for r in range(s, min(s + batch, len(index.rows))) for t in by_row.get(r, [])]
        ids, _ = tokenize([t for _, t in texts], model.preprocessing.max_words)
        text.append(torch.from_numpy(encode_texts(model, ids, batch_size=max(len(ids), 1))))
        column += [r for r, _ in texts]
    video = torch.from_numpy(np.array(index.embeddings, dtype=np.float32))
    mode = tie_mode or index.manifest.get('evaluation', {}).get('tie_mode', 'pessimistic')
    results = embedding_metrics(torch.cat(text), video, torch.tensor(column), mode)
    results.update({'num_texts': float(len(column)), 'num_videos': float(len(index.rows))})
    return results


def result_dicts(results: list[QueryResult], index: VideoIndex) -> list[dict[str, Any]]:
    """JSON-ready results (``--json``)."""
    return [{
        'query': r.query,
        'note': r.note,
        'ground_truth': list(dict.fromkeys(index.rows[g]['path'] for g in r.ground_truth)) or None,
        'ground_truth_rank': r.ground_truth_rank,
        'results': [{'rank': h.rank, 'score': h.score, 'path': display_path(index, h.path), 'start': h.start,
                     'end': h.end, 'duration': h.duration, 'moment': h.moment} for h in r.hits],
    } for r in results]


def full_path(index: VideoIndex, path: str) -> Path | None:
    """The video file of a row of a folder index (None for an MDS split, whose rows name video ids)."""
    source = index.manifest['source']
    return Path(source['root']) / path if source.get('kind') == 'videos' else None


def display_path(index: VideoIndex, path: str) -> str:
    """What a result shows: the video file's path, or the video id of an MDS split."""
    video = full_path(index, path)
    return str(video) if video is not None else path


def clock(seconds: float) -> str:
    """``75.5`` → ``'1:15.5'``, ``3600`` → ``'1:00:00'``: a time as video players show it (tenths when not whole)."""
    tenths = round(max(seconds, 0.0) * 10)
    whole, frac = divmod(tenths, 10)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    text = f'{h}:{m:02d}:{s:02d}' if h else f'{m}:{s:02d}'
    return f'{text}.{frac}' if frac else text


def media_fragment(start: float, end: float) -> str:
    """``#t=12,24.5``: the W3C media fragment that makes a player start at ``start`` and pause at ``end``."""
    def number(x: float) -> str:
        return f'{x:.3f}'.rstrip('0').rstrip('.') or '0'

    return f'#t={number(start)},{number(end)}'
