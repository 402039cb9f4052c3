"""Check that a folder shared by several tests is left as it was made (tests change only their own copies)."""

from __future__ import annotations

from pathlib import Path


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (symlinks as themselves)."""
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(folder.rglob('*'))
    }


def check_unchanged(folder: Path, before: dict[str, tuple[int, int]], what: str) -> None:
    """Fail naming the files of ``folder`` that a test added, removed or rewrote since ``before``."""
    after = snapshot(folder)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f'a test changed the shared {what} {folder} (copy it first): {changed[:10]}'
