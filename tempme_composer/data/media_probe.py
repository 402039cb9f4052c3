"""Why a video file FFmpeg could not read is bad: cut off (download again) or not a video at all.

FFmpeg says "Invalid data found when processing input" both for an MP4 whose download stopped partway and
for an HTML error page saved as ``.mp4``; the user's fix differs (download again vs. find the real file), so
the converter looks at the bytes itself: an empty file, a container whose structure runs past the end of
the file or lacks its index (MP4 ``moov`` box, AVI ``RIFF`` size), a known container FFmpeg still cannot
read, or bytes that are no media container at all (text, HTML, an image, an archive).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

__all__ = ['EMPTY_FILE', 'INCOMPLETE_DOWNLOAD', 'NOT_MEDIA', 'UNREADABLE', 'diagnose_file']

EMPTY_FILE = 'empty_file'
INCOMPLETE_DOWNLOAD = 'incomplete_download'
NOT_MEDIA = 'not_media'
UNREADABLE = 'unreadable'

_AGAIN = 'download (or copy) it again'
_MP4_TOP_BOXES = {b'ftyp', b'moov', b'mdat', b'free', b'skip', b'wide', b'pnot', b'uuid', b'moof', b'mfra',
                  b'styp', b'sidx', b'meta', b'pdin', b'prft', b'emsg'}
#: (signature check, container name) for containers this module does not walk.
_OTHER_MEDIA = (
    (lambda h: h.startswith(b'\x1a\x45\xdf\xa3'), 'Matroska/WebM'),
    (lambda h: len(h) > 188 and h[0] == 0x47 and h[188] == 0x47, 'MPEG-TS'),
    (lambda h: h.startswith(b'FLV'), 'FLV'),
    (lambda h: h.startswith(b'OggS'), 'Ogg'),
    (lambda h: h.startswith((b'GIF87a', b'GIF89a')), 'GIF'),
    (lambda h: h.startswith(b'\x00\x00\x01\xba'), 'MPEG-PS'),
    (lambda h: h.startswith(b'\x30\x26\xb2\x75\x8e\x66\xcf\x11'), 'ASF/WMV'),
)
_NOT_VIDEO = (
    (b'\xff\xd8\xff', 'a JPEG image'), (b'\x89PNG', 'a PNG image'), (b'%PDF', 'a PDF document'),
    (b'PK\x03\x04', 'a ZIP archive'), (b'\x1f\x8b', 'a gzip archive'), (b'Rar!', 'a RAR archive'),
)


def diagnose_file(path: str | os.PathLike) -> tuple[str, str] | None:
    """Classify a file FFmpeg failed on: ``(reason, detail)`` or None when its bytes look like an intact media
    container (then FFmpeg's own error is the best description).

    Reasons: ``empty_file`` (0 bytes), ``incomplete_download`` (the container's structure runs past the end
    of the file, or its index is missing), ``not_media`` (no media container: text, HTML, an image, ...),
    ``unreadable`` (a known container FFmpeg cannot read: damaged or cut off).
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return EMPTY_FILE, f'the file is empty (0 bytes): the download never started or was cut off; {_AGAIN}'
    with open(path, 'rb') as f:
        head = f.read(512)
    if head[4:8] in _MP4_TOP_BOXES:
        return _diagnose_mp4(path, size)
    if head.startswith(b'RIFF') and head[8:12] == b'AVI ':
        declared = struct.unpack_from('<I', head, 4)[0] + 8
        if declared > size:
            return INCOMPLETE_DOWNLOAD, (f'the AVI header declares {declared:,} bytes but the file has {size:,}: '
                                         f'it was cut off (an incomplete download or copy); {_AGAIN}')
        return None
    for check, name in _OTHER_MEDIA:
        if check(head):
            return UNREADABLE, (f'a {name} file that FFmpeg cannot read: damaged or cut off ({size:,} bytes); '
                                f'{_AGAIN}, or re-encode it')
    return NOT_MEDIA, f'not a media file: {_describe(head)} ({size:,} bytes); find the real video file'


def _diagnose_mp4(path: Path, size: int) -> tuple[str, str] | None:
    """Walk the top-level MP4/MOV boxes: one running past the end of the file, or no ``moov`` (the index)."""
    seen: list[str] = []
    offset = 0
    with open(path, 'rb') as f:
        while offset < size:
            f.seek(offset)
            header = f.read(16)
            if len(header) < 8:
                return INCOMPLETE_DOWNLOAD, (f'the MP4 file ends inside a box header at byte {offset:,}: it was cut '
                                             f'off (an incomplete download or copy); {_AGAIN}')
            box_size, kind = struct.unpack_from('>I4s', header)
            name = kind.decode('latin-1')
            if box_size == 1:
                if len(header) < 16:
                    return INCOMPLETE_DOWNLOAD, (f'the MP4 file ends inside the {name!r} box header: it was cut '
                                                 f'off; {_AGAIN}')
                box_size = struct.unpack_from('>Q', header, 8)[0]
            elif box_size == 0:  # the box runs to the end of the file
                box_size = size - offset
            if box_size < 8:
                return UNREADABLE, (f'damaged MP4 structure: box {name!r} at byte {offset:,} declares {box_size} '
                                    f'bytes; {_AGAIN}, or re-encode it')
            if offset + box_size > size:
                missing = ' (the index, moov, is not in the part that arrived)' if 'moov' not in seen else ''
                return INCOMPLETE_DOWNLOAD, (
                    f'the MP4 box {name!r} at byte {offset:,} declares {box_size:,} bytes but the file ends '
                    f'{offset + box_size - size:,} bytes early{missing}: it was cut off (an incomplete download or '
                    f'copy); {_AGAIN}')
            seen.append(name)
            offset += box_size
    if 'moov' not in seen:
        return INCOMPLETE_DOWNLOAD, (f'the MP4 index (moov box) is missing (boxes: {", ".join(seen)}): the file '
                                     f'was cut off before its index was written or arrived; {_AGAIN}')
    return None


def _describe(head: bytes) -> str:
    """A few words on what the bytes are, to tell the user what was saved instead of a video."""
    for magic, what in _NOT_VIDEO:
        if head.startswith(magic):
            return what
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        text = ''
        if head[:-3]:  # a multi-byte character cut at 512 bytes still counts as text
            try:
                text = head[:-3].decode('utf-8')
            except UnicodeDecodeError:
                text = ''
    if text and sum(c.isprintable() or c.isspace() for c in text) >= 0.95 * len(text):
        start = ' '.join(text.split())[:40]
        if '<html' in text.lower() or text.lstrip().lower().startswith('<!doctype'):
            return f'an HTML page (often a download link\'s error or login page), starting {start!r}'
        return f'text, starting {start!r}'
    return f'unknown binary data (first bytes {head[:8].hex(" ")})'
