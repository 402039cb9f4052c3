"""Typed recipe configuration: YAML + ``key=value`` overrides → validated dataclasses.

One path only (llm-foundry's): ``OmegaConf.load`` the YAML, merge ``OmegaConf.from_cli`` overrides, resolve
interpolations, then check every key against the dataclass schema below. A typo must fail before any data is
read, with one message naming the key, where it came from (the YAML file or the command line) and the
closest valid key. Keys whose feature arrives later are declared so YAMLs stay stable, but any non-default
value is rejected as "not implemented yet" instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tempme_composer.errors import ConfigError
from tempme_composer.model.config import ModelConfig, check_model_config
from tempme_composer.schema import REQUIRED, build_dataclass

__all__ = [
    'DataConfig',
    'DataSourceConfig',
    'DemoDataConfig',
    'StreamConfig',
    'paragraph_mode',
    'has_val_split',
    'EvaluationConfig',
    'LogitScaleClampConfig',
    'OptimizerConfig',
    'FSDPConfig',
    'LoggersConfig',
    'TrainConfig',
    'load_config',
    'config_from_dict',
    'config_to_yaml',
]

log = logging.getLogger(__name__)

@dataclass
class StreamConfig:
    """One of several mixed MDS datasets (streaming `Stream`); use proportion OR repeat/choose."""

    local: str = REQUIRED  # type: ignore[assignment]
    remote: str | None = None
    split: str | None = None
    proportion: float | None = None  # relative share of an epoch
    repeat: float | None = None  # absolute upsampling factor
    choose: int | None = None  # absolute number of samples per epoch


@dataclass
class DataSourceConfig:
    """An MDS dataset: a local folder (optionally mirrored from a remote store streaming supports), or a mix
    of several `streams`."""

    local: str | None = None  # required unless streams is given
    remote: str | None = None
    split: str | None = None
    streams: list[StreamConfig] | None = None


@dataclass
class DemoDataConfig:
    """The generated demo dataset (real PyAV-encoded videos → MDS); built on first use."""

    root: str = REQUIRED  # type: ignore[assignment]
    num_train: int = 288
    num_eval: int = 72
    seed: int = 0
    num_val: int = 0  # further videos in a held-out validation split (0: none); evaluation.select_on: val uses it


@dataclass
class DataConfig:
    datatype: Literal['demo', 'msrvtt', 'msvd', 'lsmdc', 'didemo', 'activity', 'vatex'] = 'msrvtt'
    train: DataSourceConfig | None = None
    eval: DataSourceConfig | None = None  # the test split (MSR-VTT's 1k-A test, the others' val/test)
    val: DataSourceConfig | None = None  # a held-out validation split, for evaluation.select_on: val
    demo: DemoDataConfig | None = None  # required when datatype is 'demo'
    max_frames: int = 12
    max_words: int = 32
    slice_framepos: Literal[0, 1, 2] = 2  # head (0) first frames, tail (1) last, uniform (2) evenly spaced (published)
    expand_msrvtt_sentences: bool = False  # train on every (video, caption) pair once per epoch (<split>_pairs)
    paragraph: bool | None = None  # join a video's sentences into one text; null = on for didemo and activity
    train_frame_order: Literal[0, 1, 2] = 0  # stored (0) as stored, reversed (1), random (2)
    eval_frame_order: Literal[0, 1, 2] = 0
    num_workers: int = 2
    validate_hash: bool = True  # before training, recompute each local shard's hash recorded in index.json


@dataclass
class EvaluationConfig:
    """How retrieval is scored and what analysis is written (see metrics.py for the conventions)."""

    tie_mode: Literal['pessimistic', 'optimistic', 'reference'] = 'pessimistic'  # reference = research code
    dsl: bool = False  # also report dual-softmax re-ranked metrics (raw ones are always reported)
    save_ranks: bool = False  # per-caption rank and top-5 videos as JSONL in output_dir/analysis
    save_similarity: bool = False  # the caption x video similarity matrix as .npy in output_dir/analysis
    # Which split best.pt is chosen on: 'test' is the published-comparison mode (best test R@1 over all
    # evaluations, as the papers report it); 'val' chooses on data.val and reports test beside it.
    select_on: Literal['test', 'val'] = 'test'


@dataclass
class OptimizerConfig:
    optim: Literal['AdamW', 'BertAdam'] = 'AdamW'
    lr: float = 1e-4  # learning rate of new modules; pretrained CLIP parameters get lr * coef_lr
    coef_lr: float = 1.0
    weight_decay: float = 0.2  # torch AdamW convention (multiplied by lr)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_proportion: float = 0.1  # linear warmup over this fraction of training, then cosine decay
    clip_grad_norm: float | None = None


@dataclass
class LogitScaleClampConfig:
    """Bounds of CLIP's learned log temperature after every optimizer step (ln 100 = 4.6052)."""

    min: float = 0.1
    max: float = 4.6052


