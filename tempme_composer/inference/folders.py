"""Names read from an index or export folder stay inside it; output folders are replaced only when they are ours.

Index and export folders are shared and received, so every file name they give (manifest entries, a row's
thumbnail, a pending batch) is treated as hostile: it must be a plain file name of the expected form that
resolves inside its folder (a symbolic link pointing out is refused too), checked when it is read and before
anything is deleted. See ``docs/using-models.md`` (bad inputs).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = ['UnsafeNameError', 'confined', 'is_inside', 'overlap', 'describe_contents']


class UnsafeNameError(ValueError):
    """A name from a file that is not a plain file name of the expected form inside its folder."""


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (after following every link) is ``folder`` or below it."""
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def confined(folder: Path, name: object, pattern: re.Pattern[str], *, source: str, entry: str,
             expected: str) -> Path:
    """``folder / name`` when ``name`` is a plain file name matching ``pattern`` that resolves inside ``folder``.

    Raises:
        UnsafeNameError: naming ``source`` (the file that gave the name), the ``entry`` and what was expected,
            e.g. ``index.json: 'captions' is '../../x', expected a file name inside the index``.
    """
    if not isinstance(name, str) or not pattern.fullmatch(name) or '/' in name or '\\' in name \
            or name in ('.', '..') or '\x00' in name:
        raise UnsafeNameError(f'{source}: {entry} is {name!r}, expected {expected}')
    path = folder / name
    if not is_inside(path, folder):
        raise UnsafeNameError(f'{source}: {entry} is {name!r}, which links outside {folder}; expected {expected}')
    return path


def overlap(a: Path, b: Path) -> bool:
    """Whether one folder is the other or contains it (after following links)."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def describe_contents(folder: Path, limit: int = 5) -> str:
    """``'best.pt, config.yaml, notes.txt and 3 more'``: what a folder holds, for a refusal message."""
    try:
        names: Iterable[str] = sorted(os.listdir(folder))
    except OSError as e:
        return f'unreadable: {e.strerror}'
    names = list(names)
    shown = ', '.join(names[:limit])
    return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')
