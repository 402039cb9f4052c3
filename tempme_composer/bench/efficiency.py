"""Efficiency of the four configs of one model (baseline meanP, TempMe, STOP, unified) on one table.

    python -m tempme_composer.bench efficiency [--presets ViT-B/32 ViT-B/16] [--frames 12] [--batch N]
        [--iters K] [--warmup W] [--device cpu|cuda] [--bf16] [--no-timing] [--timing-presets ...]
        [--configs baseline tempme stop unified] [--conv-impls auto direct fft] [--json PATH] [--stop-reference]

Random weights (no checkpoint). Each config is built exactly as the recipe builds it
(`UnifiedModel.from_config` with ``model.tempme``/``model.lora``/``model.stop`` enabled, every other setting at
its default) and frozen by the rule users train with: ``freeze_clip=True``,
``keep_substrings=[logit_scale, LoRA, prompt, TemporalPrompt]``. Per config and preset, one Markdown table
row (the same rows go to ``--json``):

- **trainable / total parameters** under that freezing rule (``logit_scale`` is kept, so +1 everywhere);
- **tokens per video leaving the vision tower**: the tokens entering the last block, measured with a forward
  hook on its ``ln_1`` (frame/clip sequences and, with STOP, global and local prompts), minus TempMe's
  last-block intra-clip merge from the plan. The tower may skip that merge and the last-block outputs the
  readout does not use; ``--json`` also has the tokens the last block's MLP actually processes;
- **GMAC per video** of the video path (pixel prompt, inter-frame prompt, prompt generator amortised over
  the ``--batch`` videos it runs once for, embedding, blocks, merging, readout, projection and
  normalisation), counted with ``torch.utils.flop_counter`` on the meta device (no compute, no memory;
  1 MAC = 2 FLOPs; attention-score matmuls are counted: SDPA on meta decomposes to matmuls); and the
  **train GMAC** of forward + backward with the frozen backbone (the baseline has nothing trainable in the
  video path under this rule: n/a);
- the ratio of GMAC to STOP's reference visual encoder, 152.7 GMAC (305.3 GFLOP) per video at ViT-B/32,
  12 frames (docs/reference/stop.md#efficiency; printed for every preset, but the reference number is
  ViT-B/32's);
- unless ``--no-timing`` (or the preset is not in ``--timing-presets``): forward videos/s (eval mode, no
  grad) and train-step videos/s (train mode, forward + backward of the video path against a fixed random
  target, frozen as above; no optimizer step), the median of ``--iters`` after ``--warmup`` iterations, bf16
  autocast with ``--bf16``; the peak memory (CUDA: ``torch.cuda.max_memory_allocated``, reset per config and
  mode, weights included; CPU: the peak increase of the process RSS over warm-up and timed iterations,
  sampled every 2 ms; a lower bound, since memory the process already holds is reused); on CUDA the model FLOP utilisation ``achieved FLOP/s / peak dense bf16 FLOP/s`` of the GPU,
  with achieved = ``2 * GMAC * videos/s`` for the forward and the usual estimate ``3 *`` that for a training
  step (the measured fwd+bwd count is in the table too: with a frozen backbone it is nearer 2.5x).

``--conv-impls``: the ``model.stop.conv_impl`` values to time; STOP and unified get one row each (same counts:
on the meta device the pixel convolution is counted as the direct Conv3d, whatever the implementation), so
``--conv-impls direct auto`` measures the FFT convolution's effect in one run.

For configs with STOP a second table splits the GMAC per video into the pixel prompt, the inter-frame
prompt, the prompt generator (per batch / batch) and the rest (ViT with prompts/merging, readout).

``--stop-reference``: when `tempme_composer.reference.stop_reference` exists, a third table compares STOP's
efficient path (one row per ``--conv-impls`` value, same weights) with the straightforward, reference-shaped
implementation at ViT-B/32: GFLOP per video and per caption (meta-device count), and forward / train-step
seconds per video-caption pair (text + video) on ``--ref-device`` (default cpu), with the speed-ups.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tempme_composer.algorithms.freeze import freeze_parameters
from tempme_composer.bench.common import (
    fmt,
    machine_description,
    median_seconds,
    peak_bf16_tflops,
    write_json,
)
from tempme_composer.clip import CLIP, CLIP_PRESETS
from tempme_composer.model import UnifiedModel
from tempme_composer.model.config import ModelConfig
from tempme_composer.modules.temporal_prompt import CONV_IMPLS
from tempme_composer.modules.video_tower import encode_video, pool_video

try:  # the tower may skip the last block's frame-CLS outputs when the readout does not use them
    from tempme_composer.modules.video_tower import readout_needs_cls
except ImportError:  # pragma: no cover - older tower
    readout_needs_cls = None

__all__ = [
    'CONFIGS',
    'KEEP_SUBSTRINGS',
    'STOP_REFERENCE_GMAC',
    'build_model',
    'count_config',
    'format_table',
    'main',
    'peak_bf16_tflops',
    'run_benchmark',
    'video_path',
]

log = logging.getLogger(__name__)

CONFIGS = ('baseline', 'tempme', 'stop', 'unified')
LABELS = {'baseline': 'baseline (meanP)', 'tempme': 'TempMe', 'stop': 'STOP', 'unified': 'unified'}
KEEP_SUBSTRINGS = ('logit_scale', 'LoRA', 'prompt', 'TemporalPrompt')  # with freeze_clip=True
# docs/reference/stop.md#efficiency: STOP visual encoder, ViT-B/32, 12 frames, flop_counter (2 x MAC)
STOP_REFERENCE_GFLOP = 305.3
STOP_REFERENCE_GMAC = STOP_REFERENCE_GFLOP / 2
PRESETS = ('ViT-B/32', 'ViT-B/16')

# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------


def model_config(config: str, conv_impl: str | None = None) -> ModelConfig:
    """The recipe's model settings for one of `CONFIGS` (everything else at its default; ``conv_impl``
    overrides ``model.stop.conv_impl``)."""
    if config not in CONFIGS:
        raise ValueError(f'config must be one of {list(CONFIGS)}, got {config!r}')
    cfg = ModelConfig()
    if conv_impl is not None:
        cfg.stop.conv_impl = conv_impl
    if config in ('tempme', 'unified'):
        cfg.tempme.enabled = True
        cfg.lora.enabled = True
    if config in ('stop', 'unified'):
        cfg.stop.enabled = True
    return cfg


def build_model(
    config: str, preset: str, frames: int, device: str, conv_impl: str | None = None
) -> tuple[UnifiedModel, int, int]:
    """A randomly initialised model on ``device`` (``'meta'`` allocates nothing), frozen by the users' rule.

    Returns:
        (model, trainable parameters, total parameters).
    """
    clip = CLIP(CLIP_PRESETS[preset], device=device)
    model = UnifiedModel.from_config(clip, model_config(config, conv_impl), frames).to(device)
    report = freeze_parameters(model, freeze_clip=True, keep_substrings=KEEP_SUBSTRINGS, warn_absent=False)
    return model, report.num_trainable, report.num_total


def video_path(model: UnifiedModel, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
    """`UnifiedModel.encode_video` for a batch whose frames are all valid, without reading the mask on the
    host (so it runs on the meta device); same operations, same ``[B, D]`` unit vectors."""
    visual = model.clip.visual
    if model.tempme is None and model.stop is None:
        B, T = video.shape[:2]
        frames = F.normalize(model.clip.encode_image(video.flatten(0, 1)).float(), dim=-1).view(B, T, -1)
        return F.normalize(frames.mean(dim=1), dim=-1)
    kw = {} if readout_needs_cls is None else {'need_cls': readout_needs_cls(model.output_type)}
    tokens = encode_video(visual, video, tempme=model.tempme, stop=model.stop, **kw)
    return F.normalize(pool_video(visual, tokens, video_mask, model.output_type).float(), dim=-1)


def _inputs(model: UnifiedModel, batch: int, frames: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    res = model.clip.config.image_resolution
    g = torch.Generator().manual_seed(0)
    if device == 'meta':
        video = torch.empty(batch, frames, 3, res, res, device='meta')
    else:
        video = torch.randn(batch, frames, 3, res, res, generator=g).to(device)
    return video, torch.ones(batch, frames, device=device)


def _has_video_trainables(model: UnifiedModel) -> bool:
    """Whether the video path has a trainable parameter (a gradient to compute) under the freezing rule."""
    return any(
        p.requires_grad
        for n, p in model.named_parameters()
        if n.startswith(('clip.visual.', 'tempme.', 'stop.'))
    )


def _train_loss(model: UnifiedModel, emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A contrastive-shaped scalar: temperature-scaled similarity to fixed targets."""
    return -(model.clip.logit_scale.exp() * (emb * target).sum(dim=-1)).mean()


