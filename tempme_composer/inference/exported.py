"""An exported model: ``model.safetensors`` + ``config.json`` (+ a model card), and how to load it safely.

Nothing here unpickles: the weights are safetensors (tensors only) and everything else is JSON, so a model
received from someone else can be loaded without running its code. The base CLIP checkpoint a delta export
builds on is identified by its SHA-256; a different file is refused before any weight is touched.
No Composer import on this path (it must survive Composer's torch pin being lifted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tempme_composer.clip import CLIP, clip_config_from_dict, load_clip
from tempme_composer.clip.config import CLIPConfig
from tempme_composer.errors import ConfigError
from tempme_composer.model import UnifiedModel
from tempme_composer.model.config import ModelConfig, model_config_from_dict

__all__ = [
    'EXPORT_FORMAT',
    'EXPORT_FORMAT_VERSION',
    'WEIGHTS_FILE',
    'CONFIG_FILE',
    'CARD_FILE',
    'ExportError',
    'FrameRule',
    'Preprocessing',
    'ExportedModel',
    'load_exported',
    'read_export_config',
    'sha256_file',
    'clip_origin_keys',
    'model_hash',
    'model_section',
]

log = logging.getLogger(__name__)

EXPORT_FORMAT = 'tempme-composer-export'
EXPORT_FORMAT_VERSION = 1
WEIGHTS_FILE = 'model.safetensors'
CONFIG_FILE = 'config.json'
CARD_FILE = 'README.md'
_MAX_LISTED = 5


class ExportError(ValueError):
    """An exported model (or the base checkpoint it needs) cannot be used; the message names file and tensors."""


@dataclass(frozen=True)
class FrameRule:
    """How frames are taken from a video file: the rule `tempme-convert` used for the training data.

    ``fps=None`` keeps every decoded frame (the demo data); ``short_side=None`` keeps the decoded size.
    """

    fps: float | None = 1.0
    short_side: int | None = 224
    apply_rotation: bool = True


@dataclass(frozen=True)
class Preprocessing:
    """Everything between a video file / caption and the model's input tensors."""

    max_frames: int
    max_words: int
    slice_framepos: int
    image_resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    frames: FrameRule
    paragraph: bool = False
    tokenizer: str = 'openai-clip-bpe'

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = 'preprocessing') -> Preprocessing:
        """Raises:
            ExportError: unknown or missing keys (``source`` names the file)."""
        _check_keys(d, cls, f'{source}: preprocessing')
        _check_keys(d['frames'], FrameRule, f'{source}: preprocessing.frames', optional=True)
        d = dict(d)
        d['frames'] = FrameRule(**d['frames'])
        d['mean'], d['std'] = tuple(d['mean']), tuple(d['std'])
        return cls(**d)


def _check_keys(d: Any, cls: type, where: str, optional: bool = False) -> None:
    """``d``'s keys are ``cls``'s fields (all of those without a default present, unless ``optional``)."""
    if not isinstance(d, dict):
        raise ExportError(f'{where} is {type(d).__name__}, expected an object')
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    required = set() if optional else {f.name for f in fields if f.default is dataclasses.MISSING
                                       and f.default_factory is dataclasses.MISSING}
    unknown, missing = sorted(set(d) - names), sorted(required - set(d))
    if unknown or missing:
        parts = ([f'unknown keys {unknown}'] if unknown else []) + ([f'missing keys {missing}'] if missing else [])
        raise ExportError(f'{where} has {" and ".join(parts)}; expected the keys {sorted(names)} (re-export the '
                          'model with this tempme_composer)')


