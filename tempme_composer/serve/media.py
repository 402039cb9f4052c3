"""Thumbnails and video files, addressed by index row only: a request never names a path. The file served is
the row's video inside the indexed folder, after following every link (as `inference.folders` confines the
names an index gives), and still the file that was indexed (its size unchanged); anything else is a 404 naming
the row. Range requests (seeking to a moment) are Starlette's `FileResponse`."""

from __future__ import annotations

import mimetypes
import os
import stat
from pathlib import Path

from tempme_composer.inference.folders import is_inside
from tempme_composer.inference.search import VideoIndex, full_path
from tempme_composer.serve.limits import ApiError

__all__ = ['parse_row', 'thumbnail_file', 'media_file', 'media_type']


def parse_row(text: str, route: str) -> int:
    """The row of ``/media/ROW`` or ``/thumbnail/ROW``: digits only (a path, ``..`` or a sign is a 404)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise ApiError(
            404, f'/{route}/{text[:80]}: not found; expected /{route}/ROW with ROW an index row number'
        )
    return int(text)


def _row(index: VideoIndex, row: int, route: str) -> dict:
    if not 0 <= row < len(index.rows):
        raise ApiError(
            404, f'/{route}/{row}: row {row} is not in the index (rows 0 to {len(index.rows) - 1})'
        )
    return index.rows[row]


def thumbnail_file(index: VideoIndex, row: int) -> Path:
    _row(index, row, 'thumbnail')
    path = index.thumbnail(row)
    if path is None or not path.is_file():
        raise ApiError(404, f'/thumbnail/{row}: row {row} has no thumbnail')
    return path


def media_file(index: VideoIndex, row: int) -> Path:
    """The indexed video of ``row``, checked as the module docstring says."""
    r = _row(index, row, 'media')
    video = full_path(index, r['path'])
    if video is None:
        raise ApiError(
            404,
            f'/media/{row}: row {row} is video id {r["path"]!r} of an MDS split; only an index of '
            'a folder of videos has files to play',
        )
    root = Path(index.manifest['source']['root'])
    where = f'/media/{row}: the video of row {row} ({r["path"]})'
    if not is_inside(video, root):
        raise ApiError(404, f'{where} now links outside the indexed folder; it is not served')
    try:
        st = os.stat(video)
        with open(video, 'rb'):
            pass
    except FileNotFoundError:
        raise ApiError(404, f'{where} was deleted since it was indexed') from None
    except OSError as e:
        raise ApiError(404, f'{where} cannot be read ({e.strerror})') from None
    if not stat.S_ISREG(st.st_mode):
        raise ApiError(404, f'{where} is no longer a regular file')
    size = r.get('size')
    if isinstance(size, int) and size != st.st_size:
        raise ApiError(
            404,
            f'{where} changed since it was indexed ({size} bytes then, {st.st_size} now); '
            're-run tempme-index to index it again',
        )
    return video.resolve()


def media_type(path: Path) -> str:
    kind, _ = mimetypes.guess_type(path.name)
    return kind or 'application/octet-stream'
