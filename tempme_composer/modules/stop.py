"""STOP (Spatial–Temporal dynamic prOmPting, CVPR 2025) on top of DGL's prompts: the prompt parameters, the
deep text prompts and DGL's global–local attention (docs/reference/stop.md). Written from that description,
no reference code.

- `STOP` owns the shared `PromptGenerator` and the ``global_prompt`` tokens (names contain ``prompt``);
  the `TemporalPrompt` lives at ``clip.visual.TemporalPrompt`` and the bottleneck adapters at
  ``...resblocks.N.LoRA`` (`tempme_composer.modules.adapters`), as docs/reference/stop.md#freezing-by-name
  names them.
- `encode_text_with_prompts`: ``[SOT, prefix prompts, tokens 1..L-1]`` with the prefix prompts replaced
  before every block (VPT-deep). The reference also appends ``N_txt/2`` postfix prompts after the text
  slots; under the causal mask no real token attends to them (docs/reference/stop.md#text-prompts item 4:
  perturbing them changes nothing), so they are not run through the tower — identical output, 20 % fewer
  text tokens.

The video path through the tower (prompts, DGL's global–local attention, merging, pooling) is
`tempme_composer.modules.video_tower`.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from tempme_composer.clip.towers import TextTransformer
from tempme_composer.modules.prompt_generator import PromptGenerator, uniform_prompt_bound

__all__ = ['OUTPUT_TYPES', 'STOP', 'encode_text_with_prompts']

log = logging.getLogger(__name__)

OUTPUT_TYPES = (
    'global_prompt0',  # first global prompt (STOP's default)
    'average_global_prompt',
    'average_frame_cls_token',
    'average_global_prompt_and_frame_cls_token',
    'frame_cls_mean',  # masked mean of the normalised frame-CLS embeddings (CLIP4Clip meanP / TempMe)
)


class STOP(nn.Module):
    """STOP's prompt parameters: the shared generator and the global visual prompts.

    Args:
        generator: the `PromptGenerator` (knows T, widths and layer counts).
        global_prompts: ``N_g`` video-level prompt tokens (uniform init, VPT bound of the patch size).
        patch_size: for the init bound.
        output_type: how a video embedding is read out (`OUTPUT_TYPES`).
    """

    def __init__(
        self,
        generator: PromptGenerator,
        *,
        global_prompts: int,
        patch_size: int,
        output_type: str = 'global_prompt0',
    ) -> None:
        super().__init__()
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f'STOP output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}')
        self.prompt_generator = generator
        bound = uniform_prompt_bound(patch_size, generator.vision_width)
        self.global_prompt = nn.Parameter(torch.empty(1, global_prompts, generator.vision_width).uniform_(-bound, bound))
        self.output_type = output_type

    @property
    def num_frames(self) -> int:
        return self.prompt_generator.num_frames

    @property
    def local_prompts(self) -> int:
        return self.prompt_generator.local_prompts

    @property
    def global_prompts(self) -> int:
        return self.global_prompt.shape[1]


def encode_text_with_prompts(text: TextTransformer, ids: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Text embeddings (unnormalised) with deep prefix prompts: ``[B, L]`` ids → ``[B, output_dim]``.

    Args:
        text: the CLIP text tower (its blocks may carry adapters / LoRA).
        ids: token ids, EOT = the row's largest id.
        prompts: ``[text_layers, N_txt, D_t]``; the first ``N_txt/2`` are the prefix prompts.
    """
    blocks = text.transformer.resblocks
    if prompts.shape[0] != len(blocks):
        raise ValueError(f'{prompts.shape[0]} layers of text prompts for a {len(blocks)}-block text tower')
    B = ids.shape[0]
    half = prompts.shape[1] // 2
    x = text.embed(ids)  # positional embeddings are added before the prompts are inserted
    prompts = prompts.to(x.dtype)
    for i, block in enumerate(blocks):
        prefix = prompts[i, :half].expand(B, half, -1)
        rest = x[:, 1:] if i == 0 else x[:, 1 + half :]
        x = block(torch.cat([x[:, :1], prefix, rest], dim=1), causal=True)
    x = text.ln_final(x)
    eot = ids.argmax(dim=-1) + half  # shifted by the prefix prompts
    return x[torch.arange(B, device=x.device), eot] @ text.text_projection

