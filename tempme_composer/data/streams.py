"""Where a loader's samples come from: stream specs (one folder, or several mixed with streaming's weights),
the caption-pair streams of ``expand_sentences``, and the checks that name a missing folder or an unknown
format version before streaming fails on it."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from streaming import Stream

from tempme_composer.data.format import MDS_INDEX_FILE, META_FILE, SUPPORTED_FORMAT_VERSIONS, pairs_split

__all__ = [
    'check_dataset_format',
    'check_local_folder',
    'describe_remote_streams',
    'expand_streams',
    'has_remote',
    'make_streams',
    'stream_spec',
]

log = logging.getLogger(__name__)


def has_remote(kwargs: Mapping[str, Any]) -> bool:
    streams = kwargs.get('streams') or []
    return kwargs.get('remote') is not None or any(stream_spec(s).get('remote') is not None for s in streams)


def describe_remote_streams(kwargs: Mapping[str, Any]) -> str:
    specs = [stream_spec(s) for s in kwargs.get('streams') or []] or [kwargs]
    return ', '.join(
        f'{s.get("remote")}/{s.get("split") or ""} (cache {s.get("local")})'
        for s in specs
        if s.get('remote') is not None
    )


def stream_spec(stream: Stream | Mapping[str, Any]) -> dict[str, Any]:
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
        raise ValueError(
            f'unknown stream keys {sorted(unknown)}; expected local, remote, split, '
            'proportion, repeat or choose'
        )
    return dict(stream)


def make_streams(streams: Sequence[Stream | Mapping[str, Any]]) -> list[Stream]:
    """``[{local, remote, split, proportion|repeat|choose}, ...]`` -> streaming ``Stream`` objects."""
    return [s if isinstance(s, Stream) else Stream(**stream_spec(s)) for s in streams]


def expand_streams(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn video streams into [caption-pair streams..., video streams with choose=0...]."""
    kwargs = dict(kwargs)
    streams = kwargs.pop('streams', None)
    if streams is None:
        if kwargs.get('local') is None and kwargs.get('remote') is None:
            raise ValueError('expand_sentences needs local/remote (and split) or streams')
        specs = [
            {
                'local': kwargs.pop('local', None),
                'remote': kwargs.pop('remote', None),
                'split': kwargs.pop('split', None),
            }
        ]
    else:
        specs = [stream_spec(s) for s in streams]
        for key in ('local', 'remote', 'split'):
            if kwargs.pop(key, None) is not None:
                raise ValueError(f'pass either streams or {key}, not both')
    pairs, videos = [], []
    for spec in specs:
        if spec.get('proportion') is not None:
            raise ValueError(
                'expand_sentences does not support relative `proportion` stream weights; use '
                '`repeat` or `choose` (absolute, counted in caption pairs)'
            )
        split = spec.get('split')
        if not split:
            raise ValueError(
                'expand_sentences needs a `split` per stream (the caption index is <split>_pairs)'
            )
        local = spec.get('local')
        if spec.get('remote') is None and local is not None:
            folder = Path(local) / pairs_split(split)
            if not (folder / MDS_INDEX_FILE).is_file():
                raise FileNotFoundError(
                    f'expand_sentences needs the caption index {str(folder)!r} (written by tempme-convert next '
                    f'to {split!r}); it does not exist. Re-run tempme-convert, or set expand_sentences false.'
                )
        weight = {k: spec[k] for k in ('repeat', 'choose') if spec.get(k) is not None}
        pairs.append(Stream(local=local, remote=spec.get('remote'), split=pairs_split(split), **weight))
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
    path = os.path.join(folder, META_FILE)
    if not os.path.isfile(path) and stream.remote is not None:
        try:
            stream._download_file(META_FILE)  # streaming's own downloader (any supported store)
        except Exception as e:  # optional file: older datasets do not have it
            log.debug('no %s at %s/%s: %s', META_FILE, stream.remote, stream.split, e)
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        meta = json.load(f)
    version = meta.get('format_version')
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ValueError(
            f'{path}: dataset format version {version!r} is not supported by this tempme_composer (it reads '
            f"{list(SUPPORTED_FORMAT_VERSIONS)}); convert the data again with this version's tempme-convert "
            'or upgrade tempme_composer'
        )
    return meta


def check_local_folder(local: str | None, split: str | None) -> None:
    if local is None:
        raise ValueError('a local-only stream needs `local`')
    folder = Path(local) / split if split else Path(local)
    if not (folder / MDS_INDEX_FILE).is_file():
        what = 'does not exist' if not folder.exists() else 'has no index.json (not an MDS dataset)'
        raise FileNotFoundError(
            f'MDS dataset folder {str(folder)!r} {what}. Create the demo dataset with '
            '`python -m tempme_composer.data.synthetic --out DIR` (then use DIR/mds/train and '
            'DIR/mds/eval), '
            'or convert a real dataset with the tempme-convert converter.'
        )
