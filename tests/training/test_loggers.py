"""The ``loggers:`` section: Composer's TensorBoard (default), MLflow, W&B and file loggers, run for real.

MLflow writes to a local SQLite store, W&B runs offline; both must hold the resolved config as parameters and
the retrieval numbers of every evaluation, equal to what the recipe computed. Both are in the ``dev`` extra, so CI
runs both; where an environment lacks wandb, the W&B part is left out."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from wandb_records import history_and_config

from tempme_composer.callbacks import RetrievalLogger
from tempme_composer.config import load_config
from tempme_composer.errors import ConfigError
from tempme_composer.inference import load_exported
from tempme_composer.inference.export import read_checkpoint_model_state
from tempme_composer.loggers import flatten_config, mlflow_metric_name
from tempme_composer.train import train

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / 'yamls' / 'demo.yaml'


def test_a_configured_tracker_without_its_package_is_a_config_error_naming_the_extra(tmp_path, monkeypatch):
    for name in ('wandb', 'mlflow'):
        monkeypatch.setitem(sys.modules, name, None)  # how Python marks a module as not importable
        with pytest.raises(ConfigError, match=rf"'loggers.{name}' in .* needs the {name} package, which is not "
                                              rf"installed: pip install -e '.\[{name}\]'"):
            load_config(DEMO, [f'output_dir={tmp_path}', f'loggers.{name}={{}}'])
    cfg = load_config(DEMO, [f'output_dir={tmp_path}'])
    assert cfg.loggers.tensorboard is not None and cfg.loggers.wandb is None and cfg.loggers.mlflow is None
    with pytest.raises(ConfigError, match=r"unknown key 'loggers.neptune'"):
        load_config(DEMO, [f'output_dir={tmp_path}', 'loggers.neptune={}'])
    with pytest.raises(ConfigError, match=r"'save_folder=/tmp/x' .* expected an object-store URI"):
        load_config(DEMO, [f'output_dir={tmp_path}', 'save_folder=/tmp/x'])


def test_names_for_the_trackers():
    assert mlflow_metric_name('metrics/demo/t2v_R@10') == 'metrics/demo/t2v_R10'
    assert mlflow_metric_name('lr-AdamW/group0') == 'lr-AdamW/group0'
    assert flatten_config({'a': {'b': 1, 'c': [1, 2]}, 'd': None}) == {'a.b': 1, 'a.c': '[1, 2]', 'd': None}


@pytest.mark.e2e
def test_mlflow_wandb_file_and_tensorboard_get_the_config_and_every_evaluation(demo_data, tmp_path):
    mlflow = pytest.importorskip('mlflow')
    with_wandb = importlib.util.find_spec('wandb') is not None
    store = f'sqlite:///{tmp_path / "mlflow.db"}'
    run = tmp_path / 'run'
    # MLflow's artifact root defaults to ./mlruns of the working directory: keep the artifacts in tmp_path.
    mlflow.tracking.MlflowClient(tracking_uri=store).create_experiment(
        'tempme', artifact_location=(tmp_path / 'mlflow-artifacts').as_uri())
    cfg = load_config(DEMO, [
        f'output_dir={run}', f'data.demo.root={demo_data}', 'data.demo.num_train=24',
        'data.demo.num_eval=12', 'epochs=2', 'batch_size=8', 'batch_size_val=6', 'data.num_workers=0',
        f'loggers.mlflow={{tracking_uri: "{store}", experiment_name: tempme}}',
        'loggers.file={}', *(['loggers.wandb={project: tempme, mode: offline}'] if with_wandb else []),
    ])
    trainer = train(cfg)
    (retrieval,) = [cb for cb in trainer.state.callbacks if isinstance(cb, RetrievalLogger)]
    final = retrieval.last_results['demo']
    trainer.close()

    # FileLogger: one line per logged value, `[metric][batch=N]: key: value`.
    lines = (run / 'logs-rank0.txt').read_text()
    per_step: dict[int, dict[str, float]] = {}
    for step, key, value in re.findall(r'\[metric\]\[batch=(\d+)\]: (metrics/demo/\S+): (\S+)', lines):
        per_step.setdefault(int(step), {})[key] = float(value)
    assert sorted(per_step) == [3, 6]  # one evaluation per epoch
    assert per_step[6] == pytest.approx({f'metrics/demo/{k}': v for k, v in final.items()}, abs=5e-5)  # 4 decimals

    # MLflow: params = the resolved config (dotted keys), metrics = every evaluation's numbers.
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    (mlrun,) = client.search_runs([client.get_experiment_by_name('tempme').experiment_id])
    params = mlrun.data.params
    assert params['epochs'] == '2' and params['optimizer.lr'] == '0.001' and params['output_dir'] == str(run)
    assert params['model.clip.preset'] == 'tiny' and params['loggers.tensorboard.flush_interval'] == '100'
    for key in final:
        history = client.get_metric_history(mlrun.info.run_id, mlflow_metric_name(f'metrics/demo/{key}'))
        values = {h.step: h.value for h in history}
        assert sorted(values) == [3, 6] and values[6] == final[key], key
        assert values[3] == pytest.approx(per_step[3][f'metrics/demo/{key}'], abs=5e-5), key

    # The exported best model is attached to the run (loggers.mlflow.log_model) and loads without unpickling to
    # best.pt's weights; its model card carries best.json's numbers.
    artifact = Path(client.download_artifacts(mlrun.info.run_id, 'exported_model', str(tmp_path / 'artifact')))
    assert sorted(p.name for p in artifact.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert any((tmp_path / 'mlflow-artifacts').rglob('model.safetensors'))
    exported = load_exported(artifact)
    best = read_checkpoint_model_state(run / 'checkpoints' / 'best.pt')
    loaded = exported.model.state_dict()
    assert loaded.keys() == best.keys() and all(torch.equal(loaded[k], best[k]) for k in best)
    best_record = json.loads((run / 'checkpoints' / 'best.json').read_text())
    assert f'| text→video | {best_record["value"]:.1f} |' in (artifact / 'README.md').read_text()

    assert any((run / 'tensorboard').rglob('events.out.tfevents.*'))  # still on by default
    if not with_wandb:
        return
    # W&B offline: the run file holds the config and every evaluation's numbers (what `wandb sync` uploads).
    (run_file,) = (run / 'wandb' / 'wandb').glob('offline-run-*/run-*.wandb')
    history, config = history_and_config(run_file)
    for step in (3, 6):
        for key in final:
            mlflow_value = client.get_metric_history(mlrun.info.run_id, mlflow_metric_name(f'metrics/demo/{key}'))
            assert history[step][f'metrics/demo/{key}'] == {h.step: h.value for h in mlflow_value}[step], key
    assert config['optimizer.lr'] == 0.001 and config['epochs'] == 2 and config['output_dir'] == str(run)


def test_an_mlflow_run_without_a_usable_best_checkpoint_warns_and_attaches_nothing(tmp_path):
    pytest.importorskip('mlflow')
    from composer.loggers import Logger

    from tempme_composer.loggers import LogExportedModel, RetrievalMLFlowLogger

    logger = Logger(state=None, destinations=[RetrievalMLFlowLogger(tracking_uri=f'sqlite:///{tmp_path / "m.db"}')])
    best = tmp_path / 'checkpoints' / 'best.pt'
    callback = LogExportedModel(best, tmp_path / 'exported')
    with pytest.warns(UserWarning, match=r'no .*best\.pt \(no evaluation ran\)'):
        callback.fit_end(None, logger)
    best.parent.mkdir()
    best.write_bytes(b'not a checkpoint')
    with pytest.warns(UserWarning, match=r'exporting .*best\.pt failed .*Export by hand: tempme-export'):
        callback.fit_end(None, logger)
    assert not (tmp_path / 'exported' / 'model.safetensors').exists()
