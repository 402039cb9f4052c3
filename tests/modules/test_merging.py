"""Token-merging primitives: parity/order rules, size-weighted sums, proportional attention."""

import pytest
import torch

from tempme_composer.clip.towers import Attention
from tempme_composer.modules.merging import (
    bipartite_soft_matching,
    merge_wavg,
    proportional_attention_bias,
    regroup_sequences,
)


def _metric(rows):
    return torch.tensor(rows, dtype=torch.float64)[None]  # [1, N, 2]


def test_ab_split_by_absolute_parity_and_output_order_p1():
    # p=1: A = positions 2,4,6 ; B = 1,3,5. Token 4 equals token 5 -> the one merged.
    m = _metric([[1, 0], [0, 1], [1, 1], [1, -1], [-1, 2], [-1, 2.0001], [3, -1]])
    x = torch.arange(7, dtype=torch.float64)[None, :, None]
    merge = bipartite_soft_matching(m, r=1, protected=1)
    out, size = merge_wavg(merge, x)
    # [protected 0] ++ kept A (2, 6) in order ++ B (1, 3, 5+4)
    assert out.flatten().tolist() == [0, 2, 6, 1, 3, 4.5]
    assert size.flatten().tolist() == [1, 1, 1, 1, 1, 2]


def test_ab_split_by_absolute_parity_p2():
    # p=2: A = positions 2,4,6 (even), B = 3,5. Token 6 equals token 3.
    m = _metric([[1, 0], [0, 1], [1, 1], [4, -1], [-1, 2], [1, 5], [4, -1.0001]])
    x = torch.arange(7, dtype=torch.float64)[None, :, None]
    out, size = merge_wavg(bipartite_soft_matching(m, r=1, protected=2), x)
    assert out.flatten().tolist() == [0, 1, 2, 4, 4.5, 5]
    assert size.flatten().tolist() == [1, 1, 1, 1, 2, 1]


def test_merge_preserves_size_weighted_sum_and_is_vectorised_over_sequences():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 20, 8, generator=g, dtype=torch.float64)
    size = torch.randint(1, 4, (5, 20, 1), generator=g).double()
    merge = bipartite_soft_matching(x, r=6, protected=3)
    out, new_size = merge_wavg(merge, x, size)
    assert out.shape == (5, 14, 8) and new_size.shape == (5, 14, 1)
    torch.testing.assert_close((out * new_size).sum(1), (x * size).sum(1))
    torch.testing.assert_close(new_size.sum(1), size.sum(1))
    torch.testing.assert_close(out[:, :3], x[:, :3])  # protected prefix untouched
    # the same as merging each sequence alone
    for s in range(5):
        one, _ = merge_wavg(bipartite_soft_matching(x[s : s + 1], 6, 3), x[s : s + 1], size[s : s + 1])
        torch.testing.assert_close(one, out[s : s + 1])


def test_merging_identical_tokens_with_proportional_attention_leaves_other_outputs_unchanged():
    torch.manual_seed(0)
    attn = Attention(16, 2).double().eval()
    torch.nn.init.normal_(attn.in_proj_bias)
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    x[0, 4] = x[0, 3]  # A token 4 duplicates B token 3
    merge = bipartite_soft_matching(x, r=1, protected=1)
    merged, size = merge_wavg(merge, x)
    assert size.max() == 2 and merged.shape[1] == 8
    with torch.no_grad():
        full = attn(x)  # [1, 9, 16]
        small = attn(merged, attn_bias=proportional_attention_bias(size))  # [1, 8, 16]
        plain = attn(merged)
    expected, _ = merge_wavg(merge, full)  # the duplicate pair has equal outputs too
    torch.testing.assert_close(small, expected)
    assert (plain - expected).abs().max() > 1e-6  # without the log-size bias the outputs do change


def test_regroup_puts_all_cls_first_then_members_in_order():
    x = torch.arange(2 * 3 * 4).view(6, 4, 1)  # 6 sequences of 4 tokens, protected 1
    out = regroup_sequences(x, group=3, protected=1)
    assert out.shape == (2, 12, 1)
    assert out[0, :, 0].tolist() == [0, 4, 8, 1, 2, 3, 5, 6, 7, 9, 10, 11]
    with pytest.raises(ValueError, match='groups of 4'):
        regroup_sequences(x, group=4, protected=1)


def test_impossible_merge_count_is_rejected():
    with pytest.raises(ValueError, match='set A'):
        bipartite_soft_matching(torch.randn(1, 5, 3), r=3, protected=1)
    assert bipartite_soft_matching(torch.randn(1, 5, 3), r=0, protected=1)(torch.ones(1, 5, 2)).shape == (
        1,
        5,
        2,
    )
