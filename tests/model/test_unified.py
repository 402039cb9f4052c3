"""The unified TempMe-STOP model: docs/unified.md matches the code; the four variants are configs of one model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tempme_composer.clip import CLIP, CLIP_PRESETS
from tempme_composer.clip.config import clip_config_from_dict
from tempme_composer.model import UnifiedModel
from tempme_composer.model.config import LoRAConfig, ModelConfig, StopConfig, TempMeConfig
from tempme_composer.modules.video_tower import encode_video

DOC = Path(__file__).resolve().parents[2] / 'docs' / 'unified.md'


def _cfg(tempme: bool, stop: bool, **tempme_kw) -> ModelConfig:
    cfg = ModelConfig()
    cfg.tempme = TempMeConfig(enabled=tempme, **tempme_kw)
    cfg.lora = LoRAConfig(enabled=tempme)
    cfg.stop = StopConfig(enabled=stop)
    return cfg


def _documented_rows() -> list[tuple[int, ...]]:
    """(block, sequences, tokens, CLS, local prompts, keys per sequence, global keys) from docs/unified.md."""
    rows = []
    for line in DOC.read_text().splitlines():
        m = re.match(r'\| (\d+) \| \w+(?: g=\d)? \| (\d+) x (\d+) \| (\d+) \| (\d+) \| (\d+) \| \d+ \| \d+ \| (\d+) \|$', line)
        if m:
            rows.append(tuple(int(v) for v in m.groups()))
    return rows


def test_documented_token_layout_matches_the_code():
    clip = CLIP(CLIP_PRESETS['ViT-B/32'], device='meta')
    model = UnifiedModel.from_config(clip, _cfg(True, True), 12).to('meta')
    seen = []
    for i, block in enumerate(model.clip.visual.transformer.resblocks):
        block.ln_1.register_forward_hook(lambda mod, inp, out, i=i: seen.append((i, tuple(inp[0].shape))))
    video = torch.empty(1, 12, 3, 224, 224, device='meta')
    tokens = encode_video(model.clip.visual, video, tempme=model.tempme, stop=model.stop)
    # ln_1 runs on the sequences, the 4 global prompts, then the local prompts, in every block
    assert len(seen) == 3 * 12
    assert all(s == (1, 4, 768) for _, s in seen[1::3])
    actual = []
    for (i, (n, t, _)), (_, (n_loc_seqs, n_loc, _)) in zip(seen[0::3], seen[2::3], strict=True):
        assert n_loc_seqs == n
        actual.append((i, n, t, 12 // n, n_loc, 4 + n_loc + t, 4 + n * (n_loc + t)))
    assert actual == _documented_rows()
    plan_rows = [(p.index, p.seqs, p.attn_tokens) for p in model.tempme.plans]
    assert [r[:3] for r in actual] == plan_rows  # prompts do not change TempMe's merge plan
    assert tokens.frame_cls.shape == (1, 12, 768) and tokens.global_prompts.shape == (1, 4, 768)


def _tiny(tempme: bool, stop: bool, frames: int = 4) -> UnifiedModel:
    torch.manual_seed(0)
    clip = CLIP(clip_config_from_dict({'preset': 'tiny', 'vision_layers': 3}))
    kw = {'tome_r': 1, 'merge_layers': [1, 2], 'merge_frame_num': [2, 2], 'merge_token_proportion': [30, 10]}
    return UnifiedModel.from_config(clip, _cfg(tempme, stop, **kw), frames)


@pytest.mark.parametrize(('tempme', 'stop'), [(False, False), (True, False), (False, True), (True, True)])
def test_four_variants_train_every_new_module(tempme, stop):
    model = _tiny(tempme, stop).train()
    video, mask = torch.randn(3, 4, 3, 32, 32), torch.ones(3, 4)
    ids = torch.randint(1, 1000, (3, 8))
    ids[:, 5] = 49407
    sim = model.encode_text(ids) @ model.encode_video(video, mask).T
    sim.diagonal().sum().backward()
    names = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any('temporal_pos_prompt' in n for n in names) == tempme
    assert any('LoRA_b' in n for n in names) == tempme
    assert any('.LoRA.' in n for n in names) == stop
    assert any('prompt_generator' in n for n in names) == stop
    assert any('TemporalPrompt.Conv' in n for n in names) == stop
    assert not any('Cal_Net.' in n for n in names)  # the hard saliency mask passes no gradient


def test_unified_embedding_does_not_depend_on_the_batch():
    model = _tiny(True, True).eval()
    torch.manual_seed(1)
    video, mask = torch.randn(5, 4, 3, 32, 32), torch.ones(5, 4)
    with torch.no_grad():
        together = model.encode_video(video, mask)
        alone = model.encode_video(video[2:3], mask[2:3])
    torch.testing.assert_close(alone[0], together[2], atol=1e-5, rtol=1e-5)


def test_unified_clip_sees_every_member_frame_prompt_and_cls():
    """After the last fusion one sequence holds all 4 frames: 4 CLS in front, 4 x 4 local prompts beside it."""
    model = _tiny(True, True).eval()
    seen = []
    last = model.clip.visual.transformer.resblocks[-1]
    last.ln_1.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    with torch.no_grad():
        model.encode_video(torch.randn(2, 4, 3, 32, 32), torch.ones(2, 4))
    (sequences, tokens, _), _, local = seen
    assert sequences == 2 and tokens > 4  # one clip per video: 4 CLS plus patch tokens
    assert tuple(local[:2]) == (2, 4 * model.stop.local_prompts)


def test_frame_cls_mean_readout_uses_the_mask():
    model = _tiny(True, True).eval()
    model.stop.output_type = 'frame_cls_mean'
    video = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        full = model.encode_video(video, torch.ones(1, 4))
        half = model.encode_video(video, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    assert not torch.allclose(full, half)
