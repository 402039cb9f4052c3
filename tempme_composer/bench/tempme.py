"""Benchmark of TempMe's video encoder vs the meanP baseline: per-block tokens and MACs, and throughput.

    python -m tempme_composer.bench tempme [--presets ViT-B/32 ViT-B/16] [--frames 12] [--batch 4]
        [--iters 5] [--device cpu|cuda] [--bf16] [--train-step] [--no-timing]

Random weights (no checkpoint needed). For every preset it prints

1. the per-block plan (sequences x tokens per video, merges, analytic GMACs) — ViT-B/16 uses the paper's
   inferred setting tome_r=10, proportions 40-20 (docs/reference/tempme.md#defaults), ViT-B/32 the reference
   defaults;
2. measured vision-encoder GMACs per video with ``torch.utils.flop_counter`` on the meta device
   (1 MAC = 2 FLOPs; LoRA not applied, i.e. folded), TempMe vs plain per-frame CLIP;
3. unless ``--no-timing``: forward videos/s of the vision encoder (no grad, median over ``--iters`` after one
   warm-up iteration; bf16 autocast with ``--bf16``), and with ``--train-step`` the videos/s of a LoRA training
   step
   (forward + backward through the vision tower, CLIP frozen) and the peak CUDA memory on GPU.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from torch.utils.flop_counter import FlopCounterMode

from tempme_composer.bench.common import median_seconds
from tempme_composer.clip import CLIP, CLIP_PRESETS
from tempme_composer.modules.lora import apply_lora
from tempme_composer.modules.tempme import TempMeVideoEncoder, plan_table
from tempme_composer.modules.video_tower import encode_video

SCHEDULES = {'ViT-B/32': {}, 'ViT-B/16': {'tome_r': 10, 'merge_token_proportion': (40, 20)}}


def measured_gmacs(preset: str, frames: int, schedule: dict) -> tuple[float, float]:
    """(TempMe, plain) vision GMACs per video, counted on the meta device (no compute)."""
    clip = CLIP(CLIP_PRESETS[preset], device='meta')
    enc = TempMeVideoEncoder.for_tower(clip.visual, frames, **schedule).to('meta')
    res = clip.config.image_resolution
    video = torch.empty(1, frames, 3, res, res, device='meta')
    with FlopCounterMode(display=False) as c1:
        clip.visual.project(encode_video(clip.visual, video, tempme=enc).frame_cls)
    with FlopCounterMode(display=False) as c2:
        clip.visual(video.flatten(0, 1))
    return c1.get_total_flops() / 2e9, c2.get_total_flops() / 2e9


def throughput(
    preset: str,
    frames: int,
    schedule: dict,
    batch: int,
    iters: int,
    device: str,
    bf16: bool,
    train_step: bool,
) -> dict[str, float]:
    """Videos/s (and peak memory on CUDA) for meanP and TempMe, same weights, same inputs."""
    torch.manual_seed(0)
    clip = CLIP(CLIP_PRESETS[preset]).to(device)
    if train_step:
        apply_lora(clip, 8)
        for n, p in clip.named_parameters():
            p.requires_grad_('LoRA' in n)
    enc = TempMeVideoEncoder.for_tower(clip.visual, frames, **schedule).to(device)
    res = clip.config.image_resolution
    video = torch.randn(batch, frames, 3, res, res, device=device)
    runs = {
        'meanP': lambda: clip.visual(video.flatten(0, 1)),
        'TempMe': lambda: clip.visual.project(encode_video(clip.visual, video, tempme=enc).frame_cls),
    }
    out = {}
    for name, fn in runs.items():
        modes = [('fwd', False)] + ([('train', True)] if train_step else [])
        for mode, grad in modes:
            autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

            def step(fn=fn, grad=grad, autocast=autocast) -> None:
                with torch.set_grad_enabled(grad), autocast:
                    y = fn()
                if grad:
                    y.float().square().mean().backward()

            reset = torch.cuda.reset_peak_memory_stats if device == 'cuda' else None
            seconds = median_seconds(step, device, 1, iters, on_timed_start=reset)  # median: robust on shared CPUs
            out[f'{name} {mode} videos/s'] = batch / seconds
            if device == 'cuda':
                out[f'{name} {mode} peak GiB'] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--presets', nargs='+', default=['ViT-B/32'], choices=sorted(SCHEDULES))
    ap.add_argument('--frames', type=int, default=12)
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--iters', type=int, default=5)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--bf16', action='store_true')
    ap.add_argument('--train-step', action='store_true')
    ap.add_argument('--no-timing', action='store_true')
    args = ap.parse_args(argv)
    print(
        f'device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} bf16={args.bf16}'
    )
    for preset in args.presets:
        schedule = SCHEDULES[preset]
        cfg = CLIP_PRESETS[preset]
        enc = TempMeVideoEncoder(
            cfg.vision_layers, cfg.num_visual_tokens, cfg.vision_width, args.frames, **schedule
        )
        print(f'\n## {preset}, {args.frames} frames, schedule {schedule or "reference defaults"}\n')
        print(plan_table(enc.plans, cfg.vision_width))
        last = enc.plans[-1]
        tm, plain = measured_gmacs(preset, args.frames, schedule)
        print(
            f'\noutput tokens per video: {last.seqs}x{last.out_tokens} '
            f'(input {args.frames}x{cfg.num_visual_tokens})'
        )
        print(
            f'vision GMACs per video (flop_counter/2): TempMe {tm:.2f} vs plain CLIP {plain:.2f} '
            f'({1 - tm / plain:.1%} less)'
        )
        if not args.no_timing:
            res = throughput(
                preset, args.frames, schedule, args.batch, args.iters, args.device, args.bf16, args.train_step
            )
            print('\n| measure | value |\n|---|---|')
            for k, v in res.items():
                print(f'| {k} | {v:.2f} |')


if __name__ == '__main__':
    main()