@dataclass
class FSDPConfig:
    """Composer FSDP (``parallelism_config={'fsdp': ...}``) for large backbones; GPU only; null = plain DDP."""

    sharding_strategy: Literal['FULL_SHARD', 'SHARD_GRAD_OP', 'NO_SHARD', 'HYBRID_SHARD'] = 'FULL_SHARD'
    mixed_precision: Literal['DEFAULT', 'PURE', 'FULL'] = 'DEFAULT'
    activation_checkpointing: bool = False  # recompute each residual block in backward (less memory)
    cpu_offload: bool = False


@dataclass
class TensorboardLoggerConfig:
    """Composer's TensorboardLogger, writing to output_dir/tensorboard."""

    flush_interval: int = 100  # batches between writes


@dataclass
class WandBLoggerConfig:
    """Composer's WandBLogger (``pip install -e '.[wandb]'``); the run folder is output_dir/wandb."""

    project: str | None = None
    entity: str | None = None
    group: str | None = None
    name: str | None = None  # defaults to the run name
    tags: list[str] = field(default_factory=list)
    mode: Literal['online', 'offline'] = 'online'  # offline: files only, `wandb sync` uploads them later


@dataclass
class MLflowLoggerConfig:
    """Composer's MLFlowLogger (``pip install -e '.[mlflow]'``): params = the resolved config, metrics = the
    retrieval numbers per evaluation."""

    tracking_uri: str | None = None  # a server URL, file:/path or sqlite:///path; null: MLflow's default
    experiment_name: str | None = None  # null: Composer's default
    run_name: str | None = None  # defaults to the run name
    log_system_metrics: bool = False  # CPU/GPU/memory sampling by MLflow
    log_model: bool = True  # at the end of training: best.pt exported (tempme-export) as the run's artifact exported_model/


@dataclass
class FileLoggerConfig:
    """Composer's FileLogger: every logged metric as text, one file per rank in output_dir."""

    filename: str = 'logs-rank{rank}.txt'  # relative to output_dir; {rank} and {run_name} are filled in
    flush_interval: int = 100  # logged lines between writes to disk


@dataclass
class LoggersConfig:
    """Experiment trackers (llm-foundry's ``loggers:`` section); a null entry turns one off."""

    tensorboard: TensorboardLoggerConfig | None = field(default_factory=TensorboardLoggerConfig)
    wandb: WandBLoggerConfig | None = None
    mlflow: MLflowLoggerConfig | None = None
    file: FileLoggerConfig | None = None


