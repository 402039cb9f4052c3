"""train(cfg) -> Trainer: build the model, data, optimizer, callbacks and Composer Trainer from a config.

`recipes/train.py` only parses the command line and calls `main`; everything lives here so tests can drive
the same code path.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import torch
from composer import Trainer
from composer.algorithms import GradientClipping
from composer.callbacks import LRMonitor, MemoryMonitor, SpeedMonitor
from composer.core import Algorithm, Callback, DataSpec, Evaluator
from composer.optim import CosineAnnealingWithWarmupScheduler
from composer.utils import dist, get_device, reproducibility

from tempme_composer import optim as recipe_optim
from tempme_composer.algorithms import (
    ClampLogitScale,
    FreezeError,
    FreezeParameters,
    GradCache,
    freeze_parameters,
)
from tempme_composer.callbacks import (
    BEST_WEIGHTS,
    BestCheckpoint,
    FiniteLossGuard,
    FramePaddingNotice,
    ParameterReport,
    RetrievalAnalysis,
    RetrievalLogger,
    TrainingScalars,
    TrainLogLine,
)
from tempme_composer.clip import CLIP, CLIP_PRESETS, CLIPCheckpointError, load_clip
from tempme_composer.composer_wrapper import PRIMARY_METRIC, RetrievalModel
from tempme_composer.config import (
    DataSourceConfig,
    TrainConfig,
    config_to_yaml,
    load_config,
    paragraph_mode,
)
from tempme_composer.data.gallery import gallery_of_source
from tempme_composer.errors import ConfigError, RecipeError
from tempme_composer.fsdp import prepare_for_fsdp
from tempme_composer.loggers import LogConfigToTrackers, LogExportedModel, build_loggers
from tempme_composer.model import UnifiedModel
from tempme_composer.preflight import (
    check_checkpoint_matches,
    check_dataset,
    disk_full_message,
    is_disk_full,
    latest_checkpoint,
)
from tempme_composer.remote import is_remote
from tempme_composer.remote_checkpoints import (
    CheckpointUploader,
    build_checkpoint_saver,
    local_checkpoint,
    prefetch_latest,
)

__all__ = ['train', 'main', 'build_model', 'build_optimizer', 'build_dataloaders', 'configure_logging']

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """``composer recipes/train.py CONFIG.yaml [key=value ...]``; a config error exits with status 2."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ('-h', '--help'):
        print('usage: composer recipes/train.py CONFIG.yaml [key=value ...]', file=sys.stderr)
        return 2
    try:
        cfg = load_config(argv[0], argv[1:])
        train(cfg)
    except ConfigError as e:  # also the checks that need the model or the ranks (freezing, batch splits)
        print(f'config error: {e}', file=sys.stderr)
        return 2
    except CLIPCheckpointError as e:  # model.clip.checkpoint: missing, not CLIP, inconsistent shapes
        print(f'config error: model.clip.checkpoint: {e}', file=sys.stderr)
        return 2
    except RecipeError as e:  # bad data, a checkpoint of another model, NaN loss, disk full (preflight.py)
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0


