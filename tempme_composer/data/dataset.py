"""One MDS video sample -> model-ready tensors: frame selection and ordering, the per-epoch caption draw,
tokenisation, and error messages that name the sample.

One MDS sample is one video (JPEG frames + all its captions), as written by
:mod:`tempme_composer.data.synthetic` or ``tempme-convert``. Training draws one caption per video and epoch;
evaluation keeps all captions so that text->video retrieval ranks every caption against every video.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from streaming import StreamingDataset
from streaming.base.dataset import _ShardState

from tempme_composer.clip.tokenizer import tokenize
from tempme_composer.data.frame_layout import StoredFrames
from tempme_composer.data.remote_shards import RemoteShardError, ShardErrors
from tempme_composer.data.shared_memory import SharedMemoryNameError, construct_streaming
from tempme_composer.data.streams import (
    check_dataset_format,
    describe_remote_streams,
    expand_streams,
    has_remote,
)
from tempme_composer.data.uint8_frames import Frame, frames_to_uint8
from tempme_composer.data.video import SLICE_FRAMEPOS_CHOICES, select_frame_indices

__all__ = ['FRAME_ORDER_CHOICES', 'TOKEN_CACHE_SIZE', 'VideoTextDataset']

log = logging.getLogger(__name__)

#: ``frame_order`` values (docs/reference/evaluation-protocol.md#frame-sampling, ``data.train_frame_order``), applied after the max_frames
#: selection.
FRAME_ORDER_CHOICES = {0: 'as stored', 1: 'reversed', 2: 'random permutation'}
#: Captions whose token ids each loader worker keeps (``VideoTextDataset.caption_tokens``): ~0.3 KB each.
TOKEN_CACHE_SIZE = 65_536

_LOCAL = _ShardState.LOCAL


class VideoTextDataset(ShardErrors, StreamingDataset):
    """StreamingDataset over per-video MDS samples that returns model-ready tensors.

    Args:
        max_frames: frame budget T; longer videos are reduced with :func:`select_frame_indices`, shorter ones
            are zero-padded and masked.
        image_resolution: side R of the square CLIP input.
        max_words: token length L per caption (SOT/EOT included).
        train: one caption per sample (drawn per epoch) if True, all captions if False.
        slice_framepos: 0 first / 1 last / 2 uniform frames (docs/reference/evaluation-protocol.md#frame-sampling).
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

    def __init__(
        self,
        *,
        max_frames: int,
        image_resolution: int,
        max_words: int,
        train: bool,
        slice_framepos: int = 2,
        caption_seed: int = 0,
        frame_order: int = 0,
        paragraph: bool = False,
        expand_sentences: bool = False,
        check_remote_hashes: bool = True,
        **streaming_kwargs: Any,
    ) -> None:
        if max_frames < 1:
            raise ValueError(f'max_frames must be >= 1, got {max_frames}')
        if image_resolution < 1:
            raise ValueError(f'image_resolution must be >= 1, got {image_resolution}')
        if slice_framepos not in SLICE_FRAMEPOS_CHOICES:
            raise ValueError(
                f'slice_framepos must be one of {sorted(SLICE_FRAMEPOS_CHOICES)}, got {slice_framepos!r}'
            )
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
            streaming_kwargs = expand_streams(streaming_kwargs)
        try:
            construct_streaming(functools.partial(super().__init__, **streaming_kwargs))
        except SharedMemoryNameError:
            raise
        except Exception as e:  # e.g. the remote index.json cannot be downloaded
            if not has_remote(streaming_kwargs):
                raise
            raise RemoteShardError(
                f'cannot open the remote dataset {describe_remote_streams(streaming_kwargs)}: '
                f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}. Check the '
                'remote path (it must hold index.json), the credentials and S3_ENDPOINT_URL.'
            ) from e
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
                    sizes.append(int(np.frombuffer(data[offset : offset + 4], np.uint32)[0]))
                    offset += 4
            for name, size in zip(shard.column_names, sizes, strict=True):
                if name == 'video_id':
                    return data[offset : offset + size].decode('utf-8')
                offset += size
        except Exception as e:  # only used to improve an error message
            log.debug('could not recover the video_id of sample %d: %s', idx, e)
        return '<unknown>'

    def frames_tensor(self, frames: Sequence[Frame]) -> torch.Tensor:
        """The kept frames, zero-padded to ``max_frames``: the ``uint8 [T, R, R, 3]`` the model normalises on its
        device (each frame decoded and cropped straight into its slot: no second copy per sample)."""
        video = torch.empty(
            self.max_frames, self.image_resolution, self.image_resolution, 3, dtype=torch.uint8
        )
        frames_to_uint8(frames, self.image_resolution, out=video[: len(frames)])
        video[len(frames) :] = 0
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
            raise ValueError(
                f'sample {idx} (video_id {video_id!r}) cannot be decoded: {e}. '
                'Every sample needs at least one frame.'
            ) from e
        video_id = sample.get('video_id', '<unknown>')
        if pair is not None and video_id != pair_video_id:
            raise ValueError(
                f'caption index says video {pair_video_id!r} but sample {idx} is {video_id!r}: '
                'the <split>_pairs folder does not belong to this video split; re-run tempme-convert'
            )
        frames = StoredFrames(sample['frames'], f'sample {idx} (video_id {video_id!r})')
        if not len(frames):
            raise ValueError(f'sample {idx} (video_id {video_id!r}) has zero frames')
        if 'num_frames' in sample and int(sample['num_frames']) != len(frames):
            raise ValueError(
                f'sample {idx} (video_id {video_id!r}): num_frames={sample["num_frames"]} but '
                f'{len(frames)} frames are stored'
            )
        captions = sample['captions']
        if isinstance(captions, str):
            captions = [captions]
        if not captions:
            raise ValueError(f'sample {idx} (video_id {video_id!r}) has zero captions')

        keep = select_frame_indices(len(frames), self.max_frames, self.slice_framepos)
        if self.frame_order == 1:
            keep = keep[::-1]
        elif self.frame_order == 2:
            keep = keep[
                np.random.default_rng([self.caption_seed, self.caption_epoch, idx, 1]).permutation(len(keep))
            ]
        video = self.frames_tensor(
            frames.select_stored(keep)
        )  # [T, R, R, 3]; only the kept frames are decoded
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
