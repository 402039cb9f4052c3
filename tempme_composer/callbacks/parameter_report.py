"""ParameterReport: trainable vs frozen parameter counts per top-level module, at fit start."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

__all__ = ['ParameterReport', 'parameter_table']

log = logging.getLogger(__name__)


def _group_of(name: str) -> str:
    """``model.clip.visual.conv1.weight`` -> ``clip.visual``; ``model.clip.logit_scale`` -> ``clip.logit_scale``."""
    parts = name.split('.')
    if parts[0] == 'model' and len(parts) > 1:  # the ComposerModel attribute holding the network
        parts = parts[1:]
    return '.'.join(parts[:2]) if parts[0] == 'clip' and len(parts) > 1 else parts[0]


def parameter_table(model: torch.nn.Module) -> tuple[str, dict[str, tuple[int, int]]]:
    """A text table (module | trainable | frozen | total | trainable %) and ``{module: (trainable, total)}``."""
    counts: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        c = counts.setdefault(_group_of(name), [0, 0])
        c[0] += p.numel() if p.requires_grad else 0
        c[1] += p.numel()
    trainable = sum(c[0] for c in counts.values())
    total = sum(c[1] for c in counts.values())
    rows = [(m, c[0], c[1]) for m, c in counts.items()] + [('total', trainable, total)]
    width = max(len(r[0]) for r in rows + [('module', 0, 0)])
    lines = [f'{"module":<{width}}  {"trainable":>12}  {"frozen":>12}  {"total":>12}  {"trainable %":>11}']
    lines.append('-' * len(lines[0]))
    for i, (module, t, n) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append('-' * len(lines[0]))
        pct = 100.0 * t / n if n else 0.0
        shown = '<0.01' if 0 < pct < 0.01 else f'{pct:.2f}'
        lines.append(f'{module:<{width}}  {t:>12,}  {n - t:>12,}  {n:>12,}  {shown:>10}%')
    return '\n'.join(lines), {m: (c[0], c[1]) for m, c in counts.items()}


class ParameterReport(Callback):
    """At ``Event.FIT_START``, on rank 0: log the table of trainable vs frozen parameter counts per top-level
    module (``clip.visual``, ``clip.text``, ``clip.logit_scale``, ...) with totals and the trainable
    percentage, and write the trainable parameter names, one per line, to ``output_dir/trainable_parameters.txt``.

    The counts and names are taken at ``Event.INIT``, before Composer wraps the model for FSDP: afterwards each
    rank sees only its shard of every parameter (and names carry FSDP prefixes).
    Logged keys: ``params/trainable``, ``params/total`` (element counts), ``params/trainable_percent``.
    Added by the recipe to every training run.
    """

    def __init__(self, output_dir: str | Path | None = None) -> None:
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.table: str | None = None
        self._counts: dict[str, tuple[int, int]] = {}
        self._trainable_names: list[str] = []

    def init(self, state: State, logger: Logger) -> None:
        del logger  # unused: loggers log from FIT_START on
        model = state.model.module if state.is_model_ddp else state.model
        self.table, self._counts = parameter_table(model)
        self._trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]

    def fit_start(self, state: State, logger: Logger) -> None:
        del state  # unused: counted at INIT
        trainable = sum(t for t, _ in self._counts.values())
        total = sum(n for _, n in self._counts.values())
        logger.log_metrics({
            'params/trainable': trainable,
            'params/total': total,
            'params/trainable_percent': 100.0 * trainable / total if total else 0.0,
        })
        if dist.get_global_rank() != 0:
            return
        log.info('parameters (trainable / frozen):\n%s', self.table)
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / 'trainable_parameters.txt').write_text(''.join(f'{n}\n' for n in self._trainable_names))
