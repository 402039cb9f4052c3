"""STOP: sizes and parameter counts at ViT-B/32 (meta device), batch independence, and the efficient path
(`UnifiedModel.encode_text` / `encode_video`) against the reference-shaped implementation
(`tempme_composer.reference.stop_reference`) in outputs and gradients, on tiny random CLIPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tempme_composer.algorithms.freeze import freeze_parameters
from tempme_composer.clip import CLIP, CLIP_PRESETS
from tempme_composer.clip.config import clip_config_from_dict
from tempme_composer.model import UnifiedModel
from tempme_composer.model.config import ModelConfig, StopConfig
from tempme_composer.modules.video_tower import encode_video
from tempme_composer.reference.stop_reference import (
    reference_encode_text,
    reference_encode_video,
    reference_prompts,
)

STOP_KEEP = ['LoRA', 'prompt', 'TemporalPrompt']  # STOP's new_added_modules; logit_scale stays frozen
SOT, EOT = 49406, 49407
FRAMES = 4


def build(
    frames: int = FRAMES,
    seed: int = 0,
    clip_overrides: dict | None = None,
    inter_frame_gain: float = 300.0,
    **stop_kw,
) -> UnifiedModel:
    """A tiny random CLIP (grid 4 unless overridden) with STOP, fp32, eval mode, CLIP frozen like STOP.

    At PyTorch's default init the inter-frame prompt moves the unit embeddings by only ~2e-5 (and the frame
    weights m by ~6e-6), under the 1e-5 tolerances used here; ``InterMLP``'s output layer is scaled by
    ``inter_frame_gain`` so that any error in that path (normalisation, boost, layout) is visible (~7e-3).
    """
    torch.manual_seed(seed)
    clip = CLIP(clip_config_from_dict({'preset': 'tiny', **(clip_overrides or {})}))
    model = UnifiedModel.from_config(clip, ModelConfig(stop=StopConfig(enabled=True, **stop_kw)), frames)
    freeze_parameters(model, freeze_clip=True, keep_substrings=STOP_KEEP, warn_absent=False)
    with torch.no_grad():
        out = model.clip.visual.TemporalPrompt.InterMLP[-1]
        out.weight.mul_(inter_frame_gain)
        out.bias.mul_(inter_frame_gain)
    return model.eval()


def make_ids(B: int, L: int = 12, seed: int = 1) -> torch.Tensor:
    """Captions of different lengths: SOT, random words, EOT, zero padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(B, L, dtype=torch.long)
    for b in range(B):
        n = 2 + (b * 3) % (L - 2)  # EOT position in [2, L-1]
        ids[b, 0] = SOT
        ids[b, 1:n] = torch.randint(1, 49000, (n - 1,), generator=g)
        ids[b, n] = EOT
    return ids


def make_video(B: int, frames: int = FRAMES, res: int = 32, seed: int = 2) -> torch.Tensor:
    return torch.randn(B, frames, 3, res, res, generator=torch.Generator().manual_seed(seed))


def efficient(model: UnifiedModel, ids: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.ones(video.shape[:2])
    return model.encode_text(ids), model.encode_video(video, mask)


def reference(model: UnifiedModel, ids: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        F.normalize(reference_encode_text(model, ids), dim=-1),
        F.normalize(reference_encode_video(model, video), dim=-1),
    )


ZERO_GRADIENT = {  # parameter -> the weight whose gradient sets the scale of its rounding noise
    'clip.visual.TemporalPrompt.Cal_Net_Inter.bias': 'clip.visual.TemporalPrompt.Cal_Net_Inter.weight',
    'clip.visual.TemporalPrompt.InterMLP.2.bias': 'clip.visual.TemporalPrompt.InterMLP.2.weight',
}
# Gradients dominated by cancellation (through the min-max 1/span of nearly equal frame scores, or sums over
# channels that ln_1 nearly cancels): fp32 rounding leaves a larger relative spread, seen equally in fp64 runs
# of both paths (the LayerNorms compute in fp32), e.g. 2e-4 and 2e-3 of the norm.
# conv_impl auto runs the pixel Conv stack via FFT on CPU: its gradients agree with the reference's direct Conv3d
# to fp32 rounding in another summation order (tests/modules/test_fft_conv.py checks it against the direct one).
FFT_CONV = 1e-3
CANCELLING = {
    'clip.visual.TemporalPrompt.Cal_Net_Inter.weight': 1e-2,
    'clip.visual.TemporalPrompt.InterMLP.1.weight': 1e-2,  # the PReLU slope
}


def trainable_grads(model: UnifiedModel, encode, ids, video) -> dict[str, torch.Tensor | None]:
    """Gradients of the summed text·video cosine similarities w.r.t. every trainable parameter."""
    model.zero_grad(set_to_none=True)
    t, v = encode(model, ids, video)
    (t @ v.T).sum().backward()
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------------------------
# ViT-B/32 at 12 frames, on the meta device (nothing allocated)
# ---------------------------------------------------------------------------------------------------------


def meta_vit_b32(mode: str = 'transformer') -> UnifiedModel:
    clip = CLIP(CLIP_PRESETS['ViT-B/32'], device='meta')
    cfg = ModelConfig(stop=StopConfig(enabled=True, shared_latent_space=mode))
    return UnifiedModel.from_config(clip, cfg, 12).to('meta')


@pytest.fixture(scope='module')
def vit_b32() -> UnifiedModel:
    return meta_vit_b32()


def test_vit_b32_has_652_visual_tokens_per_video(vit_b32):
    """4 global prompts + 12 frames × (CLS + 4 local prompts + 49 patches) = 652 tokens per video."""
    video = torch.empty(2, 12, 3, 224, 224, device='meta')
    seen: list[torch.Size] = []
    last = vit_b32.clip.visual.transformer.resblocks[-1]
    handle = last.ln_1.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape))
    try:
        out = reference_encode_video(vit_b32, video)
    finally:
        handle.remove()
    assert out.shape == (2, 512)
    assert seen == [torch.Size([2, 652, 768])]  # the reference normalises each video's whole sequence at once
    tokens = encode_video(vit_b32.clip.visual, video, stop=vit_b32.stop)  # the efficient path runs on meta too
    assert tokens.frame_cls.shape == (2, 12, 768) and tokens.global_prompts.shape == (2, 4, 768)