@dataclass
class TrainConfig:
    output_dir: str = REQUIRED  # type: ignore[assignment]
    run_name: str | None = None  # defaults to the name of output_dir
    seed: int = 42
    do_train: bool = True
    do_eval: bool = False  # with do_train false: evaluate the checkpoint given by `resume`
    resume: str | None = None  # checkpoint to resume training from, or to evaluate
    autoresume: bool = False  # continue from output_dir's latest checkpoint if one exists
    allow_unsafe_checkpoint: bool = False  # load resume/autoresume files with full unpickling (trusted files only)
    epochs: int = 5
    batch_size: int = 128  # global, over all ranks
    batch_size_val: int = 128  # global, over all ranks
    gradient_accumulation_steps: int = 1  # microbatches per rank batch; the loss still sees the global batch
    precision: Literal['fp32', 'amp_fp16', 'amp_bf16'] = 'fp32'
    n_display: int = 50  # log a training line every n_display batches
    checkpoints_to_keep: int = 1  # Composer's latest resumable checkpoints kept in output_dir/checkpoints
    save_interval: str = '1ep'  # resumable checkpoint every N epochs ('1ep') or batches ('500ba')
    freeze_clip: bool = False  # freeze every pretrained CLIP parameter (new modules stay trainable)
    freeze_substrings: list[str] = field(default_factory=list)  # freeze names containing any of these
    keep_substrings: list[str] = field(default_factory=list)  # keep these trainable; wins over both above
    logit_scale_clamp: LogitScaleClampConfig | None = field(default_factory=LogitScaleClampConfig)  # null: off
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    fsdp: FSDPConfig | None = None  # shard the model with FSDP (GPU); null: DDP
    save_folder: str | None = None  # object store (s3://bucket/prefix) the checkpoints are also uploaded to
    loggers: LoggersConfig = field(default_factory=LoggersConfig)  # experiment trackers
    callbacks: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # registered name -> kwargs; null drops
    algorithms: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # registered name -> kwargs; null drops


#: Enum keys that take a word as well as the references' integer (CLIP4Clip's ``--slice_framepos`` and
#: ``--train_frame_order``/``--eval_frame_order``); the config keeps the integer, so outputs and the
#: ``config.yaml`` of earlier runs are unchanged.
ENUM_WORDS: dict[str, dict[str, int]] = {
    'data.slice_framepos': {'head': 0, 'tail': 1, 'uniform': 2},
    'data.train_frame_order': {'stored': 0, 'reversed': 1, 'random': 2},
    'data.eval_frame_order': {'stored': 0, 'reversed': 1, 'random': 2},
}

# Keys declared for stable YAMLs whose feature lands later: (dotted key, default, where it arrives).
_NOT_IMPLEMENTED: tuple[tuple[str, Any, str], ...] = ()


def load_config(yaml_path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML recipe, apply ``key=value`` overrides and validate it.

    Raises:
        ConfigError: a missing/unparsable file, an unknown key, a wrong type, a missing required value or a
            non-default value for a feature that is not implemented yet.
    """
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        raise ConfigError(f'config file {yaml_path} does not exist')
    try:
        file_cfg = OmegaConf.load(yaml_path)
        cli_cfg = OmegaConf.from_cli(list(overrides or []))
        merged = OmegaConf.merge(file_cfg, cli_cfg)
        raw = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f'{yaml_path}: cannot parse the config or overrides {overrides}: {e}') from e
    if not isinstance(raw, dict):
        raise ConfigError(f'{yaml_path}: expected a mapping of keys at the top level, got {type(raw).__name__}')
    cli_keys = set(_dotted_keys(OmegaConf.to_container(cli_cfg)))
    return config_from_dict(raw, source=str(yaml_path), cli_keys=cli_keys)


def config_from_dict(raw: dict[str, Any], source: str = '<dict>', cli_keys: set[str] | None = None) -> TrainConfig:
    """Validate a plain nested dict into a `TrainConfig` (see `load_config` for the errors)."""
    cfg = build_dataclass(TrainConfig, raw, prefix='', source=source, cli_keys=cli_keys or set(), enum_words=ENUM_WORDS)
    _check_semantics(cfg, source)
    return cfg


def config_to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML, as written next to the checkpoints."""
    return OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(cfg)))


