"""Experiment trackers from the ``loggers:`` section, built with Composer's logger classes (llm-foundry style).

``tensorboard`` is on by default (output_dir/tensorboard); ``wandb``, ``mlflow`` and ``file`` are opt-in. The
tracker packages are optional extras (``pip install -e '.[wandb]'``, ``'.[mlflow]'``); config loading already
refused a configured tracker whose package is missing, naming the extra.

MLflow and W&B also receive the resolved config as run parameters (flattened to dotted keys, e.g.
``optimizer.lr``) through `LogConfigToTrackers`, and every evaluation's retrieval numbers as metrics
(``metrics/<label>/t2v_R@1``...; MLflow's names allow no ``@``, so there they read ``t2v_R1``).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

from composer.core import Callback, State
from composer.loggers import (
    FileLogger,
    Logger,
    LoggerDestination,
    MLFlowLogger,
    TensorboardLogger,
    WandBLogger,
)
from composer.utils import dist

from tempme_composer.config import LoggersConfig

__all__ = ['LogConfigToTrackers', 'LogExportedModel', 'RetrievalMLFlowLogger', 'build_loggers', 'flatten_config', 'mlflow_metric_name']

log = logging.getLogger(__name__)

_MLFLOW_BAD = re.compile(r'[^/\w.\- :]')  # MLflow metric/param names: alphanumerics, _ - . space : /


def mlflow_metric_name(key: str) -> str:
    """``metrics/demo/t2v_R@1`` -> ``metrics/demo/t2v_R1``; other characters MLflow refuses become ``_``."""
    return _MLFLOW_BAD.sub('_', key.replace('@', ''))


def flatten_config(config: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    """Nested config -> ``{'optimizer.lr': 1e-4, 'data.train.local': ..., 'model.tempme.merge_layers': '[8, 9]'}``
    (scalars kept, lists as their text): what MLflow params and W&B config hold."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            flat.update(flatten_config(value, f'{name}.'))
        elif isinstance(value, (list, tuple)):
            flat[name] = str(list(value))
        else:
            flat[name] = value
    return flat


def build_loggers(cfg: LoggersConfig, output_dir: Path, run_name: str) -> list[LoggerDestination]:
    """Composer logger destinations for ``cfg`` (packages of the optional trackers are imported here)."""
    loggers: list[LoggerDestination] = []
    if cfg.tensorboard is not None:
        loggers.append(TensorboardLogger(log_dir=str(output_dir / 'tensorboard'),
                                         flush_interval=cfg.tensorboard.flush_interval))
    if cfg.file is not None:
        loggers.append(FileLogger(filename=str(output_dir / cfg.file.filename), flush_interval=cfg.file.flush_interval,
                                  capture_stdout=False, capture_stderr=False, overwrite=True))
    if cfg.mlflow is not None:
        m = cfg.mlflow
        loggers.append(RetrievalMLFlowLogger(
            experiment_name=m.experiment_name,
            run_name=m.run_name or run_name,
            tracking_uri=m.tracking_uri,
            log_system_metrics=m.log_system_metrics,
            synchronous=True,  # metrics are on the store when the step returns (no lost tail at exit)
            log_duplicated_metric_every_n_steps=0,  # every evaluation's numbers, even when unchanged
        ))
    if cfg.wandb is not None:
        w = cfg.wandb
        wandb_dir = output_dir / 'wandb'
        wandb_dir.mkdir(parents=True, exist_ok=True)
        loggers.append(WandBLogger(project=w.project, entity=w.entity, group=w.group, name=w.name or run_name,
                                   tags=list(w.tags) or None, init_kwargs={'mode': w.mode, 'dir': str(wandb_dir)}))
    return loggers


class RetrievalMLFlowLogger(MLFlowLogger):
    """Composer's MLFlowLogger with metric names MLflow accepts (``R@1`` -> ``R1``, see `mlflow_metric_name`)
    and a way to attach a folder to the run (Composer's logger has none for plain files)."""

    def rename(self, key: str) -> str:
        return mlflow_metric_name(super().rename(key))

    def log_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        """Upload every file of ``local_dir`` under ``artifact_path/`` of this run (rank 0 only: others have no run)."""
        if self._enabled and self._run_id is not None:
            self._mlflow_client.log_artifacts(self._run_id, str(local_dir), artifact_path=artifact_path)


class LogConfigToTrackers(Callback):
    """At ``INIT`` (after the loggers started their runs), give the resolved config to the trackers that keep
    run parameters (MLflow params, W&B config), flattened by `flatten_config`. TensorBoard is left out: its
    hparams table takes only scalars and Composer rewrites it at every evaluation. YAML: automatic."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.params = flatten_config(config)

    def init(self, state: State, logger: Logger) -> None:
        del state  # unused
        for destination in logger.destinations:
            if isinstance(destination, MLFlowLogger):
                destination.log_hyperparameters({mlflow_metric_name(k): v for k, v in self.params.items()})
            elif isinstance(destination, WandBLogger):
                destination.log_hyperparameters(self.params)


class LogExportedModel(Callback):
    """At ``FIT_END`` on rank 0: export ``checkpoints/best.pt`` the way ``tempme-export`` does (safetensors + JSON
    + model card, into ``export_dir``) and attach it to the MLflow run as the artifact ``exported_model/``, so the
    tracked run carries a model that loads without unpickling. YAML: ``loggers.mlflow.log_model`` (default true).

    A run without a best checkpoint (no evaluation ran) or an export that fails leaves training's result as it is
    and warns with the reason and the command that exports by hand; the tracker is not the only copy.
    """

    ARTIFACT_PATH = 'exported_model'

    def __init__(self, checkpoint: Path, export_dir: Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.export_dir = Path(export_dir)

    def fit_end(self, state: State, logger: Logger) -> None:
        del state  # unused
        trackers = [d for d in logger.destinations if isinstance(d, RetrievalMLFlowLogger)]
        if not trackers or dist.get_global_rank() != 0:
            return
        by_hand = f'tempme-export {self.checkpoint} --out {self.export_dir}'
        if not self.checkpoint.is_file():
            warnings.warn(f'loggers.mlflow.log_model: no {self.checkpoint} (no evaluation ran), so no model was '
                          'attached to the MLflow run', stacklevel=1)
            return
        from tempme_composer.inference.export import export_checkpoint  # heavy: only when a model is logged

        try:
            export_checkpoint(self.checkpoint, self.export_dir)
        except Exception as e:  # training's result stands; say why the artifact is missing and how to make it
            warnings.warn(f'loggers.mlflow.log_model: exporting {self.checkpoint} failed ({type(e).__name__}: {e}); '
                          f'the MLflow run has no model artifact. Export by hand: {by_hand}', stacklevel=1)
            return
        for tracker in trackers:
            tracker.log_artifacts(self.export_dir, self.ARTIFACT_PATH)
        log.info('exported %s to %s and attached it to the MLflow run as %s/', self.checkpoint, self.export_dir,
                 self.ARTIFACT_PATH)
