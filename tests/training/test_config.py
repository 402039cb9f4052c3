"""Config loading: YAML + overrides → typed dataclasses, with errors a user can act on."""

from pathlib import Path

import pytest

from tempme_composer.config import TrainConfig, config_to_yaml, load_config
from tempme_composer.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / 'yamls' / 'demo.yaml'


def test_every_shipped_yaml_parses():
    yamls = sorted((REPO / 'yamls').glob('*.yaml'))
    assert yamls, 'no yamls shipped'
    for path in yamls:
        assert isinstance(load_config(path), TrainConfig)


def test_overrides_are_merged_and_typed():
    cfg = load_config(DEMO, ['epochs=2', 'optimizer.lr=3e-4', 'data.max_frames=4', 'model.clip.preset=ViT-B/16'])
    assert cfg.epochs == 2
    assert cfg.optimizer.lr == pytest.approx(3e-4) and isinstance(cfg.optimizer.lr, float)
    assert cfg.data.max_frames == 4
    assert cfg.model.clip.preset == 'ViT-B/16'


def test_int_is_accepted_for_a_float_key():
    cfg = load_config(DEMO, ['optimizer.lr=1'])
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)


def test_unknown_key_names_key_source_and_closest_valid_key():
    with pytest.raises(ConfigError) as e:
        load_config(DEMO, ['optimizer.lrr=0.1'])
    msg = str(e.value)
    assert "'optimizer.lrr'" in msg and 'command-line' in msg and "did you mean 'optimizer.lr'" in msg


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text(DEMO.read_text().replace('batch_size: 32', 'batch_sise: 32'))
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    msg = str(e.value)
    assert "'batch_sise'" in msg and str(bad) in msg and "did you mean 'batch_size'" in msg


def test_wrong_type_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"key 'epochs'.*expected an integer.*'two'"):
        load_config(DEMO, ['epochs=two'])
    with pytest.raises(ConfigError, match=r"key 'do_train'.*expected true or false"):
        load_config(DEMO, ['do_train=1'])
    with pytest.raises(ConfigError, match=r"key 'precision'.*'amp_bf61' is not one of.*did you mean 'amp_bf16'"):
        load_config(DEMO, ['precision=amp_bf61'])


def test_missing_required_value(tmp_path):
    cfg_file = tmp_path / 'no_output.yaml'
    cfg_file.write_text('\n'.join(line for line in DEMO.read_text().splitlines() if not line.startswith('output_dir')))
    with pytest.raises(ConfigError, match=r"missing required key 'output_dir' in .*no_output.yaml"):
        load_config(cfg_file)


def test_missing_file_is_named():
    with pytest.raises(ConfigError, match='nope.yaml does not exist'):
        load_config('nope.yaml')


@pytest.mark.parametrize(
    ('override', 'message'),
    [
        ('model.stop.text_prompt_length=7', 'text_prompt_length.*must be even'),
        ('model.stop.local_prompt_length=0', 'local_prompt_length.*must be positive'),
        ('model.stop.output_type=cls', "'cls' is not one of"),
        ('model.stop.frame_weight_norm=global', "'global' is not one of"),
        ('model.stop.shared_latent_space=linear', 'text_prompt_length must be 2 x local_prompt_length'),
    ],
)
def test_bad_stop_settings_name_the_key(override, message):
    overrides = ['model.stop.enabled=true', override]
    if 'linear' in override:
        overrides.append('model.stop.local_prompt_length=3')
    with pytest.raises(ConfigError, match=message):
        load_config(DEMO, overrides)


def test_tempme_and_lora_keys_load_with_the_reference_defaults():
    cfg = load_config(DEMO, ['model.tempme.enabled=true', 'model.lora.enabled=true', 'data.max_frames=12'])
    t = cfg.model.tempme
    assert (t.tome_r, t.merge_layers, t.merge_frame_num, t.merge_token_proportion) == (2, [8, 9, 10], [2, 2, 3], [30.0, 10.0])
    assert cfg.model.lora.rank == 8


@pytest.mark.parametrize(
    'overrides, match',
    [
        (['model.tempme.merge_frame_num=[2,4,3]'], 'must divide data.max_frames'),
        (['model.tempme.merge_layers=[8,9]'], 'same length'),
        (['model.tempme.merge_token_proportion=[30]'], 'two percentages'),
    ],
)
def test_impossible_tempme_schedules_fail_at_config_load(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(DEMO, ['model.tempme.enabled=true', 'data.max_frames=12', *overrides])


def test_eval_only_needs_a_checkpoint():
    with pytest.raises(ConfigError, match='resume=PATH'):
        load_config(DEMO, ['do_train=false', 'do_eval=true'])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(DEMO, ['epochs=3'])
    dumped = tmp_path / 'resolved.yaml'
    dumped.write_text(config_to_yaml(cfg))
    assert load_config(dumped) == cfg


def test_streams_mix_datasets_and_exclude_a_single_local(tmp_path):
    cfg = load_config(DEMO, [
        'data.datatype=msrvtt', 'data.demo=null', 'data.eval.local=/d/test',
        "data.train.streams=[{local: /d/a, split: train, repeat: 2}, {local: /d/b, choose: 10}]",
    ])
    assert [s.local for s in cfg.data.train.streams] == ['/d/a', '/d/b']
    assert cfg.data.train.streams[0].repeat == 2.0 and cfg.data.train.streams[1].choose == 10
    with pytest.raises(ConfigError, match="'data.train' needs exactly one of 'local'"):
        load_config(DEMO, ['data.datatype=msrvtt', 'data.demo=null', 'data.eval.local=/d/test',
                           'data.train.local=/d/a', "data.train.streams=[{local: /d/b}]"])
    with pytest.raises(ConfigError, match=r'streams\[0\]\' mixes proportion with repeat'):
        load_config(DEMO, ['data.datatype=msrvtt', 'data.demo=null', 'data.eval.local=/d/test',
                           "data.train.streams=[{local: /d/a, proportion: 0.5, repeat: 2}]"])


def test_paragraph_mode_defaults_per_dataset_and_excludes_expanded_pairs():
    from tempme_composer.config import paragraph_mode

    base = ['data.demo=null', 'data.train.local=/d/train', 'data.eval.local=/d/test']
    assert paragraph_mode(load_config(DEMO, ['data.datatype=didemo', *base]).data)
    assert not paragraph_mode(load_config(DEMO, ['data.datatype=msrvtt', *base]).data)
    assert load_config(DEMO, ['data.datatype=msrvtt', 'data.expand_msrvtt_sentences=true', *base]).data.expand_msrvtt_sentences
    with pytest.raises(ConfigError, match='cannot be combined with paragraph mode'):
        load_config(DEMO, ['data.datatype=activity', 'data.expand_msrvtt_sentences=true', *base])
