"""The ``callbacks:`` registry: the recipe's callbacks beside Composer's own, in the order a run builds them.

Default run (no section): ``retrieval_logger``, ``train_log_line``, ``frame_padding_notice``,
``retrieval_analysis`` (evaluation.save_ranks/save_similarity), ``log_config_to_trackers`` (MLflow or W&B);
training adds ``best_checkpoint``, ``selection_report`` (evaluation.select_on: val), ``checkpoint_saver``
(save_folder), ``finite_loss_guard``, ``log_exported_model`` (loggers.mlflow.log_model), ``parameter_report``,
``training_scalars``, ``lr_monitor``, ``speed_monitor`` (window n_display) and ``memory_monitor`` (GPU). The others are added by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from composer.callbacks import (
    ActivationMonitor,
    EarlyStopper,
    LRMonitor,
    MemoryMonitor,
    NaNMonitor,
    OptimizerMonitor,
    RuntimeEstimator,
    SpeedMonitor,
    SystemMetricsMonitor,
    ThresholdStopper,
)

from tempme_composer.callbacks import (
    FiniteLossGuard,
    FramePaddingNotice,
    ParameterReport,
    RetrievalAnalysis,
    RetrievalLogger,
    TrainingScalars,
    TrainLogLine,
)
from tempme_composer.checkpointing.best_checkpoint import BEST_WEIGHTS
from tempme_composer.checkpointing.selection_report import SelectionReport
from tempme_composer.composer_wrapper import PRIMARY_METRIC
from tempme_composer.loggers import LogConfigToTrackers, LogExportedModel
from tempme_composer.recipe.context import RunContext
from tempme_composer.recipe.data import VAL_LABEL
from tempme_composer.recipe.registry import Component, Registry

__all__ = ['CALLBACKS', 'build_callbacks']

_PLAN = 'it is built from save_interval, checkpoints_to_keep and save_folder'


def _training(ctx: RunContext) -> bool:
    return ctx.cfg.do_train


def _planned(attribute: str):  # noqa: ANN202 - a component's make
    def make(ctx: RunContext) -> Any:
        built = getattr(ctx.checkpoints, attribute)
        if built is None:
            raise ValueError('only a training run (with save_folder, for the saver) has it')
        return built

    return make


def _analysis_folder(ctx: RunContext) -> dict[str, Any]:
    e = ctx.cfg.evaluation
    return {
        'folder': ctx.output_dir / 'analysis',
        'save_ranks': e.save_ranks,
        'save_similarity': e.save_similarity,
    }


def _exported_model(ctx: RunContext) -> dict[str, Any]:
    return {'checkpoint': ctx.checkpoints.folder / BEST_WEIGHTS, 'export_dir': ctx.output_dir / 'exported'}


def _selection_report(ctx: RunContext) -> SelectionReport:
    if ctx.checkpoints.best_checkpoint is None:
        raise ValueError('only a training run has best.pt to report on')
    return SelectionReport(
        ctx.checkpoints.best_checkpoint, ctx.cfg.data.datatype, VAL_LABEL, PRIMARY_METRIC, ctx.output_dir
    )


def _tracked(ctx: RunContext) -> bool:
    return ctx.cfg.loggers.mlflow is not None or ctx.cfg.loggers.wandb is not None


CALLBACKS: Registry[RunContext] = Registry(
    'callbacks',
    {
        'retrieval_logger': Component.of_class(
            RetrievalLogger,
            lambda ctx: {
                'results_dir': ctx.output_dir,
                'gallery': ctx.gallery,
                'gallery_label': ctx.eval_label,
            },
            in_default_run=lambda ctx: True,
            required='it computes and reports the retrieval metrics of every evaluation',
        ),
        'train_log_line': Component.of_class(
            TrainLogLine, lambda ctx: {'n_display': ctx.cfg.n_display}, in_default_run=lambda ctx: True
        ),
        'frame_padding_notice': Component.of_class(FramePaddingNotice, in_default_run=lambda ctx: True),
        'retrieval_analysis': Component.of_class(
            RetrievalAnalysis,
            _analysis_folder,
            in_default_run=lambda ctx: ctx.cfg.evaluation.save_ranks or ctx.cfg.evaluation.save_similarity,
        ),
        'log_config_to_trackers': Component.of_class(
            LogConfigToTrackers, lambda ctx: {'config': dataclasses.asdict(ctx.cfg)}, in_default_run=_tracked
        ),
        'best_checkpoint': Component(
            make=_planned('best_checkpoint'),
            in_default_run=_training,
            required='best.pt is what evaluation, export and search load',
            fixed='the checkpoint plan builds it in output_dir/checkpoints',
        ),
        'selection_report': Component(
            make=_selection_report,
            in_default_run=lambda ctx: ctx.cfg.do_train and ctx.cfg.evaluation.select_on == 'val',
            fixed='evaluation.select_on: val builds it',
        ),
        'checkpoint_saver': Component(
            make=_planned('saver'),
            in_default_run=lambda ctx: ctx.checkpoints.saver is not None,
            required='save_folder uploads every checkpoint through it',
            fixed=_PLAN,
        ),
        'finite_loss_guard': Component.of_class(
            FiniteLossGuard,
            lambda ctx: {'checkpoint_folder': ctx.checkpoints.folder},
            in_default_run=_training,
        ),
        'log_exported_model': Component.of_class(
            LogExportedModel,
            _exported_model,
            in_default_run=lambda ctx: (
                ctx.cfg.do_train and ctx.cfg.loggers.mlflow is not None and ctx.cfg.loggers.mlflow.log_model
            ),
        ),
        'parameter_report': Component.of_class(
            ParameterReport, lambda ctx: {'output_dir': ctx.output_dir}, in_default_run=_training
        ),
        'training_scalars': Component.of_class(TrainingScalars, in_default_run=_training),
        'lr_monitor': Component.of_class(LRMonitor, in_default_run=_training),
        'speed_monitor': Component.of_class(
            SpeedMonitor, lambda ctx: {'window_size': ctx.cfg.n_display}, in_default_run=_training
        ),
        'memory_monitor': Component.of_class(
            MemoryMonitor, in_default_run=lambda ctx: ctx.cfg.do_train and ctx.device == 'gpu'
        ),
        # Composer's, added by name only
        'optimizer_monitor': Component.of_class(OptimizerMonitor),
        'runtime_estimator': Component.of_class(RuntimeEstimator),
        'nan_monitor': Component.of_class(NaNMonitor),
        'activation_monitor': Component.of_class(ActivationMonitor),
        'system_metrics_monitor': Component.of_class(SystemMetricsMonitor),
        'early_stopper': Component.of_class(EarlyStopper),
        'threshold_stopper': Component.of_class(ThresholdStopper),
    },
)


def build_callbacks(ctx: RunContext) -> list[Any]:
    """This run's callbacks: the default set with the YAML ``callbacks:`` section applied."""
    return CALLBACKS.build(ctx, ctx.cfg.callbacks)
