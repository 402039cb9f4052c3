"""GPU-only checks of the model code (``pytest -m gpu``; skipped without CUDA): mixed precision and fused attention.

Pure PyTorch (no Composer), so they also run where only torch is installed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from tempme_composer.clip import CLIP
from tempme_composer.clip.config import clip_config_from_dict
from tempme_composer.model import UnifiedModel
from tempme_composer.model.config import LoRAConfig, ModelConfig, StopConfig, TempMeConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device'),
]

FRAMES = 4


def _model(tempme: bool, stop: bool, **stop_kw) -> UnifiedModel:
    torch.manual_seed(0)
    # 64 px, patch 16 -> 4x4 grid; head_dim 64 (fused kernels need a supported head size)
    clip = CLIP(clip_config_from_dict({'preset': 'tiny', 'image_resolution': 64, 'vision_patch_size': 16,
                                       'vision_width': 128, 'vision_layers': 3, 'transformer_heads': 2}))
    cfg = ModelConfig()
    cfg.tempme = TempMeConfig(enabled=tempme, tome_r=1, merge_layers=[1, 2], merge_frame_num=[2, 2])
    cfg.lora = LoRAConfig(enabled=tempme)
    cfg.stop = StopConfig(enabled=stop, **stop_kw)
    return UnifiedModel.from_config(clip, cfg, FRAMES).cuda().eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    video = torch.randn(3, FRAMES, 3, 64, 64, generator=g).cuda()
    ids = torch.randint(1, 1000, (3, 12), generator=g)
    ids[:, 7] = 49407
    return video, torch.ones(3, FRAMES, device='cuda'), ids.cuda()


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(('tempme', 'stop'), [(False, False), (True, False), (False, True), (True, True)])
def test_autocast_matches_fp32_and_trains(dtype, tempme, stop):
    model = _model(tempme, stop)
    video, mask, ids = _batch()
    with torch.no_grad():
        ref_v, ref_t = model.encode_video(video, mask), model.encode_text(ids)
        with torch.autocast('cuda', dtype=dtype):
            v, t = model.encode_video(video, mask), model.encode_text(ids)
    assert v.dtype == torch.float32 and torch.isfinite(v).all() and torch.isfinite(t).all()
    assert F.cosine_similarity(v, ref_v).min() > 0.99
    assert F.cosine_similarity(t, ref_t).min() > 0.99
    model.train()
    with torch.autocast('cuda', dtype=dtype):
        loss = -(model.encode_video(video, mask) * model.encode_text(ids)).sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_stop_attention_runs_on_flash_kernels():
    """STOP without merging passes no attention bias, so every attention can use FlashAttention."""
    model = _model(False, True)
    video, mask, ids = _batch()
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        model.encode_video(video, mask)
        model.encode_text(ids)


def test_unified_attention_runs_on_memory_efficient_kernels():
    """With merging the proportional-attention bias needs a kernel that takes a mask: memory-efficient SDPA."""
    model = _model(True, True)
    video, mask, ids = _batch()
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
            fused = model.encode_video(video, mask)
        with sdpa_kernel([SDPBackend.MATH]):
            math = model.encode_video(video, mask)
    assert F.cosine_similarity(fused, math).min() > 0.999


def test_gpu_matches_cpu_in_fp32():
    model = _model(True, True)
    video, mask, ids = _batch()
    with torch.no_grad():
        gpu = model.encode_video(video, mask).cpu()
        model.cpu()
        cpu = model.encode_video(video.cpu(), mask.cpu())
    torch.testing.assert_close(gpu, cpu, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize('autocast', [False, True])
def test_fft_pixel_prompt_equals_the_direct_convolution_on_gpu(autocast):
    """``conv_impl: fft`` (cuFFT, fp32 inside autocast) gives the direct Conv3d's embeddings and gradients."""
    direct, fft = _model(True, True, conv_impl='direct'), _model(True, True, conv_impl='fft')
    video, mask, _ = _batch()
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
        want, got = direct.encode_video(video, mask), fft.encode_video(video, mask)
    if autocast:
        assert F.cosine_similarity(got, want).min() > 0.99
    else:
        torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
    fft.train()
    with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
        loss = fft.encode_video(video, mask).square().sum()
    loss.backward()
    conv_grads = [p.grad for n, p in fft.named_parameters() if 'TemporalPrompt' in n and p.grad is not None]
    assert conv_grads and all(torch.isfinite(g).all() for g in conv_grads)
    if not autocast:  # fp32, no dropout: every pixel-conv weight and bias gradient equals the direct one's
        fft.eval().zero_grad(set_to_none=True)
        fft.encode_video(video, mask).square().sum().backward()
        direct.encode_video(video, mask).square().sum().backward()
        for (name, pd), (_, pf) in zip(direct.named_parameters(), fft.named_parameters(), strict=True):
            if 'TemporalPrompt.Conv.' in name:  # cuDNN may run the direct Conv3d in TF32
                scale = pd.grad.abs().max().item()
                torch.testing.assert_close(pf.grad, pd.grad, atol=2e-3 * scale, rtol=1e-2, msg=name)
