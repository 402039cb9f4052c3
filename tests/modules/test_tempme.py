"""TempMe schedule (token counts vs docs/reference/tempme.md#token-counts), MACs on the meta device, and the
merging forward."""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tempme_composer.clip import CLIP, CLIP_PRESETS
from tempme_composer.model import UnifiedModel
from tempme_composer.model.config import LoRAConfig, ModelConfig, TempMeConfig
from tempme_composer.modules.tempme import TempMeVideoEncoder, plan_merging
from tempme_composer.modules.video_tower import encode_video


def _seqs_x_out(plans):
    return [(p.seqs, p.out_tokens) for p in plans]


def test_vit_b32_default_plan_matches_the_reference_token_counts():
    plans = plan_merging(12, 12, 50)
    assert _seqs_x_out(plans)[7:] == [(12, 34), (6, 44), (3, 56), (1, 107), (1, 97)]
    assert [p.kind for p in plans] == ['imgme'] * 8 + ['clipme'] * 3 + ['intra']
    assert [(p.r_cross, p.attn_tokens, p.r_intra) for p in plans[8:]] == [
        (20, 48, 4),
        (26, 62, 6),
        (50, 118, 11),
        (0, 107, 10),
    ]
    assert plans[-1].protected == 12
    # analytic block MACs (docs/reference/tempme.md#token-counts): 33.32 G + 1.387 G patch embedding = 34.70 G
    assert sum(p.macs(768) for p in plans) == pytest.approx(33.315e9, rel=1e-4)


def test_vit_b16_paper_config_plan_ends_at_127_tokens():
    plans = plan_merging(12, 12, 197, tome_r=10, merge_token_proportion=(40, 20))
    assert [p.attn_tokens for p in plans] == [197, 187, 177, 167, 157, 147, 137, 127, 141, 136, 197, 158]
    assert [(p.r_cross, p.r_intra) for p in plans[8:]] == [(93, 28), (90, 27), (130, 39), (0, 31)]
    assert _seqs_x_out(plans)[-1] == (1, 127)


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(merge_frame_num=(2, 4, 3)), 'cannot be fused in groups of 4'),
        (dict(merge_layers=(8, 9)), 'same length'),
        (dict(merge_layers=(9, 8, 10)), 'strictly increasing'),
        (dict(merge_layers=(8, 9, 12)), 'strictly increasing'),
        (dict(tome_r=7), 'tome_r=7 exceeds'),
        (dict(merge_token_proportion=(30,)), 'two percentages'),
    ],
)
def test_impossible_schedules_are_rejected_with_the_reason(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_merging(12, 12, 50, **kwargs)


def _macs(clip, video, encoder=None):
    with FlopCounterMode(display=False) as counter:
        if encoder is None:
            clip.visual(video.flatten(0, 1))
        else:
            clip.visual.project(encode_video(clip.visual, video, tempme=encoder).frame_cls)
    return counter.get_total_flops() / 2 / 1e9


@pytest.mark.parametrize(
    'preset, schedule, tempme_gmacs, plain_gmacs',
    [
        # The paper's 34.8 / 121.4 GMACs count the whole last block; only its CLS outputs are read, so the tower
        # computes queries and MLP for the CLS tokens alone there (identical embeddings, 0.5 / 0.8 GMACs less).
        ('ViT-B/32', {}, 34.25, 52.9),
        ('ViT-B/16', dict(tome_r=10, merge_token_proportion=(40, 20)), 120.62, 210.8),
    ],
)
def test_vision_gmacs_per_video_on_the_meta_device(preset, schedule, tempme_gmacs, plain_gmacs):
    clip = CLIP(CLIP_PRESETS[preset], device='meta')
    encoder = TempMeVideoEncoder.for_tower(clip.visual, 12, **schedule).to('meta')
    video = torch.empty(1, 12, 3, 224, 224, device='meta')
    assert _macs(clip, video, encoder) == pytest.approx(tempme_gmacs, abs=0.05)
    assert _macs(clip, video) == pytest.approx(plain_gmacs, abs=0.1)


def _tiny_model(tempme=True, lora=True, frames=4, **schedule):
    torch.manual_seed(0)
    schedule = {'tome_r': 2, 'merge_layers': [1], 'merge_frame_num': [2], **schedule}
    cfg = ModelConfig(lora=LoRAConfig(enabled=lora, rank=4), tempme=TempMeConfig(enabled=tempme, **schedule))
    return UnifiedModel.from_config(CLIP(CLIP_PRESETS['tiny']), cfg, num_frames=frames)


def test_without_merging_tempme_equals_the_meanp_baseline():
    model = _tiny_model(merge_layers=[], merge_frame_num=[], tome_r=0).eval()
    baseline = UnifiedModel(model.clip).eval()
    video = torch.randn(2, 4, 3, 32, 32)
    mask = torch.ones(2, 4, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_video(video, mask), baseline.encode_video(video, mask))


def test_tiny_forward_backward_with_tempme_and_lora_trains_lora_and_position_embeddings():
    model = _tiny_model()
    plans = model.tempme.plans
    assert _seqs_x_out(plans) == [(4, 15), (2, 19)]  # 17 -> 15 per frame; pairs: 2*15 - 9 cross - 2 intra
    assert dict(model.tempme.temporal_pos_prompt.named_parameters())['1'].shape == (4, 128)
    video = torch.randn(2, 4, 3, 32, 32)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    ids = torch.randint(1, 1000, (2, 6))
    ids[:, -1] = 49407
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = [p for n, p in model.named_parameters() if 'LoRA' in n or 'prompt' in n]
    for p in trainable:
        p.requires_grad_(True)
    v = model.encode_video(video, mask)
    t = model.encode_text(ids)
    assert v.shape == (2, 64) and torch.allclose(v.norm(dim=-1), torch.ones(2))
    (v @ t.T).sum().backward()
    pos = model.tempme.temporal_pos_prompt['1']
    assert pos.grad is not None and pos.grad.abs().sum() > 0
    lora_b = model.clip.visual.transformer.resblocks[0].attn.LoRA_b
    assert lora_b.grad is not None and lora_b.grad.abs().sum() > 0


def test_padded_frames_are_excluded_from_the_mean_only():
    model = _tiny_model(lora=False).eval()
    video = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        visual = model.clip.visual
        frames = visual.project(encode_video(visual, video, tempme=model.tempme).frame_cls)  # [1, 4, D]
        got = model.encode_video(video, torch.tensor([[1, 1, 1, 0]]))
    want = torch.nn.functional.normalize(torch.nn.functional.normalize(frames[0, :3], dim=-1).mean(0), dim=0)
    torch.testing.assert_close(got[0], want)


def test_wrong_frame_count_and_config_schedule_errors():
    model = _tiny_model()
    with pytest.raises(ValueError, match='built for 4 frames'):
        model.encode_video(torch.randn(1, 3, 3, 32, 32), torch.ones(1, 3))
    with pytest.raises(ValueError, match='groups of 2'):
        _tiny_model(frames=3)
    assert dataclasses.asdict(TempMeConfig())['merge_layers'] == [8, 9, 10]
