"""Token merging primitives for TempMe: bipartite soft matching with a protected prefix, size-weighted
merging, cross-clip regrouping and the proportional-attention bias. Pure, vectorised functions.

References: ToMe (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023) and timm — the
``(merge closure, merge_wavg)`` shape; the exact TempMe rules (docs/reference/tempme.md#bipartite-merging)
differ from ToMe's code:

- positions ``0..p-1`` (the CLS tokens) are protected: never matched, copied to the output front;
- the rest split by **absolute** index parity: A = even positions, B = odd positions;
- the ``r`` A tokens with the highest best-cosine to B are summed into their best B token; the kept A tokens
  stay in their original order; output order is ``[protected, kept A, B]``.

Layouts: tokens ``[S, N, C]`` (S sequences, N tokens), sizes ``[S, N, 1]`` (how many original tokens a token
stands for), metric ``[S, N, c]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    'Merge',
    'bipartite_soft_matching',
    'do_nothing',
    'merge_wavg',
    'proportional_attention_bias',
    'regroup_sequences',
]

Merge = Callable[[torch.Tensor], torch.Tensor]  # [S, N, C] -> [S, N - r, C], summing merged tokens


def do_nothing(x: torch.Tensor) -> torch.Tensor:
    """The identity merge (``r == 0``)."""
    return x


def bipartite_soft_matching(metric: torch.Tensor, r: int, protected: int) -> Merge:
    """Plan one merge of ``r`` tokens per sequence and return the closure that applies it (sum reduction).

    Args:
        metric: ``[S, N, c]`` matching features (cosine similarity; rows are L2-normalised here, no epsilon,
            under no-grad).
        r: tokens removed per sequence.
        protected: length ``p`` of the prefix that is never merged (the CLS tokens).

    Returns:
        ``merge(x)``: ``[S, N, C] -> [S, N - r, C]``; a source token's features are *added* to its target's
        (use `merge_wavg` for the size-weighted average). Differentiable in ``x``.

    Raises:
        ValueError: ``r`` is negative or larger than the A set (``|A|`` mergeable tokens at even positions).
    """
    S, N, _ = metric.shape
    if r == 0:
        return do_nothing
    a_start = protected + (protected % 2)  # first even position >= p
    b_start = protected + 1 - (protected % 2)  # first odd position >= p
    num_a = max(0, (N - a_start + 1) // 2)
    if not 0 < r <= num_a:
        raise ValueError(
            f'cannot merge r={r} of {N} tokens with {protected} protected: only {num_a} are in set A'
        )
    with torch.no_grad():
        m = metric / metric.norm(dim=-1, keepdim=True)
        a, b = m[:, a_start::2], m[:, b_start::2]  # [S, |A|, c], [S, |B|, c]
        scores = a @ b.transpose(-1, -2)  # [S, |A|, |B|]
        node_max, node_idx = scores.max(dim=-1)  # [S, |A|]
        edge_idx = node_max.argsort(dim=-1, descending=True)  # [S, |A|]
        src_idx = edge_idx[:, :r, None]  # [S, r, 1] A tokens merged away
        unm_idx = edge_idx[:, r:].sort(dim=-1).values[..., None]  # [S, |A| - r, 1] kept A, original order
        dst_idx = node_idx[..., None].gather(dim=1, index=src_idx)  # [S, r, 1] their B targets

    def merge(x: torch.Tensor) -> torch.Tensor:
        C = x.shape[-1]
        prefix = x[:, :protected]  # [S, p, C]
        xa, xb = x[:, a_start::2], x[:, b_start::2]  # [S, |A|, C], [S, |B|, C]
        unm = xa.gather(dim=1, index=unm_idx.expand(-1, -1, C))  # [S, |A| - r, C]
        src = xa.gather(dim=1, index=src_idx.expand(-1, -1, C))  # [S, r, C]
        xb = xb.scatter_reduce(1, dst_idx.expand(-1, -1, C), src, reduce='sum')  # [S, |B|, C]
        return torch.cat([prefix, unm, xb], dim=1)  # [S, N - r, C]

    return merge


def merge_wavg(
    merge: Merge, x: torch.Tensor, size: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge: ``x' = merge(x·s) / merge(s)``, ``s' = merge(s)``.

    Args:
        merge: from `bipartite_soft_matching`.
        x: ``[S, N, C]``.
        size: ``[S, N, 1]`` or None (all ones).

    Returns:
        ``(x', size')`` of shapes ``[S, N - r, C]`` and ``[S, N - r, 1]``.
    """
    if size is None:
        size = x.new_ones(*x.shape[:2], 1)
    x = merge(x * size)
    size = merge(size)
    return x / size, size


def regroup_sequences(x: torch.Tensor, group: int, protected: int) -> torch.Tensor:
    """Fuse every ``group`` consecutive sequences into one (TempMe's cross-clip step).

    docs/reference/tempme.md#clipme-block, item 1.2.

    The fused sequence is the protected prefixes of the members in member order, then the non-protected
    tokens of member 0, 1, ..., ``group - 1``.

    Args:
        x: ``[S, N, C]`` with ``S`` divisible by ``group``.
        group: sequences per fused sequence.
        protected: prefix length of each member.

    Returns:
        ``[S / group, group * N, C]``.
    """
    S, N, C = x.shape
    if S % group:
        raise ValueError(f'{S} sequences cannot be fused in groups of {group}')
    x = x.view(S // group, group, N, C)  # [S/g, g, N, C]
    prefix = x[:, :, :protected].reshape(S // group, group * protected, C)  # [S/g, g*p, C]
    rest = x[:, :, protected:].reshape(S // group, group * (N - protected), C)  # [S/g, g*(N-p), C]
    return torch.cat([prefix, rest], dim=1)


def proportional_attention_bias(size: torch.Tensor | None) -> torch.Tensor | None:
    """Additive attention-logit bias ``log(size)`` per key: ``[S, N, 1] -> [S, 1, 1, N]``; None stays None."""
    if size is None:
        return None
    return size.log().transpose(1, 2).unsqueeze(1)  # [S, 1, N] -> [S, 1, 1, N]
