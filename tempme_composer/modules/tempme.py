"""TempMe's video path through the CLIP vision tower: the per-block merge plan and the merging forward.

References: TempMe (Shen et al., ICLR 2025, arXiv 2409.01156); ToMe (Bolya et al., ICLR 2023). Written from
the method description in docs/reference/tempme.md, no reference code.

- `plan_merging` computes, once, a frozen `LayerPlan` per vision block from the config and the model shape
  (depth, tokens per frame, frames): ImgMe blocks (``tome_r`` tokens per frame) before the first merge layer,
  ClipMe blocks at ``merge_layers`` (fuse ``merge_frame_num`` neighbouring sequences, cross-clip merge with
  proportion p_c, intra-clip merge with p_i), intra-clip-only blocks after. Impossible schedules raise
  `ValueError` with the reason, before any data is read.
- `TempMeVideoEncoder` owns the clip temporal position embeddings (one ``[F, width]`` tensor per merge layer,
  zero-initialised, named ``temporal_pos_prompt.<block>`` so ``freeze_clip`` keeps them trainable: names
  containing ``prompt`` are new modules, `tempme_composer.algorithms.freeze.NEW_MODULE_SUBSTRINGS`); the
  merging forward itself is the shared video path `tempme_composer.modules.video_tower.encode_video` (also
  used with STOP's prompts; the tower imports this module, never the other way round); the CLIP weights are
  passed in, never copied or re-registered.

Padded frames: like the reference, the frame mask is not used inside the encoder (all ``T`` slots are
encoded and may be merged with real frames); it is applied only in the final masked mean
(docs/reference/tempme.md#final-pooling and "Behaviours" item 10). The plan therefore depends on
``T`` = ``data.max_frames``.

Deviation (documented): the reference adds the temporal position embedding only when ``r_cross > 0``; here it
is added at every fusion (identical whenever ``r_cross > 0``, which all published schedules satisfy).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from tempme_composer.clip.towers import VisionTransformer

__all__ = ['LayerPlan', 'TempMeVideoEncoder', 'plan_merging', 'plan_table']

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerPlan:
    """What one vision block does to one video (per-video counts; multiply sequences by the batch)."""

    index: int
    kind: Literal['imgme', 'clipme', 'intra']
    group: int  # sequences fused at the start of the block (1 = no fusion)
    seqs_in: int  # sequences per video entering the block
    seqs: int  # sequences per video after the fusion
    tokens_in: int  # tokens per sequence entering the block
    r_cross: int  # tokens removed per fused sequence before attention
    attn_tokens: int  # tokens per sequence in attention
    r_intra: int  # tokens removed per sequence after attention
    out_tokens: int  # tokens per sequence in the MLP and at the output
    protected_in: int  # CLS tokens per sequence entering the block
    protected: int  # CLS tokens per sequence after the fusion

    @property
    def fuses(self) -> bool:
        return self.kind == 'clipme'

    def macs(self, width: int) -> int:
        """Analytic MACs of the block for one video: QKV+out on attention tokens, QKᵀ and AV, MLP (4x)."""
        n, m = self.attn_tokens, self.out_tokens
        return self.seqs * (4 * n * width * width + 2 * n * n * width + 8 * m * width * width)


def plan_merging(
    num_layers: int,
    num_frames: int,
    num_tokens: int,
    *,
    tome_r: int = 2,
    merge_layers: Sequence[int] = (8, 9, 10),
    merge_frame_num: Sequence[int] = (2, 2, 3),
    merge_token_proportion: Sequence[float] = (30, 10),
) -> tuple[LayerPlan, ...]:
    """The per-block TempMe schedule (integer rules of docs/reference/tempme.md#merging-schedule, exactly).

    Args:
        num_layers: vision blocks.
        num_frames: frames per video ``T``.
        num_tokens: tokens per frame entering the tower (patches + CLS).
        tome_r: ImgMe tokens merged per frame in each block before the first merge layer.
        merge_layers: 0-based blocks that fuse neighbouring sequences (strictly increasing).
        merge_frame_num: group size at each merge layer (same length as ``merge_layers``).
        merge_token_proportion: ``[cross, intra]`` percentages p_c, p_i in ``[0, 100)``.

    Raises:
        ValueError: with the reason, for any schedule the tower cannot run.
    """
    layers, groups = list(merge_layers), list(merge_frame_num)
    if len(layers) != len(groups):
        raise ValueError(f'merge_layers {layers} and merge_frame_num {groups} must have the same length')
    if layers != sorted(set(layers)) or any(not 0 <= i < num_layers for i in layers):
        raise ValueError(
            f'merge_layers {layers} must be strictly increasing block indices in [0, {num_layers})'
        )
    if any(g < 1 for g in groups):
        raise ValueError(f'merge_frame_num {groups} must be positive group sizes')
    if len(merge_token_proportion) != 2 or not all(0 <= p < 100 for p in merge_token_proportion):
        raise ValueError(
            f'merge_token_proportion {list(merge_token_proportion)} must be two percentages in [0, 100)'
        )
    if tome_r < 0:
        raise ValueError(f'tome_r must be >= 0, got {tome_r}')
    p_cross, p_intra = merge_token_proportion[0] / 100, merge_token_proportion[1] / 100
    first_merge = layers[0] if layers else num_layers
    group_at = dict(zip(layers, groups, strict=True))
    n_seq, n_tok, n_cls = num_frames, num_tokens, 1
    plans = []
    for i in range(num_layers):
        seqs_in, tokens_in, cls_in, r_cross = n_seq, n_tok, n_cls, 0
        if i in group_at:
            g = group_at[i]
            if n_seq % g:
                raise ValueError(
                    f'block {i}: {n_seq} sequences per video (from {num_frames} frames) cannot be fused '
                    f'in groups '
                    f'of {g}; the product of merge_frame_num {groups} must divide data.max_frames'
                )
            r_cross = min((n_tok - n_cls) * g // 2, int(n_tok * g * p_cross))
            r_intra = min(((n_tok - n_cls) * g - r_cross) // 2, int((n_tok * g - r_cross) * p_intra))
            n_seq, n_cls, n_tok = n_seq // g, n_cls * g, n_tok * g - r_cross
            kind = 'clipme'
        elif i < first_merge:
            r_intra, kind = tome_r, 'imgme'
            num_a = (n_tok - n_cls + 1 - n_cls % 2) // 2  # tokens at even positions after the CLS prefix
            if r_intra > num_a:
                raise ValueError(
                    f'block {i}: tome_r={tome_r} exceeds the {num_a} mergeable tokens left per frame '
                    f'({n_tok} tokens); lower tome_r or move merge_layers earlier'
                )
        else:
            r_intra, kind = min((n_tok - n_cls) // 2, int(n_tok * p_intra)), 'intra'
        plans.append(
            LayerPlan(
                index=i,
                kind=kind,
                group=group_at.get(i, 1),
                seqs_in=seqs_in,
                seqs=n_seq,
                tokens_in=tokens_in,
                r_cross=r_cross,
                attn_tokens=n_tok,
                r_intra=r_intra,
                out_tokens=n_tok - r_intra,
                protected_in=cls_in,
                protected=n_cls,
            )
        )
        n_tok -= r_intra
    return tuple(plans)


def plan_table(plans: Sequence[LayerPlan], width: int) -> str:
    """A markdown table of the plan (per video): sequences x tokens, merges and analytic GMACs per block."""
    rows = [
        '| block | type | seqs x tokens in | r_cross | attn | r_intra | out | CLS | GMACs |',
        '|' + '---|' * 9,
    ]
    for p in plans:
        rows.append(
            f'| {p.index} | {p.kind}{f" g={p.group}" if p.fuses else ""} | {p.seqs}x{p.tokens_in * p.group} '
            f'| {p.r_cross} | {p.attn_tokens} | {p.r_intra} | {p.out_tokens} | {p.protected} '
            f'| {p.macs(width) / 1e9:.3f} |'
        )
    return '\n'.join(rows)


class TempMeVideoEncoder(nn.Module):
    """TempMe video encoder over a CLIP vision tower passed at call time (weights stay in ``clip.visual``).

    Args:
        num_layers / num_tokens / width: the vision tower's shape.
        num_frames: frames per video ``T`` the plan is built for.
        **schedule: `plan_merging` keyword arguments.
    """

    def __init__(self, num_layers: int, num_tokens: int, width: int, num_frames: int, **schedule) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.plans = plan_merging(num_layers, num_frames, num_tokens, **schedule)
        # Clip temporal position embeddings: one vector per sequence entering each fusing block (zeros).
        self.temporal_pos_prompt = nn.ParameterDict(
            {str(p.index): nn.Parameter(torch.zeros(p.seqs_in, width)) for p in self.plans if p.fuses}
        )
        last = self.plans[-1]
        log.info(
            'TempMe: %d frames x %d tokens -> %d x %d output tokens per video',
            num_frames,
            num_tokens,
            last.seqs,
            last.out_tokens,
        )

    @classmethod
    def for_tower(cls, visual: VisionTransformer, num_frames: int, **schedule) -> TempMeVideoEncoder:
        """Build for the shape of ``visual``."""
        return cls(len(visual.transformer.resblocks), visual.num_tokens, visual.width, num_frames, **schedule)
