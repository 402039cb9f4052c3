"""Which files under a folder are videos: one extension list and one walk, shared by ``tempme-convert`` and
``tempme-index`` so that both commands see the same files.

Rules: the folder is searched recursively; hidden files and folders are left out; a link to a file is listed
under the link's own path (so every path stays inside the folder); a link to a folder is not followed
(``os.walk``'s rule: no cycles, nothing outside the folder by accident); a dangling or looping link is
listed and reported by :func:`video_file_stats` with its reason instead of stopping the run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ['VIDEO_EXTENSIONS', 'find_video_files', 'video_file_stats', 'videos_by_name']

#: Containers searched for (lower case); ``all_files`` tries every file instead.
VIDEO_EXTENSIONS = frozenset(
    {
        '.mp4',
        '.m4v',
        '.mov',
        '.avi',
        '.mkv',
        '.webm',
        '.flv',
        '.wmv',
        '.mpg',
        '.mpeg',
        '.ts',
        '.m2ts',
        '.mts',
        '.3gp',
        '.3g2',
        '.ogv',
        '.vob',
        '.asf',
        '.divx',
        '.gif',
    }
)


def find_video_files(root: Path, all_files: bool = False, exclude: Path | None = None) -> list[Path]:
    """Video files under ``root`` in walk order (each folder's files sorted, then its sub-folders sorted);
    ``exclude`` (e.g. an index being written inside ``root``) is left out with everything below it."""
    out = []
    skip = exclude.resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith('.') and (skip is None or (Path(dirpath) / d).resolve() != skip)
        )
        for name in sorted(filenames):
            if name.startswith('.'):
                continue
            if all_files or Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                out.append(Path(dirpath) / name)
    return out


def video_file_stats(
    root: Path, all_files: bool = False, exclude: Path | None = None
) -> tuple[dict[str, tuple[int, int]], list[dict[str, Any]]]:
    """``{path relative to root: (size, mtime_ns)}`` of the videos under ``root``, and the links that lead
    nowhere as ``{'path', 'reason'}`` (a dangling or looping link is skipped, never fatal)."""
    current, broken = {}, []
    for p in find_video_files(root, all_files, exclude=exclude):
        rel = str(p.relative_to(root))
        try:
            st = p.stat()
        except OSError as e:  # a dangling or looping symbolic link
            target = os.readlink(p) if p.is_symlink() else None
            why = (
                e.strerror
                if target is None
                else f'{e.strerror}: a symbolic link to {target!r} that does not resolve'
            )
            broken.append({'path': rel, 'reason': f'cannot read {str(p)!r} ({why})'})
            continue
        current[rel] = (st.st_size, st.st_mtime_ns)
    return current, broken


def videos_by_name(root: str | os.PathLike) -> dict[str, Path]:
    """The videos under ``root`` by file name and by stem, for annotations that name videos without their
    extension; a name ``x.3gp.mp4`` is reachable as ``x.3gp.mp4`` and ``x.3gp`` (DiDeMo). When two files
    share a name or stem the first in walk order wins, and a file name beats another file's stem.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f'videos folder {str(folder)!r} does not exist')
    by_name: dict[str, Path] = {}
    by_stem: dict[str, Path] = {}
    for path in find_video_files(folder):
        by_name.setdefault(path.name, path)
        by_stem.setdefault(os.path.splitext(path.name)[0], path)
    for stem, path in by_stem.items():
        by_name.setdefault(stem, path)
    return by_name