def train(cfg: TrainConfig) -> Trainer:
    """Run what the config asks (train, and/or evaluate a checkpoint) and return the Trainer."""
    from streaming.base.util import clean_stale_shared_memory

    configure_logging()
    device = 'gpu' if torch.cuda.is_available() else 'cpu'
    dist.initialize_dist(get_device(device))  # before data prep, so rank 0 can build shared data first
    clean_stale_shared_memory()  # once, before any StreamingDataset (docs/reference/composer.md#streaming)
    if device == 'cpu' and cfg.precision != 'fp32':  # no AMP on CPU: docs/reference/composer.md#precision
        raise ConfigError(f'precision={cfg.precision} needs a GPU; this machine has none, use precision=fp32')
    if cfg.resume and not is_remote(cfg.resume) and not Path(cfg.resume).is_file():
        raise ConfigError(f'resume={cfg.resume}: no such checkpoint file')
    if cfg.fsdp is not None and device == 'cpu':  # Composer's FSDP calls torch.cuda.current_device()
        raise ConfigError('fsdp is set but this machine has no GPU: Composer 0.32 FSDP needs CUDA devices. '
                          'Remove the fsdp section (fsdp=null) to train with DDP on CPU')
    output_dir = Path(cfg.output_dir)
    run_name = cfg.run_name or output_dir.resolve().name
    log.info('run %s: output in %s, device %s, %d rank(s)', run_name, output_dir, device, dist.get_world_size())

    reproducibility.seed_all(cfg.seed)  # identical initial weights on every rank
    model = RetrievalModel(build_model(cfg), tie_mode=cfg.evaluation.tie_mode, dsl=cfg.evaluation.dsl)
    if cfg.fsdp is not None:  # FSDP units, 1-element logit_scale; before the checkpoint check and the optimizer
        prepare_for_fsdp(model, cfg.fsdp.activation_checkpointing, per_block_units=model.model.blocks_called_whole)
    resume = local_checkpoint(cfg.resume, output_dir / 'fetched') if cfg.resume else None  # s3://.../best.pt
    if cfg.save_folder and cfg.autoresume and cfg.do_train:  # fresh machine: the newest remote checkpoint
        prefetch_latest(cfg.save_folder, output_dir / 'checkpoints')
    latest = latest_checkpoint(output_dir / 'checkpoints') if cfg.autoresume and cfg.do_train else None
    if latest is not None:  # autoresume overrides resume= (docs/reference/composer.md#autoresume)
        check_checkpoint_matches(latest, model, f'autoresume (the latest checkpoint of {output_dir})',
                                 allow_unsafe=cfg.allow_unsafe_checkpoint)  # also refuses a pickle that runs code
    elif resume:
        check_checkpoint_matches(resume, model, 'resume', allow_unsafe=cfg.allow_unsafe_checkpoint)
    if dist.get_global_rank() == 0:  # after the checkpoint check: a refused restart keeps the run's config.yaml
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / 'config.yaml').write_text(config_to_yaml(cfg))
    freeze = (cfg.freeze_clip, cfg.freeze_substrings, cfg.keep_substrings)
    if cfg.do_train:  # config mistakes fail here, before any data is prepared
        # Freeze before the optimizer exists, so it only ever holds trainable parameters; FreezeParameters
        # re-asserts the same rules at Event.INIT (a no-op here, see algorithms/freeze.py).
        try:
            report = freeze_parameters(model, *freeze)
        except FreezeError as e:
            raise ConfigError(str(e)) from e
        log.info('%d of %d parameter elements trainable', report.num_trainable, report.num_total)
        per_rank = _per_rank(cfg.batch_size, 'batch_size')
        k = cfg.gradient_accumulation_steps
        if per_rank % k:
            raise ConfigError(
                f'gradient_accumulation_steps={k} must divide the per-rank batch {per_rank} '
                f'(batch_size={cfg.batch_size} over {dist.get_world_size()} rank(s))'
            )
    train_spec, eval_spec = build_dataloaders(cfg, model.model.clip)
    label = cfg.data.datatype  # metrics are logged as metrics/<label>/...
    evaluator = Evaluator(
        label=label,
        dataloader=eval_spec,
        metric_names=[PRIMARY_METRIC],
        device_eval_microbatch_size=_per_rank(cfg.batch_size_val, 'batch_size_val'),
    )
    gallery = gallery_of_source(cfg.data.eval)  # says so when the eval gallery is smaller than listed
    callbacks: list[Callback] = [RetrievalLogger(results_dir=output_dir, gallery=gallery), TrainLogLine(cfg.n_display),
                                 FramePaddingNotice()]
    if cfg.evaluation.save_ranks or cfg.evaluation.save_similarity:
        callbacks.append(RetrievalAnalysis(output_dir / 'analysis', cfg.evaluation.save_ranks, cfg.evaluation.save_similarity))
    loggers = build_loggers(cfg.loggers, output_dir, run_name)
    if cfg.loggers.mlflow is not None or cfg.loggers.wandb is not None:
        callbacks.append(LogConfigToTrackers(dataclasses.asdict(cfg)))

    if not cfg.do_train:
        trainer = Trainer(
            model=model,
            eval_dataloader=evaluator,
            callbacks=callbacks,
            loggers=loggers,
            run_name=run_name,
            seed=cfg.seed,
            device=device,
            precision=cfg.precision,
            load_path=resume,
            load_weights_only=True,
            progress_bar=False,
        )
        trainer.eval()
        return trainer

    callbacks.append(BestCheckpoint(output_dir / 'checkpoints', label, PRIMARY_METRIC, dataclasses.asdict(cfg),
                                    remote_folder=cfg.save_folder))
    if cfg.save_folder:  # Composer uploads every checkpoint; local copies stay in output_dir/checkpoints
        loggers.append(CheckpointUploader(cfg.save_folder, output_dir / 'checkpoints'))
        callbacks.append(build_checkpoint_saver(cfg.save_folder, output_dir / 'checkpoints', cfg.save_interval,
                                                cfg.checkpoints_to_keep))
    callbacks.append(FiniteLossGuard(output_dir / 'checkpoints'))
    if cfg.loggers.mlflow is not None and cfg.loggers.mlflow.log_model:
        callbacks.append(LogExportedModel(output_dir / 'checkpoints' / BEST_WEIGHTS, output_dir / 'exported'))
    if len(train_spec.dataloader) == 0:  # drop_last with fewer videos per rank than the batch: a silent no-op
        raise ConfigError(
            f'batch_size={cfg.batch_size} is larger than the training set ({len(train_spec.dataloader.dataset)} '
            f'videos per rank over {dist.get_world_size()} rank(s)), and training drops the last incomplete '
            'batch, so an epoch would have zero batches. Lower batch_size to at most the number of training '
            'videos (times the ranks), or add training data.'
        )
    callbacks += [
        ParameterReport(output_dir),
        TrainingScalars(),
        LRMonitor(),
        SpeedMonitor(window_size=cfg.n_display),
    ]
    if device == 'gpu':
        callbacks.append(MemoryMonitor())
    optimizer, scheduler = build_optimizer(model, cfg, steps_per_epoch=len(train_spec.dataloader))
    gradient_free = any(p.requires_grad for p in model.model.gradient_free_parameters())
    algorithms: list[Algorithm] = [FreezeParameters(*freeze, warn_absent=False, gradient_free_trainables=gradient_free)]
    if cfg.logit_scale_clamp is not None:
        algorithms.append(ClampLogitScale(cfg.logit_scale_clamp.min, cfg.logit_scale_clamp.max))
    if k > 1:
        algorithms.append(GradCache())
    if cfg.optimizer.clip_grad_norm is not None and cfg.optimizer.optim == 'AdamW':  # BertAdam clips itself
        algorithms.append(GradientClipping(clipping_type='norm', clipping_threshold=cfg.optimizer.clip_grad_norm))
    trainer = Trainer(
        model=model,
        train_dataloader=train_spec,
        eval_dataloader=evaluator,
        eval_interval='1ep',
        max_duration=f'{cfg.epochs}ep',
        optimizers=optimizer,
        schedulers=scheduler,
        algorithms=algorithms,
        callbacks=callbacks,
        loggers=loggers,
        run_name=run_name,
        seed=cfg.seed,
        device=device,
        precision=cfg.precision,
        device_train_microbatch_size=per_rank // k,
        save_folder=str(output_dir / 'checkpoints'),
        save_interval=cfg.save_interval,
        save_num_checkpoints_to_keep=cfg.checkpoints_to_keep,
        # Also with autoresume: a run killed while writing a checkpoint leaves a file newer than `latest`
        # (or no `latest` at all), which save_overwrite=False would refuse to overwrite on the next start.
        save_overwrite=True,
        autoresume=cfg.autoresume,
        load_path=resume,
        progress_bar=True,
        parallelism_config=_parallelism_config(cfg),
    )
    if int(trainer.state.timestamp.epoch) >= cfg.epochs:  # autoresumed a finished run: Composer would refuse
        log.info('%s already trained for %d epochs; raise epochs= to continue', run_name, cfg.epochs)
        return trainer
    try:
        trainer.fit()
    except OSError as e:
        if not is_disk_full(e):
            raise
        folder = output_dir / 'checkpoints'
        from tempme_composer.callbacks.input_guards import kept_checkpoints

        raise RecipeError(disk_full_message('a checkpoint', folder, e, kept_checkpoints(folder) + ' (a partial '
                                            'ep*-ba*-rank0.pt newer than latest-rank0.pt may be left: delete it)')) from e
    return trainer


