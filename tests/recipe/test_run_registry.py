"""The run's callbacks and algorithms come from the ``callbacks:``/``algorithms:`` registries: with no section
the default set (and its order) is what the recipe has always built; a section adds, tunes or drops by name,
and every mistake is one ConfigError naming ``section.NAME[.KEY]``. Also: enum keys that take words."""

from __future__ import annotations

from pathlib import Path

import pytest
from composer.algorithms import EMA, GradientClipping
from composer.callbacks import LRMonitor, MemoryMonitor, RuntimeEstimator, SpeedMonitor

from tempme_composer.algorithms import ClampLogitScale, FreezeParameters, GradCache
from tempme_composer.callbacks import (
    FiniteLossGuard,
    FramePaddingNotice,
    ParameterReport,
    RetrievalAnalysis,
    RetrievalLogger,
    TrainingScalars,
    TrainLogLine,
)
from tempme_composer.checkpointing.best_checkpoint import BestCheckpoint
from tempme_composer.checkpointing.plan import plan_checkpoints
from tempme_composer.composer_wrapper import PRIMARY_METRIC, RetrievalModel
from tempme_composer.config import config_to_yaml, load_config
from tempme_composer.errors import ConfigError
from tempme_composer.recipe.algorithms import ALGORITHMS, build_algorithms
from tempme_composer.recipe.callbacks import CALLBACKS, build_callbacks
from tempme_composer.recipe.context import RunContext
from tempme_composer.recipe.model import build_model
from tempme_composer.train import main

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / 'yamls' / 'demo.yaml'


def _config(tmp_path: Path, *overrides: str, section: str = ''):
    """The demo config, with an extra YAML ``section`` appended to the file and ``overrides`` on top."""
    path = tmp_path / 'run.yaml'
    path.write_text(DEMO.read_text() + '\n' + section)
    return load_config(
        path, [f'output_dir={tmp_path / "run"}', f'data.demo.root={tmp_path / "demo"}', *overrides]
    )


def _context(cfg, tmp_path: Path, device: str = 'cpu') -> RunContext:
    model = RetrievalModel(build_model(cfg))
    output_dir = tmp_path / 'run'
    plan = plan_checkpoints(cfg, model, output_dir, eval_label='demo', metric=PRIMARY_METRIC)
    return RunContext(cfg, model, output_dir, device, 'demo', None, plan)


def _types(items: list) -> list[type]:
    return [type(item) for item in items]


def test_the_default_set_is_the_recipes_set_in_its_order(tmp_path):
    ctx = _context(_config(tmp_path), tmp_path)
    callbacks = build_callbacks(ctx)
    assert _types(callbacks) == [
        RetrievalLogger,
        TrainLogLine,
        FramePaddingNotice,
        BestCheckpoint,
        FiniteLossGuard,
        ParameterReport,
        TrainingScalars,
        LRMonitor,
        SpeedMonitor,
    ]
    assert callbacks[1].n_display == 3 and callbacks[-1].history_wct.maxlen == 3 + 1  # both n_display
    assert callbacks[3] is ctx.checkpoints.best_checkpoint
    assert _types(build_algorithms(ctx)) == [FreezeParameters, ClampLogitScale]

    cfg = _config(
        tmp_path,
        'evaluation.save_ranks=true',
        'gradient_accumulation_steps=2',
        'optimizer.clip_grad_norm=1.0',
        'logit_scale_clamp.max=4.0',
    )
    ctx = _context(cfg, tmp_path, device='gpu')
    assert _types(build_callbacks(ctx)) == [
        RetrievalLogger,
        TrainLogLine,
        FramePaddingNotice,
        RetrievalAnalysis,
        BestCheckpoint,
        FiniteLossGuard,
        ParameterReport,
        TrainingScalars,
        LRMonitor,
        SpeedMonitor,
        MemoryMonitor,
    ]
    algorithms = build_algorithms(ctx)
    assert _types(algorithms) == [FreezeParameters, ClampLogitScale, GradCache, GradientClipping]
    assert algorithms[1].max == 4.0 and algorithms[3].clipping_threshold == 1.0

    cfg = _config(tmp_path, 'do_train=false', 'do_eval=true', f'resume={tmp_path / "none.pt"}')
    cfg.resume = None  # the eval-only set, without a file to check
    ctx = _context(cfg, tmp_path)
    assert _types(build_callbacks(ctx)) == [RetrievalLogger, TrainLogLine, FramePaddingNotice]
    assert build_algorithms(ctx) == []


def test_yaml_sections_add_and_tune_composer_callbacks_and_ours(tmp_path):
    section = """
callbacks:
  speed_monitor: {window_size: 7}
  train_log_line: {n_display: 5}
  memory_monitor: {memory_keys: {allocated_mem: allocated_mem}}
  runtime_estimator: {}
algorithms:
  ema: {half_life: 10ba}
"""
    ctx = _context(_config(tmp_path, section=section), tmp_path)
    callbacks = build_callbacks(ctx)
    assert _types(callbacks) == [
        RetrievalLogger,
        TrainLogLine,
        FramePaddingNotice,
        BestCheckpoint,
        FiniteLossGuard,
        ParameterReport,
        TrainingScalars,
        LRMonitor,
        SpeedMonitor,
        MemoryMonitor,
        RuntimeEstimator,
    ]
    assert callbacks[1].n_display == 5 and callbacks[8].history_wct.maxlen == 7 + 1  # tuned in place
    assert callbacks[9].memory_keys == {'allocated_mem': 'allocated_mem'}
    assert _types(build_algorithms(ctx)) == [FreezeParameters, ClampLogitScale, EMA]


