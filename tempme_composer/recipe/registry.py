"""Named components a YAML section turns on, tunes or drops (llm-foundry's ``callbacks:``/``algorithms:``).

A section maps a registered name to keyword arguments: ``speed_monitor: {window_size: 10}`` overrides the
arguments of a component the run has by default or adds one it has not; ``NAME: null`` drops a default one,
unless the recipe cannot run without it. With no section the run is exactly the default set, in order.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tempme_composer.errors import ConfigError

__all__ = ['Component', 'Registry']

Ctx = TypeVar('Ctx')


def _no_arguments(ctx: Any) -> dict[str, Any]:
    del ctx  # unused
    return {}


@dataclass(frozen=True)
class Component(Generic[Ctx]):
    """How the recipe builds one named component.

    ``make(ctx, **kwargs)`` builds it; ``defaults(ctx)`` are the arguments the run gives it before the YAML's;
    ``signature_of`` is what the YAML's keys are checked against. ``in_default_run(ctx)`` says whether a run
    with no section has it; ``required`` (why) refuses ``NAME: null``; ``fixed`` (why) refuses arguments.
    """

    make: Callable[..., Any]
    signature_of: Callable[..., Any] | None = None
    defaults: Callable[[Ctx], dict[str, Any]] = _no_arguments
    in_default_run: Callable[[Ctx], bool] | None = None
    required: str | None = None
    fixed: str | None = None

    @classmethod
    def of_class(
        cls, klass: type, defaults: Callable[[Ctx], dict[str, Any]] = _no_arguments, **options: Any
    ) -> Component[Ctx]:
        """A component that is ``klass(**kwargs)``."""
        return cls(
            make=lambda ctx, **kwargs: klass(**kwargs), signature_of=klass, defaults=defaults, **options
        )


@dataclass
class Registry(Generic[Ctx]):
    """The components of one YAML section (``section``), listed in the order a default run builds them."""

    section: str
    components: dict[str, Component[Ctx]] = field(default_factory=dict)

    def check(self, entries: Mapping[str, Any] | None) -> None:
        """Names and argument keys of the YAML section; raises `ConfigError` naming ``section.NAME.KEY``."""
        for name, kwargs in (entries or {}).items():
            component = self._component(name)
            where = f'{self.section}.{name}'
            if kwargs is None:
                if component.required:
                    raise ConfigError(f'{where}: null cannot drop it: {component.required}')
                continue
            if not isinstance(kwargs, Mapping):
                raise ConfigError(f'{where}: expected a mapping of keyword arguments or null, got {kwargs!r}')
            if kwargs and component.fixed:
                raise ConfigError(
                    f'{where}.{next(iter(kwargs))}: {name} takes no arguments here: {component.fixed}'
                )
            accepted = self._parameters(component)
            for key in kwargs:
                if accepted is not None and key not in accepted:
                    close = difflib.get_close_matches(str(key), sorted(accepted), n=1)
                    hint = f"; did you mean '{close[0]}'?" if close else ''
                    raise ConfigError(
                        f'{where}.{key}: not an argument of {name}{hint} '
                        f'(accepted: {", ".join(sorted(accepted)) or "none"})'
                    )

    def build(self, ctx: Ctx, entries: Mapping[str, Any] | None) -> list[Any]:
        """The default components of this run, with the section's overrides, drops and additions applied."""
        entries = dict(entries or {})
        self.check(entries)
        plan: dict[str, dict[str, Any]] = {}
        for name, component in self.components.items():
            if component.in_default_run is not None and component.in_default_run(ctx):
                plan[name] = component.defaults(ctx)
        for name, kwargs in entries.items():
            if kwargs is None:
                plan.pop(name, None)
            elif name in plan:
                plan[name] = {**plan[name], **kwargs}
            else:
                plan[name] = {**self.components[name].defaults(ctx), **kwargs}
        return [self._make(name, ctx, kwargs) for name, kwargs in plan.items()]

    def _make(self, name: str, ctx: Ctx, kwargs: dict[str, Any]) -> Any:
        component = self.components[name]
        where = f'{self.section}.{name}'
        if component.signature_of is not None:
            try:
                inspect.signature(component.signature_of).bind(**kwargs)
            except TypeError as e:
                raise ConfigError(f'{where}: {e} (set the arguments under {where})') from None
        try:
            return component.make(ctx, **kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f'{where}: {e}') from None

    def _component(self, name: str) -> Component[Ctx]:
        if name not in self.components:
            close = difflib.get_close_matches(str(name), list(self.components), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ''
            raise ConfigError(
                f"unknown {self.section} entry '{self.section}.{name}'{hint} "
                f'(registered: {", ".join(sorted(self.components))})'
            )
        return self.components[name]

    @staticmethod
    def _parameters(component: Component[Any]) -> set[str] | None:
        """Keyword names the component takes (None: it takes any, through ``**kwargs``)."""
        if component.signature_of is None:
            return set()
        params = inspect.signature(component.signature_of).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return {
            p.name
            for p in params
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }
