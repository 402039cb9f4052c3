"""LoRA on the fused QKV projections: starts equal to CLIP, trains only LoRA names, folds exactly."""

import pytest
import torch
from clip_fixtures import tiny_clip

from tempme_composer.algorithms.freeze import freeze_parameters
from tempme_composer.clip import CLIP, CLIP_PRESETS
from tempme_composer.modules.lora import LoRAAttention, apply_lora, fold_lora, lora_parameter_count
from tempme_composer.modules.tempme import TempMeVideoEncoder


def _inputs():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=g)
    ids = torch.randint(1, 1000, (3, 8), generator=g)
    ids[:, -1] = 49407
    return images, ids


def test_patched_model_starts_equal_to_clip_and_names_contain_lora():
    clip = tiny_clip()
    images, ids = _inputs()
    with torch.no_grad():
        before = clip.encode_image(images), clip.encode_text(ids)
    assert apply_lora(clip, rank=4) == 4  # 2 vision + 2 text layers
    names = [n for n, _ in clip.named_parameters() if 'LoRA' in n]
    assert (
        'visual.transformer.resblocks.0.attn.LoRA_a' in names
        and 'text.transformer.resblocks.1.attn.LoRA_b' in names
    )
    with torch.no_grad():
        after = clip.encode_image(images), clip.encode_text(ids)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=0)
    a = clip.visual.transformer.resblocks[0].attn.LoRA_a
    assert a.shape == (4, 128) and float(a.abs().max()) <= 128**-0.5


def test_fold_lora_gives_the_same_outputs():
    clip = tiny_clip()
    apply_lora(clip, rank=4)
    with torch.no_grad():
        for m in clip.modules():
            if isinstance(m, LoRAAttention):
                m.LoRA_b.normal_(std=0.05)
    images, ids = _inputs()
    with torch.no_grad():
        want = clip.encode_image(images), clip.encode_text(ids)
        assert fold_lora(clip) == 4
        got = clip.encode_image(images), clip.encode_text(ids)
    assert lora_parameter_count(clip) == 0
    assert not any(isinstance(m, LoRAAttention) for m in clip.modules())
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        plain = tiny_clip().encode_image(images)
    assert (want[0] - plain).abs().max() > 1e-3  # sanity: the LoRA delta did change the model
    with pytest.raises(ValueError, match='positive'):
        apply_lora(clip, rank=0)


def test_apply_lora_twice_is_an_error():
    clip = tiny_clip()
    apply_lora(clip)
    with pytest.raises(ValueError, match='no CLIP Attention'):
        apply_lora(clip)


def test_vit_b32_trainable_count_under_freeze_clip_is_507648():
    """491,520 LoRA + 16,128 temporal position embeddings (shapes only, meta device).

    docs/reference/tempme.md#trainable-parameters.
    """
    from torch import nn

    clip = CLIP(CLIP_PRESETS['ViT-B/32'], device='meta')
    apply_lora(clip, rank=8)
    assert lora_parameter_count(clip) == 491_520
    holder = nn.Module()
    holder.clip = clip
    holder.tempme = TempMeVideoEncoder.for_tower(clip.visual, 12).to('meta')
    report = freeze_parameters(holder, freeze_clip=True)
    assert report.num_trainable == 507_648
    assert all('LoRA' in n or 'prompt' in n for n in report.trainable)
