"""A full disk while a checkpoint is written: recognise it and say what survived and how to continue."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

__all__ = ['disk_full_message', 'is_disk_full', 'kept_checkpoints']


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a full disk or an exceeded quota (the two a user fixes by freeing space)."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(what: str, folder: str | Path, error: OSError, kept: str) -> str:
    """One paragraph: what could not be written where, what ``kept`` checkpoints survive, how to continue."""
    return (
        f'disk full while writing {what} in {folder} ({os.strerror(error.errno)}). Nothing saved before was '
        f'touched: {kept}. Free space on that disk (or set output_dir to a larger one) and rerun with '
        'autoresume=true to continue from the last checkpoint.'
    )


def kept_checkpoints(folder: Path) -> str:
    """A sentence naming the latest resumable checkpoint and best.pt in ``folder`` (what survives)."""
    kept = []
    latest = folder / 'latest-rank0.pt'
    if latest.is_symlink() or latest.is_file():
        target = os.readlink(latest) if latest.is_symlink() else latest.name
        kept.append(f'the latest resumable checkpoint {folder / target}')
    if (folder / 'best.pt').is_file():
        try:
            record = json.loads((folder / 'best.json').read_text())
            what = f' ({record["metric"]}={record["value"]:.2f}, epoch {record["epoch"]})'
        except (OSError, ValueError, KeyError, TypeError):
            what = ''
        kept.append(f'the best weights {folder / "best.pt"}{what}')
    return ' and '.join(kept) if kept else f'no checkpoint had been written to {folder} yet'
