"""The tests mirror the package: one folder per part of tempme_composer, unique module names across folders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import tempme_composer

TESTS = Path(__file__).resolve().parent
PACKAGE = Path(tempme_composer.__file__).parent
#: Folders that are no package part: the training layer (config, train, callbacks, algorithms, optim, loggers,
#: fsdp, ...) spans several modules; scripts holds the programs that multi-rank tests launch.
OTHER_FOLDERS = {'training', 'scripts'}


def test_each_test_folder_is_a_part_of_the_package():
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith(('.', '__'))}
    strays = sorted(
        name
        for name in folders - OTHER_FOLDERS
        if not (PACKAGE / name).is_dir() and not (PACKAGE / f'{name}.py').is_file()
    )
    assert not strays, f'tests/{strays[0]}/ names no part of tempme_composer'


def test_test_module_names_are_unique():
    # The folders hold no __init__.py, so pytest imports each test module by its file name alone.
    counts = Counter(p.name for p in TESTS.rglob('test_*.py'))
    assert not [name for name, n in counts.items() if n > 1], counts.most_common(3)