def test_vit_b32_reference_flops_match_the_spec(vit_b32):
    """docs/reference/stop.md#efficiency (torch flop counter, 2·MAC): visual encoder 305.3 GFLOPs per
    12-frame video without the prompt generator (9.9 per sample) and without most attention-score matmuls
    (≈1–2), text 3.07 per caption."""
    video = torch.empty(1, 12, 3, 224, 224, device='meta')
    prompts = reference_prompts(vit_b32, 1)
    with FlopCounterMode(display=False) as counter:
        reference_encode_video(vit_b32, video, prompts=prompts)
    visual = counter.get_total_flops() / 1e9
    assert 305.3 <= visual <= 305.3 + 2.0, visual
    with FlopCounterMode(display=False) as counter:
        reference_prompts(vit_b32, 1)
    assert 9.85 <= counter.get_total_flops() / 1e9 <= 10.1
    ids = torch.zeros(1, 32, dtype=torch.long, device='meta')  # 32 words + 8 prompts = 40 tokens
    with FlopCounterMode(display=False) as counter:
        reference_encode_text(vit_b32, ids, prompts=prompts)
    assert 3.0 <= counter.get_total_flops() / 1e9 <= 3.2


@pytest.mark.parametrize(
    ('mode', 'trainable', 'total'),
    [('transformer', 13_081_528, 164_358_841), ('linear', 4_333_752, 151_277_313 + 4_333_752)],
)
def test_vit_b32_trainable_parameters_under_stops_freezing_rule(mode, trainable, total):
    model = meta_vit_b32(mode)
    report = freeze_parameters(model, freeze_clip=True, keep_substrings=STOP_KEEP)
    assert report.num_trainable == trainable
    assert report.num_total == total
    assert 'clip.logit_scale' in report.frozen
    assert 'clip.visual.TemporalPrompt.Cal_Net.weight' in report.trainable  # counted, though it never trains
    assert all(
        n.startswith('stop.') or 'LoRA' in n or 'TemporalPrompt' in n for n in report.trainable
    ), report.trainable


# ---------------------------------------------------------------------------------------------------------
# Batch independence of the frame-weight normalisation
# ---------------------------------------------------------------------------------------------------------


def test_per_video_normalisation_makes_embeddings_batch_independent():
    video = make_video(7)
    mask = torch.ones(7, FRAMES)
    for norm, independent in (('video', True), ('batch', False)):
        model = build(frame_weight_norm=norm)
        with torch.no_grad():
            batched = model.encode_video(video, mask)
            alone = torch.cat([model.encode_video(video[i : i + 1], mask[i : i + 1]) for i in range(7)])
        gap = (batched - alone).abs().max().item()
        if independent:
            assert gap < 1e-5, gap
        else:  # the reference's batch-wide min-max couples videos
            assert gap > 1e-4, gap


