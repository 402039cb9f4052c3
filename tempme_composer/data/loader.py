"""The train or eval :class:`~composer.core.DataSpec` over MDS video-text data, built from one
:class:`LoaderOptions` (what to read, how to batch it, how to sample frames and captions)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from composer.core import DataSpec
from streaming import Stream
from torch.utils.data import DataLoader

from tempme_composer.data.collate import collate_eval, collate_train, num_videos, split_eval_batch_by_size
from tempme_composer.data.dataset import VideoTextDataset
from tempme_composer.data.frame_pool import FramePoolDataLoader
from tempme_composer.data.streams import check_local_folder, make_streams, stream_spec

__all__ = ['LoaderOptions', 'build_video_text_dataloader']

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LoaderOptions:
    """Everything a video-text loader is built from.

    Attributes:
        batch_size: videos per batch **per rank** (also passed to StreamingDataset, which needs it).
        train: shuffled, ``drop_last=True``, one caption per video; else ordered, ``drop_last=False``, all
            captions, split into microbatches by video.
        max_frames: frame budget T per video (see :class:`~tempme_composer.data.dataset.VideoTextDataset`).
        image_resolution: side R of the square CLIP input.
        max_words: token length L per caption (SOT/EOT included).
        local: MDS directory (holding ``index.json``, or ``<split>/index.json`` when ``split`` is given); with
            ``remote`` set it is the download cache and may not exist yet.
        remote: object-store folder of the dataset (``s3://...``), or None for a local one.
        split: sub-folder of ``local``/``remote`` to read.
        streams: several MDS datasets mixed into one loader instead of ``local``/``remote``/``split``:
            ``[{'local': ..., 'remote': None, 'split': 'train_9k', 'proportion' | 'repeat' | 'choose': ...}]``
            (streaming ``Stream`` weights; or ``Stream`` objects).
        num_workers: loader worker processes (0: in the main process).
        shuffle_seed: StreamingDataset's shuffle seed (the order changes every epoch with ``seed + epoch``).
        slice_framepos: 0 first / 1 last / 2 uniform frames when a video has more than ``max_frames``.
        drop_last: None follows ``train``.
        caption_seed: seed of the per-epoch caption draw; ``None`` uses ``shuffle_seed``.
        frame_order: 0 as stored, 1 reversed, 2 random (see :class:`~tempme_composer.data.dataset.VideoTextDataset`).
        paragraph: join each video's captions into one paragraph (DiDeMo, ActivityNet).
        expand_sentences: train on every (video, caption) pair once per epoch (needs ``<split>_pairs``).
        check_remote_hashes: verify each downloaded remote shard against its recorded hash.
        streaming: any other StreamingDataset argument (``shuffle``, ``epoch_size``...).
    """

    batch_size: int
    train: bool
    max_frames: int
    image_resolution: int
    max_words: int
    local: str | None = None
    remote: str | None = None
    split: str | None = None
    streams: Sequence[Mapping[str, Any] | Stream] | None = None
    num_workers: int = 0
    shuffle_seed: int = 0
    slice_framepos: int = 2
    drop_last: bool | None = None
    caption_seed: int | None = None
    frame_order: int = 0
    paragraph: bool = False
    expand_sentences: bool = False
    check_remote_hashes: bool = True
    streaming: Mapping[str, Any] = field(default_factory=dict)


def build_video_text_dataloader(options: LoaderOptions) -> DataSpec:
    """Build the train or eval :class:`DataSpec` over an MDS video-text dataset described by ``options``.

    Raises:
        ValueError: contradicting or missing sources (``streams`` with ``local``, neither), a bad batch size.
        FileNotFoundError: a local-only dataset whose folder or ``index.json`` is missing.
    """
    o = options
    if o.batch_size < 1:
        raise ValueError(f'batch_size must be >= 1 (per rank), got {o.batch_size}')
    streaming_kwargs = dict(o.streaming)
    if o.streams is not None:
        if o.local is not None or o.remote is not None or o.split is not None:
            raise ValueError('pass either `streams` or local/remote/split, not both')
        if not o.streams:
            raise ValueError('`streams` is empty')
        for spec in o.streams:
            spec = stream_spec(spec)
            if spec.get('remote') is None:
                check_local_folder(spec.get('local'), spec.get('split'))
        streaming_kwargs['streams'] = list(o.streams) if o.expand_sentences else make_streams(o.streams)
    elif o.remote is None:
        if o.local is None:
            raise ValueError('build_video_text_dataloader needs `local` (or `remote`, or `streams`)')
        check_local_folder(o.local, o.split)
    dataset_kwargs: dict[str, Any] = {'shuffle': o.train, **streaming_kwargs}
    if o.local is not None:
        dataset_kwargs['local'] = o.local
    dataset = VideoTextDataset(
        max_frames=o.max_frames,
        image_resolution=o.image_resolution,
        max_words=o.max_words,
        train=o.train,
        slice_framepos=o.slice_framepos,
        caption_seed=o.shuffle_seed if o.caption_seed is None else o.caption_seed,
        frame_order=o.frame_order,
        paragraph=o.paragraph,
        expand_sentences=o.expand_sentences,
        check_remote_hashes=o.check_remote_hashes,
        remote=o.remote,
        split=o.split,
        batch_size=o.batch_size,
        shuffle_seed=o.shuffle_seed,
        **dataset_kwargs,
    )
    loader_kwargs: dict[str, Any] = dict(
        batch_size=o.batch_size,
        num_workers=o.num_workers,
        collate_fn=collate_train if o.train else collate_eval,
        drop_last=o.train if o.drop_last is None else o.drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=o.num_workers > 0,
    )
    # Workers refill a few shared-memory frame buffers instead of a fresh segment per batch (frame_pool.py).
    dataloader = (
        FramePoolDataLoader(dataset, **loader_kwargs)
        if o.num_workers > 0
        else DataLoader(dataset, **loader_kwargs)
    )
    log.info(
        '%s loader over %s: %d samples per rank, batch_size=%d, num_workers=%d',
        'train' if o.train else 'eval',
        o.remote or o.local or o.streams,
        len(dataset),
        o.batch_size,
        o.num_workers,
    )
    return DataSpec(
        dataloader,
        get_num_samples_in_batch=num_videos,
        split_batch=None if o.train else split_eval_batch_by_size,
    )