def _parallelism_config(cfg: TrainConfig) -> dict | None:
    """Composer's ``parallelism_config`` for ``cfg.fsdp`` (the model was prepared by ``prepare_for_fsdp``)."""
    if cfg.fsdp is None:
        return None
    return {'fsdp': {**dataclasses.asdict(cfg.fsdp), 'state_dict_type': 'full', 'use_orig_params': True}}


def build_model(cfg: TrainConfig) -> UnifiedModel:
    """CLIP from the local checkpoint (or a random init of the preset) wrapped as the retrieval network."""
    clip_cfg = cfg.model.clip
    if clip_cfg.checkpoint:
        clip = load_clip(clip_cfg.checkpoint)
    else:
        if clip_cfg.preset not in CLIP_PRESETS:
            raise ConfigError(f"model.clip.preset={clip_cfg.preset!r} is not one of {sorted(CLIP_PRESETS)}")
        log.warning('model.clip.checkpoint is null: CLIP %s starts from random weights', clip_cfg.preset)
        clip = CLIP(CLIP_PRESETS[clip_cfg.preset])
    if cfg.data.max_words > clip.config.context_length:
        raise ConfigError(
            f'data.max_words={cfg.data.max_words} exceeds the CLIP text context length {clip.config.context_length}'
        )
    return UnifiedModel.from_config(clip, cfg.model, num_frames=cfg.data.max_frames)  # LoRA / TempMe if enabled