# ----------------------------------------------------------------------------------------------------------
# Counting (meta device)
# ----------------------------------------------------------------------------------------------------------


def _flops(fn: Callable[[], Any]) -> tuple[int, Any]:
    # Grad mode stays on: FlopCounterMode's module tracker asserts on parameters passed under no_grad.
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return counter.get_total_flops(), out


def count_config(config: str, preset: str, frames: int, batch: int) -> dict[str, Any]:
    """Parameters, output tokens, forward and train GMAC per video (and a STOP breakdown), on meta."""
    model, trainable, total = build_model(config, preset, frames, 'meta')
    model.eval()
    video, mask = _inputs(model, batch, frames, 'meta')
    last = model.clip.visual.transformer.resblocks[-1]
    seen: dict[str, list[int]] = {'ln_1': [], 'mlp': []}
    handles = [
        getattr(last, name).register_forward_hook(
            lambda mod, inp, out, name=name: seen[name].append(inp[0].numel() // inp[0].shape[-1])
        )
        for name in seen
    ]
    try:
        fwd, _ = _flops(lambda: video_path(model, video, mask))
    finally:
        for h in handles:
            h.remove()
    last_in, last_mlp = (
        _per_video(sum(seen[k]), batch, f'{config} {preset} last-block {k} tokens') for k in seen
    )
    # TempMe's plan ends with an intra-clip merge in the last block; the tower may skip it (and the outputs of
    # tokens the readout does not use), so the tokens leaving the tower are the last block's input minus it.
    plan = model.tempme.plans[-1] if model.tempme is not None else None
    tokens_per_video = last_in - (plan.r_intra * plan.seqs if plan is not None else 0)
    train = None
    if _has_video_trainables(model):
        model.train()
        target = torch.empty(batch, model.clip.config.embed_dim, device='meta')
        train, _ = _flops(lambda: _train_loss(model, video_path(model, video, mask), target).backward())
    row = {
        'preset': preset,
        'config': config,
        'frames': frames,
        'count_batch': batch,
        'trainable_params': trainable,
        'total_params': total,
        'tokens_per_video': tokens_per_video,
        'last_block_input_tokens_per_video': last_in,
        'last_block_mlp_tokens_per_video': last_mlp,
        'gmac_per_video': fwd / 2e9 / batch,
        'train_gmac_per_video': None if train is None else train / 2e9 / batch,
        'gmac_vs_stop_reference': None,
        'breakdown_gmac_per_video': None,
    }
    if model.stop is not None:
        row['gmac_vs_stop_reference'] = row['gmac_per_video'] / STOP_REFERENCE_GMAC
        model.eval()
        row['breakdown_gmac_per_video'] = _stop_breakdown(model, video, row['gmac_per_video'])
    return row


def _per_video(tokens: int, batch: int, what: str) -> int:
    n, rem = divmod(tokens, batch)
    if rem:
        raise RuntimeError(f'{what}: {tokens} is not a multiple of the batch {batch}')
    return n


def _stop_breakdown(model: UnifiedModel, video: torch.Tensor, total: float) -> dict[str, float]:
    """GMAC per video of STOP's parts, each counted alone on meta; the rest is the prompted (merging) ViT."""
    B, T = video.shape[:2]
    visual = model.clip.visual
    temporal = getattr(visual, 'TemporalPrompt', None)
    parts: dict[str, float] = {}
    flops, _ = _flops(model.stop.prompt_generator)
    parts['prompt generator (once per batch, / batch)'] = flops / 2e9 / B
    if temporal is not None:
        flops, (prompted, mask) = _flops(lambda: temporal.spatial(video))
        parts['pixel prompt (Conv stack, MLP, Cal_Net)'] = flops / 2e9 / B
        x = visual.embed(prompted.flatten(0, 1))
        flops, _ = _flops(lambda: temporal.inter_frame(x.view(B, T, -1, x.shape[-1]), mask))
        parts['inter-frame prompt (Attention, InterConv, Cal_Net_Inter, InterMLP)'] = flops / 2e9 / B
    parts['ViT with prompts (+ merging), embedding, readout'] = total - sum(parts.values())
    return parts


# ----------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------


class _RssPeak:
    """Peak increase of this process's resident set over a ``with`` block, sampled every 2 ms (Linux)."""

    def __init__(self) -> None:
        self.page = os.sysconf('SC_PAGE_SIZE') if hasattr(os, 'sysconf') else 4096
        self.peak_delta: float | None = None

    def _rss(self) -> int | None:
        try:
            with open('/proc/self/statm') as f:
                return int(f.read().split()[1]) * self.page
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> _RssPeak:
        self.start = self._rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self.start is not None:
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            rss = self._rss()
            if rss is not None and rss > self.peak:
                self.peak = rss

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.start is not None:
            self._thread.join()
            self.peak = max(self.peak, self._rss() or 0)
            self.peak_delta = (self.peak - self.start) / 2**30


def _time(step: Callable[[], None], device: str, warmup: int, iters: int) -> tuple[float, float | None]:
    """(median seconds per call, peak GiB: CUDA max allocated over the timed calls / CPU peak RSS increase
    over warm-up and timed calls, from the RSS before them: the allocator keeps what the warm-up took)."""
    cpu_mem = _RssPeak() if device != 'cuda' else contextlib.nullcontext()
    reset = torch.cuda.reset_peak_memory_stats if device == 'cuda' else None
    with cpu_mem:
        seconds = median_seconds(step, device, warmup, iters, on_timed_start=reset)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == 'cuda' else cpu_mem.peak_delta
    return seconds, peak


def _autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def time_config(
    config: str,
    preset: str,
    frames: int,
    batch: int,
    iters: int,
    warmup: int,
    device: str,
    bf16: bool,
    conv_impl: str | None = None,
) -> dict[str, Any]:
    """Forward and train-step videos/s and peak memory of one config on ``device`` (fresh model)."""
    torch.manual_seed(0)
    model, _, _ = build_model(config, preset, frames, device, conv_impl)
    video, mask = _inputs(model, batch, frames, device)
    target = F.normalize(
        torch.randn(batch, model.clip.config.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1
    ).to(device)
    out: dict[str, Any] = {}

    def forward() -> None:
        with torch.no_grad(), _autocast(device, bf16):
            model.encode_video(video, mask)

    def train_step() -> None:
        with _autocast(device, bf16):
            loss = _train_loss(model, model.encode_video(video, mask), target)
        loss.backward()
        model.zero_grad(set_to_none=True)

    modes: list[tuple[str, Callable[[], None], bool]] = [('fwd', forward, False)]
    if _has_video_trainables(model):
        modes.append(('train', train_step, True))
    for mode, step, training in modes:
        model.train(training)
        try:
            seconds, peak = _time(step, device, warmup, iters)
            out[f'{mode}_videos_per_s'] = batch / seconds
            out[f'peak_mem_{mode}_gib'] = peak
        except torch.cuda.OutOfMemoryError:
            out[f'{mode}_videos_per_s'] = 'OOM'
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    return out


def _release(device: str) -> None:
    gc.collect()
    if device == 'cuda':
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------------------


def _add_mfu(row: dict[str, Any], device_name: str | None) -> None:
    peak = peak_bf16_tflops(device_name) if device_name else None
    for mode, factor, gmac_key in (('fwd', 2, 'gmac_per_video'), ('train', 6, 'gmac_per_video')):
        vps = row.get(f'{mode}_videos_per_s')
        row[f'mfu_{mode}'] = (
            factor * row[gmac_key] * 1e9 * vps / (peak * 1e12) if peak and isinstance(vps, float) else None
        )


def format_table(rows: Sequence[dict[str, Any]], device: str) -> str:
    """The Markdown table of `run_benchmark` rows."""
    cuda = device == 'cuda'
    mem = 'peak mem fwd / train GiB (' + ('CUDA max allocated' if cuda else 'CPU peak RSS increase') + ')'
    head = [
        'preset',
        'config',
        'trainable / total params',
        'tokens/video',
        'GMAC/video',
        'fwd+bwd GMAC/video',
        f'GMAC / STOP ref {STOP_REFERENCE_GMAC:.1f} (ViT-B/32)',
        'fwd videos/s',
        'train videos/s',
        mem,
    ]
    if cuda:
        head += ['MFU fwd', 'MFU train (3x fwd)']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        timed = 'fwd_videos_per_s' in r
        skip = 'skipped'
        cells = [
            r['preset'],
            LABELS[r['config']] + (f' ({r["conv_impl"]} conv)' if r.get('conv_impl') else ''),
            f'{r["trainable_params"]:,} / {r["total_params"]:,}',
            str(r['tokens_per_video']),
            f'{r["gmac_per_video"]:.2f}',
            fmt(r['train_gmac_per_video']),
            fmt(r['gmac_vs_stop_reference'], '.3f'),
            fmt(r.get('fwd_videos_per_s')) if timed else skip,
            fmt(r.get('train_videos_per_s')) if timed else skip,
            f'{fmt(r.get("peak_mem_fwd_gib"))} / {fmt(r.get("peak_mem_train_gib"))}' if timed else skip,
        ]
        if cuda:
            cells += [
                fmt(r.get('mfu_fwd'), '.1%') if timed else skip,
                fmt(r.get('mfu_train'), '.1%') if timed else skip,
            ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def format_conv_comparison(rows: Sequence[dict[str, Any]]) -> str:
    """Timed STOP/unified rows per ``conv_impl`` side by side with their speed over ``direct``; '' if fewer
    than two implementations were timed."""
    timed = [r for r in rows if r.get('conv_impl') and 'fwd_videos_per_s' in r]
    if len({r['conv_impl'] for r in timed}) < 2:
        return ''
    head = ['preset', 'config', 'conv_impl', 'fwd videos/s', 'train videos/s', 'fwd / direct', 'train / direct']
    if any(r.get('mfu_train') is not None for r in timed):
        head += ['MFU fwd', 'MFU train (3x fwd)']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in timed:
        base = next(
            (b for b in timed if (b['preset'], b['config'], b['conv_impl']) == (r['preset'], r['config'], 'direct')),
            None,
        )
        cells = [r['preset'], LABELS[r['config']], r['conv_impl']]
        for key in ('fwd_videos_per_s', 'train_videos_per_s'):
            cells.append(fmt(r.get(key)))
        for key in ('fwd_videos_per_s', 'train_videos_per_s'):
            v, b = r.get(key), base.get(key) if base else None
            cells.append(f'{v / b:.2f}x' if isinstance(v, float) and isinstance(b, float) else 'n/a')
        if len(head) > 7:
            cells += [fmt(r.get('mfu_fwd'), '.1%'), fmt(r.get('mfu_train'), '.1%')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def format_breakdown(rows: Sequence[dict[str, Any]]) -> str:
    """GMAC per video of STOP's parts for the rows that have STOP (once per preset and config: the counts do not
    depend on ``conv_impl``, which only has rows of its own for the timing)."""
    lines = ['| preset | config | component | GMAC/video | share |', '|---|---|---|---|---|']
    seen = set()
    for r in rows:
        parts = r.get('breakdown_gmac_per_video')
        if not parts or (r['preset'], r['config']) in seen:
            continue
        seen.add((r['preset'], r['config']))
        for name, gmac in parts.items():
            lines.append(
                f'| {r["preset"]} | {LABELS[r["config"]]} | {name} | {gmac:.2f} | '
                f'{gmac / r["gmac_per_video"]:.1%} |'
            )
    return '\n'.join(lines)


def run_benchmark(
    presets: Sequence[str] = PRESETS,
    configs: Sequence[str] = CONFIGS,
    frames: int = 12,
    batch: int = 2,
    timing_presets: Sequence[str] = (),
    iters: int = 3,
    warmup: int = 1,
    device: str = 'cpu',
    bf16: bool = False,
    conv_impls: Sequence[str] = ('auto',),
) -> list[dict[str, Any]]:
    """One row per (preset, config, conv_impl): meta-device counts, plus timing for presets in
    ``timing_presets``. Configs without STOP have no pixel convolution: one row, ``conv_impl`` None."""
    device_name = torch.cuda.get_device_name() if device == 'cuda' else None
    rows = []
    for preset in presets:
        for config in configs:
            counts = count_config(config, preset, frames, batch)
            for conv_impl in conv_impls if config in ('stop', 'unified') else (None,):
                row = {**counts, 'conv_impl': conv_impl}
                if preset in timing_presets:
                    t0 = time.perf_counter()
                    row.update(time_config(config, preset, frames, batch, iters, warmup, device, bf16, conv_impl))
                    _release(device)  # the timed model is gone before the next one is built
                    row['device'] = device
                    row['bf16'] = bf16
                    row['timing_batch'] = batch
                    if device == 'cuda':
                        _add_mfu(row, device_name)
                    print(
                        f'[timed {preset} {config} conv_impl={conv_impl} in {time.perf_counter() - t0:.0f} s]',
                        file=sys.stderr,
                        flush=True,
                    )
                rows.append(row)
                print('ROW ' + json.dumps(row), file=sys.stderr, flush=True)  # survives a run cut short
    return rows


# ----------------------------------------------------------------------------------------------------------
# STOP: efficient vs straightforward reference
# ----------------------------------------------------------------------------------------------------------


def _random_ids(batch: int, length: int, device: str) -> torch.Tensor:
    """CLIP-like ids: SOT, random words, EOT (the largest id) at a fixed position, zero padding."""
    if device == 'meta':
        return torch.empty(batch, length, dtype=torch.long, device='meta')
    g = torch.Generator().manual_seed(2)
    ids = torch.zeros(batch, length, dtype=torch.long)
    ids[:, 0] = 49406
    eot = length * 2 // 3
    ids[:, 1:eot] = torch.randint(1, 49406, (batch, eot - 1), generator=g)
    ids[:, eot] = 49407
    return ids.to(device)


def stop_reference_comparison(
    frames: int, batch: int, words: int, iters: int, warmup: int, device: str, conv_impls: Sequence[str] = ('auto',)
) -> list[dict[str, Any]] | None:
    """Efficient STOP (one row per pixel-conv implementation, same weights) vs `stop_reference` at ViT-B/32:
    GFLOP per video / caption, seconds per pair; the straightforward row is last."""
    try:
        from tempme_composer.reference import stop_reference
    except ImportError:
        return None
    preset = 'ViT-B/32'
    efficient = (lambda m, v, mask: video_path(m, v, mask), lambda m, ids: m.encode_text(ids))
    impls: list[tuple[str, str | None, tuple[Callable, Callable]]] = [
        (f'efficient ({c} conv)', c, efficient) for c in conv_impls
    ]
    impls.append(
        (
            'straightforward (stop_reference)',
            None,
            (
                lambda m, v, mask: stop_reference.reference_encode_video(m, v),
                lambda m, ids: stop_reference.reference_encode_text(m, ids),
            ),
        )
    )
    rows = []
    meta, _, _ = build_model('stop', preset, frames, 'meta')
    meta.eval()
    video, mask = _inputs(meta, batch, frames, 'meta')
    ids = _random_ids(batch, words, 'meta')
    for name, conv_impl, (enc_video, enc_text) in impls:
        v, _ = _flops(lambda enc_video=enc_video: enc_video(meta, video, mask))
        t, _ = _flops(lambda enc_text=enc_text: enc_text(meta, ids))
        rows.append(
            {
                'impl': name,
                'conv_impl': conv_impl,
                'preset': preset,
                'frames': frames,
                'words': words,
                'batch': batch,
                'video_gflop': v / 1e9 / batch,  # meta device: the pixel convolution counted as Conv3d
                'text_gflop': t / 1e9 / batch,
            }
        )
    if iters > 0:
        torch.manual_seed(0)
        model, _, _ = build_model('stop', preset, frames, device)
        video, mask = _inputs(model, batch, frames, device)
        ids = _random_ids(batch, words, device)
        for row, (_, conv_impl, (enc_video, enc_text)) in zip(rows, impls, strict=True):
            if conv_impl is not None:
                model.clip.visual.TemporalPrompt.conv_impl = conv_impl

            def forward(enc_video=enc_video, enc_text=enc_text) -> None:
                with torch.no_grad():
                    enc_text(model, ids)
                    enc_video(model, video, mask)

            def train_step(enc_video=enc_video, enc_text=enc_text) -> None:
                t = F.normalize(enc_text(model, ids).float(), dim=-1)
                v = F.normalize(enc_video(model, video, mask).float(), dim=-1)
                logits = model.clip.logit_scale.exp() * t @ v.T
                labels = torch.arange(batch, device=logits.device)
                (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)).backward()
                model.zero_grad(set_to_none=True)

            model.eval()
            row['fwd_s_per_pair'] = _time(forward, device, warmup, iters)[0] / batch
            model.train()
            row['train_s_per_pair'] = _time(train_step, device, warmup, iters)[0] / batch
            row['device'] = device
    ref = rows[-1]
    for row in rows:
        for key in ('fwd_s_per_pair', 'train_s_per_pair'):
            if key in row:
                row[f'speedup_{key.split("_")[0]}'] = ref[key] / row[key]  # vs straightforward
    return rows


def format_reference_table(rows: Sequence[dict[str, Any]]) -> str:
    head = [
        'implementation',
        'video GFLOP/video',
        'text GFLOP/caption',
        'fwd s/pair',
        'train-step s/pair',
        'speed-up vs straightforward (fwd / train)',
    ]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        lines.append(
            f'| {r["impl"]} | {r["video_gflop"]:.1f} | {r["text_gflop"]:.2f} | '
            f'{fmt(r.get("fwd_s_per_pair"), ".3f")} | {fmt(r.get("train_s_per_pair"), ".3f")} | '
            f'{fmt(r.get("speedup_fwd"), ".2f")} / {fmt(r.get("speedup_train"), ".2f")} |'
        )
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--presets', nargs='+', default=list(PRESETS), choices=sorted(CLIP_PRESETS))
    ap.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=CONFIGS)
    ap.add_argument('--frames', type=int, default=12)
    ap.add_argument(
        '--batch', type=int, default=None, help='videos per batch (default: 1 on CPU, 32 on CUDA)'
    )
    ap.add_argument(
        '--iters', type=int, default=None, help='timed iterations, median (default: 2 CPU, 10 CUDA)'
    )
    ap.add_argument(
        '--warmup', type=int, default=None, help='untimed iterations first (default: 1 CPU, 3 CUDA)'
    )
    ap.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda']
    )
    ap.add_argument('--bf16', action='store_true', help='bf16 autocast for the timing')
    ap.add_argument('--no-timing', action='store_true', help='meta-device counts only')
    ap.add_argument(
        '--timing-presets',
        nargs='+',
        default=None,
        help='presets to time (default: ViT-B/32 on CPU, all on CUDA)',
    )
    ap.add_argument('--json', default=None, help='also write the rows here')
    ap.add_argument(
        '--stop-reference',
        action='store_true',
        help='add STOP efficient vs straightforward (reference/stop_reference.py) at ViT-B/32',
    )
    ap.add_argument(
        '--conv-impls',
        nargs='+',
        default=['auto'],
        choices=list(CONV_IMPLS),
        help="model.stop.conv_impl values to time, one row each for STOP/unified (e.g. 'direct auto')",
    )
    ap.add_argument('--ref-device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--ref-batch', type=int, default=1)
    ap.add_argument('--ref-words', type=int, default=32, help='caption length in tokens (data.max_words)')
    args = ap.parse_args(argv)
    cuda = args.device == 'cuda'
    if cuda and not torch.cuda.is_available():
        ap.error('--device cuda but CUDA is not available')
    batch = args.batch or (32 if cuda else 1)
    iters = args.iters if args.iters is not None else (10 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    if args.no_timing:
        timing = []
    elif args.timing_presets is not None:
        timing = args.timing_presets
    else:
        timing = list(args.presets) if cuda else [p for p in args.presets if p == 'ViT-B/32']
    machine = machine_description(args.device)
    print(machine)
    print(
        f'device={args.device} bf16={args.bf16} frames={args.frames} batch={batch} iters={iters} '
        f'(median) warmup={warmup} timed presets={timing or "none"}; freeze_clip=True, '
        f'keep_substrings={list(KEEP_SUBSTRINGS)}\n'
    )
    rows = run_benchmark(
        args.presets, args.configs, args.frames, batch, timing, iters, warmup, args.device, args.bf16,
        args.conv_impls,
    )
    print(format_table(rows, args.device))
    print(
        f"\nGMAC counted on the meta device for a batch of {batch} (STOP's prompt generator runs once per batch); "
        '1 MAC = 2 FLOPs. STOP reference: 305.3 GFLOP = 152.7 GMAC per video, ViT-B/32, 12 frames '
        '(docs/reference/stop.md#efficiency, generator once per sample); the ratio is printed for ViT-B/16 '
        'too against that '
        'ViT-B/32 number. fwd+bwd: measured with the backbone frozen; train step = forward + backward, no '
        'optimizer step; baseline: nothing trainable in the video path (n/a).'
    )
    if cuda:
        print(
            'MFU = achieved / peak dense bf16 FLOP/s; achieved = 2*GMAC*videos/s (fwd), 3x that (train, the '
            'usual estimate; the measured fwd+bwd count is lower with a frozen backbone).'
        )
    comparison = format_conv_comparison(rows)
    if comparison:
        print('\nPixel-prompt convolution implementations (same model and inputs; ratio = videos/s over direct):\n')
        print(comparison)
    breakdown = format_breakdown(rows)
    if breakdown.count('\n') > 1:
        print('\nSTOP components, GMAC per video (each counted alone on meta; the rest is the ViT):\n')
        print(breakdown)
    result: dict[str, Any] = {
        'machine': machine,
        'settings': {
            'device': args.device,
            'bf16': args.bf16,
            'frames': args.frames,
            'batch': batch,
            'iters': iters,
            'warmup': warmup,
            'timing_presets': timing,
            'keep_substrings': list(KEEP_SUBSTRINGS),
            'stop_reference_gmac': STOP_REFERENCE_GMAC,
            'conv_impls': list(args.conv_impls),
        },
        'rows': rows,
        'stop_reference': None,
    }
    if args.stop_reference:
        ref_iters = 0 if args.no_timing else iters
        ref = stop_reference_comparison(
            args.frames, args.ref_batch, args.ref_words, ref_iters, warmup, args.ref_device, args.conv_impls
        )
        if ref is None:
            print(
                '\nSTOP: efficient vs straightforward: skipped (tempme_composer.reference.stop_reference missing)'
            )
        else:
            print(
                f'\n## STOP: efficient vs straightforward (ViT-B/32, {args.frames} frames, {args.ref_words}-token '
                f'captions, batch {args.ref_batch}, {args.ref_device}, fp32)\n'
            )
            print(format_reference_table(ref))
            print(
                '\nGFLOP = 2 x MAC on the meta device; a pair = one video + one caption (text and video '
                'encoders; the train step adds the symmetric InfoNCE loss and backward).'
            )
            result['stop_reference'] = ref
    if args.json:
        write_json(args.json, result)
        print(f'\nwrote {args.json}')
    return result


if __name__ == '__main__':
    logging.basicConfig(level=logging.WARNING)
    main()
