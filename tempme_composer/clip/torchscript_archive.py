"""Read the tensors of a TorchScript archive (OpenAI's CLIP ``.pt`` files) without TorchScript or foreign code.

A TorchScript archive (what ``torch.jit.save`` writes) is a zip holding ``data.pkl`` (the module tree as a
pickle whose modules are ``__torch__.*`` classes), ``data/N`` (raw tensor storages), ``code/`` (the classes in
TorchScript's Python subset) and ``constants.pkl``. ``torch.jit.load`` compiles ``code/`` and runs the
pickle with every global it names; torch offers no kept API that returns only the tensors (``torch.load``
hands such a file to ``torch.jit.load``, and refuses it with ``weights_only=True``). So this module reads it
like Python's pickle documentation, "Restricting Globals", recommends: an ``Unpickler`` whose ``find_class``
answers only an allowlist (docs/configuration.md, "Reading a TorchScript archive"):

- ``torch._utils._rebuild_tensor_v2``, replaced by a checked rebuild from the archive's own storages;
- ``torch.<Type>Storage`` for the plain dtypes (``HalfStorage``, ``FloatStorage``, ...), as dtype markers;
- ``collections.OrderedDict`` and TorchScript's list/type-tag helpers (``torch.jit._pickle``), which only
  return their argument;
- ``__torch__.*`` classes, rebuilt as inert containers of their attributes.

Which attributes are parameters and buffers is read from each class's ``__parameters__``/``__buffers__`` lists
in ``code/`` with ``ast.parse`` (parsing, never running), so the result has exactly the keys, order, dtypes and
bits of ``torch.jit.load(path).state_dict()``. Any other global is refused with one line naming the file and
the global.
"""

from __future__ import annotations

import ast
import io
import logging
import math
import os
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

__all__ = ['TorchScriptArchiveError', 'is_torchscript_archive', 'read_torchscript_state_dict']

log = logging.getLogger(__name__)

#: The ``torch.<Name>Storage`` classes a TorchScript pickle names for each plain dtype.
_STORAGE_DTYPES = {
    'DoubleStorage': torch.float64,
    'FloatStorage': torch.float32,
    'HalfStorage': torch.float16,
    'BFloat16Storage': torch.bfloat16,
    'LongStorage': torch.int64,
    'IntStorage': torch.int32,
    'ShortStorage': torch.int16,
    'CharStorage': torch.int8,
    'ByteStorage': torch.uint8,
    'BoolStorage': torch.bool,
}
#: TorchScript's pickler helpers (``torch.jit._pickle``): each returns its first argument unchanged.
_PASS_THROUGH = frozenset(
    {'build_intlist', 'build_tensorlist', 'build_doublelist', 'build_boollist', 'restore_type_tag'}
)
_TORCH_MODULE = re.compile(r'__torch__(\.[A-Za-z_]\w*)*')
_IDENTIFIER = re.compile(r'[A-Za-z_]\w*')
_STORAGE_KEY = re.compile(r'\w+')


class TorchScriptArchiveError(ValueError):
    """A TorchScript archive that is malformed or names a global outside the allowlist."""


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """A zip with TorchScript's ``constants.pkl`` or ``code/`` entries (``torch.save`` zips have neither)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any('/code/' in name or name.endswith('constants.pkl') for name in zf.namelist())


def read_torchscript_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The parameters and buffers of the archive's root module, keyed and ordered like ``state_dict()``.

    Tensors come back on the CPU with the stored dtype (OpenAI's archives: fp16) and the stored bits.

    Raises:
        TorchScriptArchiveError: a malformed archive, or a global outside the allowlist (named in the message).
    """
    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        archive = _Archive(path, zf)
        root = archive.unpickle()
        return archive.state_dict(root)


@dataclass(frozen=True)
class _StorageType:
    """What ``torch.<Name>Storage`` stands for in the pickle: only its dtype."""

    dtype: torch.dtype


@dataclass(frozen=True)
class _ClassInfo:
    """A ``__torch__`` class as declared in ``code/``: whether it is a module, its parameter and buffer names."""

    is_module: bool
    parameters: frozenset[str]
    buffers: frozenset[str]


class _ScriptObject:
    """An instance of a ``__torch__`` class: its attributes as the pickle's state dict, nothing callable."""

    qualified_name = ''

    def __setstate__(self, state: object) -> None:
        self.attributes = state


