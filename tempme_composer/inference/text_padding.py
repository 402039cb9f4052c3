"""Cutting the padding off a batch of query token ids before the text tower, without changing a bit.

CLIP's text tower masks attention causally and reads the EOT token (Radford et al., "Learning Transferable
Visual Models From Natural Language Supervision", 2021, §2.4), so the positions after a batch's longest query
never reach an embedding. Trimming to exactly that length still moves the last bits (about 1e-7): the CPU
attention kernel sums each query row over the keys in SIMD vectors with a scalar tail, and another key length
moves the tail. Trimmed to a whole number of vectors, the masked keys only add exact zeros in the same order, so
the embeddings equal the untrimmed forward's bit for bit (docs/serving.md#padding-trim; tested over every query
length and many batch compositions). Only where that was shown: fp32 on a CPU whose vector width torch reports,
and the plain text tower (STOP's prompts change the sequence the tower reads).
"""

from __future__ import annotations

import torch

__all__ = ['simd_floats', 'trim_block', 'trimmed_ids']

#: Vector register width in bits of torch's CPU kernel builds (``torch.backends.cpu.get_cpu_capability()``).
_VECTOR_BITS = {'AVX512': 512, 'AVX2': 256, 'SVE256': 256}


def simd_floats(capability: str | None = None) -> int | None:
    """fp32 lanes per vector of the CPU kernels torch runs here (None: a build whose width is not known)."""
    bits = _VECTOR_BITS.get(capability or torch.backends.cpu.get_cpu_capability())
    if bits is None:
        return None
    return bits // torch.finfo(torch.float32).bits


def trim_block(device: torch.device, dtype: torch.dtype, prompted: bool) -> int | None:
    """The length a batch may be trimmed to a multiple of, or None where trimming is not proven exact."""
    if device.type != 'cpu' or dtype != torch.float32 or prompted:
        return None
    return simd_floats()


def trimmed_ids(ids: torch.Tensor, block: int | None) -> torch.Tensor:
    """``ids [B, L]`` cut to the batch's longest query (through its EOT, the largest id) rounded up to a
    multiple of ``block``; unchanged when ``block`` is None or nothing would be cut."""
    if block is None or ids.ndim != 2 or ids.shape[0] == 0:
        return ids
    longest = int(ids.argmax(dim=-1).max()) + 1
    length = min(ids.shape[1], -(-longest // block) * block)
    return ids[:, :length] if length < ids.shape[1] else ids
