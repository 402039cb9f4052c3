"""bench efficiency: the numbers users quote from the efficiency table (meta-device counting only, fast)."""

from __future__ import annotations

import json

import pytest
import torch

from tempme_composer.bench import efficiency as bench
from tempme_composer.clip import CLIP
from tempme_composer.clip.config import clip_config_from_dict
from tempme_composer.model import UnifiedModel


@pytest.fixture(scope='module')
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp('bench') / 'rows.json'
    out = bench.main(['--no-timing', '--device', 'cpu', '--batch', '2', '--json', str(path)])
    return out, path


def _row(rows, preset, config):
    (row,) = [r for r in rows if r['preset'] == preset and r['config'] == config]
    return row


def test_one_row_per_config_and_preset(result):
    out, _ = result
    rows = out['rows']
    assert len(rows) == 8
    assert {(r['preset'], r['config']) for r in rows} == {
        (p, c) for p in ('ViT-B/32', 'ViT-B/16') for c in ('baseline', 'tempme', 'stop', 'unified')
    }
    table = bench.format_table(rows, 'cpu')
    assert len([line for line in table.splitlines() if line.startswith('| ViT-')]) == 8


def test_stop_vit_b32_tokens_and_parameters_match_the_reference(result):
    stop = _row(result[0]['rows'], 'ViT-B/32', 'stop')
    assert stop['tokens_per_video'] == 4 + 12 * (1 + 4 + 49) == 652
    assert stop['trainable_params'] == 13_081_528 + 1  # STOP's published count + logit_scale (kept)
    assert stop['total_params'] == 164_358_841
    base = _row(result[0]['rows'], 'ViT-B/32', 'baseline')
    assert base['tokens_per_video'] == 12 * 50 and base['trainable_params'] == 1
    assert _row(result[0]['rows'], 'ViT-B/16', 'baseline')['tokens_per_video'] == 12 * 197


def test_merging_makes_tempme_and_unified_cheaper(result):
    rows = result[0]['rows']
    for preset in ('ViT-B/32', 'ViT-B/16'):
        base, tempme = _row(rows, preset, 'baseline'), _row(rows, preset, 'tempme')
        stop, unified = _row(rows, preset, 'stop'), _row(rows, preset, 'unified')
        assert unified['gmac_per_video'] < stop['gmac_per_video']
        assert tempme['gmac_per_video'] < base['gmac_per_video']
        assert unified['tokens_per_video'] < stop['tokens_per_video']
        assert tempme['tokens_per_video'] < base['tokens_per_video']
        # unified = TempMe's merged tokens + STOP's prompts (N_g global, N_loc per frame)
        assert unified['tokens_per_video'] == tempme['tokens_per_video'] + 4 + 12 * 4
    # plain CLIP ViT-B/32: the familiar 4.4 GMAC per frame
    assert _row(rows, 'ViT-B/32', 'baseline')['gmac_per_video'] == pytest.approx(12 * 4.41, rel=0.01)


def test_json_round_trips(result):
    out, path = result
    assert json.loads(path.read_text()) == json.loads(json.dumps(out))


def test_mfu_uses_the_gpu_table():
    assert bench.peak_bf16_tflops('NVIDIA H100 80GB HBM3') == 989.0
    assert bench.peak_bf16_tflops('NVIDIA H100 PCIe') == 756.0
    assert bench.peak_bf16_tflops('Some Future GPU') is None


@pytest.mark.parametrize('config', bench.CONFIGS)
def test_counted_path_is_the_models_video_path(config):
    """The meta-safe `video_path` that is counted computes what `UnifiedModel.encode_video` computes."""
    torch.manual_seed(0)
    clip = CLIP(clip_config_from_dict({'preset': 'tiny', 'vision_layers': 3}))
    cfg = bench.model_config(config)
    cfg.tempme.merge_layers, cfg.tempme.merge_frame_num, cfg.tempme.tome_r = [1, 2], [2, 2], 1
    model = UnifiedModel.from_config(clip, cfg, 4).eval()
    R = clip.config.image_resolution
    video, mask = torch.randn(2, 4, 3, R, R), torch.ones(2, 4)
    with torch.no_grad():
        torch.testing.assert_close(bench.video_path(model, video, mask), model.encode_video(video, mask))


def test_one_row_per_conv_impl_for_configs_with_stop():
    args = ['--no-timing', '--presets', 'ViT-B/32', '--configs', 'tempme', 'stop', '--batch', '1']
    out = bench.main([*args, '--conv-impls', 'direct', 'auto'])
    got = [(r['config'], r['conv_impl']) for r in out['rows']]
    assert got == [('tempme', None), ('stop', 'direct'), ('stop', 'auto')]
    stop_direct, stop_auto = out['rows'][1:]
    assert stop_direct['gmac_per_video'] == stop_auto['gmac_per_video']  # counted as the Conv3d either way


def test_conv_comparison_gives_ratios_over_direct():
    row = {'preset': 'ViT-B/32', 'config': 'stop'}
    rows = [
        {**row, 'conv_impl': 'direct', 'fwd_videos_per_s': 1.0, 'train_videos_per_s': 0.1},
        {**row, 'conv_impl': 'fft', 'fwd_videos_per_s': 2.0, 'train_videos_per_s': 0.4},
    ]
    table = bench.format_conv_comparison(rows)
    assert '| ViT-B/32 | STOP | fft | 2.00 | 0.40 | 2.00x | 4.00x |' in table
    assert bench.format_conv_comparison(rows[:1]) == ''
