"""The errors a user sees as one paragraph: what is wrong, where it came from, and the fix.

Every command catches these at its entry point and prints the message without a traceback
(``docs/troubleshooting.md`` lists the common ones). They live here, below every other module, so that a
low-level module can raise them without importing the training recipe.
"""

from __future__ import annotations

__all__ = ['ConfigError', 'RecipeError']


class ConfigError(ValueError):
    """A configuration problem, with the key, its source and a suggestion in the message."""


class RecipeError(RuntimeError):
    """A bad input found while running (data, checkpoint, disk, diverged loss): one paragraph with the fix."""
