"""Plain nested dicts → typed dataclasses, with one `ConfigError` line per mistake.

Shared by the training recipe (`tempme_composer.config`) and the model's own settings
(`tempme_composer.model.config`, also read back from an exported model's ``config.json``), so both refuse a bad
key or value with the same message: the key, where it came from (a file or the command line) and, for a typo,
the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from tempme_composer.errors import ConfigError

__all__ = ['REQUIRED', 'EnumWords', 'build_dataclass']

#: Sentinel default of a dataclass field whose key must be given.
REQUIRED: Any = object()

T = TypeVar('T')

#: Dotted key → {word: integer}: keys whose integer codes (the research code's) may also be written as words.
EnumWords = Mapping[str, Mapping[str, int]]


def build_dataclass(
    cls: type[T], raw: Any, prefix: str, source: str, cli_keys: set[str], enum_words: EnumWords | None = None
) -> T:
    """``raw`` checked key by key against the fields of ``cls`` (nested dataclasses, lists, literals, unions).

    Args:
        cls: the dataclass to build.
        raw: the mapping read from YAML/JSON.
        prefix: dotted path of ``raw`` in the whole document (``'model.'``), used in messages.
        source: the file the values came from, named in messages.
        cli_keys: dotted keys set on the command line (messages name the command line for those).
        enum_words: keys whose integer choices may be written as words (normalised to the integer).

    Raises:
        ConfigError: an unknown key, a wrong type or a missing required key.
    """
    if not isinstance(raw, dict):
        raise ConfigError(
            f'{_where(prefix.rstrip("."), source, cli_keys)}: expected a mapping of keys, got {raw!r}'
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            full = prefix + str(key)
            valid = [prefix + n for n in names]
            close = difflib.get_close_matches(full, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ''
            raise ConfigError(
                f"unknown key '{full}' in {_source(full, source, cli_keys)}{hint} "
                f'(valid keys here: {", ".join(valid)})'
            )
    values = {}
    for f in dataclasses.fields(cls):
        full = prefix + f.name
        if f.name in raw:
            values[f.name] = _convert(hints[f.name], raw[f.name], full, source, cli_keys, enum_words or {})
        elif f.default is REQUIRED:
            raise ConfigError(
                f"missing required key '{full}' in {source} (set it in the YAML or as {full}=...)"
            )
    try:
        return cls(**values)
    except TypeError as e:  # pragma: no cover - guarded by the checks above
        raise ConfigError(f'{source}: {e}') from e


def _convert(tp: Any, value: Any, key: str, source: str, cli_keys: set[str], enum_words: EnumWords) -> Any:
    origin = typing.get_origin(tp)
    where = _where(key, source, cli_keys)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key, source, cli_keys, enum_words)
    if value is None:
        raise ConfigError(f'{where}: a value is required, got null (expected {_type_name(tp)})')
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key + '.', source, cli_keys, enum_words)
    if origin is Literal:
        choices = typing.get_args(tp)
        words = enum_words.get(key)
        if words is not None:
            return _enum_value(words, choices, value, where)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ''
            raise ConfigError(f'{where}: {value!r} is not one of {list(choices)}{hint}')
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f'{where}: expected a mapping ({_type_name(tp)}), got {value!r}')
        _, item_tp = typing.get_args(tp)
        return {str(k): _convert(item_tp, v, f'{key}.{k}', source, cli_keys, enum_words) for k, v in value.items()}
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f'{where}: expected a list ({_type_name(tp)}), got {value!r}')
        (item_tp,) = typing.get_args(tp)
        return [_convert(item_tp, v, f'{key}[{i}]', source, cli_keys, enum_words) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{where}: expected true or false, got {value!r}')
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{where}: expected an integer, got {value!r}')
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f'{where}: expected a number, got {value!r}')
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f'{where}: expected a string, got {value!r}')
        return value
    raise ConfigError(f'{where}: unsupported type {tp}')  # pragma: no cover - schema bug


def _enum_value(words: Mapping[str, int], choices: tuple[Any, ...], value: Any, where: str) -> int:
    """The integer a word (or the integer itself) stands for; the error lists both spellings."""
    if isinstance(value, str) and value in words:
        return words[value]
    if not isinstance(value, bool) and value in choices:
        return value
    close = difflib.get_close_matches(str(value), list(words), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ''
    spelled = ', '.join(f'{word} ({number})' for word, number in words.items())
    raise ConfigError(f'{where}: {value!r} is not one of {spelled}: write the word or the integer{hint}')


def _source(key: str, source: str, cli_keys: set[str]) -> str:
    base = key.split('[')[0]
    return 'the command-line overrides' if base in cli_keys else source


def _where(key: str, source: str, cli_keys: set[str]) -> str:
    return f"key '{key}' in {_source(key, source, cli_keys)}"


def _type_name(tp: Any) -> str:
    return getattr(tp, '__name__', None) or str(tp).replace('typing.', '')