# ---------------------------------------------------------------------------------------------------------
# Efficient path == reference: outputs and gradients
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('norm', ['video', 'batch'])
@pytest.mark.parametrize('output_type', ['global_prompt0', 'average_global_prompt_and_frame_cls_token'])
@pytest.mark.parametrize('mode', ['transformer', 'linear'])
def test_efficient_path_equals_the_reference(mode, output_type, norm):
    model = build(shared_latent_space=mode, output_type=output_type, frame_weight_norm=norm, salient_cells=6)
    assert model.clip.visual.grid_size**2 == 16 > model.clip.visual.TemporalPrompt.salient_cells
    ids, video = make_ids(2), make_video(2)
    with torch.no_grad():
        t_eff, v_eff = efficient(model, ids, video)
        t_ref, v_ref = reference(model, ids, video)
    torch.testing.assert_close(t_eff, t_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(v_eff, v_ref, rtol=0, atol=1e-5)

    g_eff = trainable_grads(model, efficient, ids, video)
    g_ref = trainable_grads(model, reference, ids, video)
    assert g_eff.keys() == g_ref.keys()
    cal_net = [n for n in g_eff if '.Cal_Net.' in n]
    assert len(cal_net) == 2
    for name in cal_net:  # the hard top-k mask gives Cal_Net no gradient in either path
        assert g_ref[name] is None or not g_ref[name].any(), name
        assert g_eff[name] is None or not g_eff[name].any(), name
    # Gradients that are analytically zero, so both paths only hold rounding noise: Cal_Net_Inter's bias (the
    # min-max normalisation is shift-invariant) and InterMLP's output bias (a per-prompt constant over the
    # channels, which ln_1 removes: local prompts are only ever read through ln_1 before being replaced).
    for name, weight in ZERO_GRADIENT.items():
        bound = 0.05 * g_ref[weight].abs().max().item()
        assert g_eff[name].abs().max() <= bound and g_ref[name].abs().max() <= bound, name
    # Linear mode: the postfix projection only feeds the dead postfix text prompts (docs/reference/stop.md,
    # "Reference bugs" item 3).
    dead = [n for n in g_eff if 'postfix_text_prompt_proj' in n]
    assert len(dead) == (2 if mode == 'linear' else 0)
    for name in dead:
        assert g_ref[name] is None or not g_ref[name].any(), name
        assert g_eff[name] is None or not g_eff[name].any(), name
    for name in g_eff.keys() - set(cal_net) - set(dead) - ZERO_GRADIENT.keys():
        ge, gr = g_eff[name], g_ref[name]
        assert ge is not None and gr is not None, name
        assert gr.abs().max() > 0, name  # every other trainable parameter is reached
        rel = ((ge - gr).norm() / gr.norm()).item()
        assert rel <= CANCELLING.get(name, FFT_CONV if '.TemporalPrompt.Conv.' in name else 2e-4), (name, rel)


def test_dropouts_sit_in_the_same_places_in_training():
    """Train mode (dropout p = 0.5 three times on the pixel prompt): same seed → same output in both paths."""
    model = build(frame_weight_norm='batch').train()
    video = make_video(2)
    torch.manual_seed(5)
    v_eff = model.encode_video(video, torch.ones(2, FRAMES))
    torch.manual_seed(5)
    v_ref = F.normalize(reference_encode_video(model, video), dim=-1)
    torch.testing.assert_close(v_eff, v_ref, rtol=0, atol=1e-5)
    model.eval()
    with torch.no_grad():
        assert (model.encode_video(video, torch.ones(2, FRAMES)) - v_eff).abs().max() > 1e-4  # dropout was on


def test_postfix_text_prompts_do_not_affect_the_reference_text_output():
    model = build()
    ids = make_ids(4)
    with torch.no_grad():
        prompts = reference_prompts(model, 4)
        half = prompts.text.shape[2] // 2
        noise = 10 * torch.randn_like(prompts.text)
        postfix = prompts._replace(text=torch.cat([prompts.text[:, :, :half], noise[:, :, half:]], dim=2))
        prefix = prompts._replace(text=torch.cat([noise[:, :, :half], prompts.text[:, :, half:]], dim=2))
        base = reference_encode_text(model, ids, prompts)
        torch.testing.assert_close(reference_encode_text(model, ids, postfix), base, rtol=0, atol=1e-6)
        assert (reference_encode_text(model, ids, prefix) - base).abs().max() > 1e-3


def test_a_finer_patch_grid_is_derived_not_hard_coded():
    """ViT-B/16-like: 32 px at patch 4 → an 8×8 grid (64 patches), 4 + T·(1 + 4 + 64) tokens."""
    model = build(clip_overrides={'vision_patch_size': 4}, output_type='average_global_prompt_and_frame_cls_token')
    visual = model.clip.visual
    assert visual.grid_size == 8 and visual.TemporalPrompt.InterMLP[0].in_features == 64
    ids, video = make_ids(2), make_video(2)
    seen: list[torch.Size] = []
    handle = visual.transformer.resblocks[-1].ln_1.register_forward_hook(
        lambda mod, args, out: seen.append(args[0].shape)
    )
    try:
        with torch.no_grad():
            t_ref, v_ref = reference(model, ids, video)
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 4 + FRAMES * (1 + 4 + 64), visual.width])]
    with torch.no_grad():
        t_eff, v_eff = efficient(model, ids, video)
    torch.testing.assert_close(t_eff, t_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(v_eff, v_ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


def test_too_many_salient_cells_is_an_error():
    with pytest.raises(ValueError, match='salient_cells'):
        build(salient_cells=16)  # the tiny grid has 4×4 = 16 cells


def test_a_video_with_another_frame_count_is_an_error():
    model = build()
    video = make_video(1, frames=FRAMES + 2)
    with pytest.raises(ValueError, match=rf'{FRAMES}.*{FRAMES + 2}'):
        model.encode_video(video, torch.ones(1, FRAMES + 2))
    with pytest.raises(ValueError, match=rf'{FRAMES}.*{FRAMES + 2}'):
        reference_encode_video(model, video)