def test_null_drops_one_of_ours_but_not_one_the_recipe_needs(tmp_path):
    cfg = _config(
        tmp_path,
        'callbacks.parameter_report=null',
        'callbacks.lr_monitor=null',
        'algorithms.clamp_logit_scale=null',
    )
    ctx = _context(cfg, tmp_path)
    assert _types(build_callbacks(ctx)) == [
        RetrievalLogger,
        TrainLogLine,
        FramePaddingNotice,
        BestCheckpoint,
        FiniteLossGuard,
        TrainingScalars,
        SpeedMonitor,
    ]
    assert _types(build_algorithms(ctx)) == [FreezeParameters]
    with pytest.raises(
        ConfigError, match=r'callbacks\.best_checkpoint: null cannot drop it: best\.pt is what'
    ):
        CALLBACKS.check({'best_checkpoint': None})
    with pytest.raises(
        ConfigError, match=r'algorithms\.freeze_parameters: null cannot drop it: the optimizer'
    ):
        ALGORITHMS.check({'freeze_parameters': None})


def test_unknown_name_lists_the_registered_ones_and_the_closest(tmp_path, capsys):
    with pytest.raises(ConfigError) as info:
        CALLBACKS.check({'speed_monitr': {}})
    message = str(info.value)
    assert "unknown callbacks entry 'callbacks.speed_monitr'; did you mean 'speed_monitor'?" in message
    assert 'registered: activation_monitor, best_checkpoint,' in message and 'train_log_line' in message
    with pytest.raises(ConfigError, match=r"'algorithms\.gradcache'; did you mean 'grad_cache'\?"):
        ALGORITHMS.check({'gradcache': {}})
    # from the command line: one line, exit status 2, before anything is built
    assert main([str(DEMO), f'output_dir={tmp_path / "run"}', 'callbacks.lr_monitr={}']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("config error: unknown callbacks entry 'callbacks.lr_monitr'")
    assert not (tmp_path / 'run').exists()


def test_a_bad_keyword_argument_names_section_name_and_key(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r'callbacks\.speed_monitor\.window_sise: not an argument of speed_monitor; '
        r"did you mean 'window_size'\? \(accepted: gpu_flops_available, time_unit, window_size\)",
    ):
        CALLBACKS.check({'speed_monitor': {'window_sise': 3}})
    with pytest.raises(
        ConfigError, match=r'callbacks\.speed_monitor: expected a mapping of keyword arguments or null'
    ):
        CALLBACKS.check({'speed_monitor': 3})
    with pytest.raises(
        ConfigError,
        match=r'callbacks\.checkpoint_saver\.save_interval: checkpoint_saver takes no '
        r'arguments here',
    ):
        CALLBACKS.check({'checkpoint_saver': {'save_interval': '2ep'}})
    ctx = _context(
        _config(tmp_path, 'algorithms.gradient_clipping={}'), tmp_path
    )  # no clip_grad_norm to default
    with pytest.raises(
        ConfigError,
        match=r'algorithms\.gradient_clipping: missing a required argument: '
        r"'clipping_threshold'",
    ):
        build_algorithms(ctx)
    ctx = _context(_config(tmp_path, 'algorithms.clamp_logit_scale.min=5.0'), tmp_path)
    with pytest.raises(ConfigError, match=r'algorithms\.clamp_logit_scale: ClampLogitScale needs min < max'):
        build_algorithms(ctx)


@pytest.mark.parametrize(
    ('key', 'word', 'number'),
    [
        ('data.slice_framepos', 'head', 0),
        ('data.slice_framepos', 'tail', 1),
        ('data.slice_framepos', 'uniform', 2),
        ('data.train_frame_order', 'stored', 0),
        ('data.train_frame_order', 'reversed', 1),
        ('data.eval_frame_order', 'random', 2),
    ],
)
def test_enum_keys_take_words_and_keep_the_integer(tmp_path, key, word, number):
    by_word = _config(tmp_path, f'{key}={word}')
    by_number = _config(tmp_path, f'{key}={number}')
    field = key.split('.')[1]
    assert getattr(by_word.data, field) == number and getattr(by_number.data, field) == number
    assert config_to_yaml(by_word) == config_to_yaml(by_number)  # the run's config.yaml is unchanged
    saved = tmp_path / 'saved.yaml'
    saved.write_text(config_to_yaml(by_word))
    assert getattr(load_config(saved).data, field) == number  # an earlier run's config.yaml loads


def test_an_unknown_enum_word_lists_the_words_and_integers(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"key 'data\.slice_framepos' in the command-line overrides: 'middle' is not "
        r'one of head \(0\), tail \(1\), uniform \(2\): write the word or the integer',
    ):
        _config(tmp_path, 'data.slice_framepos=middle')
    with pytest.raises(
        ConfigError,
        match=r"'reversd' is not one of stored \(0\), reversed \(1\), random \(2\).*"
        r"did you mean 'reversed'\?",
    ):
        _config(tmp_path, 'data.eval_frame_order=reversd')
    with pytest.raises(ConfigError, match=r'7 is not one of head'):
        _config(tmp_path, 'data.slice_framepos=7')
