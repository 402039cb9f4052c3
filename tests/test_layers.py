"""The package's layers: each module imports only from its own layer or a lower one.

`LAYERS` is the architecture as data (lowest first); a module belongs to the first entry one of whose names is
the module or a package above it. Three checks: no module imports a higher layer (runtime, function-level and
``TYPE_CHECKING`` imports alike); the inference, model, CLIP and building-block modules load none of the training
stack; no module imports another module's private (``_x``) name.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import tempme_composer

ROOT = Path(tempme_composer.__file__).parent

#: (layer, what it holds, modules and packages in it), lowest first.
LAYERS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        'foundation: errors, install extras, typed-config checks, object-store URLs, checkpoint safe-loading',
        (
            'tempme_composer.errors',
            'tempme_composer.extras',
            'tempme_composer.schema',
            'tempme_composer.remote',
            'tempme_composer.checkpointing.safe_load',
        ),
    ),
    (2, 'CLIP: towers, tokenizer, weights, preprocessing', ('tempme_composer.clip',)),
    (3, 'TempMe/STOP building blocks', ('tempme_composer.modules',)),
    (4, 'the network: UnifiedModel, its config and loss', ('tempme_composer.model',)),
    (5, 'data: decoding, on-disk format, conversion, loading', ('tempme_composer.data',)),
    (6, 'metrics: ranking math and summaries', ('tempme_composer.metrics',)),
    (7, 'inference: export loading, index, search', ('tempme_composer.inference',)),
    (
        8,
        'training: recipe config, Composer wrapper, algorithms, callbacks, checkpoints, optimizers, loggers; '
        'the search service',
        (
            'tempme_composer.config',
            'tempme_composer.composer_wrapper',
            'tempme_composer.algorithms',
            'tempme_composer.callbacks',
            'tempme_composer.checkpointing',
            'tempme_composer.optim',
            'tempme_composer.loggers',
            'tempme_composer.fsdp',
            'tempme_composer.preflight',
            'tempme_composer.recipe',
            'tempme_composer.train',
            'tempme_composer.serve',
        ),
    ),
    (
        9,
        'benchmarks, reference implementations and the package entry point',
        (
            'tempme_composer.bench',
            'tempme_composer.reference',
            'tempme_composer',
        ),
    ),
)

#: Modules that must load without the training stack, and what that stack is.
LIGHT_PACKAGES = (
    'tempme_composer.inference',
    'tempme_composer.model',
    'tempme_composer.clip',
    'tempme_composer.modules',
    'tempme_composer.serve',
)
TRAINING_STACK = ('composer', 'omegaconf', 'torchmetrics', 'tempme_composer.config')

#: Private names still imported across modules while the modules that hold them are being split:
#: (importing module, imported module, name). Each must still occur (the list only shrinks).
PENDING_PRIVATE_IMPORTS: frozenset[tuple[str, str, str]] = frozenset()


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob('*.py'))}


def layer_of(module: str) -> int:
    """The layer of ``module``: the most specific `LAYERS` entry naming it or a package above it."""
    best: tuple[int, int] | None = None  # (length of the matching name, layer)
    for layer, _, names in LAYERS:
        for name in names:
            if (module == name or module.startswith(name + '.')) and (best is None or len(name) > best[0]):
                best = (len(name), layer)
    if best is None:
        raise AssertionError(f'{module} is in no layer: add it to LAYERS in tests/test_layers.py')
    return best[1]


def _project_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported project module, names taken from it) for every import in ``path``, anywhere in it."""
    found = []
    package = _module_name(path)
    if path.name != '__init__.py':
        package = package.rpartition('.')[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name, []) for a in node.names if a.name.split('.')[0] == 'tempme_composer'
            ]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[: len(base) - node.level + 1]
                module = '.'.join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ''
            if module.split('.')[0] != 'tempme_composer':
                continue
            names = []
            for alias in node.names:
                if f'{module}.{alias.name}' in MODULES:  # `from package import submodule`
                    found.append((node.lineno, f'{module}.{alias.name}', []))
                else:
                    names.append(alias.name)
            if names:
                found.append((node.lineno, module, names))
    return found


