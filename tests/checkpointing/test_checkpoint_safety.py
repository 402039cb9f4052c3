"""safe_torch_load: a checkpoint that would run code is refused before anything is unpickled.

The recipe's own checkpoints (every kind) are loaded through it in tests/training/test_bad_inputs.py, where they are
trained for real; here the refusals, on small hand-made checkpoints.
"""

from __future__ import annotations

import datetime
import fractions
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tempme_composer.checkpointing.safe_load import allowed_globals, safe_torch_load
from tempme_composer.errors import UnsafeCheckpointError


class Payload:
    """Unpickling this runs ``touch MARKER`` (a stand-in for any code a shared file could carry)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def _recipe_like(extra: object | None = None) -> dict:
    """What a Composer checkpoint of this recipe holds: tensors, Composer's numpy RNG state, a timedelta and
    a TorchVersion (plus ``extra`` in the metadata)."""
    np.random.seed(0)
    metadata = {'torch_version': torch.torch_version.TorchVersion(torch.__version__), 'precision': 'fp32'}
    if extra is not None:
        metadata['extra'] = extra
    return {
        'state': {'model': {'model.w': torch.randn(3, 4)}, 'metadata': metadata,
                  'timestamp': {'Timestamp': {'epoch': 1, 'total_wall_clock_time': datetime.timedelta(seconds=3)}},
                  'optimizers': {'AdamW': {'state': {0: {'step': torch.tensor(2.0)}}, 'param_groups': [{'lr': 1e-3}]}}},
        'rng': [{'python': ('3', (1, 2), None), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}],
    }


def test_recipe_like_checkpoint_loads(tmp_path):
    path = tmp_path / 'ok.pt'
    torch.save(_recipe_like(), path)
    for mmap in (False, True):
        ckpt = safe_torch_load(path, mmap=mmap)
        assert ckpt['rng'][0]['numpy'][1].dtype == np.uint32
        assert ckpt['state']['timestamp']['Timestamp']['total_wall_clock_time'] == datetime.timedelta(seconds=3)
    link = tmp_path / 'latest-rank0.pt'
    link.symlink_to('ok.pt')
    assert torch.equal(safe_torch_load(link)['state']['model']['model.w'], ckpt['state']['model']['model.w'])


def test_malicious_reduce_never_runs(tmp_path):
    marker = tmp_path / 'PWNED'
    path = tmp_path / 'shared.pt'
    torch.save(_recipe_like(Payload(marker)), path)
    # The payload is live: plain unpickling (what Composer 0.32.1 does) runs it, in a separate process.
    code = f'import torch; torch.load({str(path)!r}, weights_only=False)'
    subprocess.run([sys.executable, '-c', code], check=True, cwd=Path(__file__).resolve().parent)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_torch_load(path)
    assert not marker.exists()  # refused before anything ran
    msg = str(info.value)
    assert info.value.global_name == f'{os.system.__module__}.system'  # posix.system on Linux
    assert msg.startswith(f'refusing to load checkpoint {path}: its pickle calls the global posix.system')
    assert f'tempme-export {path} --out DIR' in msg and 'allow_unsafe_checkpoint=true' in msg


def test_unlisted_global_is_named_and_allow_unsafe_loads_it(tmp_path):
    path = tmp_path / 'other.pt'
    torch.save(_recipe_like(fractions.Fraction(1, 3)), path)
    with pytest.raises(UnsafeCheckpointError, match=r'calls the global fractions\.Fraction, which is not one of'):
        safe_torch_load(path)
    assert safe_torch_load(path, allow_unsafe=True)['state']['metadata']['extra'] == fractions.Fraction(1, 3)


@pytest.mark.parametrize('content', ['truncated', 'text', 'empty'])
def test_unreadable_file_is_refused_clearly(tmp_path, content):
    good = tmp_path / 'good.pt'
    torch.save(_recipe_like(), good)
    path = tmp_path / 'bad.pt'
    data = {'truncated': good.read_bytes()[: good.stat().st_size // 3], 'text': b'not a checkpoint\n',
            'empty': b''}[content]
    path.write_bytes(data)
    with pytest.raises(UnsafeCheckpointError, match=rf'cannot check checkpoint {path}: torch cannot read it with '
                                                    r'weights_only=True .*truncated .* or not a PyTorch checkpoint'):
        safe_torch_load(path)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        safe_torch_load(tmp_path / 'nope.pt')


def test_allowlist_is_exactly_the_recipe_types():
    names = sorted(g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}' for g in allowed_globals())
    assert names == sorted(['datetime.timedelta', 'numpy.core.multiarray._reconstruct', 'numpy.dtype',
                            'numpy.dtypes.UInt32DType', 'numpy.ndarray', 'numpy._core.multiarray._reconstruct',
                            'torch.torch_version.TorchVersion'])
