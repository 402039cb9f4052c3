"""What tempme-export reads of a run's config.yaml agrees with the training recipe that wrote it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from tempme_composer.config import TrainConfig, config_from_dict, config_to_yaml, paragraph_mode
from tempme_composer.errors import ConfigError
from tempme_composer.inference.run_config import RunConfig, RunData, RunEvaluation, read_run_config


def _run(tmp_path: Path, **data) -> dict:
    return {
        'output_dir': str(tmp_path / 'run'),
        'model': {'clip': {'preset': 'tiny'}, 'lora': {'enabled': True, 'rank': 4}},
        'data': {
            'datatype': 'msrvtt',
            'train': {'local': str(tmp_path / 'd'), 'split': 'train'},
            'eval': {'streams': [{'local': str(tmp_path / 'd'), 'split': 'test', 'proportion': 1.0}]},
            'max_frames': 4,
            'max_words': 16,
            'num_workers': 0,
            **data,
        },
        'evaluation': {'dsl': True, 'save_ranks': True},
        'optimizer': {'lr': 3e-4},
        'batch_size_val': 16,
    }


def test_defaults_are_the_training_recipes():
    train = TrainConfig(output_dir='x')
    run = RunConfig()
    assert run.model == train.model and run.batch_size_val == train.batch_size_val
    for f in dataclasses.fields(RunData):
        assert getattr(RunData(), f.name) == getattr(train.data, f.name), f.name
    for f in dataclasses.fields(RunEvaluation):
        assert getattr(RunEvaluation(), f.name) == getattr(train.evaluation, f.name), f.name


@pytest.mark.parametrize('datatype', ['msrvtt', 'didemo'])
def test_a_written_config_reads_back_as_training_validated_it(tmp_path, datatype):
    cfg = config_from_dict(_run(tmp_path, datatype=datatype))
    path = tmp_path / 'config.yaml'
    path.write_text(config_to_yaml(cfg))
    run = read_run_config(path)
    assert run.model == cfg.model
    assert (run.data.max_frames, run.data.max_words, run.data.slice_framepos, run.data.datatype) == (
        cfg.data.max_frames,
        cfg.data.max_words,
        cfg.data.slice_framepos,
        cfg.data.datatype,
    )
    assert run.data.paragraph_mode == paragraph_mode(cfg.data)
    assert run.data.eval.streams[0].split == 'test' and run.data.train.local == cfg.data.train.local
    assert (run.evaluation.dsl, run.evaluation.tie_mode, run.batch_size_val) == (True, 'pessimistic', 16)
    assert run.raw['optimizer']['lr'] == pytest.approx(3e-4)


def test_exponent_floats_read_as_numbers_like_the_recipe_loader(tmp_path):
    path = tmp_path / 'config.yaml'
    path.write_text('model:\n  stop:\n    enabled: true\n    adapter_scale: 1e-1\n')
    assert read_run_config(path).model.stop.adapter_scale == pytest.approx(0.1)


@pytest.mark.parametrize(
    'model, data',
    [
        ({'lora': {'rnak': 4}}, {}),
        ({'stop': {'enabled': True, 'text_prompt_length': 3}}, {}),
        ({'tempme': {'enabled': True, 'merge_layers': [1], 'merge_frame_num': [3]}}, {}),
        ({}, {'max_frames': 'twelve'}),
        ({}, {'max_words': 2}),
    ],
)
def test_bad_values_read_as_the_recipe_refuses_them(tmp_path, model, data):
    raw = _run(tmp_path, **data)
    raw['model'] = {**raw['model'], **model}
    with pytest.raises(ConfigError) as recipe:
        config_from_dict(raw, source='config.yaml')
    path = tmp_path / 'config.yaml'
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as export:
        read_run_config(path)
    assert str(export.value) == str(recipe.value).replace('config.yaml', str(path))


def test_training_only_keys_are_left_to_the_recipe(tmp_path):
    path = tmp_path / 'config.yaml'
    path.write_text('optimizer:\n  not_a_key: 1\ndata:\n  num_workers: 3\n  max_frames: 8\n')
    assert read_run_config(path).data.max_frames == 8
