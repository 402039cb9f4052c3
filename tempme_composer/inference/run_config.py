"""The parts of a training run's ``config.yaml`` that exporting its checkpoint needs.

``tempme-export`` rebuilds the run's network and records its preprocessing, evaluation settings and data
source, so it reads the ``model`` section whole (`tempme_composer.model.config`) and only the few ``data``,
``evaluation`` and top-level keys below; the training sections are the training recipe's business. Values are
checked with the recipe's own messages (`tempme_composer.schema`), so a bad ``model.*`` or ``data.max_frames``
reads the same here as when the run was launched.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tempme_composer.errors import ConfigError
from tempme_composer.model.config import ModelConfig, check_model_config
from tempme_composer.schema import build_dataclass

__all__ = ['PARAGRAPH_DATATYPES', 'RunConfig', 'RunData', 'RunSource', 'RunStream', 'read_run_config']

#: Datasets whose captions are joined into one paragraph per video unless ``data.paragraph`` says otherwise (the
#: video-paragraph retrieval benchmarks DiDeMo and ActivityNet Captions).
PARAGRAPH_DATATYPES = ('didemo', 'activity')


@dataclass
class RunStream:
    """One stream of a mixed dataset: where its MDS shards are."""

    local: str | None = None
    remote: str | None = None
    split: str | None = None


@dataclass
class RunSource:
    """A dataset of the run: one MDS folder, or the streams of a mix."""

    local: str | None = None
    remote: str | None = None
    split: str | None = None
    streams: list[RunStream] | None = None


@dataclass
class RunDemo:
    root: str | None = None


@dataclass
class RunData:
    """The run's ``data`` keys an export records (defaults as in the training recipe)."""

    datatype: Literal['demo', 'msrvtt', 'msvd', 'lsmdc', 'didemo', 'activity', 'vatex'] = 'msrvtt'
    train: RunSource | None = None
    eval: RunSource | None = None
    demo: RunDemo | None = None
    max_frames: int = 12
    max_words: int = 32
    slice_framepos: Literal[0, 1, 2] = 2
    paragraph: bool | None = None

    @property
    def paragraph_mode(self) -> bool:
        """Whether a video's captions are joined into one paragraph: as set, else per `PARAGRAPH_DATATYPES`."""
        return self.paragraph if self.paragraph is not None else self.datatype in PARAGRAPH_DATATYPES


@dataclass
class RunEvaluation:
    tie_mode: Literal['pessimistic', 'optimistic', 'reference'] = 'pessimistic'
    dsl: bool = False


@dataclass
class RunConfig:
    """What an export needs of a run's config, and the whole config as read (recorded in the export)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: RunData = field(default_factory=RunData)
    evaluation: RunEvaluation = field(default_factory=RunEvaluation)
    batch_size_val: int = 128
    raw: dict[str, Any] = field(default_factory=dict)


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads ``1e-4`` as a number, as the training recipe's YAML reader does."""


_RecipeLoader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list('-+0123456789.'),
)


def _known_keys(cls: type, raw: Any) -> Any:
    """``raw`` without the keys ``cls`` does not read (the training recipe checks those), at every level but the
    ``model`` section, which is read whole."""
    if not isinstance(raw, dict):
        return raw
    hints = typing.get_type_hints(cls)
    kept = {}
    for key, value in raw.items():
        if key not in hints:
            continue
        inner = _dataclass_in(hints[key])
        if inner is ModelConfig:
            kept[key] = value
        elif inner is not None and isinstance(value, list):
            kept[key] = [_known_keys(inner, v) for v in value]
        elif inner is not None:
            kept[key] = _known_keys(inner, value)
        else:
            kept[key] = value
    return kept


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass a field holds (itself, optional, or a list of it), if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


def read_run_config(path: str | Path) -> RunConfig:
    """Read and check ``path`` (a run's ``config.yaml``) for export.

    Raises:
        ConfigError: a key the export reads has a wrong type or value (the training recipe's message).
        yaml.YAMLError: the file is not YAML.
    """
    source = str(path)
    raw = yaml.load(Path(path).read_text(encoding='utf-8'), Loader=_RecipeLoader)  # noqa: S506 - a safe loader
    if not isinstance(raw, dict):
        raise ConfigError(f"key '' in {source}: expected a mapping of keys, got {raw!r}")
    picked = _known_keys(RunConfig, {k: v for k, v in raw.items() if k != 'raw'})
    cfg = build_dataclass(RunConfig, picked, prefix='', source=source, cli_keys=set())
    cfg.raw = raw
    if cfg.data.max_frames <= 0:
        raise ConfigError(f"'data.max_frames' in {source} must be positive, got {cfg.data.max_frames}")
    check_model_config(cfg.model, source, max_frames=cfg.data.max_frames)
    if cfg.data.max_words < 3:
        raise ConfigError(
            f"'data.max_words' in {source} must be at least 3 (start, a word, end), got {cfg.data.max_words}"
        )
    return cfg
