"""Cutting the padding off a batch of query token ids before the text tower, without changing a bit.

CLIP's text tower masks attention causally and reads the EOT token (Radford et al., "Learning Transferable
Visual Models From Natural Language Supervision", 2021, §2.4), so the positions after a batch's longest query
never reach an embedding. Trimming to exactly that length still moves the last bits (about 1e-7): the CPU
attention sums each query row over the keys in vector-wide steps, and another key length changes how the
steps and their tail fall. Cut to a multiple of `TRIM_MULTIPLE` tokens, the masked keys only add exact zeros in
the same order, and the embeddings equal the untrimmed forward's bit for bit under both of torch's x86 CPU
dispatches (docs/serving.md#padding-trim, tested over every query length and many batch compositions). Only
where that was shown: fp32 on those dispatches, and the plain text tower (STOP's prompts change the sequence
the tower reads).
"""

from __future__ import annotations

import torch

__all__ = ['TESTED_DISPATCHES', 'TRIM_MULTIPLE', 'trim_block', 'trimmed_ids']

#: torch's CPU kernel dispatches (``torch.backends.cpu.get_cpu_capability()``) the trim was shown exact under.
TESTED_DISPATCHES = frozenset({'AVX2', 'AVX512'})
#: Token lengths are cut to a multiple of this: the smallest found exact under both dispatches (8, one AVX2
#: vector of fp32, is not: docs/serving.md#padding-trim).
TRIM_MULTIPLE = 16


def trim_block(
    device: torch.device, dtype: torch.dtype, prompted: bool, dispatch: str | None = None
) -> int | None:
    """The multiple a batch's length may be cut to, or None where the cut is not shown exact."""
    dispatch = dispatch or torch.backends.cpu.get_cpu_capability()
    if device.type != 'cpu' or dtype != torch.float32 or prompted or dispatch not in TESTED_DISPATCHES:
        return None
    return TRIM_MULTIPLE


def trimmed_ids(ids: torch.Tensor, block: int | None) -> torch.Tensor:
    """``ids [B, L]`` cut to the batch's longest query (through its EOT, the largest id) rounded up to a
    multiple of ``block``; unchanged when ``block`` is None or nothing would be cut."""
    if block is None or ids.ndim != 2 or ids.shape[0] == 0:
        return ids
    longest = int(ids.argmax(dim=-1).max()) + 1
    length = min(ids.shape[1], -(-longest // block) * block)
    return ids[:, :length] if length < ids.shape[1] else ids
