"""The shipped recipes (yamls/*.yaml): every one loads, every real one builds its model, the demos train.

The benchmark recipes name OpenAI checkpoints (pretrained/ViT-B-*.pt) that tests do not have, so their models
are built from `model.clip.preset` on the meta device (no memory, no weights) and run one meta forward pass,
which checks the TempMe schedule, STOP's settings and the frame count against the backbone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tempme_composer.algorithms import freeze_parameters
from tempme_composer.clip import CLIP, CLIP_PRESETS
from tempme_composer.composer_wrapper import RetrievalModel
from tempme_composer.config import load_config
from tempme_composer.model import UnifiedModel
from tempme_composer.modules.video_tower import encode_video
from tempme_composer.train import train

YAMLS = Path(__file__).resolve().parents[2] / 'yamls'
ALL = sorted(YAMLS.glob('*.yaml'))
REAL = [p for p in ALL if not p.name.startswith('demo')]
DEMO_VARIANTS = ('baseline', 'tempme', 'stop', 'unified')


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_the_recipes_are_there():
    names = {p.stem for p in ALL}
    expected = {'msrvtt', 'msrvtt_vit16', 'msrvtt_stop', 'msrvtt_tempme', 'msvd', 'lsmdc', 'didemo',
                'activitynet', 'vatex', *(f'demo_{v}' for v in DEMO_VARIANTS)}
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize('path', ALL, ids=_ids(ALL))
def test_recipe_loads_and_says_what_it_targets(path):
    cfg = load_config(path)
    assert cfg.output_dir
    lines = path.read_text().splitlines()
    header = '\n'.join(lines[:next(i for i, line in enumerate(lines) if not line.startswith('#'))])
    assert header, 'a recipe starts with a comment block'
    assert 'recipes/train.py' in header, 'the header says how to run it'
    if not path.name.startswith('demo'):
        assert 'R@1' in header, 'the header names the published text-to-video R@1 it targets'
    if cfg.model.tempme.enabled:  # also checked by load_config; restated here as the recipe rule
        product = 1
        for g in cfg.model.tempme.merge_frame_num:
            product *= g
        assert cfg.data.max_frames % product == 0


def _meta_model(path: Path) -> tuple:
    cfg = load_config(path)
    clip_cfg = cfg.model.clip
    if clip_cfg.checkpoint:  # the preset builds the architecture the named OpenAI file would load
        assert Path(clip_cfg.checkpoint).name == clip_cfg.preset.replace('/', '-') + '.pt', path.name
    clip = CLIP(CLIP_PRESETS[clip_cfg.preset], device='meta')
    assert cfg.data.max_words <= clip.config.context_length
    return cfg, UnifiedModel.from_config(clip, cfg.model, num_frames=cfg.data.max_frames).to('meta')


@pytest.mark.parametrize('path', REAL, ids=_ids(REAL))
def test_benchmark_recipe_builds_its_model_on_the_meta_device(path):
    cfg, model = _meta_model(path)
    assert (model.tempme is not None) == cfg.model.tempme.enabled
    assert (model.stop is not None) == cfg.model.stop.enabled
    res = model.clip.visual.image_resolution
    video = torch.empty(2, cfg.data.max_frames, 3, res, res, device='meta')
    if model.tempme is not None or model.stop is not None:
        tokens = encode_video(model.clip.visual, video, tempme=model.tempme, stop=model.stop)
        assert tokens.frame_cls.shape[:2] == (2, cfg.data.max_frames)
    text = model.encode_text(torch.empty(2, cfg.data.max_words, dtype=torch.long, device='meta'))
    assert text.shape == (2, model.clip.config.embed_dim)
    # The freeze/keep lists are valid for this model (a bad substring is a config error at training start).
    freeze = (cfg.freeze_clip, cfg.freeze_substrings, cfg.keep_substrings)
    report = freeze_parameters(RetrievalModel(model), *freeze)
    assert 0 < report.num_trainable < report.num_total


def _trainable(name: str) -> int:
    cfg, model = _meta_model(YAMLS / f'{name}.yaml')
    return freeze_parameters(RetrievalModel(model), cfg.freeze_clip, cfg.freeze_substrings,
                             cfg.keep_substrings).num_trainable


def test_trainable_parameters_match_the_references():
    stop, tempme = _trainable('msrvtt_stop'), _trainable('msrvtt_tempme')
    assert stop == 13_081_528  # STOP's released code (docs/reference/stop.md#trainable-parameters)
    assert tempme == 507_648  # TempMe ViT-B/32: LoRA rank 8 + clip position embeddings (docs/reference/tempme.md#trainable-parameters)
    assert _trainable('msrvtt') == stop + tempme + 1  # both, plus logit_scale (the example keep list)


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('recipes') / 'demo_data'  # generated once, shared by the four runs


@pytest.mark.e2e
@pytest.mark.parametrize('variant', DEMO_VARIANTS)
def test_demo_recipe_trains_and_evaluates(variant, demo_root, tmp_path):
    """The real recipe end to end; pytest runs these one after another (concurrent streaming jobs would
    collide in /dev/shm). Shrunk to 16 training videos and one epoch (one optimizer step): STOP's inter-frame
    prompt Conv3d backward costs seconds per step on a 2-core CPU."""
    out = tmp_path / variant
    cfg = load_config(YAMLS / f'demo_{variant}.yaml', [
        f'output_dir={out}', f'data.demo.root={demo_root}', 'data.demo.num_train=16', 'epochs=1',
        'data.num_workers=0',
    ])
    assert cfg.model.tempme.enabled == cfg.model.lora.enabled == (variant in ('tempme', 'unified'))
    assert cfg.model.stop.enabled == (variant in ('stop', 'unified'))
    trainer = train(cfg)
    trainer.close()
    record = json.loads((out / 'eval-demo.json').read_text())
    assert record['epoch'] == cfg.epochs
    results = record['results']
    assert results['num_videos'] == cfg.data.demo.num_eval
    assert 0.0 <= results['t2v_R@1'] <= 100.0 and torch.isfinite(torch.tensor(results['t2v_R@1']))
    assert (out / 'checkpoints' / 'latest-rank0.pt').exists()
