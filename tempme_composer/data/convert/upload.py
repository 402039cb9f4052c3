"""Uploading a finished conversion to an object store (shards before their index.json; the hidden decode cache
stays behind); a failed conversion is not uploaded."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tempme_composer.remote import RemoteStorageError, upload_folder

__all__ = ['upload_conversion']


def upload_conversion(out: Path, remote: str, status: int, keep: bool) -> int:
    """Upload a finished conversion (not the hidden work cache); a failed conversion is not uploaded."""
    if status != 0:
        print(
            f'tempme-convert: not uploaded to {remote} because the conversion failed; the result is in {out}',
            file=sys.stderr,
        )
        return status
    try:
        uploaded = upload_folder(out, remote, skip_hidden=True)
    except RemoteStorageError as e:
        print(
            f'tempme-convert: error: {e}. The converted data is kept in {out}: rerun with --staging {out} '
            'to upload it without decoding again.',
            file=sys.stderr,
        )
        return 1
    print(f'uploaded {len(uploaded)} files to {remote}')
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0
