"""train(cfg) -> Trainer: the recipe, read top to bottom; each step is a builder in `tempme_composer.recipe`.

`recipes/train.py` only parses the command line and calls `main`; everything lives here so tests can drive
the same code path.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from composer import Trainer
from composer.utils import dist, get_device, reproducibility

from tempme_composer.algorithms import freeze_parameters
from tempme_composer.checkpointing.plan import plan_checkpoints
from tempme_composer.clip import CLIPCheckpointError
from tempme_composer.composer_wrapper import PRIMARY_METRIC, RetrievalModel
from tempme_composer.config import TrainConfig, config_to_yaml, load_config
from tempme_composer.data.gallery import gallery_of_source
from tempme_composer.errors import ConfigError, RecipeError
from tempme_composer.fsdp import parallelism_config, prepare_for_fsdp
from tempme_composer.loggers import build_loggers
from tempme_composer.recipe.algorithms import ALGORITHMS, build_algorithms
from tempme_composer.recipe.callbacks import CALLBACKS, build_callbacks
from tempme_composer.recipe.checks import check_machine
from tempme_composer.recipe.context import RunContext
from tempme_composer.recipe.data import (
    VAL_LABEL,
    build_dataloaders,
    build_evaluator,
    build_val_evaluator,
    check_batch_split,
    check_epoch_has_batches,
)
from tempme_composer.recipe.model import build_model
from tempme_composer.recipe.optimizer import build_optimizer
from tempme_composer.recipe.terminal import configure_logging

__all__ = ['train', 'main']

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
    except RecipeError as e:  # bad data, a checkpoint of another model, NaN loss, disk full
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0


def train(cfg: TrainConfig) -> Trainer:
    """Run what the config asks (train, and/or evaluate a checkpoint) and return the Trainer."""
    from streaming.base.util import clean_stale_shared_memory

    CALLBACKS.check(cfg.callbacks)  # a mistyped name or argument fails before anything runs
    ALGORITHMS.check(cfg.algorithms)
    configure_logging()
    device = 'gpu' if torch.cuda.is_available() else 'cpu'
    dist.initialize_dist(get_device(device))  # before data prep, so rank 0 can build shared data first
    clean_stale_shared_memory()  # once, before any StreamingDataset (docs/reference/composer.md#streaming)
    check_machine(cfg, device)
    output_dir = Path(cfg.output_dir)
    run_name = cfg.run_name or output_dir.resolve().name
    log.info(
        'run %s: output in %s, device %s, %d rank(s)', run_name, output_dir, device, dist.get_world_size()
    )

    reproducibility.seed_all(cfg.seed)  # identical initial weights on every rank
    model = RetrievalModel(build_model(cfg), tie_mode=cfg.evaluation.tie_mode, dsl=cfg.evaluation.dsl)
    # FSDP units and a 1-element logit_scale, before the checkpoint check and the optimizer see the model
    if cfg.fsdp is not None:
        prepare_for_fsdp(
            model, cfg.fsdp.activation_checkpointing, per_block_units=model.model.blocks_called_whole
        )
    # best.pt is chosen on the test split (the published-comparison mode) or on the validation split
    selection_label = VAL_LABEL if cfg.evaluation.select_on == 'val' else cfg.data.datatype
    if cfg.data.val is not None and cfg.evaluation.select_on == 'test':
        log.warning(
            'data.val is set but not evaluated: evaluation.select_on is test (the published-comparison '
            'mode); set evaluation.select_on=val to choose best.pt on it'
        )
    checkpoints = plan_checkpoints(cfg, model, output_dir, eval_label=selection_label, metric=PRIMARY_METRIC)
    # After the checkpoint check: a refused restart keeps the run's config.yaml.
    if dist.get_global_rank() == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / 'config.yaml').write_text(config_to_yaml(cfg))
    if cfg.do_train:  # config mistakes fail here, before any data is prepared
        # Freeze before the optimizer exists, so it only ever holds trainable parameters; FreezeParameters
        # re-asserts the same rules at Event.INIT (a no-op here, see algorithms/freeze.py).
        report = freeze_parameters(model, cfg.freeze_clip, cfg.freeze_substrings, cfg.keep_substrings)
        log.info('%d of %d parameter elements trainable', report.num_trainable, report.num_total)
        microbatch = check_batch_split(cfg)
    train_spec, eval_spec, val_spec = build_dataloaders(cfg, model.model.clip)
    evaluator = build_evaluator(cfg, eval_spec, PRIMARY_METRIC)
    # test first: when the validation score improves, that evaluation's test numbers are already recorded
    evaluators = [e for e in (evaluator, build_val_evaluator(cfg, val_spec, PRIMARY_METRIC)) if e is not None]
    gallery = gallery_of_source(cfg.data.eval)  # says so when the eval gallery is smaller than listed
    run = RunContext(cfg, model, output_dir, device, evaluator.label, gallery, checkpoints)
    loggers = build_loggers(cfg.loggers, output_dir, run_name) + [u for u in (checkpoints.uploader,) if u]
    schedule = {}
    if cfg.do_train:
        check_epoch_has_batches(cfg, train_spec)
        optimizer, scheduler = build_optimizer(model, cfg, steps_per_epoch=len(train_spec.dataloader))
        schedule = dict(
            train_dataloader=train_spec,
            eval_interval='1ep',
            max_duration=f'{cfg.epochs}ep',
            optimizers=optimizer,
            schedulers=scheduler,
            device_train_microbatch_size=microbatch,
            parallelism_config=parallelism_config(cfg.fsdp),
        )
    trainer = Trainer(
        model=model,
        eval_dataloader=evaluators,
        algorithms=build_algorithms(run),
        callbacks=build_callbacks(run),
        loggers=loggers,
        run_name=run_name,
        seed=cfg.seed,
        device=device,
        precision=cfg.precision,
        progress_bar=cfg.do_train,
        **schedule,
        **checkpoints.trainer_kwargs(),
    )
    if not cfg.do_train:
        trainer.eval()
    elif int(trainer.state.timestamp.epoch) >= cfg.epochs:  # autoresumed a finished run
        log.info('%s already trained for %d epochs; raise epochs= to continue', run_name, cfg.epochs)
    else:
        try:
            trainer.fit()
        except OSError as e:
            error = checkpoints.disk_full_error(e)
            if error is None:
                raise
            raise error from e
    return trainer