@dataclass
class ExportedModel:
    """A loaded export: the network in eval mode plus what is needed to feed it."""

    model: UnifiedModel
    preprocessing: Preprocessing
    config: dict[str, Any]  # the raw config.json
    model_hash: str  # identifies weights + architecture; indexes record it
    directory: Path

    @property
    def device(self) -> torch.device:
        return self.model.clip.logit_scale.device

    @property
    def embed_dim(self) -> int:
        return int(self.model.clip.config.embed_dim)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks (CLIP checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def clip_origin_keys(clip_config: CLIPConfig) -> set[str]:
    """Names (``clip.…``) of the tensors a base CLIP checkpoint provides (built on the meta device: no memory)."""
    with torch.device('meta'):
        plain = CLIP(clip_config)
    return {f'clip.{k}' for k in plain.state_dict()}


def model_hash(weights_sha256: str, model_section: dict[str, Any], base: dict[str, Any]) -> str:
    """One id for "these weights on this architecture over this base": what an index is tied to."""
    payload = json.dumps({'weights': weights_sha256, 'model': model_section,
                          'base': {k: base.get(k) for k in ('kind', 'sha256', 'architecture')}}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def read_export_config(directory: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of an export folder, checked for format and version.

    Raises:
        ExportError: the folder, the file or a required entry is missing, or it is not JSON of this format.
    """
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise ExportError(f'exported model folder {directory} does not exist (expected the folder tempme-export '
                          f'wrote, holding {CONFIG_FILE} and {WEIGHTS_FILE})')
    if not path.is_file():
        raise ExportError(f'{path} is missing: {directory} is not a model exported by tempme-export')
    try:
        cfg = json.loads(path.read_text(encoding='utf-8'))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f'{path} is not valid JSON ({e}); re-export the model') from e
    if not isinstance(cfg, dict) or cfg.get('format') != EXPORT_FORMAT:
        raise ExportError(f'{path} is not a {EXPORT_FORMAT} config (format={cfg.get("format") if isinstance(cfg, dict) else None!r})')
    if cfg.get('format_version') != EXPORT_FORMAT_VERSION:
        raise ExportError(f'{path} has format_version {cfg.get("format_version")!r}; this tempme_composer reads '
                          f'version {EXPORT_FORMAT_VERSION} (upgrade tempme_composer, or re-export)')
    for key in ('model', 'base_clip', 'weights', 'preprocessing', 'model_hash'):
        if key not in cfg:
            raise ExportError(f'{path} has no {key!r} entry; re-export the model')
    for key in ('model', 'base_clip', 'weights', 'preprocessing'):
        if not isinstance(cfg[key], dict):
            raise ExportError(f'{path}: {key!r} is {type(cfg[key]).__name__}, expected an object; re-export the model')
    if not isinstance(cfg['model_hash'], str):
        raise ExportError(f'{path}: \'model_hash\' is {cfg["model_hash"]!r}, expected text; re-export the model')
    _check_limits(cfg, str(path))
    return cfg


def _check_limits(cfg: dict[str, Any], source: str) -> None:
    """Sizes within `tempme_composer.inference.limits` before anything is allocated (``ExportError`` otherwise)."""
    from tempme_composer.inference.limits import check_architecture, check_preprocessing

    arch = cfg['base_clip'].get('architecture')
    try:
        check_architecture(arch, source)
        config = clip_config_from_dict(arch)
        Preprocessing.from_dict(cfg['preprocessing'], source)
        check_preprocessing(cfg['preprocessing'], config.context_length, config.image_resolution, source)
    except ValueError as e:  # ExportError included
        raise ExportError(str(e) if source in str(e) else f'{source}: base_clip.architecture: {e}') from e


def _parameter_count(clip_config: CLIPConfig, model_cfg: ModelConfig, num_frames: int) -> int:
    """Parameters and buffers of the network, built on the meta device (no memory, no time)."""
    with torch.device('meta'):
        model = UnifiedModel.from_config(CLIP(clip_config), model_cfg, num_frames=num_frames)
    return sum(t.numel() for t in (*model.parameters(), *model.buffers()))


def load_exported(directory: str | os.PathLike, clip_checkpoint: str | os.PathLike | None = None, *,
                  device: str | torch.device = 'cpu') -> ExportedModel:
    """Load an export folder into an eval-mode model, verifying every file it depends on.

    Args:
        directory: what ``tempme-export`` wrote.
        clip_checkpoint: the base OpenAI CLIP file; needed when the export holds only the trained tensors
            (the default), checked against the SHA-256 recorded at export.
        device: where the model goes.

    Raises:
        ExportError: missing/corrupt files, a base checkpoint other than the one recorded, a missing or extra
            tensor, a shape mismatch.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg = read_export_config(directory)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ExportError(f'{weights_path} is missing (the export folder holds {CONFIG_FILE} but no weights)')
    recorded = cfg['weights'].get('sha256')
    if not isinstance(cfg['weights'].get('tensors', []), list):
        raise ExportError(f'{directory / CONFIG_FILE}: weights.tensors is not a list of tensor names; re-export the model')
    actual = sha256_file(weights_path)
    if recorded != actual:
        raise ExportError(f'{weights_path} does not match {directory / CONFIG_FILE}: sha256 {actual[:16]}… but the '
                          f'export recorded {str(recorded)[:16]}… (the file was changed, truncated or replaced; '
                          're-export or copy the folder again)')
    computed = model_hash(actual, cfg['model'], cfg['base_clip'])
    if computed != cfg['model_hash']:
        raise ExportError(f'{directory / CONFIG_FILE} records model_hash {cfg["model_hash"][:16]}… but its weights, '
                          f'model section and base hash to {computed[:16]}…: the export was altered after it was '
                          'written; re-export the model (or copy the folder again)')
    try:
        model_cfg = model_config_from_dict(cfg['model'], source=str(directory / CONFIG_FILE))
    except ConfigError as e:
        raise ExportError(str(e)) from e
    base = cfg['base_clip']
    architecture = clip_config_from_dict(base['architecture'])
    prep = Preprocessing.from_dict(cfg['preprocessing'], str(directory / CONFIG_FILE))
    try:
        from tempme_composer.inference.limits import check_parameter_count

        check_parameter_count(_parameter_count(architecture, model_cfg, prep.max_frames), str(directory / CONFIG_FILE))
    except ValueError as e:  # also a model section the network refuses (e.g. a merge schedule for other frames)
        raise ExportError(str(e) if CONFIG_FILE in str(e) else f'{directory / CONFIG_FILE}: {e}') from e
    contents = cfg['weights'].get('contents')
    clip = _base_clip(base, architecture, contents, clip_checkpoint, directory)
    model = UnifiedModel.from_config(clip, model_cfg, num_frames=prep.max_frames)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise ExportError(f'{weights_path} cannot be read as safetensors ({e})') from e
    listed = set(cfg['weights'].get('tensors', []))
    if set(tensors) != listed:
        raise ExportError(f'{weights_path} holds other tensors than {CONFIG_FILE} lists: '
                          f'{_diff_message(set(tensors), listed, "in the file", "listed")}')
    _load_into(model, tensors, contents, architecture, weights_path)
    model.eval().to(device)
    return ExportedModel(model=model, preprocessing=prep, config=cfg, model_hash=cfg['model_hash'],
                         directory=directory)


def _base_clip(base: dict[str, Any], architecture: CLIPConfig, contents: str,
               clip_checkpoint: str | os.PathLike | None, directory: Path) -> CLIP:
    """The CLIP the stored tensors go into: the verified base file for a delta export, else a plain init."""
    if contents == 'full':
        if clip_checkpoint is not None:
            log.info('%s holds every weight; the base checkpoint %s is not needed', directory, clip_checkpoint)
        return CLIP(architecture)
    if contents != 'delta':
        raise ExportError(f'{directory / CONFIG_FILE}: weights.contents={contents!r}, expected "full" or "delta"')
    name = base.get('file_name') or 'the base CLIP checkpoint'
    if clip_checkpoint is None:
        raise ExportError(
            f'{directory} holds only the tensors that differ from its base CLIP ({name}, sha256 '
            f'{base.get("sha256", "?")[:16]}…): pass that file (clip_checkpoint=PATH / --clip-checkpoint PATH), '
            'or export with --full')
    path = Path(clip_checkpoint)
    if not path.is_file():
        raise ExportError(f'base CLIP checkpoint {path} does not exist (this model needs {name})')
    actual = sha256_file(path)
    if actual != base.get('sha256'):
        raise ExportError(
            f'base CLIP checkpoint {path} is not the one this model was trained from: sha256 {actual[:16]}… but '
            f'{directory / CONFIG_FILE} records {name} with sha256 {str(base.get("sha256"))[:16]}…; pass that file')
    return load_clip(path, expected=architecture)


def _load_into(model: UnifiedModel, tensors: dict[str, torch.Tensor], contents: str, architecture: CLIPConfig,
               weights_path: Path) -> None:
    """Strictly load ``tensors`` (all of them, or all but base-CLIP ones for a delta) into ``model``."""
    expected = model.state_dict()
    optional = clip_origin_keys(architecture) if contents == 'delta' else set()
    unexpected = set(tensors) - set(expected)
    missing = set(expected) - set(tensors) - optional
    if unexpected or missing:
        raise ExportError(f'{weights_path} does not fit the model its config describes: '
                          f'{_diff_message(set(tensors), set(expected) - optional, "only in the file", "missing from the file")}')
    bad_shapes = [f'{k} {tuple(v.shape)} in the file vs {tuple(expected[k].shape)} in the model'
                  for k, v in tensors.items() if v.numel() != expected[k].numel()
                  or (v.dim() > 1 and v.shape != expected[k].shape)]
    if bad_shapes:
        raise ExportError(f'{weights_path}: {len(bad_shapes)} tensors have another shape: '
                          + '; '.join(bad_shapes[:_MAX_LISTED]) + (' …' if len(bad_shapes) > _MAX_LISTED else ''))
    merged = {k: tensors[k].reshape(v.shape).to(v.dtype) if k in tensors else v for k, v in expected.items()}
    model.load_state_dict(merged, strict=True)


def _diff_message(have: set[str], want: set[str], have_label: str, want_label: str) -> str:
    extra, missing = sorted(have - want), sorted(want - have)
    parts = []
    if extra:
        parts.append(f'{len(extra)} {have_label}: ' + ', '.join(extra[:_MAX_LISTED]) + (' …' if len(extra) > _MAX_LISTED else ''))
    if missing:
        parts.append(f'{len(missing)} {want_label}: ' + ', '.join(missing[:_MAX_LISTED]) + (' …' if len(missing) > _MAX_LISTED else ''))
    return '; '.join(parts)


def model_section(model_cfg: ModelConfig) -> dict[str, Any]:
    """The ``model`` entry of config.json: the training config's ``model.*`` (the base file path dropped)."""
    section = dataclasses.asdict(model_cfg)
    section['clip'] = {'checkpoint': None, 'preset': section['clip']['preset']}
    return section