def _check_semantics(cfg: TrainConfig, source: str) -> None:
    """Cross-key rules that a type check cannot express."""
    for key, default, arrives in _NOT_IMPLEMENTED:
        value = _get(cfg, key)
        if value != default:
            raise ConfigError(
                f"'{key}={value!r}' in {source}: not implemented yet (arrives with {arrives}); "
                f'remove the key or set it to {default!r}'
            )
    positive = {
        'epochs': cfg.epochs,
        'batch_size': cfg.batch_size,
        'batch_size_val': cfg.batch_size_val,
        'n_display': cfg.n_display,
        'gradient_accumulation_steps': cfg.gradient_accumulation_steps,
        'data.max_frames': cfg.data.max_frames,
        'optimizer.lr': cfg.optimizer.lr,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"'{key}' in {source} must be positive, got {value}")
    check_model_config(cfg.model, source, max_frames=cfg.data.max_frames)
    if cfg.data.max_words < 3:
        raise ConfigError(f"'data.max_words' in {source} must be at least 3 (start, a word, end), got {cfg.data.max_words}")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"'data.num_workers' in {source} must be >= 0, got {cfg.data.num_workers}")
    if not 0.0 <= cfg.optimizer.warmup_proportion < 1.0:
        raise ConfigError(f"'optimizer.warmup_proportion' in {source} must be in [0, 1), got {cfg.optimizer.warmup_proportion}")
    if cfg.optimizer.clip_grad_norm is not None and cfg.optimizer.clip_grad_norm <= 0:
        raise ConfigError(f"'optimizer.clip_grad_norm' in {source} must be positive or null, got {cfg.optimizer.clip_grad_norm}")
    if not re.fullmatch(r'[1-9][0-9]*(ep|ba)', cfg.save_interval):
        raise ConfigError(f"'save_interval' in {source} must look like '1ep' or '500ba', got {cfg.save_interval!r}")
    clamp = cfg.logit_scale_clamp
    if clamp is not None and not clamp.min < clamp.max:
        raise ConfigError(f"'logit_scale_clamp' in {source} needs min < max, got [{clamp.min}, {clamp.max}]")
    if len(cfg.optimizer.betas) != 2:
        raise ConfigError(f"'optimizer.betas' in {source} must have two values, got {cfg.optimizer.betas}")
    if not (cfg.do_train or cfg.do_eval):
        raise ConfigError(f'{source}: both do_train and do_eval are false, so there is nothing to do')
    if cfg.do_eval and not cfg.do_train and not cfg.resume:
        raise ConfigError(f"{source}: do_eval without do_train evaluates a checkpoint: set resume=PATH")
    for key in ('train', 'eval', 'val'):
        src = getattr(cfg.data, key)
        if src is not None and (src.local is None) == (src.streams is None):
            raise ConfigError(f"{source}: 'data.{key}' needs exactly one of 'local' (one dataset) or 'streams' (a mix)")
        if src is not None and src.streams is not None:
            for i, stream in enumerate(src.streams):
                if stream.proportion is not None and (stream.repeat is not None or stream.choose is not None):
                    raise ConfigError(f"{source}: 'data.{key}.streams[{i}]' mixes proportion with repeat/choose")
    if cfg.data.expand_msrvtt_sentences and paragraph_mode(cfg.data):
        raise ConfigError(f'{source}: data.expand_msrvtt_sentences cannot be combined with paragraph mode '
                          f'(data.paragraph, on by default for {cfg.data.datatype})')
    if cfg.fsdp is not None and cfg.fsdp.activation_checkpointing and (cfg.model.tempme.enabled or cfg.model.stop.enabled):
        raise ConfigError(f"'fsdp.activation_checkpointing=true' in {source} works for the baseline model only: TempMe "
                          'and STOP run each residual block piece by piece, which the checkpoint wrapper around a '
                          "block's forward never sees. Set fsdp.activation_checkpointing=false")
    _check_storage_and_loggers(cfg, source)
    if cfg.data.datatype == 'demo':
        if cfg.data.demo is None:
            raise ConfigError(f"{source}: data.datatype is 'demo' but the 'data.demo' section (root: ...) is missing")
    elif cfg.data.demo is not None:
        raise ConfigError(f"{source}: 'data.demo' is only used with data.datatype=demo (got {cfg.data.datatype!r})")
    if cfg.do_train and cfg.data.train is None and cfg.data.datatype != 'demo':
        raise ConfigError(f"{source}: do_train is true but 'data.train' (local: ...) is missing")
    if cfg.data.eval is None and cfg.data.datatype != 'demo' and (cfg.do_eval or cfg.do_train):
        raise ConfigError(f"{source}: 'data.eval' (local: ...) is missing; evaluation needs it")
    if cfg.data.demo is not None and cfg.data.demo.num_val < 0:
        raise ConfigError(f"'data.demo.num_val' in {source} must be >= 0 (0: no validation split), got {cfg.data.demo.num_val}")
    if cfg.evaluation.select_on == 'val' and not has_val_split(cfg.data):
        raise ConfigError(
            f"'evaluation.select_on=val' in {source} needs a validation split, and none is configured: set "
            "'data.val' (local: ...; tempme-convert --val-from-train N makes one for a benchmark without an "
            "official one)" + (', or data.demo.num_val > 0' if cfg.data.datatype == 'demo' else '')
            + ", or select_on=test (the published-comparison mode)")


