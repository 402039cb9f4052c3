"""ClampLogitScale: keep CLIP's learned log temperature in [min, max] after every optimizer step."""

from __future__ import annotations

import logging

import torch
from composer.core import Algorithm, Event, State
from composer.loggers import Logger

__all__ = ['ClampLogitScale', 'find_logit_scale']

log = logging.getLogger(__name__)


def find_logit_scale(model: torch.nn.Module) -> torch.nn.Parameter:
    """The one parameter whose name ends in ``logit_scale`` (e.g. ``model.clip.logit_scale``)."""
    found = [(n, p) for n, p in model.named_parameters() if n.split('.')[-1] == 'logit_scale']
    if len(found) != 1:
        raise ValueError(f'expected exactly one logit_scale parameter, found {[n for n, _ in found]}')
    return found[0][1]


class ClampLogitScale(Algorithm):
    """Clamp ``clip.logit_scale`` in place to ``[min, max]`` at ``Event.BATCH_END``.

    BATCH_END follows the optimizer step (after all microbatches), so this runs once per optimizer step,
    never per microbatch. A **frozen** logit_scale is left untouched: clamping
    it would silently change a pretrained model (OpenAI CLIP ships ln 100 = 4.6052, inside the default
    range anyway). Enabled from YAML (set ``logit_scale_clamp: null`` to disable)::

        logit_scale_clamp: {min: 0.1, max: 4.6052}   # = ln 100
    """

    def __init__(self, min: float = 0.1, max: float = 4.6052) -> None:  # noqa: A002 - the YAML names
        if not min < max:
            raise ValueError(f'ClampLogitScale needs min < max, got [{min}, {max}]')
        self.min = min
        self.max = max

    def __repr__(self) -> str:
        return f'ClampLogitScale(min={self.min}, max={self.max})'

    def match(self, event: Event, state: State) -> bool:
        del state  # unused
        return event == Event.BATCH_END

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        del event, logger  # unused
        model = state.model.module if state.is_model_ddp else state.model
        param = find_logit_scale(model)
        if not param.requires_grad:
            return
        with torch.no_grad():
            param.clamp_(self.min, self.max)
