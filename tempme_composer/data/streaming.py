"""MDS video-text samples -> model batches: a StreamingDataset subclass, collates and the DataSpec builder.

One MDS sample is one video (JPEG frames + all its captions), as written by
:mod:`tempme_composer.data.synthetic` or the converter. Training draws one caption per video and epoch;
evaluation keeps all captions so that text->video retrieval ranks every caption against every video.

Batch layouts (B videos, T = max_frames, R = image_resolution, L = max_words):

- train: ``video [B,T,R,R,3]`` uint8, channels last (resized and centre-cropped, zero padding; the model
  normalises it on its device, channels first, with :func:`~tempme_composer.data.uint8_frames.normalize_frames`),
  ``video_mask [B,T]`` int64,
  ``video_index [B]`` int64, ``text_ids [B,L]`` int64, ``text_mask [B,L]`` int64.
- eval: the same video keys plus ``text_ids/text_mask [K_total,L]``, ``text_video_index [K_total]`` (the
  ``video_index`` of each caption's video) and ``text_caption_index [K_total]`` (0..K-1 within the video).

``video_index`` is the global MDS sample index; it lets the metric drop the duplicates that streaming pads
each rank's eval partition with.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from composer.core import DataSpec
from streaming import Stream, StreamingDataset
from streaming.base.dataset import _ShardState
from torch.utils.data import DataLoader, default_collate

from tempme_composer.clip.tokenizer import tokenize
from tempme_composer.data.frame_layout import StoredFrames
from tempme_composer.data.frame_pool import FramePoolDataLoader, PooledFrames
from tempme_composer.data.remote_shards import RemoteShardError, ShardErrors
from tempme_composer.data.uint8_frames import Frame, frames_to_uint8
from tempme_composer.data.video import SLICE_FRAMEPOS_CHOICES, select_frame_indices
from tempme_composer.errors import RecipeError

__all__ = [
    'FRAME_ORDER_CHOICES',
    'SHM_NAME_ATTEMPTS',
    'SUPPORTED_FORMAT_VERSIONS',
    'SharedMemoryNameError',
    'VIDEO_KEYS',
    'TEXT_KEYS',
    'VideoTextDataset',
    'build_video_text_dataloader',
    'check_dataset_format',
    'collate_eval',
    'collate_train',
    'construct_streaming',
    'make_streams',
    'split_eval_batch',
    'split_eval_batch_by_size',
]

log = logging.getLogger(__name__)

#: A loader's frame stacker (:meth:`~tempme_composer.data.frame_pool.SharedFramePool.stack`).
StackFrames = Callable[[list[torch.Tensor]], 'torch.Tensor | PooledFrames']

#: ``frame_order`` values of the references (docs/reference/evaluation-protocol.md#frame-sampling): applied
#: after the max_frames selection.
FRAME_ORDER_CHOICES = {0: 'as stored', 1: 'reversed', 2: 'random permutation'}
#: ``tempme_dataset.json`` format versions this loader reads (written by ``tempme-convert``).
SUPPORTED_FORMAT_VERSIONS = (1, 2)  # frame layouts: data/frame_layout.py
_META_FILE = 'tempme_dataset.json'
#: Captions whose token ids each loader worker keeps (``VideoTextDataset.caption_tokens``): ~0.3 KB each.
TOKEN_CACHE_SIZE = 65_536
_PAIRS_SUFFIX = '_pairs'

_LOCAL = _ShardState.LOCAL

#: Constructions of a StreamingDataset when another process on this machine takes the shared-memory name that
#: streaming picked before streaming creates it (each attempt scans again and picks the next free name).
SHM_NAME_ATTEMPTS = 5
# streaming's shared-memory names: '/<6-digit prefix>_<resource>', e.g. '/000047_locals'.
_SHM_NAME = re.compile(r'/?\d{6}_[a-z_]+')
_JITTER = random.Random()  # its own generator: a retry leaves the seeded global one untouched

#: Eval-batch keys with one row per video, and with one row per caption.
VIDEO_KEYS = ('video', 'video_mask', 'video_index')
TEXT_KEYS = ('text_ids', 'text_mask', 'text_video_index', 'text_caption_index')


class SharedMemoryNameError(RecipeError):
    """Another process on this machine kept taking the shared-memory name streaming picked for a dataset."""


def construct_streaming(init: Callable[[], None]) -> None:
    """Run a StreamingDataset constructor ``init``, again when another process took its shared-memory name.

    streaming registers a dataset by scanning /dev/shm for a free prefix, then creating ``/<prefix>_locals``;
    a second streaming job starting on the same machine can create that name in between, and the create then
    fails with FileExistsError. Nothing is left behind by such an attempt (the failing create is the first
    shared-memory object streaming creates, and no file lock exists yet), so in a single process the
    constructor is run again, and its new scan skips the taken name. With several ranks, streaming's
    registration runs barriers between them that one rank cannot replay alone, so there the error is reported
    at once.

    Raises:
        SharedMemoryNameError: the name race was lost ``SHM_NAME_ATTEMPTS`` times, or with several ranks.
    """
    for attempt in range(1, SHM_NAME_ATTEMPTS + 1):
        try:
            init()
            return
        except FileExistsError as e:
            name = _streaming_shm_name(e)
            if name is None:
                raise
            several_ranks = _ranks_synchronise()
            if several_ranks or attempt == SHM_NAME_ATTEMPTS:
                raise SharedMemoryNameError(_shm_race_message(name, attempt, several_ranks)) from e
            log.warning('shared-memory name %s was taken by another process while streaming created it; '
                        'building the dataset again (attempt %d of %d)', name, attempt + 1, SHM_NAME_ATTEMPTS)
            time.sleep(_JITTER.uniform(0.0, 0.05 * attempt))  # two jobs retrying in step would collide again


def _streaming_shm_name(error: FileExistsError) -> str | None:
    """The shared-memory name of ``error`` if it is one of streaming's, else None (another file's error)."""
    name = error.filename
    return name if isinstance(name, str) and _SHM_NAME.fullmatch(name) else None


def _ranks_synchronise() -> bool:
    """Whether streaming's registration synchronises ranks (torch.distributed, or it would start it itself)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size() > 1  # one rank in a process group: nothing to keep in step
    return int(os.environ.get('WORLD_SIZE', '1')) > 1


