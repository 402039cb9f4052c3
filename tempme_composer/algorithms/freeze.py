"""Freeze parameters by case-sensitive name substring: `freeze_parameters` (pure) + `FreezeParameters` (INIT).

Names are those of ``model.named_parameters()`` on the ComposerModel, e.g. ``model.clip.visual.ln_pre.weight``,
``model.clip.logit_scale`` (docs/reference/stop.md#freezing-by-name); users write fragments such as
``visual.ln_`` or ``logit_scale``.

Rules, in order:

1. ``freeze_clip`` freezes every CLIP backbone parameter (a name with a ``clip.`` segment) that is not a new
   module (a name containing ``LoRA``, lowercase ``prompt`` or ``TemporalPrompt``, see `is_new_module`).
2. ``freeze_substrings`` freezes every parameter whose name contains one of the strings.
3. ``keep_substrings`` makes every parameter whose name contains one of the strings trainable; it wins over 1
   and 2.

Parameters matched by none of them keep their current ``requires_grad``. A ``freeze_substrings`` entry that
matches no parameter is an error listing the closest names; so is a ``keep_substrings`` entry, except the
new-module names ``LoRA``, ``prompt`` and ``TemporalPrompt``: every example YAML lists them, and a model
variant without those modules (e.g. the meanP baseline) only gets a warning. Leaving no trainable parameter
at all is an error.

The recipe freezes in ``train()`` **before** it builds the optimizer, so the optimizer only ever holds
trainable parameters (and its param groups, hence checkpoints, are identical across restarts).
`FreezeParameters` re-applies the same rules at ``Event.INIT`` and removes any frozen parameter still in
``state.optimizers`` — a no-op in the recipe, but it makes the algorithm correct on its own.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from composer.core import Algorithm, Event, State
from composer.loggers import Logger

from tempme_composer.errors import FreezeError

__all__ = [
    'NEW_MODULE_SUBSTRINGS',
    'FreezeParameters',
    'FreezeReport',
    'freeze_parameters',
    'is_clip_backbone',
    'is_new_module',
]

log = logging.getLogger(__name__)

# Substrings naming modules added on top of CLIP (docs/reference/stop.md#freezing-by-name): TempMe/STOP LoRA,
# every learned prompt, STOP's temporal prompt generator. They train at the full lr and survive freeze_clip.
NEW_MODULE_SUBSTRINGS: tuple[str, ...] = ('LoRA', 'prompt', 'TemporalPrompt')


def is_new_module(name: str) -> bool:
    """Whether a parameter belongs to a module added on top of CLIP (LoRA, prompts, TemporalPrompt)."""
    return any(s in name for s in NEW_MODULE_SUBSTRINGS)


def is_clip_backbone(name: str) -> bool:
    """Whether a parameter is a pretrained CLIP weight: a ``clip.`` segment in its name and not a new module."""
    return '.clip.' in f'.{name}' and not is_new_module(name)


@dataclass(frozen=True)
class FreezeReport:
    """What `freeze_parameters` did: full parameter names and element counts."""

    trainable: tuple[str, ...]
    frozen: tuple[str, ...]
    num_trainable: int  # elements
    num_total: int  # elements
    absent_new_modules: tuple[str, ...]  # keep_substrings naming modules this model variant does not have


def freeze_parameters(
    model: torch.nn.Module,
    freeze_clip: bool = False,
    freeze_substrings: Sequence[str] = (),
    keep_substrings: Sequence[str] = (),
    warn_absent: bool = True,
) -> FreezeReport:
    """Set ``requires_grad`` by the rules in the module docstring and report the result.

    ``warn_absent`` logs the warning about keep_substrings naming modules this model does not have.

    Raises:
        FreezeError: a substring matches no parameter name (the message lists the closest names), or no
            parameter would be trainable.
    """
    named = list(model.named_parameters())
    names = [n for n, _ in named]
    for s in freeze_substrings:
        if not any(s in n for n in names):
            raise FreezeError(
                f'freeze_substrings entry {s!r} matches no parameter name; {_closest(s, names)}'
            )
    absent = []
    for s in keep_substrings:
        if any(s in n for n in names):
            continue
        if s in NEW_MODULE_SUBSTRINGS:
            absent.append(s)
        else:
            raise FreezeError(f'keep_substrings entry {s!r} matches no parameter name; {_closest(s, names)}')
    if absent and warn_absent:
        log.warning(
            'keep_substrings %s match no parameter: this model variant has no such module (not enabled); ignored',
            absent,
        )
    for name, param in named:
        if any(s in name for s in keep_substrings):
            param.requires_grad_(True)
        elif (freeze_clip and is_clip_backbone(name)) or any(s in name for s in freeze_substrings):
            param.requires_grad_(False)
    trainable = tuple(n for n, p in named if p.requires_grad)
    frozen = tuple(n for n, p in named if not p.requires_grad)
    if not trainable:
        raise FreezeError(
            f'freeze_clip={freeze_clip}, freeze_substrings={list(freeze_substrings)} and '
            f'keep_substrings={list(keep_substrings)} leave no trainable parameter among {len(names)}; '
            'keep some, e.g. keep_substrings=[logit_scale]'
        )
    return FreezeReport(
        trainable=trainable,
        frozen=frozen,
        num_trainable=sum(p.numel() for _, p in named if p.requires_grad),
        num_total=sum(p.numel() for _, p in named),
        absent_new_modules=tuple(absent),
    )


def _closest(substring: str, names: Sequence[str], n: int = 5) -> str:
    """'closest names: ...' by difflib over every dotted fragment of the names (users type fragments)."""
    fragment_to_name: dict[str, str] = {}
    for name in names:
        parts = name.split('.')
        for i in range(len(parts)):
            for j in range(i + 1, min(len(parts), i + 4) + 1):
                fragment_to_name.setdefault('.'.join(parts[i:j]), name)
    close = difflib.get_close_matches(substring, list(fragment_to_name), n=n, cutoff=0.5)
    if not close:
        return f'parameter names look like: {", ".join(names[:5])}'
    return 'closest names: ' + ', '.join(f'{fragment_to_name[c]} (contains {c!r})' for c in close)


class FreezeParameters(Algorithm):
    """Freeze parameters by name substring once, at ``Event.INIT`` (before DDP wrapping and checkpoint load).

    Applies `freeze_parameters` and removes the frozen parameters from ``state.optimizers``. Enabled from YAML::

        freeze_clip: true
        freeze_substrings: [visual.ln_, text.ln_]
        keep_substrings: [logit_scale, LoRA, prompt, TemporalPrompt]
    """

    def __init__(
        self,
        freeze_clip: bool = False,
        freeze_substrings: Sequence[str] = (),
        keep_substrings: Sequence[str] = (),
        warn_absent: bool = True,
        gradient_free_trainables: bool = False,
    ) -> None:
        self.freeze_clip = freeze_clip
        # Trainable parameters that never receive a gradient (STOP's Cal_Net) need DDP's unused-parameter pass.
        self.gradient_free_trainables = gradient_free_trainables
        self.freeze_substrings = list(freeze_substrings)
        self.keep_substrings = list(keep_substrings)
        # the recipe already warned when it froze before building the optimizer
        self.warn_absent = warn_absent
        self._applied = False
        self.report: FreezeReport | None = None

    def __repr__(self) -> str:
        return (
            f'FreezeParameters(freeze_clip={self.freeze_clip}, freeze_substrings={self.freeze_substrings}, '
            f'keep_substrings={self.keep_substrings})'
        )

    @property
    def find_unused_parameters(self) -> bool:
        """Composer reads this before wrapping the model in DDP."""
        return self.gradient_free_trainables

    def match(self, event: Event, state: State) -> bool:
        del state  # unused
        return event == Event.INIT and not self._applied

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        del event, logger  # unused
        model = state.model.module if state.is_model_ddp else state.model
        self.report = freeze_parameters(
            model,
            self.freeze_clip,
            self.freeze_substrings,
            self.keep_substrings,
            warn_absent=self.warn_absent,
        )
        frozen_ids = {id(p) for p in model.parameters() if not p.requires_grad}
        removed = 0
        for optimizer in state.optimizers:
            for group in optimizer.param_groups:
                kept = [p for p in group['params'] if id(p) not in frozen_ids]
                removed += len(group['params']) - len(kept)
                group['params'] = kept
        if removed:
            log.info('FreezeParameters removed %d frozen parameter tensors from the optimizer', removed)
        self._applied = True
