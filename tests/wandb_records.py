"""Read an offline W&B run file (``run-*.wandb``): W&B's transaction log, LevelDB's log format (32 KiB blocks,
7-byte record headers) after a 7-byte ``:W&B`` file header, each record a ``wandb_internal_pb2.Record``.

wandb-core writes offline runs only there (no summary/config files), so the tests read it to check what the
run holds, the way ``wandb sync`` would upload it."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_BLOCK = 32768
_HEADER = 7
_FULL, _LAST = 1, 4


def read_records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _ = struct.unpack('<4sHB', data[:_HEADER])
    if ident != b':W&B' or magic != 0xBEE1:
        raise ValueError(f'{path} is not a W&B run file')
    pos, payload = _HEADER, b''
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        _, length, kind = struct.unpack('<IHB', data[pos:pos + _HEADER]) if left >= _HEADER else (0, 0, 0)
        if left < _HEADER or (kind == 0 and length == 0):  # block padding
            pos += left
            continue
        payload += data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(payload)
            payload = b''
            yield record


def history_and_config(path: Path) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """``({step: {key: value}}, {config key: value})`` of an offline run."""
    history: dict[int, dict[str, Any]] = {}
    config: dict[str, Any] = {}
    for record in read_records(path):
        kind = record.WhichOneof('record_type')
        if kind == 'history':
            row = {item.key or '/'.join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(int(row['_step']), {}).update(row)
        elif kind in ('run', 'config'):
            items = record.run.config.update if kind == 'run' else record.config.update
            for item in items:
                value = json.loads(item.value_json)
                config[item.key] = value.get('value', value) if isinstance(value, dict) else value
    return history, config