def _shm_race_message(name: str, attempts: int, several_ranks: bool) -> str:
    """One paragraph: what was taken, why, and what to do."""
    if several_ranks:
        why = ('With several ranks the dataset cannot be built again in place (streaming synchronises the ranks '
               'around that name).')
    else:
        why = f'The dataset was built {attempts} times and another process took the name each time.'
    return (f"cannot register the dataset's shared memory: streaming picked the free name {name!r}, and "
            'another process on this machine (another StreamingDataset job starting at the same time) created '
            f'it before streaming could. {why} Rerun, and start jobs that share this machine a few seconds '
            'apart.')


class VideoTextDataset(ShardErrors, StreamingDataset):
    """StreamingDataset over per-video MDS samples that returns model-ready tensors.

    Args:
        max_frames: frame budget T; longer videos are reduced with :func:`select_frame_indices`, shorter ones
            are zero-padded and masked.
        image_resolution: side R of the square CLIP input.
        max_words: token length L per caption (SOT/EOT included).
        train: one caption per sample (drawn per epoch) if True, all captions if False.
        slice_framepos: 0 first / 1 last / 2 uniform frames
            (docs/reference/evaluation-protocol.md#frame-sampling).
        caption_seed: seed of the per-epoch caption draw (also seeds ``frame_order=2``).
        frame_order: 0 as stored, 1 reversed, 2 a random permutation per (epoch, sample), applied to the
            kept frames (the padding stays at the end, so the mask is unchanged).
        paragraph: join all captions of a video with single spaces into one caption (DiDeMo and
            ActivityNet paragraph retrieval); training and evaluation then see exactly one text per video.
        expand_sentences: training over every (video, caption) pair once per epoch (MSR-VTT's
            ``--expand_msrvtt_sentences``). The sample space is the caption-level index ``<split>_pairs``
            written by ``tempme-convert`` next to each video split; the frames are read by random access from
            the video split, which is added as a second stream with ``choose=0`` (so it is never iterated,
            only indexed, and shares streaming's download/caching). ``video_index`` is then the video's
            global sample index, identical for all pairs of one video. Needs ``streams`` given as dicts or
            ``local``/``remote``/``split``; relative ``proportion`` weights are not supported here.
        check_remote_hashes: verify each downloaded remote shard against the xxh64 hash in its index (a
            missing or corrupt object is one `RemoteShardError` naming it; see ``remote_shards.py``).
        **streaming_kwargs: passed to :class:`StreamingDataset` (``local``, ``remote``, ``split``,
            ``streams``, ``shuffle``, ``shuffle_seed``, ``batch_size`` (required to iterate), ...).

    The training caption of sample ``idx`` in epoch ``e`` is
    ``np.random.default_rng([caption_seed, e, idx]).integers(K)``: it changes between epochs, does not depend
    on the worker, rank or shuffle order, and a mid-epoch resumption reproduces it. ``e`` is the epoch the
    current ``__iter__`` serves, captured in each worker from streaming's own epoch bookkeeping (which
    also restores the epoch from a checkpoint); for random access outside iteration it is the most recently
    started epoch (``next_epoch - 1``, at least 0) as stored in streaming's shared memory.
    """

    def __init__(self, *, max_frames: int, image_resolution: int, max_words: int, train: bool,
                 slice_framepos: int = 2, caption_seed: int = 0, frame_order: int = 0, paragraph: bool = False,
                 expand_sentences: bool = False, check_remote_hashes: bool = True, **streaming_kwargs: Any) -> None:
        if max_frames < 1:
            raise ValueError(f'max_frames must be >= 1, got {max_frames}')
        if image_resolution < 1:
            raise ValueError(f'image_resolution must be >= 1, got {image_resolution}')
        if slice_framepos not in SLICE_FRAMEPOS_CHOICES:
            raise ValueError(
                f'slice_framepos must be one of {sorted(SLICE_FRAMEPOS_CHOICES)}, got {slice_framepos!r}')
        if caption_seed < 0:
            raise ValueError(f'caption_seed must be >= 0, got {caption_seed}')
        if frame_order not in FRAME_ORDER_CHOICES:
            raise ValueError(f'frame_order must be one of {FRAME_ORDER_CHOICES}, got {frame_order!r}')
        if expand_sentences and paragraph:
            raise ValueError('expand_sentences and paragraph exclude each other (a paragraph is one text)')
        if expand_sentences and not train:
            raise ValueError('expand_sentences is a training option; evaluation always uses every caption')
        self._video_stream_of: dict[int, int] = {}
        self._token_cache: dict[str, bytes] = {}  # caption -> int32 token ids (SOT .. EOT); per process
        self._ready_shards: set[int] = set()  # shards this process found downloaded (see prepare_shard)
        if expand_sentences:
            streaming_kwargs = _expand_streams(streaming_kwargs)
        try:
            construct_streaming(functools.partial(super().__init__, **streaming_kwargs))
        except SharedMemoryNameError:
            raise
        except Exception as e:  # e.g. the remote index.json cannot be downloaded
            if not _has_remote(streaming_kwargs):
                raise
            raise RemoteShardError(f'cannot open the remote dataset {_describe(streaming_kwargs)}: '
                                   f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}. Check the '
                                   'remote path (it must hold index.json), the credentials and S3_ENDPOINT_URL.') from e
        if check_remote_hashes:
            self.enable_remote_hash_checks()
        if expand_sentences:
            half = len(self.streams) // 2
            self._video_stream_of = {i: half + i for i in range(half)}
        for stream in self.streams:
            check_dataset_format(stream)
        self.max_frames = max_frames
        self.image_resolution = image_resolution
        self.max_words = max_words
        self.train = train
        self.slice_framepos = slice_framepos
        self.caption_seed = caption_seed
        self.frame_order = frame_order
        self.paragraph = paragraph
        self.expand_sentences = expand_sentences
        self._iter_epoch: int | None = None  # set in each worker when __iter__ starts an epoch

    # streaming 0.13 keeps the epoch as a local variable of __iter__; this hook is where it is decided
    # (fresh epoch or the one restored by load_state_dict), so record it for __getitem__.
    def _resume_incr_epoch(self) -> tuple[int, int]:
        epoch, sample_in_epoch = super()._resume_incr_epoch()
        self._iter_epoch = int(epoch)
        return epoch, sample_in_epoch

    @property
    def caption_epoch(self) -> int:
        """The epoch that seeds the training caption draw (see the class docstring)."""
        if self._iter_epoch is not None:
            return self._iter_epoch
        return max(self.next_epoch - 1, 0)

    def caption_choice(self, idx: int, num_captions: int, epoch: int | None = None) -> int:
        """Which caption (of ``num_captions``) sample ``idx`` trains on in ``epoch`` (default: current)."""
        if num_captions == 1:  # what the draw returns, without building a generator per sample
            return 0
        epoch = self.caption_epoch if epoch is None else epoch
        return int(np.random.default_rng([self.caption_seed, epoch, idx]).integers(num_captions))

    def caption_tokens(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokenize(caption, max_words)`` as ``(ids [L], mask [L])``, from a per-worker cache of the last
        ``TOKEN_CACHE_SIZE`` captions (BPE with ftfy's cleaning: ≈0.7 ms per caption, more than two frames'
        decoding; a caption comes back every epoch it is drawn, a single-caption video's every epoch)."""
        tokens = self._token_cache.get(caption)
        if tokens is None:
            ids, mask = tokenize(caption, self.max_words)
            tokens = ids[0, : int(mask[0].sum())].to(torch.int32).numpy().tobytes()  # SOT .. EOT, compact
            if len(self._token_cache) >= TOKEN_CACHE_SIZE:
                del self._token_cache[next(iter(self._token_cache))]  # oldest first
            self._token_cache[caption] = tokens
            return ids[0], mask[0]
        ids = np.zeros(self.max_words, dtype=np.int64)
        mask = np.zeros(self.max_words, dtype=np.int64)
        ids[: len(tokens) // 4] = np.frombuffer(tokens, dtype=np.int32)
        mask[: len(tokens) // 4] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        """streaming's per-sample shard check (its download thread calls this for every sample: a file lock,
        a ``stat``), skipped for a shard this process already saw ready when nothing can evict it (no
        ``cache_limit``)."""
        if shard_id in self._ready_shards and not self.cache_limit:
            return
        super().prepare_shard(shard_id, blocking)
        if self._shard_states[shard_id] == _LOCAL:
            self._ready_shards.add(shard_id)

    def _video_id_for_error(self, idx: int) -> str:
        """Best-effort ``video_id`` of a sample whose full decode failed (for the error message only)."""
        try:
            shard_id, shard_sample_id = self.spanner[idx]
            shard = self.shards[shard_id]
            data = shard.get_sample_data(shard_sample_id)
            offset, sizes = 0, []
            for size in shard.column_sizes:
                if size:
                    sizes.append(size)
                else:
                    sizes.append(int(np.frombuffer(data[offset:offset + 4], np.uint32)[0]))
                    offset += 4
            for name, size in zip(shard.column_names, sizes, strict=True):
                if name == 'video_id':
                    return data[offset:offset + size].decode('utf-8')
                offset += size
        except Exception as e:  # only used to improve an error message
            log.debug('could not recover the video_id of sample %d: %s', idx, e)
        return '<unknown>'

    def frames_tensor(self, frames: Sequence[Frame]) -> torch.Tensor:
        """The kept frames, zero-padded to ``max_frames``: the ``uint8 [T, R, R, 3]`` the model normalises on its
        device (each frame decoded and cropped straight into its slot: no second copy per sample)."""
        video = torch.empty(self.max_frames, self.image_resolution, self.image_resolution, 3, dtype=torch.uint8)
        frames_to_uint8(frames, self.image_resolution, out=video[: len(frames)])
        video[len(frames):] = 0
        return video

    def _pair(self, idx: int) -> tuple[int, str, str] | None:
        """(video sample index, video_id, caption) when ``idx`` is a caption-level pair, else None."""
        if not self._video_stream_of:
            return None
        shard_id, _ = self.spanner[idx]
        video_stream = self._video_stream_of.get(int(self.stream_per_shard[shard_id]))
        if video_stream is None:
            raise IndexError(f'sample {idx} belongs to a video stream, which expand_sentences never iterates')
        pair = super().__getitem__(idx)
        video_idx = int(self.sample_offset_per_stream[video_stream]) + int(pair['video_index'])
        return video_idx, pair['video_id'], str(pair['caption'])

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        idx = int(idx)
        pair = self._pair(idx)
        fixed_caption = None
        if pair is not None:
            idx, pair_video_id, fixed_caption = pair
        try:
            sample = super().__getitem__(idx)
        except ValueError as e:
            # e.g. a jpegarray column with zero frames fails inside MDS decoding without naming the sample.
            video_id = self._video_id_for_error(idx)
            raise ValueError(f'sample {idx} (video_id {video_id!r}) cannot be decoded: {e}. '
                             'Every sample needs at least one frame.') from e
        video_id = sample.get('video_id', '<unknown>')
        if pair is not None and video_id != pair_video_id:
            raise ValueError(f'caption index says video {pair_video_id!r} but sample {idx} is {video_id!r}: '
                             'the <split>_pairs folder does not belong to this video split; re-run tempme-convert')
        frames = StoredFrames(sample['frames'], f'sample {idx} (video_id {video_id!r})')
        if not len(frames):
            raise ValueError(f'sample {idx} (video_id {video_id!r}) has zero frames')
        if 'num_frames' in sample and int(sample['num_frames']) != len(frames):
            raise ValueError(f'sample {idx} (video_id {video_id!r}): num_frames={sample["num_frames"]} but '
                             f'{len(frames)} frames are stored')
        captions = sample['captions']
        if isinstance(captions, str):
            captions = [captions]
        if not captions:
            raise ValueError(f'sample {idx} (video_id {video_id!r}) has zero captions')

        keep = select_frame_indices(len(frames), self.max_frames, self.slice_framepos)
        if self.frame_order == 1:
            keep = keep[::-1]
        elif self.frame_order == 2:
            keep = keep[np.random.default_rng([self.caption_seed, self.caption_epoch, idx, 1]).permutation(len(keep))]
        video = self.frames_tensor(frames.select_stored(keep))  # [T, R, R, 3]; only the kept frames are decoded
        video_mask = torch.zeros(self.max_frames, dtype=torch.long)  # [T]
        video_mask[: len(keep)] = 1

        if self.paragraph:
            captions = [' '.join(str(c) for c in captions)]
        if fixed_caption is not None:
            ids, mask = self.caption_tokens(fixed_caption)  # [L]
        elif self.train:
            ids, mask = self.caption_tokens(captions[self.caption_choice(idx, len(captions))])  # [L]
        else:
            ids, mask = tokenize(list(captions), self.max_words)  # [K, L]
        return {
            'video': video,
            'video_mask': video_mask,
            'video_index': torch.tensor(idx, dtype=torch.long),
            'text_ids': ids,
            'text_mask': mask,
        }


def _has_remote(kwargs: Mapping[str, Any]) -> bool:
    streams = kwargs.get('streams') or []
    return kwargs.get('remote') is not None or any(_stream_spec(s).get('remote') is not None for s in streams)


def _describe(kwargs: Mapping[str, Any]) -> str:
    specs = [_stream_spec(s) for s in kwargs.get('streams') or []] or [kwargs]
    return ', '.join(f"{s.get('remote')}/{s.get('split') or ''} (cache {s.get('local')})" for s in specs
                     if s.get('remote') is not None)


def _stream_spec(stream: Stream | Mapping[str, Any]) -> dict[str, Any]:
    """A stream as a plain dict (local, remote, split and its weight, if any)."""
    if isinstance(stream, Stream):
        spec = {'local': stream.local, 'remote': stream.remote, 'split': stream.split}
        for key in ('proportion', 'repeat', 'choose'):
            value = getattr(stream, f'_{key}', None)
            if value is not None:
                spec[key] = value
        return spec
    unknown = set(stream) - {'local', 'remote', 'split', 'proportion', 'repeat', 'choose'}
    if unknown:
        raise ValueError(f'unknown stream keys {sorted(unknown)}; expected local, remote, split, '
                         'proportion, repeat or choose')
    return dict(stream)


def make_streams(streams: Sequence[Stream | Mapping[str, Any]]) -> list[Stream]:
    """``[{local, remote, split, proportion|repeat|choose}, ...]`` -> streaming ``Stream`` objects."""
    return [s if isinstance(s, Stream) else Stream(**_stream_spec(s)) for s in streams]


def _expand_streams(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn video streams into [caption-pair streams..., video streams with choose=0...]."""
    kwargs = dict(kwargs)
    streams = kwargs.pop('streams', None)
    if streams is None:
        if kwargs.get('local') is None and kwargs.get('remote') is None:
            raise ValueError('expand_sentences needs local/remote (and split) or streams')
        specs = [{'local': kwargs.pop('local', None), 'remote': kwargs.pop('remote', None),
                  'split': kwargs.pop('split', None)}]
    else:
        specs = [_stream_spec(s) for s in streams]
        for key in ('local', 'remote', 'split'):
            if kwargs.pop(key, None) is not None:
                raise ValueError(f'pass either streams or {key}, not both')
    pairs, videos = [], []
    for spec in specs:
        if spec.get('proportion') is not None:
            raise ValueError('expand_sentences does not support relative `proportion` stream weights; use '
                             '`repeat` or `choose` (absolute, counted in caption pairs)')
        split = spec.get('split')
        if not split:
            raise ValueError('expand_sentences needs a `split` per stream (the caption index is <split>_pairs)')
        local = spec.get('local')
        if spec.get('remote') is None and local is not None:
            folder = Path(local) / f'{split}{_PAIRS_SUFFIX}'
            if not (folder / 'index.json').is_file():
                raise FileNotFoundError(
                    f'expand_sentences needs the caption index {str(folder)!r} (written by tempme-convert next '
                    f'to {split!r}); it does not exist. Re-run tempme-convert, or set expand_sentences false.')
        weight = {k: spec[k] for k in ('repeat', 'choose') if spec.get(k) is not None}
        pairs.append(Stream(local=local, remote=spec.get('remote'), split=f'{split}{_PAIRS_SUFFIX}', **weight))
        videos.append(Stream(local=local, remote=spec.get('remote'), split=split, choose=0))
    kwargs['streams'] = pairs + videos
    return kwargs


def check_dataset_format(stream: Stream) -> dict[str, Any] | None:
    """Read ``tempme_dataset.json`` of a stream's folder (downloading it for a remote) and check its version.

    Returns the metadata, or None for datasets without one (the demo data, older conversions).

    Raises:
        ValueError: the folder was written with a format version this loader does not know.
    """
    folder = os.path.join(stream.local, stream.split or '')
    path = os.path.join(folder, _META_FILE)
    if not os.path.isfile(path) and stream.remote is not None:
        try:
            stream._download_file(_META_FILE)  # streaming's own downloader (any supported store)
        except Exception as e:  # optional file: older datasets do not have it
            log.debug('no %s at %s/%s: %s', _META_FILE, stream.remote, stream.split, e)
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        meta = json.load(f)
    version = meta.get('format_version')
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ValueError(
            f'{path}: dataset format version {version!r} is not supported by this tempme_composer (it reads '
            f'{list(SUPPORTED_FORMAT_VERSIONS)}); convert the data again with this version\'s tempme-convert '
            'or upgrade tempme_composer')
    return meta


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``, written straight into shared memory in a loader worker (torch's default_collate does
    that; a plain stack there costs a second copy of the batch on its way to the main process)."""
    return default_collate(tensors)


def _stack_video(samples: Sequence[Mapping[str, torch.Tensor]],
                 stack_frames: StackFrames | None) -> torch.Tensor | PooledFrames:
    """The samples' frames stacked (through the loader's frame pool when it has one)."""
    frames = [s['video'] for s in samples]
    return _stack(frames) if stack_frames is None else stack_frames(frames)


def collate_train(samples: Sequence[Mapping[str, torch.Tensor]],
                  stack_frames: StackFrames | None = None) -> dict[str, torch.Tensor]:
    """Stack training samples: every key gets a leading batch dimension B.

    ``stack_frames``: the loader's :meth:`SharedFramePool.stack` (frames into a reused shared-memory buffer).
    """
    if not samples:
        raise ValueError('collate_train got an empty list of samples')
    batch: dict[str, Any] = {'video': _stack_video(samples, stack_frames)}
    for k in ('video_mask', 'video_index', 'text_ids', 'text_mask'):
        batch[k] = _stack([s[k] for s in samples])
    return batch


def collate_eval(samples: Sequence[Mapping[str, torch.Tensor]],
                 stack_frames: StackFrames | None = None) -> dict[str, torch.Tensor]:
    """Stack videos ([B, ...]) and concatenate every caption ([K_total, L]) with its video's index."""
    if not samples:
        raise ValueError('collate_eval got an empty list of samples')
    batch: dict[str, Any] = {'video': _stack_video(samples, stack_frames)}
    for k in VIDEO_KEYS:
        if k != 'video':
            batch[k] = _stack([s[k] for s in samples])
    counts = torch.tensor([s['text_ids'].shape[0] for s in samples], dtype=torch.long)  # [B]
    batch['text_ids'] = torch.cat([s['text_ids'] for s in samples])  # [K_total, L]
    batch['text_mask'] = torch.cat([s['text_mask'] for s in samples])  # [K_total, L]
    batch['text_video_index'] = torch.repeat_interleave(batch['video_index'], counts)  # [K_total]
    batch['text_caption_index'] = torch.cat([torch.arange(int(k), dtype=torch.long) for k in counts])
    return batch


def _split_eval(batch: Mapping[str, torch.Tensor], bounds: Sequence[int]) -> list[dict[str, torch.Tensor]]:
    """Cut an eval batch at video positions ``bounds`` (0 = b0 < b1 < ... = B); captions follow videos."""
    unknown = sorted(set(batch) - set(VIDEO_KEYS) - set(TEXT_KEYS))
    if unknown:
        raise ValueError(
            f'split_eval_batch does not know how to split keys {unknown}; expected {VIDEO_KEYS + TEXT_KEYS}')
    num_videos = batch['video'].shape[0]
    # collate_eval lays captions out video by video, each block starting at caption index 0. Using the block
    # starts (not video_index values) stays correct when a padded batch holds the same video twice.
    starts = torch.nonzero(batch['text_caption_index'] == 0).flatten().tolist()
    if len(starts) != num_videos:
        raise ValueError(f'eval batch has {num_videos} videos but {len(starts)} caption blocks; '
                         'was it built by collate_eval?')
    text_bounds = starts + [batch['text_ids'].shape[0]]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        part = {k: batch[k][lo:hi] for k in VIDEO_KEYS}
        part.update({k: batch[k][text_bounds[lo]:text_bounds[hi]] for k in TEXT_KEYS})
        out.append(part)
    return out


def split_eval_batch(batch: Mapping[str, torch.Tensor],
                     num_microbatches: int) -> list[dict[str, torch.Tensor]]:
    """Split an eval batch into ``min(num_microbatches, B)`` parts by video, each video keeping its captions.

    Composer's default split would cut the ``[B, ...]`` video rows and the ``[K_total, ...]`` caption rows
    at the same row numbers, separating captions from their videos. Part sizes differ by at most one.
    """
    if num_microbatches < 1:
        raise ValueError(f'num_microbatches must be >= 1, got {num_microbatches}')
    num_videos = batch['video'].shape[0]
    parts = min(num_microbatches, num_videos)
    bounds = [round(i * num_videos / parts) for i in range(parts + 1)] if parts else [0, 0]
    return _split_eval(batch, bounds)


def split_eval_batch_by_size(batch: Mapping[str, torch.Tensor],
                             microbatch_size: int | float) -> list[dict[str, torch.Tensor]]:
    """Composer's ``DataSpec.split_batch`` signature: microbatches of ``microbatch_size`` videos each."""
    if isinstance(microbatch_size, float):
        if not microbatch_size.is_integer():
            raise ValueError(f'eval batches split by whole videos; got microbatch_size={microbatch_size}')
        microbatch_size = int(microbatch_size)
    if microbatch_size < 1:
        raise ValueError(f'microbatch_size must be >= 1, got {microbatch_size}')
    num_videos = batch['video'].shape[0]
    bounds = list(range(0, num_videos, microbatch_size)) + [num_videos]
    return _split_eval(batch, bounds)


def _num_videos(batch: Mapping[str, torch.Tensor]) -> int:
    return int(batch['video'].shape[0])


def build_video_text_dataloader(*, local: str | None, remote: str | None = None, split: str | None = None,
                                batch_size: int, train: bool, max_frames: int, image_resolution: int,
                                max_words: int, num_workers: int = 0, shuffle_seed: int = 0,
                                slice_framepos: int = 2, drop_last: bool | None = None,
                                caption_seed: int | None = None,
                                streams: Sequence[Mapping[str, Any] | Stream] | None = None,
                                frame_order: int = 0, paragraph: bool = False, expand_sentences: bool = False,
                                **streaming_kwargs: Any) -> DataSpec:
    """Build the train or eval :class:`DataSpec` over an MDS video-text dataset.

    Args:
        local: MDS directory (holding ``index.json``, or ``<split>/index.json`` when ``split`` is given); with
            ``remote`` set it is the download cache and may not exist yet.
        batch_size: videos per batch **per rank** (also passed to StreamingDataset, which needs it).
        train: shuffled, ``drop_last=True``, one caption per video; else ordered, ``drop_last=False``, all
            captions, split into microbatches by video.
        shuffle_seed: StreamingDataset's shuffle seed (the order changes every epoch with ``seed + epoch``).
        caption_seed: seed of the per-epoch caption draw; ``None`` uses ``shuffle_seed``.
        streams: several MDS datasets mixed into one loader instead of ``local``/``remote``/``split``:
            ``[{'local': ..., 'remote': None, 'split': 'train_9k', 'proportion' | 'repeat' | 'choose': ...}]``
            (streaming ``Stream`` weights; or ``Stream`` objects).
        frame_order: 0 as stored, 1 reversed, 2 random (see :class:`VideoTextDataset`).
        paragraph: join each video's captions into one paragraph (DiDeMo, ActivityNet).
        expand_sentences: train on every (video, caption) pair once per epoch (needs ``<split>_pairs``).
        **streaming_kwargs: any other StreamingDataset argument (``shuffle``, ``epoch_size``...).

    Raises:
        FileNotFoundError: a local-only dataset whose folder or ``index.json`` is missing.
    """
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1 (per rank), got {batch_size}')
    if streams is not None:
        if local is not None or remote is not None or split is not None:
            raise ValueError('pass either `streams` or local/remote/split, not both')
        if not streams:
            raise ValueError('`streams` is empty')
        for spec in streams:
            spec = _stream_spec(spec)
            if spec.get('remote') is None:
                _check_local_folder(spec.get('local'), spec.get('split'))
        streaming_kwargs['streams'] = list(streams) if expand_sentences else make_streams(streams)
    elif remote is None:
        if local is None:
            raise ValueError('build_video_text_dataloader needs `local` (or `remote`, or `streams`)')
        _check_local_folder(local, split)
    dataset_kwargs: dict[str, Any] = {'shuffle': train, **streaming_kwargs}
    if local is not None:
        dataset_kwargs['local'] = local
    dataset = VideoTextDataset(
        max_frames=max_frames, image_resolution=image_resolution, max_words=max_words, train=train,
        slice_framepos=slice_framepos, caption_seed=shuffle_seed if caption_seed is None else caption_seed,
        frame_order=frame_order, paragraph=paragraph, expand_sentences=expand_sentences,
        remote=remote, split=split, batch_size=batch_size, shuffle_seed=shuffle_seed, **dataset_kwargs)
    loader_kwargs: dict[str, Any] = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_train if train else collate_eval,
        drop_last=train if drop_last is None else drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
    # Workers refill a few shared-memory frame buffers instead of a fresh segment per batch (frame_pool.py).
    dataloader = (FramePoolDataLoader(dataset, **loader_kwargs) if num_workers > 0
                  else DataLoader(dataset, **loader_kwargs))
    log.info('%s loader over %s: %d samples per rank, batch_size=%d, num_workers=%d',
             'train' if train else 'eval', remote or local or streams, len(dataset), batch_size, num_workers)
    return DataSpec(
        dataloader,
        get_num_samples_in_batch=_num_videos,
        split_batch=None if train else split_eval_batch_by_size,
    )


def _check_local_folder(local: str | None, split: str | None) -> None:
    if local is None:
        raise ValueError('a local-only stream needs `local`')
    folder = Path(local) / split if split else Path(local)
    if not (folder / 'index.json').is_file():
        what = 'does not exist' if not folder.exists() else 'has no index.json (not an MDS dataset)'
        raise FileNotFoundError(
            f'MDS dataset folder {str(folder)!r} {what}. Create the demo dataset with '
            '`python -m tempme_composer.data.synthetic --out DIR` (then use DIR/mds/train and '
            'DIR/mds/eval), '
            'or convert a real dataset with the tempme-convert converter.')
