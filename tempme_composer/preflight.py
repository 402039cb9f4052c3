"""`check_dataset`: an MDS folder that is missing, empty (zero samples) or has a missing, truncated or
corrupt shard file becomes one clear paragraph naming the config key and the fix, before streaming fails
deep inside a worker. The checkpoint checks live in `tempme_composer.checkpointing`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from tempme_composer.errors import RecipeError

__all__ = ['check_dataset']

_DATA_FIX = (
    'Point it at a folder written by `tempme-convert` (or `python -m tempme_composer.data.synthetic '
    '--out DIR` for the demo set: DIR/mds/train and DIR/mds/eval)'
)


def check_dataset(key: str, local: str | None, split: str | None, validate_hash: bool = True) -> int:
    """Check the local MDS dataset that config key ``key`` names and return its number of samples.

    Raises:
        RecipeError: the folder or its ``index.json`` is missing, the index is unreadable, the dataset has
            zero samples, a shard file is missing or shorter/longer than the index says (truncated copy), or
            (``validate_hash``) its bytes do not match the hash the writer recorded (corrupt copy).
    """
    folder = Path(local) / split if split else Path(local or '')
    index = folder / 'index.json'
    if not index.is_file():
        what = 'does not exist' if not folder.exists() else 'has no index.json, so it is not an MDS dataset'
        raise RecipeError(f'{key}: the dataset folder {str(folder)!r} {what}. {_DATA_FIX}, or fix the path.')
    try:
        shards = json.loads(index.read_text())['shards']
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RecipeError(
            f'{key}: {index} is not a readable MDS index ({e}). The copy is damaged: '
            're-run the conversion (or copy the folder again).'
        ) from e
    total = sum(int(s.get('samples', 0)) for s in shards)
    if total == 0:
        raise RecipeError(
            f'{key}: the dataset {str(folder)!r} has zero samples ({len(shards)} shards). The '
            'conversion skipped every video: read skipped.csv and conversion_report.json next to '
            'it, fix the annotations/video paths and convert again.'
        )
    for shard in shards:
        raw = shard.get('zip_data') if shard.get('compression') else shard.get('raw_data')
        raw = raw or shard.get('raw_data') or {}
        name, expected = raw.get('basename'), raw.get('bytes')
        if not name or expected is None:
            continue
        path = folder / name
        if not path.is_file():
            raise RecipeError(
                f'{key}: shard {path} listed in {index} is missing. The dataset copy is incomplete: '
                'copy the folder again or re-run the conversion.'
            )
        size = path.stat().st_size
        if size != int(expected):
            raise RecipeError(
                f'{key}: shard {path} is {size} bytes but {index} says {expected}, so the file is '
                'truncated or corrupt (an interrupted copy or download, or a full disk). Copy '
                'the folder again or re-run the conversion; with `remote` set, delete the local '
                'cache folder so it is downloaded again.'
            )
        if validate_hash:
            _check_shard_hashes(key, path, index, raw.get('hashes') or {})
    return total


def _check_shard_hashes(key: str, path: Path, index: Path, hashes: Mapping[str, str]) -> None:
    """Recompute the hashes the writer recorded for a shard (none for shards written without hashes)."""
    if not hashes:
        return
    from streaming.base.hashing import get_hash

    data = path.read_bytes()
    for algo, expected in hashes.items():
        if get_hash(algo, data) != expected:
            raise RecipeError(
                f'{key}: shard {path} has the right size but its {algo} hash does not match the one '
                f'in {index}, so its bytes are corrupt (a bad copy or disk). Copy the folder again or '
                're-run the conversion (data.validate_hash=false skips this check).'
            )