def test_every_module_has_a_layer():
    unplaced = []
    for module in MODULES:
        try:
            layer_of(module)
        except AssertionError:
            unplaced.append(module)
    assert not unplaced, f'modules in no layer of LAYERS: {unplaced}'


def test_no_module_imports_a_higher_layer():
    upward = []
    for module, path in MODULES.items():
        own = layer_of(module)
        for line, target, _ in _project_imports(path):
            # every submodule import runs the root package's __init__ anyway: importing it is no dependency
            if target in MODULES and target != 'tempme_composer' and layer_of(target) > own:
                upward.append(
                    f'{path.relative_to(ROOT.parent)}:{line}: {module} (layer {own}) imports {target} '
                    f'(layer {layer_of(target)})'
                )
    assert not upward, 'imports of a higher layer:\n' + '\n'.join(upward)


#: Lower layers a package must still not import (the data pipeline runs without the network).
FORBIDDEN_BELOW: dict[str, tuple[str, ...]] = {
    'tempme_composer.data': ('tempme_composer.model', 'tempme_composer.modules'),
}


def test_data_imports_no_model():
    found = []
    for module, path in MODULES.items():
        for package, forbidden in FORBIDDEN_BELOW.items():
            if module == package or module.startswith(package + '.'):
                found += [
                    f'{path.relative_to(ROOT.parent)}:{line}: {module} imports {target}'
                    for line, target, _ in _project_imports(path)
                    if any(target == f or target.startswith(f + '.') for f in forbidden)
                ]
    assert not found, 'imports the architecture forbids:\n' + '\n'.join(found)


def test_no_private_name_is_imported_from_another_module():
    seen, private = set(), []
    for module, path in MODULES.items():
        for line, target, names in _project_imports(path):
            for name in names:
                if name.startswith('_') and not name.startswith('__') and target != module:
                    seen.add((module, target, name))
                    if (module, target, name) not in PENDING_PRIVATE_IMPORTS:
                        private.append(
                            f'{path.relative_to(ROOT.parent)}:{line}: {module} imports {target}.{name}'
                        )
    assert not private, (
        'private names imported across modules (make them public or move them):\n' + '\n'.join(private)
    )
    assert PENDING_PRIVATE_IMPORTS <= seen, (
        f'no longer imported, drop from the list: {PENDING_PRIVATE_IMPORTS - seen}'
    )


@pytest.mark.parametrize('package', LIGHT_PACKAGES)
def test_light_packages_load_without_the_training_stack(package):
    modules = [m for m in MODULES if m == package or m.startswith(package + '.')]
    code = (
        'import importlib, json, sys\n'
        f'for m in {modules!r}:\n'
        '    importlib.import_module(m)\n'
        f'stack = {TRAINING_STACK!r}\n'
        'print(json.dumps(sorted(n for n in sys.modules if any(n == s or n.startswith(s + ".") for s in stack))))\n'
    )
    done = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert not loaded, f'importing every {package} module loads the training stack: {loaded}'


def test_the_layer_table_reads_imports_correctly():
    """The checks above see through relative, aliased, package-level and function-level imports."""
    assert layer_of('tempme_composer.inference.search') == 7
    assert layer_of('tempme_composer.model.unified') == 4
    assert layer_of('tempme_composer') == 9
    unified = _project_imports(MODULES['tempme_composer.model.unified'])
    assert any(t == 'tempme_composer.clip.preprocess' and 'normalize_frames' in n for _, t, n in unified)
    root = _project_imports(MODULES['tempme_composer'])
    assert [t for _, t, _ in root] == ['tempme_composer.inference.exported']  # imported inside a function
