"""Text from files (paths, captions, reasons) made safe to print on a terminal.

A file name may hold escape sequences (``\\x1b]0;…\\x07`` retitles the terminal, ``\\x1b[2J`` clears it); printed
raw they act on the user's terminal. Control characters are shown the way ``repr`` writes them instead.
"""

from __future__ import annotations

__all__ = ['printable']


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f'\\x{code:02x}'
    return f'\\u{code:04x}' if code < 0x10000 else f'\\U{code:08x}'


def printable(text: object) -> str:
    """``text`` with every control or format character (C0, DEL, C1, bidi overrides, line breaks) escaped; the rest kept,
    so ordinary non-ASCII names (``café.mp4``) print as they are."""
    s = str(text)
    if s.isprintable():
        return s
    return ''.join(ch if ch.isprintable() else _escape(ch) for ch in s)
