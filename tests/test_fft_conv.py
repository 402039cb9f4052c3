"""The FFT form of STOP's pixel-prompt convolution gives the direct convolution's outputs and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tempme_composer.clip import CLIP
from tempme_composer.clip.config import clip_config_from_dict
from tempme_composer.config import ModelConfig, StopConfig
from tempme_composer.model import UnifiedModel
from tempme_composer.modules.fft_conv import fft_conv3d


@pytest.mark.parametrize(('cin', 'cout', 'kernel'), [(3, 9, (3, 11, 11)), (9, 16, (3, 11, 11)), (1, 2, (5, 3, 7))])
def test_fft_conv3d_equals_conv3d_with_same_padding(cin, cout, kernel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cin, 5, 20, 17, generator=g, requires_grad=True)
    w = (0.1 * torch.randn(cout, cin, *kernel, generator=g)).requires_grad_()
    b = torch.randn(cout, generator=g, requires_grad=True)
    direct = F.conv3d(x, w, b, padding=tuple(k // 2 for k in kernel))
    fft = fft_conv3d(x, w, b)
    torch.testing.assert_close(fft, direct, atol=1e-4, rtol=1e-4)
    grads_direct = torch.autograd.grad(direct.square().sum(), (x, w, b))
    grads_fft = torch.autograd.grad(fft.square().sum(), (x, w, b))
    for gd, gf in zip(grads_direct, grads_fft, strict=True):
        torch.testing.assert_close(gf, gd, atol=2e-3, rtol=1e-3)  # fp32 sums in another order


def test_stop_model_with_fft_convolution_matches_direct():
    def build(conv_impl: str) -> UnifiedModel:
        torch.manual_seed(0)
        clip = CLIP(clip_config_from_dict({'preset': 'tiny'}))
        cfg = ModelConfig()
        cfg.stop = StopConfig(enabled=True, conv_impl=conv_impl)
        return UnifiedModel.from_config(clip, cfg, 4).eval()

    video, mask = torch.randn(2, 4, 3, 32, 32), torch.ones(2, 4)
    direct, fft = build('direct'), build('fft')
    emb_direct, emb_fft = direct.encode_video(video, mask), fft.encode_video(video, mask)
    torch.testing.assert_close(emb_fft, emb_direct, atol=1e-5, rtol=1e-5)
    emb_direct.sum().backward()
    emb_fft.sum().backward()
    for (name, pd), (_, pf) in zip(direct.named_parameters(), fft.named_parameters(), strict=True):
        if 'TemporalPrompt.Conv.' in name:
            torch.testing.assert_close(pf.grad, pd.grad, atol=1e-5, rtol=1e-3, msg=name)