def build_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, CosineAnnealingWithWarmupScheduler | None]:
    """The optimizer over the trainable parameters (see `tempme_composer.optim.param_groups`) and its
    Composer scheduler: AdamW gets linear warmup over ``warmup_proportion`` of training then cosine decay to 0,
    stepped per batch; BertAdam schedules itself (``warmup_cosine`` over ``t_total = steps_per_epoch × epochs``
    optimizer steps), so the scheduler is None."""
    opt = cfg.optimizer
    optimizer = recipe_optim.build_optimizer(
        model,
        opt.optim,
        lr=opt.lr,
        coef_lr=opt.coef_lr,
        weight_decay=opt.weight_decay,
        betas=tuple(opt.betas),
        eps=opt.eps,
        warmup_proportion=opt.warmup_proportion,
        t_total=steps_per_epoch * cfg.epochs,
        max_grad_norm=opt.clip_grad_norm,
    )
    if opt.optim == 'BertAdam':
        return optimizer, None
    return optimizer, CosineAnnealingWithWarmupScheduler(t_warmup=f'{opt.warmup_proportion}dur', alpha_f=0.0)


def build_dataloaders(cfg: TrainConfig, clip: CLIP) -> tuple[DataSpec | None, DataSpec]:
    """Train and eval loaders over MDS shards; the demo dataset is generated on first use."""
    from tempme_composer.data import LoaderOptions, build_video_text_dataloader

    data = cfg.data
    train_src, eval_src = data.train, data.eval
    if data.datatype == 'demo':
        from tempme_composer.data.synthetic import generate_demo_dataset

        demo = data.demo
        with dist.run_local_rank_zero_first():
            paths = generate_demo_dataset(demo.root, num_train=demo.num_train, num_eval=demo.num_eval, seed=demo.seed)
        train_src = train_src or DataSourceConfig(local=str(paths.train_dir))
        eval_src = eval_src or DataSourceConfig(local=str(paths.eval_dir))
    common = dict(
        max_frames=data.max_frames,
        image_resolution=clip.config.image_resolution,
        max_words=data.max_words,
        num_workers=data.num_workers,
        shuffle_seed=cfg.seed,
        slice_framepos=data.slice_framepos,
        paragraph=paragraph_mode(data),
        check_remote_hashes=data.validate_hash,
    )
    for key, src in (('data.train', train_src), ('data.eval', eval_src)):
        if key == 'data.train' and not cfg.do_train:
            continue
        for i, one in enumerate(src.streams or [src]):
            one = one if isinstance(one, dict) else dataclasses.asdict(one)
            if one.get('remote') is None:  # a remote dataset is downloaded (and checked) by streaming
                check_dataset(f'{key}.streams[{i}]' if src.streams else key, one.get('local'), one.get('split'),
                              validate_hash=data.validate_hash)
    train_spec = None
    if cfg.do_train:
        train_spec = build_video_text_dataloader(LoaderOptions(
            **_source_kwargs(train_src),
            batch_size=_per_rank(cfg.batch_size, 'batch_size'),
            train=True,
            frame_order=data.train_frame_order,
            expand_sentences=data.expand_msrvtt_sentences,
            **common,
        ))
    eval_spec = build_video_text_dataloader(LoaderOptions(
        **_source_kwargs(eval_src),
        batch_size=_per_rank(cfg.batch_size_val, 'batch_size_val'),
        train=False,
        frame_order=data.eval_frame_order,
        **common,
    ))
    return train_spec, eval_spec


def _source_kwargs(src: DataSourceConfig) -> dict:
    """One dataset (local/remote/split) or a mix of streams, as `LoaderOptions` takes them."""
    if src.streams:
        return {'local': None, 'remote': None, 'split': None, 'streams': [dataclasses.asdict(s) for s in src.streams]}
    return {'local': src.local, 'remote': src.remote, 'split': src.split}


def configure_logging(level: int = logging.INFO) -> None:
    """Python logging to stdout with the rank in every line (library code never prints)."""
    rank = dist.get_global_rank()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f'%(asctime)s rank{rank} %(name)s: %(message)s', '%H:%M:%S'))
    root = logging.getLogger('tempme_composer')
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _per_rank(global_batch: int, key: str) -> int:
    world = dist.get_world_size()
    if global_batch % world:
        raise ConfigError(f'{key}={global_batch} is global and must be divisible by the number of ranks ({world})')
    return global_batch // world