def has_val_split(data: DataConfig) -> bool:
    """Whether the run has a validation split: data.val, or the demo's generated one."""
    return data.val is not None or (data.datatype == 'demo' and data.demo is not None and data.demo.num_val > 0)


#: Tracker -> (module it needs, pyproject extra that installs it).
_LOGGER_EXTRAS = {'wandb': ('wandb', 'wandb'), 'mlflow': ('mlflow', 'mlflow')}


def _check_storage_and_loggers(cfg: TrainConfig, source: str) -> None:
    """save_folder is an object-store URI; configured trackers are installed; no two datasets that read
    from a remote share a cache folder (streaming keys its shared memory and shards by local/split)."""
    import importlib.util

    from tempme_composer.remote import is_remote, split_uri

    if cfg.save_folder is not None:
        try:
            split_uri(cfg.save_folder)
        except ValueError:
            raise ConfigError(f"'save_folder={cfg.save_folder}' in {source}: expected an object-store URI such as "
                              's3://bucket/prefix (local checkpoints always go to output_dir/checkpoints)') from None
    for name, (module, extra) in _LOGGER_EXTRAS.items():
        if getattr(cfg.loggers, name) is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(f"'loggers.{name}' in {source} needs the {module} package, which is not installed: "
                              f"pip install -e '.[{extra}]' (or remove loggers.{name})")
    for name in ('tensorboard', 'file'):
        sub = getattr(cfg.loggers, name)
        if sub is not None and sub.flush_interval <= 0:
            raise ConfigError(f"'loggers.{name}.flush_interval' in {source} must be positive, got {sub.flush_interval}")
    caches: dict[str, tuple[str, bool]] = {}
    for key in ('train', 'eval', 'val'):
        src = getattr(cfg.data, key)
        if src is None:
            continue
        items = [(f'data.{key}.streams[{i}]', s) for i, s in enumerate(src.streams)] if src.streams else [(f'data.{key}', src)]
        for where, one in items:
            folder = str(Path(one.local or '').joinpath(one.split or '').resolve())
            if folder in caches and (is_remote(one.remote) or caches[folder][1]):
                raise ConfigError(
                    f"{source}: '{where}' and '{caches[folder][0]}' use the same cache folder {folder} (local + "
                    'split) and one of them reads from a remote. streaming keys its shared memory and downloaded '
                    'shards by that folder, so two datasets sharing it collide (Reused local directory). Give '
                    f'each split its own local, e.g. {Path(one.local or "cache").parent}/<split>')
            caches.setdefault(folder, (where, is_remote(one.remote)))


def paragraph_mode(data: DataConfig) -> bool:
    """Whether a video's captions are joined into one paragraph: as set, else on for DiDeMo and ActivityNet
    (the video-paragraph retrieval benchmarks)."""
    return data.paragraph if data.paragraph is not None else data.datatype in ('didemo', 'activity')


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split('.'):
        cfg = getattr(cfg, part)
    return cfg


def _dotted_keys(tree: Any, prefix: str = '') -> list[str]:
    if not isinstance(tree, dict):
        return [prefix.rstrip('.')] if prefix else []
    keys = []
    for k, v in tree.items():
        keys.append(prefix + str(k))
        keys.extend(_dotted_keys(v, prefix + str(k) + '.'))
    return keys
