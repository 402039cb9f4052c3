"""A run folder as training leaves it, and a tiny exported model made from it (no training needed).

``tiny_export`` is that export made once per session (tests/conftest.py registers it); tests that change an
export copy it first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from clip_fixtures import tiny_clip
from folder_guard import check_unchanged, snapshot

from tempme_composer.config import config_from_dict, config_to_yaml
from tempme_composer.inference.export import export_checkpoint
from tempme_composer.model import UnifiedModel

TEMPME = {'enabled': True, 'tome_r': 2, 'merge_layers': [1], 'merge_frame_num': [2], 'merge_token_proportion': [30, 10]}
STOP = {'enabled': True, 'salient_cells': 6}
VARIANTS = {
    'baseline': {},
    'tempme': {'lora': {'enabled': True, 'rank': 4}, 'tempme': TEMPME},
    'stop': {'stop': STOP},
    'unified': {'lora': {'enabled': True, 'rank': 4}, 'tempme': TEMPME, 'stop': STOP},
}
FRAMES = 4


def run_folder(tmp_path: Path, variant: str, base: Path | None) -> tuple[Path, UnifiedModel]:
    """A run folder as training leaves it: config.yaml, checkpoints/best.pt (Composer's layout) and best.json,
    with every weight moved away from its initial value (new modules and a few CLIP tensors "trained")."""
    run = tmp_path / f'run-{variant}'
    (run / 'checkpoints').mkdir(parents=True)
    model_cfg = {'clip': {'checkpoint': str(base) if base else None, 'preset': 'tiny'}, **VARIANTS[variant]}
    raw = {'output_dir': str(run), 'model': model_cfg,
           'data': {'datatype': 'msrvtt', 'eval': {'local': str(tmp_path / 'data'), 'split': 'test'},
                    'train': {'local': str(tmp_path / 'data'), 'split': 'train'},
                    'max_frames': FRAMES, 'max_words': 16}}
    cfg = config_from_dict(raw)
    (run / 'config.yaml').write_text(config_to_yaml(cfg))
    clip = tiny_clip(seed=1)
    model = UnifiedModel.from_config(clip, cfg.model, num_frames=FRAMES)
    torch.manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith('clip.') or 'LoRA' in name or 'ln_post' in name or name == 'clip.logit_scale':
                p.add_(0.05 * torch.randn_like(p))
    state = {'state': {'model': {f'model.{k}': v.clone() for k, v in model.state_dict().items()},
                       'integrations': {}, 'metadata': {}}, 'rng': None}
    torch.save(state, run / 'checkpoints' / 'best.pt')
    (run / 'checkpoints' / 'best.json').write_text(json.dumps({
        'metric': 't2v_R@1', 'value': 10.0, 'eval_label': 'msrvtt', 'epoch': 1, 'batch': 5,
        'results': {f'{d}_{k}': 1.0 for d in ('t2v', 'v2t') for k in ('R@1', 'R@5', 'R@10', 'MdR', 'MnR')}
        | {'num_texts': 10.0, 'num_videos': 5.0}}))
    return run, model.eval()



def exported_tiny(tmp_path: Path) -> Path:
    """A full export of a random-init tiny baseline run (no base file needed), in ``tmp_path / 'export'``."""
    run, _ = run_folder(tmp_path, 'baseline', None)  # random-init run: a full export, no base file needed
    return export_checkpoint(run / 'checkpoints' / 'best.pt', tmp_path / 'export')


@pytest.fixture(scope='session')
def tiny_export(tmp_path_factory) -> Iterator[Path]:
    """``exported_tiny`` made once for the session: the export folder. Checked unchanged at the end."""
    export = exported_tiny(tmp_path_factory.mktemp('tiny_export'))
    before = snapshot(export)
    yield export
    check_unchanged(export, before, 'tiny export')
