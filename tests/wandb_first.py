"""Import wandb, where it is installed, before any heavy library: tests/conftest.py imports this module first.

wandb's settings are pydantic models with attribute docstrings, which pydantic reads from their source through
``inspect.getmodule``; that goes through every module loaded so far, once per class. Next to the few hundred
modules pytest has loaded it costs about 2 s of CPU; imported by the W&B logger test
(tests/training/test_loggers.py), after Composer, torch and transformers have loaded thousands, about 30 s
(``import composer, wandb`` versus ``import wandb``: 32 s against 1.9 s of CPU, 2-core machine, 2026-12-07).
"""

import importlib.util

if importlib.util.find_spec('wandb') is not None:
    import wandb  # noqa: F401