class _Archive:
    """One open archive: its member prefix, the restricted unpickling and the walk to a state dict."""

    def __init__(self, path: Path, zf: zipfile.ZipFile) -> None:
        self.path = path
        self.zf = zf
        self.size_limit = path.stat().st_size  # torch.jit.save stores members uncompressed
        roots = [name[: -len('data.pkl')] for name in zf.namelist() if re.fullmatch(r'[^/]+/data\.pkl', name)]
        if len(roots) != 1:
            self.fail(f'expected one <name>/data.pkl in the zip, found {len(roots)}')
        self.prefix = roots[0]
        byteorder = (
            self.read_member('byteorder').decode('ascii', 'replace').strip()
            if self.has('byteorder')
            else 'little'
        )
        if byteorder != sys.byteorder:
            self.fail(f'its tensors are stored {byteorder}-endian, this machine is {sys.byteorder}-endian')
        self.storages: dict[str, torch.Tensor] = {}
        self.classes: dict[str, type[_ScriptObject]] = {}
        self.class_info: dict[str, _ClassInfo] = {}

    def fail(self, message: str) -> NoReturn:
        raise TorchScriptArchiveError(f'{self.path}: {message}')

    def has(self, member: str) -> bool:
        return self.prefix + member in self.zf.NameToInfo

    def read_member(self, member: str, expected_size: int | None = None) -> bytes:
        """The bytes of ``<prefix>/member`` after checking its declared size (before anything is read)."""
        name = self.prefix + member
        if name not in self.zf.NameToInfo:
            self.fail(f'{name} is missing from the archive')
        size = self.zf.getinfo(name).file_size
        if expected_size is not None and size != expected_size:
            self.fail(f'{name} holds {size} bytes, but its tensor needs {expected_size}')
        if size > self.size_limit:
            self.fail(f'{name} declares {size} bytes, more than the whole archive ({self.size_limit})')
        return self.zf.read(name)

    def unpickle(self) -> object:
        data = self.read_member('data.pkl')
        try:
            return _RestrictedUnpickler(self, data).load()
        except TorchScriptArchiveError:
            raise
        except Exception as err:  # a file-format boundary: anything the pickle machine raises is a bad file
            self.fail(f'{self.prefix}data.pkl is not a TorchScript pickle ({type(err).__name__}: {err})')

    # --- the allowlist ------------------------------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        if module == 'torch._utils' and name == '_rebuild_tensor_v2':
            return self.rebuild_tensor
        if module == 'torch' and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == 'collections' and name == 'OrderedDict':
            return OrderedDict
        if module == 'torch.jit._pickle' and name in _PASS_THROUGH:
            return _first_argument
        if _TORCH_MODULE.fullmatch(module) and _IDENTIFIER.fullmatch(name):
            return self.script_class(f'{module}.{name}')
        self.fail(
            f'{self.prefix}data.pkl names the global {module}.{name}, which is outside the allowlist '
            '(tensors, storages, OrderedDict and __torch__ modules); refused, nothing was run'
        )

    def script_class(self, qualified_name: str) -> type[_ScriptObject]:
        if qualified_name not in self.classes:
            self.classes[qualified_name] = type(
                'ScriptObject', (_ScriptObject,), {'qualified_name': qualified_name}
            )
        return self.classes[qualified_name]

    def persistent_load(self, pid: object) -> torch.Tensor:
        """``('storage', <Type>Storage, key, location, numel)`` → the flat storage ``data/<key>`` (on the CPU)."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'):
            self.fail(f'{self.prefix}data.pkl has an unknown persistent id {str(pid)[:80]}')
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            self.fail(f'{self.prefix}data.pkl names a storage of unknown type {str(storage_type)[:80]}')
        if not (isinstance(key, str) and _STORAGE_KEY.fullmatch(key)) or not _is_count(numel):
            self.fail(f'{self.prefix}data.pkl has a malformed storage record {str(pid)[:80]}')
        if key not in self.storages:
            dtype = storage_type.dtype
            item_size = torch.empty(0, dtype=dtype).element_size()
            raw = self.read_member(f'data/{key}', expected_size=numel * item_size)
            self.storages[key] = (
                torch.frombuffer(bytearray(raw), dtype=dtype) if numel else torch.empty(0, dtype=dtype)
            )
        storage = self.storages[key]
        if storage.dtype != storage_type.dtype:
            self.fail(f'storage data/{key} is named as both {storage.dtype} and {storage_type.dtype}')
        return storage

    def rebuild_tensor(
        self,
        storage: object,
        offset: object,
        size: object,
        stride: object,
        requires_grad: object,
        backward_hooks: object,
        metadata: object = None,
    ) -> torch.Tensor:
        """``torch._utils._rebuild_tensor_v2`` for a plain dense tensor, bounds-checked against its storage."""
        well_formed = (
            isinstance(storage, torch.Tensor)
            and _is_count(offset)
            and isinstance(size, tuple)
            and isinstance(stride, tuple)
            and len(size) == len(stride)
            and all(_is_count(n) for n in (*size, *stride))
            and isinstance(requires_grad, bool)
            and isinstance(backward_hooks, dict)
            and not backward_hooks
            and metadata is None
        )
        if not well_formed:
            self.fail(f'{self.prefix}data.pkl rebuilds a tensor from malformed arguments')
        if (
            math.prod(size)
            and offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) >= storage.numel()
        ):
            self.fail(f'a tensor of size {list(size)} at offset {offset} reaches past its storage')
        return storage.as_strided(size, stride, offset)

    # --- the walk ---------------------------------------------------------------------------------------

    def info(self, obj: _ScriptObject) -> _ClassInfo:
        """The class of ``obj`` as declared in ``code/<module path>.py``, parsed (never run) with ``ast``."""
        qualified_name = obj.qualified_name
        if qualified_name not in self.class_info:
            module, _, name = qualified_name.rpartition('.')
            source = self.read_member('code/' + module.replace('.', '/') + '.py')
            try:
                tree = ast.parse(source)
            except (SyntaxError, ValueError) as err:
                self.fail(f'the code of {module} does not parse ({err})')
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    self.class_info[f'{module}.{node.name}'] = _class_info(node)
            if qualified_name not in self.class_info:
                self.fail(f'code/ has no class {qualified_name}, which data.pkl uses')
        return self.class_info[qualified_name]

    def state_dict(self, root: object) -> dict[str, torch.Tensor]:
        """Each module's parameters, then its buffers, then its submodules (depth first), as ``nn.Module``."""
        if not isinstance(root, _ScriptObject) or not self.info(root).is_module:
            self.fail(f'{self.prefix}data.pkl does not hold a TorchScript module')
        out: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        pending: list[tuple[str, _ScriptObject]] = [('', root)]
        while pending:
            prefix, module = pending.pop()
            if id(module) in seen:
                self.fail(f'module {prefix.rstrip(".") or "<root>"} appears twice in the module tree')
            seen.add(id(module))
            attributes = getattr(module, 'attributes', None)
            if not isinstance(attributes, dict) or not all(isinstance(k, str) for k in attributes):
                self.fail(f'module {prefix.rstrip(".") or "<root>"} has no attribute dict')
            info = self.info(module)
            for names in (info.parameters, info.buffers):
                for name, value in attributes.items():
                    if name in names and value is not None:
                        if not isinstance(value, torch.Tensor):
                            self.fail(f'{prefix}{name} is declared a tensor but holds {type(value).__name__}')
                        out[prefix + name] = value
            children = [
                (f'{prefix}{name}.', value)
                for name, value in attributes.items()
                if isinstance(value, _ScriptObject) and self.info(value).is_module
            ]
            pending.extend(reversed(children))
        return out


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals and persistent ids are answered by the archive's allowlist."""

    def __init__(self, archive: _Archive, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.archive = archive

    def find_class(self, module: str, name: str) -> Any:
        return self.archive.find_class(module, name)

    def persistent_load(self, pid: object) -> torch.Tensor:
        return self.archive.persistent_load(pid)


def _first_argument(value: object, *_: object) -> object:
    return value


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _class_info(node: ast.ClassDef) -> _ClassInfo:
    """``__parameters__``/``__buffers__`` of one TorchScript class; a module's base class is ``Module``."""
    lists: dict[str, frozenset[str]] = {}
    for statement in node.body:
        if (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
            and statement.targets[0].id in ('__parameters__', '__buffers__')
            and isinstance(statement.value, ast.List)
        ):
            lists[statement.targets[0].id] = frozenset(
                element.value
                for element in statement.value.elts
                if isinstance(element, ast.Constant) and isinstance(element.value, str)
            )
    is_module = any(
        (isinstance(base, ast.Name) and base.id == 'Module')
        or (isinstance(base, ast.Attribute) and base.attr == 'Module')
        for base in node.bases
    )
    return _ClassInfo(
        is_module, lists.get('__parameters__', frozenset()), lists.get('__buffers__', frozenset())
    )
