"""OpenAI-style TorchScript archives read without TorchScript: same tensors as ``torch.jit.load``, nothing run.

The archives are made here with the real ``torch.jit.trace``/``torch.jit.script`` and ``torch.jit.save``; the
reference is ``torch.jit.load(...).state_dict()``, which the package itself no longer calls.
"""

import ast
import os
import pickle
import re
import zipfile
from pathlib import Path

import pytest
import torch
from clip_fixtures import save_openai_torchscript, tiny_clip

from tempme_composer.clip import CLIPCheckpointError, load_clip, read_openai_state_dict
from tempme_composer.clip.torchscript_archive import TorchScriptArchiveError, read_torchscript_state_dict

PACKAGE = Path(__file__).resolve().parents[2] / 'tempme_composer'


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize('traced', [True, False], ids=['traced', 'scripted'])
@pytest.mark.parametrize('dtype', [torch.float16, torch.float32], ids=['fp16', 'fp32'])
def test_reader_gives_exactly_what_torch_jit_load_gives(tmp_path, traced, dtype):
    path = tmp_path / 'ViT-tiny.pt'
    save_openai_torchscript(tiny_clip(), path, dtype=dtype, traced=traced)
    expected = torch.jit.load(str(path), map_location='cpu').state_dict()
    found = read_torchscript_state_dict(path)
    assert list(found) == list(expected)
    for key, tensor in expected.items():
        assert found[key].dtype == tensor.dtype, key
        assert found[key].shape == tensor.shape and found[key].stride() == tensor.stride(), key
        assert torch.equal(_bits(found[key]), _bits(tensor)), key
        assert not found[key].requires_grad
    # the checkpoint path keeps the archive's dtypes (OpenAI's: fp16) and adds only the OpenAI-name checks
    via_weights = read_openai_state_dict(path)
    assert {k: v.dtype for k, v in via_weights.items()} == {k: v.dtype for k, v in expected.items()}
    assert via_weights['visual.proj'].dtype == dtype


def test_plain_tensor_attributes_are_not_state(tmp_path):
    """Only ``__parameters__``/``__buffers__`` enter the state dict, as in ``torch.jit.load``."""

    class WithAttribute(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)
            self.register_buffer('scale', torch.full((2,), 0.5))
            self.offset = torch.ones(2)  # neither parameter nor buffer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x) * self.scale + self.offset

    path = tmp_path / 'attr.pt'
    torch.jit.save(torch.jit.script(WithAttribute()), str(path))
    expected = torch.jit.load(str(path)).state_dict()
    found = read_torchscript_state_dict(path)
    assert list(found) == list(expected) == ['scale', 'linear.weight', 'linear.bias']
    assert all(torch.equal(found[k], expected[k]) for k in expected)


def _rewrite(path: Path, out: Path, replace: dict[str, bytes]) -> None:
    """Copy the zip at ``path`` to ``out`` with the members ending in a key of ``replace`` swapped."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, 'w') as dst:
        for info in src.infolist():
            ending = next((k for k in replace if info.filename.endswith(k)), None)
            dst.writestr(info, replace[ending] if ending is not None else src.read(info))


class _RunsCode:
    """Pickles as a call of ``function(argument)``, as a hostile archive would."""

    def __init__(self, function: object, argument: str) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self) -> tuple:
        return self.function, (self.argument,)


@pytest.mark.parametrize('function', [os.system, eval], ids=['os.system', 'builtins.eval'])
def test_tampered_archive_is_refused_before_anything_runs(tmp_path, function):
    archive = tmp_path / 'clip.pt'
    save_openai_torchscript(tiny_clip(), archive, traced=True)
    marker = tmp_path / 'ran'
    command = f'touch {marker}' if function is os.system else f'open({str(marker)!r}, "w")'
    payload = pickle.dumps(_RunsCode(function, command), protocol=2)
    tampered = tmp_path / 'tampered.pt'
    _rewrite(archive, tampered, {'/data.pkl': payload})
    # the pickle names posix.system (os.system's home on Linux) and __builtin__.eval (protocol 2's name)
    global_name = re.compile(rf'the global \w+\.{function.__name__},')
    with pytest.raises(CLIPCheckpointError) as info:
        read_openai_state_dict(tampered)
    message = str(info.value)
    assert '\n' not in message and str(tampered) in message and global_name.search(message)
    assert 'outside the allowlist' in message
    assert not marker.exists()


def test_global_hidden_inside_the_module_tree_is_refused(tmp_path):
    archive = tmp_path / 'clip.pt'
    save_openai_torchscript(tiny_clip(), archive, traced=True)
    with zipfile.ZipFile(archive) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith('/data.pkl')))
    # swap the tensor rebuild function for another global of the same length: still one GLOBAL opcode
    hostile = data.replace(b'torch._utils\n_rebuild_tensor_v2\n', b'subprocess\ncheck_output_______\n', 1)
    assert hostile != data
    tampered = tmp_path / 'tampered.pt'
    _rewrite(archive, tampered, {'/data.pkl': hostile})
    with pytest.raises(
        TorchScriptArchiveError, match=r'subprocess\.check_output_______.*outside the allowlist'
    ):
        read_torchscript_state_dict(tampered)


def test_storage_of_the_wrong_size_is_named(tmp_path):
    archive = tmp_path / 'clip.pt'
    save_openai_torchscript(tiny_clip(), archive)
    tampered = tmp_path / 'short.pt'
    _rewrite(archive, tampered, {'/data/0': b'\0' * 3})
    with pytest.raises(
        CLIPCheckpointError, match=r'short\.pt: clip/data/0 holds 3 bytes, but its tensor needs'
    ):
        load_clip(tampered)


def test_class_without_code_is_named(tmp_path):
    archive = tmp_path / 'clip.pt'
    save_openai_torchscript(tiny_clip(), archive, traced=True)
    with zipfile.ZipFile(archive) as zf:
        root_code = next(
            n for n in zf.namelist() if n.endswith('.py') and b'class _OpenAIHolder' in zf.read(n)
        )
    tampered = tmp_path / 'nocode.pt'
    _rewrite(archive, tampered, {root_code: b'# emptied\n'})
    with pytest.raises(
        TorchScriptArchiveError, match=r'nocode\.pt: code/ has no class __torch__\.\S*_OpenAIHolder,'
    ):
        read_torchscript_state_dict(tampered)


def _calls_torch_jit_load(source: str) -> bool:
    return any(
        isinstance(node, ast.Attribute)
        and node.attr == 'load'
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == 'jit'
        for node in ast.walk(ast.parse(source))
    )


def test_the_package_never_calls_torch_jit_load():
    assert _calls_torch_jit_load('import torch\ntorch.jit.load("x.pt")\n')  # the check itself can fail
    offenders = [p for p in sorted(PACKAGE.rglob('*.py')) if _calls_torch_jit_load(p.read_text())]
    assert offenders == []
