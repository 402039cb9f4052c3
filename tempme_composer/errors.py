"""The errors a user sees as one paragraph: what is wrong, where it came from, and the fix.

Every command catches these at its entry point and prints the message without a traceback. They live here,
below every other module, so that a low-level module can raise them without importing the training recipe:
`ConfigError` (and `FreezeError`) exit the recipe with status 2, the `RecipeError` family with status 1.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    'CheckpointRefusedError',
    'CheckpointUploadError',
    'ConfigError',
    'FreezeError',
    'NonFiniteLossError',
    'RecipeError',
    'UnsafeCheckpointError',
]


class ConfigError(ValueError):
    """A configuration problem, with the key, its source and a suggestion in the message."""


class RecipeError(RuntimeError):
    """A bad input found while running (data, checkpoint, disk, diverged loss): one paragraph with the fix."""


class FreezeError(ConfigError):
    """A freeze/keep substring that matches nothing, or a freeze that leaves nothing to train."""


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded without running code it carries (or cannot be checked at all)."""

    def __init__(self, message: str, path: Path, global_name: str | None) -> None:
        super().__init__(message)
        self.path = path
        self.global_name = (
            global_name  # the first global outside the allowlist; None: not a readable checkpoint
        )


class CheckpointRefusedError(RecipeError, UnsafeCheckpointError):
    """``resume=``/autoresume/``do_eval`` on a checkpoint that cannot be loaded without running its code."""


class CheckpointUploadError(RecipeError):
    """An upload to ``save_folder`` failed every attempt; the message says what is and is not saved."""


class NonFiniteLossError(RecipeError):
    """The training loss became NaN or infinite; training stopped before the optimizer step."""
