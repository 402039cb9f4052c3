"""Which install extra provides which optional package, and the one line a command prints when one is missing.

The base install is the inference stack; training, MDS splits, object stores and approximate search come
with extras (docs/installs.md). A command that reaches for a package its install lacks names the extra to
install instead of ending in a traceback.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    'EXTRA_OF_MODULE',
    'MissingExtraError',
    'missing_extra_line',
    'reports_missing_extras',
    'require_extra',
]

#: Top-level module -> (distribution that provides it, the extra of tempme-composer that installs it).
EXTRA_OF_MODULE: dict[str, tuple[str, str]] = {
    'streaming': ('mosaicml-streaming', 'mds'),
    'composer': ('mosaicml', 'train'),
    'omegaconf': ('omegaconf', 'train'),
    'torchmetrics': ('torchmetrics', 'train'),
    'usearch': ('usearch', 'search'),
}

Main = TypeVar('Main', bound=Callable[..., int])


class MissingExtraError(ImportError):
    """A package that an extra of tempme-composer installs is absent; the message names the extra."""


def missing_extra_line(module: str, purpose: str) -> str:
    """``purpose needs DIST, which this install lacks: pip install 'tempme-composer[EXTRA]'``."""
    dist, extra = EXTRA_OF_MODULE[module]
    return f"{purpose} needs {dist}, which this install lacks: pip install 'tempme-composer[{extra}]'"


def require_extra(module: str, purpose: str) -> None:
    """Raise `MissingExtraError` up front when ``module`` is not installed (before any long work starts)."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(missing_extra_line(module, purpose))


def _top_level(error: ModuleNotFoundError) -> str | None:
    return error.name.split('.')[0] if error.name else None


def reports_missing_extras(command: str) -> Callable[[Main], Main]:
    """Wrap a console script's ``main``: a missing extra's package ends it with one line and status 2."""

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:  # noqa: ANN002, ANN003 - the wrapped main's own signature
            try:
                return main(*args, **kwargs)
            except MissingExtraError as e:
                print(f'{command}: {e}', file=sys.stderr)
                return 2
            except ModuleNotFoundError as e:
                module = _top_level(e)
                # Only a package that is absent altogether: a missing module inside an installed one is a bug.
                if module not in EXTRA_OF_MODULE or importlib.util.find_spec(module) is not None:
                    raise
                print(f'{command}: {missing_extra_line(module, f"importing {e.name!r}")}', file=sys.stderr)
                return 2

        return run  # type: ignore[return-value]

    return wrap
