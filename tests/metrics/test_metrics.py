"""Retrieval metrics: the worked cases of docs/reference/evaluation-protocol.md (T1–T14, T19) in every tie
mode, property checks against naive re-implementations of the research code's two metric paths, chunking, DSL
and the Metric."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tempme_composer.metrics import (
    METRIC_NAMES,
    TIE_MODES,
    NonFiniteScoreError,
    RankCounts,
    dual_softmax,
    embedding_metrics,
    embedding_rank_counts,
    format_log_lines,
    rank_counts,
    retrieval_ranks,
    similarity_metrics,
    summarize_counts,
    summarize_ranks,
)
from tempme_composer.metrics.retrieval import RetrievalMetrics

# ---------------------------------------------------------------------------------------------------------------
# Naive references, written from docs/reference/evaluation-protocol.md (metric definitions, tie modes,
# group-max rule), deliberately loop-based / full-matrix.
# ---------------------------------------------------------------------------------------------------------------


def ref_compute_metrics(x: np.ndarray) -> dict:
    """`compute_metrics`: rows are queries, ground truth on the diagonal, every tied position collected."""
    neg_sorted = np.sort(-x, axis=1)
    diff = neg_sorted - (-np.diag(x))[:, None]
    ranks = np.where(diff == 0)[1]
    out = {f'R@{k}': 100.0 * float(np.sum(ranks < k)) / len(ranks) for k in (1, 5, 10)}
    out.update({'MdR': float(np.median(ranks)) + 1, 'MnR': float(np.mean(ranks)) + 1})
    return {**out, 'n': len(ranks), 'ranks': ranks + 1}


def ref_tensor_t2v(sim: np.ndarray, counts: list[int]) -> dict:
    """`tensor_text_to_video_metrics`: pad caption groups with -inf, double argsort, lower median, float32 R@K."""
    V, smax = len(counts), max(counts)
    t = torch.full((V, smax, V), -math.inf)
    start = 0
    for v, c in enumerate(counts):
        t[v, :c] = torch.from_numpy(sim[start : start + c]).float()
        start += c
    t = t.permute(1, 0, 2)  # (Smax, V, V)
    order = torch.argsort(torch.argsort(t, dim=-1, descending=True), dim=-1)
    diag = torch.diagonal(order, dim1=1, dim2=2)  # (Smax, V)
    keep = torch.isfinite(torch.diagonal(t, dim1=1, dim2=2))
    ranks = diag[keep]
    out = {f'R@{k}': float(torch.sum(ranks < k) * 100 / len(ranks)) for k in (1, 5, 10)}
    out.update({'MdR': float(torch.median(ranks)) + 1, 'MnR': float(np.mean(ranks.numpy())) + 1})
    return out


def ref_group_max(sim: np.ndarray, text_to_video: np.ndarray, V: int) -> np.ndarray:
    """[u, v] = best score of any caption of video v against video u (the V2T matrix, rows = video queries)."""
    return np.stack([sim[text_to_video == v].max(axis=0) for v in range(V)], axis=1)


def naive_counts(sim: np.ndarray, text_to_video: np.ndarray) -> tuple[list, list]:
    """(greater, ties) per query by loops: T2V per caption, V2T per video over caption groups."""
    Q, V = sim.shape
    t2v = [
        (sum(sim[q] > sim[q, text_to_video[q]]), sum(sim[q] == sim[q, text_to_video[q]])) for q in range(Q)
    ]
    g = ref_group_max(sim, text_to_video, V)
    v2t = [(sum(g[u] > g[u, u]), sum(g[u] == g[u, u])) for u in range(V)]
    return t2v, v2t


def naive_metrics(sim: np.ndarray, text_to_video: np.ndarray, tie_mode: str) -> dict:
    """Pessimistic/optimistic metrics from the loop counts and numpy's median."""
    out = {}
    for name, counts in zip(('t2v', 'v2t'), naive_counts(sim, text_to_video), strict=True):
        ranks = np.array([g + t if tie_mode == 'pessimistic' else g + 1 for g, t in counts])
        out.update({f'{name}_R@{k}': 100.0 * np.mean(ranks <= k) for k in (1, 5, 10)})
        out.update({f'{name}_MdR': float(np.median(ranks)), f'{name}_MnR': float(np.mean(ranks))})
    return out


def metrics(rows, labels=None, tie_mode='pessimistic', **kwargs) -> dict:
    sim = torch.tensor(rows, dtype=torch.float64)
    labels = torch.arange(sim.shape[0]) if labels is None else torch.tensor(labels)
    return similarity_metrics(sim, labels, tie_mode, **kwargs)


def assert_summary(results: dict, prefix: str, expected: dict, tol: float = 1e-4) -> None:
    for k, v in expected.items():
        assert results[f'{prefix}{k}'] == pytest.approx(v, abs=tol), (prefix, k, results[f'{prefix}{k}'], v)


def unit(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


PERFECT = {'R@1': 100, 'R@5': 100, 'R@10': 100, 'MdR': 1, 'MnR': 1}

# ---------------------------------------------------------------------------------------------------------------
# Worked cases (docs/reference/evaluation-protocol.md#worked-cases)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('tie_mode', TIE_MODES)
def test_t1_identity_t2_reversed_t3_off_diagonal_ties(tie_mode):
    res = metrics(np.eye(4), tie_mode=tie_mode)
    assert_summary(res, 't2v_', PERFECT)
    assert_summary(res, 'v2t_', PERFECT)
    reversed_ = [[0.0 if i == j else 10.0 + j for j in range(12)] for i in range(12)]
    res = metrics(reversed_, tie_mode=tie_mode)
    for d in ('t2v_', 'v2t_'):
        assert_summary(res, d, {'R@1': 0, 'R@5': 0, 'R@10': 0, 'MdR': 12, 'MnR': 12})
    res = metrics(1 - np.eye(4), tie_mode=tie_mode)
    for d in ('t2v_', 'v2t_'):
        assert_summary(res, d, {'R@1': 0, 'R@5': 100, 'R@10': 100, 'MdR': 4, 'MnR': 4})


T4 = [
    [0.9, 0.1, 0.2, 0.3, 0.0],
    [0.8, 0.7, 0.1, 0.0, 0.2],
    [0.6, 0.5, 0.4, 0.1, 0.0],
    [0.1, 0.2, 0.3, 0.95, 0.0],
    [0.5, 0.6, 0.7, 0.8, 0.1],
]


@pytest.mark.parametrize('tie_mode', TIE_MODES)
def test_t4_mixed(tie_mode):
    res = metrics(T4, tie_mode=tie_mode)
    assert_summary(res, 't2v_', {'R@1': 40, 'R@5': 100, 'R@10': 100, 'MdR': 2, 'MnR': 2.4})
    assert_summary(res, 'v2t_', {'R@1': 60, 'R@5': 100, 'MdR': 1, 'MnR': 1.4})
    t2v, v2t = rank_counts(torch.tensor(T4), torch.arange(5))
    assert t2v.ranks(tie_mode).tolist() == [1, 2, 3, 1, 5] and v2t.ranks(tie_mode).tolist() == [1, 1, 2, 1, 2]


def test_t5_median_conventions():
    rows = [[0.9, 0, 0, 0], [0.8, 0.7, 0, 0], [0.8, 0.9, 0.7, 0], [0.9, 0.8, 0.7, 0.1]]  # ranks 1, 2, 3, 4
    for tie_mode in TIE_MODES:
        assert_summary(metrics(rows, tie_mode=tie_mode), 't2v_', {'R@1': 25, 'MnR': 2.5, 'MdR': 2.5})
    # the multi-sentence tensor path (same matrix as V=4, Smax=1) uses the lower median
    assert_summary(metrics(rows, tie_mode='reference', multi_sentence=True), 't2v_', {'R@1': 25, 'MdR': 2.0})
    assert ref_tensor_t2v(np.array(rows), [1, 1, 1, 1])['MdR'] == 2.0
    assert summarize_ranks(torch.tensor([1, 2, 3, 4]), median='lower')['MdR'] == 2.0
    assert summarize_ranks(torch.tensor([1, 2, 3, 4]))['MdR'] == 2.5


@pytest.mark.parametrize(
    'tie_mode, expected',
    [
        ('reference', {'R@1': 50, 'MdR': 1.5, 'MnR': 1.75}),  # collected ranks 1, 2, 1, 3 (n = 4)
        ('optimistic', {'R@1': 200 / 3, 'MdR': 1, 'MnR': 5 / 3}),  # 1, 1, 3
        ('pessimistic', {'R@1': 100 / 3, 'MdR': 2, 'MnR': 2.0}),  # 2, 1, 3
    ],
)
def test_t6_tie_with_the_ground_truth(tie_mode, expected):
    rows = [[0.5, 0.5, 0.1], [0.2, 0.9, 0.3], [0.4, 0.6, 0.3]]
    assert_summary(metrics(rows, tie_mode=tie_mode), 't2v_', expected)
    t2v, _ = rank_counts(torch.tensor(rows), torch.arange(3))
    assert t2v.ranks('reference').tolist() == [1, 2, 1, 3]
    assert ref_compute_metrics(np.array(rows))['n'] == 4


@pytest.mark.parametrize('tie_mode', TIE_MODES)
@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf])
def test_t7_non_finite_scores_raise_naming_the_query(tie_mode, bad):
    rows = [[bad, 0.1, 0.2], [0.2, 0.9, 0.3], [0.4, 0.6, 0.7]]  # on the diagonal
    with pytest.raises(NonFiniteScoreError, match='caption query 0'):
        metrics(rows, tie_mode=tie_mode)
    rows = [[0.2, 0.9, 0.3], [0.5, bad, 0.2], [0.4, 0.6, 0.7]]  # off the diagonal (numpy: worst, torch: best)
    with pytest.raises(ValueError, match='caption query 1'):
        metrics(rows, tie_mode=tie_mode)
    text = torch.eye(3)
    text[2, 1] = bad
    with pytest.raises(ValueError, match='caption query 2'):
        embedding_metrics(text, torch.eye(3), torch.arange(3), tie_mode, dsl=True)
    video = torch.eye(3)
    video[1, 0] = bad
    with pytest.raises(ValueError, match='video query 1'):
        embedding_metrics(torch.eye(3), video, torch.arange(3), tie_mode)


T8_ROWS = [
    [0.9, 0.1, 0.2],
    [0.3, 0.5, 0.4],
    [0.2, 0.8, 0.1],
    [0.1, 0.2, 0.3],
    [0.6, 0.2, 0.5],
    [0.7, 0.9, 0.1],
]
T8_LABELS = [0, 0, 1, 2, 2, 2]


def test_t8_multi_sentence_uneven_groups():
    t2v, v2t = rank_counts(torch.tensor(T8_ROWS), torch.tensor(T8_LABELS))
    assert t2v.ranks().tolist() == [1, 3, 1, 1, 2, 3] and v2t.ranks().tolist() == [1, 2, 1]
    ref = metrics(T8_ROWS, T8_LABELS, 'reference')
    assert_summary(ref, 't2v_', {'R@1': 50.0, 'R@5': 100, 'MdR': 1.0, 'MnR': 11 / 6})
    assert_summary(ref, 'v2t_', {'R@1': 200 / 3, 'R@5': 100, 'MdR': 1.0, 'MnR': 4 / 3})
    tensor_path = ref_tensor_t2v(np.array(T8_ROWS), [2, 1, 3])
    assert_summary(ref, 't2v_', tensor_path, tol=1e-12)
    np.testing.assert_allclose(
        ref_group_max(np.array(T8_ROWS), np.array(T8_LABELS), 3),
        [[0.9, 0.2, 0.7], [0.5, 0.8, 0.9], [0.4, 0.1, 0.5]],
    )
    pess = metrics(T8_ROWS, T8_LABELS, 'pessimistic')
    assert pess['t2v_MdR'] == 1.5  # our default: numpy's averaging median


@pytest.mark.parametrize('tie_mode', TIE_MODES)
def test_t9_video_to_text_ranks_caption_groups(tie_mode):
    rows, labels = [[0.5, 0.1], [0.9, 0.8], [0.7, 0.6]], [0, 1, 1]
    res = metrics(rows, labels, tie_mode)
    assert_summary(res, 't2v_', {'R@1': 100 / 3, 'MdR': 2.0, 'MnR': 5 / 3})
    # a per-caption V2T would rank video 0 third
    assert_summary(res, 'v2t_', {'R@1': 50, 'MdR': 1.5, 'MnR': 1.5})
    if tie_mode == 'reference':
        assert res['t2v_R@1'] == 33.33333206176758  # the tensor path's float32 arithmetic, exactly
    else:
        assert res['t2v_R@1'] == 100 / 3


@pytest.mark.parametrize('tie_mode', TIE_MODES)
def test_t10_single_video(tie_mode):
    for rows, labels in (([[0.3], [0.1], [0.7]], [0, 0, 0]), ([[0.2]], [0])):
        res = metrics(rows, labels, tie_mode)
        assert_summary(res, 't2v_', PERFECT)
        assert_summary(res, 'v2t_', PERFECT)
    metric = RetrievalMetrics(tie_mode=tie_mode, dsl=True)
    metric.update(
        torch.randn(3, 4), torch.randn(1, 4), torch.full((3,), 7), torch.arange(3), torch.tensor([7])
    )
    metric.compute()
    for prefix in ('t2v_', 'v2t_', 'dsl_t2v_', 'dsl_v2t_'):
        assert_summary(metric.results, prefix, PERFECT)


@pytest.mark.parametrize('n', [7, 50])
def test_t11_single_sentence_matches_compute_metrics(n):
    x = np.random.default_rng(n).standard_normal((n, n))
    t2v, v2t = rank_counts(torch.from_numpy(x), torch.arange(n))
    assert t2v.ranks().tolist() == [1 + int(np.sum(x[i] > x[i, i])) for i in range(n)]
    for tie_mode in TIE_MODES:
        res = similarity_metrics(torch.from_numpy(x), torch.arange(n), tie_mode)
        for prefix, ref in (('t2v_', ref_compute_metrics(x)), ('v2t_', ref_compute_metrics(x.T))):
            assert_summary(res, prefix, {k: ref[k] for k in METRIC_NAMES}, tol=1e-9)


def test_t12_multi_sentence_matches_both_reference_paths():
    counts = [3, 1, 4, 2]
    labels = np.repeat(np.arange(4), counts)
    x = np.random.default_rng(12).standard_normal((len(labels), 4))
    t2v, v2t = rank_counts(torch.from_numpy(x), torch.from_numpy(labels))
    assert t2v.ranks().tolist() == [1 + int(np.sum(x[s] > x[s, labels[s]])) for s in range(len(labels))]
    g = ref_group_max(x, labels, 4)
    assert v2t.ranks().tolist() == [1 + int(np.sum(g[u] > g[u, u])) for u in range(4)]
    res = similarity_metrics(torch.from_numpy(x), torch.from_numpy(labels), 'reference')
    assert_summary(res, 't2v_', ref_tensor_t2v(x, counts), tol=1e-9)
    assert_summary(
        res, 'v2t_', {k: v for k, v in ref_compute_metrics(g).items() if k in METRIC_NAMES}, tol=1e-9
    )


@pytest.mark.parametrize('tie_mode', TIE_MODES)
def test_t13_order_invariance_and_explicit_labels(tie_mode):
    g = torch.Generator().manual_seed(13)
    V, D = 9, 6
    labels = torch.cat([torch.arange(V), torch.randint(0, V, (14,), generator=g)])
    video = unit(V, D, g)
    text = F.normalize(video[labels] + torch.randn(len(labels), D, generator=g), dim=-1)
    text[5] = text[0]  # a duplicate caption: ties in video→text
    base = embedding_metrics(text, video, labels, tie_mode, dsl=True)
    tp, vp = torch.randperm(len(labels), generator=g), torch.randperm(V, generator=g)
    new_column = torch.argsort(vp)  # video vp[j] now sits at column j
    permuted = embedding_metrics(text[tp], video[vp], new_column[labels[tp]], tie_mode, dsl=True)
    assert permuted.keys() == base.keys()
    for k in base:
        assert permuted[k] == pytest.approx(base[k], abs=1e-9), k


def test_t14_dual_softmax():
    x = torch.tensor([[10.0, 9.0], [9.5, 1.0]])
    torch.testing.assert_close(
        dual_softmax(x, scale=1.0), torch.tensor([[6.2246, 8.9970], [3.5866, 0.000335]]), atol=1e-4, rtol=1e-3
    )
    t2v, _ = rank_counts(x, torch.arange(2))
    assert t2v.ranks().tolist() == [1, 2]
    t2v, _ = rank_counts(dual_softmax(x, scale=1.0), torch.arange(2))
    assert t2v.ranks().tolist() == [2, 2]
    assert similarity_metrics(dual_softmax(x, scale=1.0), torch.arange(2))['t2v_R@1'] == 0


@pytest.mark.parametrize(
    'tie_mode, t2v, v2t',
    [
        # reference: 5 V2T ranks 1, 2, 1, 2, 1
        ('reference', {'R@1': 200 / 3, 'MdR': 1, 'MnR': 4 / 3}, {'R@1': 60, 'MdR': 1, 'MnR': 1.4}),
        ('optimistic', {'R@1': 200 / 3, 'MdR': 1, 'MnR': 4 / 3}, {'R@1': 100, 'MdR': 1, 'MnR': 1}),
        ('pessimistic', {'R@1': 200 / 3, 'MdR': 1, 'MnR': 4 / 3}, {'R@1': 100 / 3, 'MdR': 2, 'MnR': 5 / 3}),
    ],
)
def test_t19_duplicate_captions(tie_mode, t2v, v2t):
    rows = [[0.9, 0.8, 0.1], [0.9, 0.8, 0.1], [0.2, 0.3, 0.7]]
    res = metrics(rows, tie_mode=tie_mode)
    assert_summary(res, 't2v_', t2v)
    assert_summary(res, 'v2t_', v2t)
    _, counts = rank_counts(torch.tensor(rows), torch.arange(3))
    assert counts.ranks('reference').tolist() == [1, 2, 1, 2, 1]
    assert ref_compute_metrics(np.array(rows).T)['ranks'].tolist() == [1, 2, 1, 2, 1]


# ---------------------------------------------------------------------------------------------------------------
# Properties, chunking, memory-bounded summaries
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('seed', range(4))
def test_tie_heavy_matrices_match_naive_references(seed):
    rng = np.random.default_rng(seed)
    n = 11
    x = rng.integers(0, 4, (n, n)).astype(np.float64)  # ties everywhere
    for tie_mode in ('pessimistic', 'optimistic'):
        res = similarity_metrics(torch.from_numpy(x), torch.arange(n), tie_mode, chunk_size=3)
        naive = naive_metrics(x, np.arange(n), tie_mode)
        assert res == pytest.approx(naive, abs=1e-12)
    res = similarity_metrics(torch.from_numpy(x), torch.arange(n), 'reference', chunk_size=4)
    for prefix, ref in (('t2v_', ref_compute_metrics(x)), ('v2t_', ref_compute_metrics(x.T))):
        assert_summary(res, prefix, {k: ref[k] for k in METRIC_NAMES}, tol=1e-12)
    t2v, v2t = rank_counts(torch.from_numpy(x), torch.arange(n))
    assert t2v.ranks('reference').tolist() == ref_compute_metrics(x)['ranks'].tolist()
    assert v2t.ranks('reference').tolist() == ref_compute_metrics(x.T)['ranks'].tolist()
    labels = rng.integers(0, 5, 3 * n)
    labels[:5] = np.arange(5)
    y = rng.integers(0, 3, (3 * n, 5)).astype(np.float64)
    for tie_mode in ('pessimistic', 'optimistic'):
        res = similarity_metrics(torch.from_numpy(y), torch.from_numpy(labels), tie_mode, chunk_size=2)
        assert res == pytest.approx(naive_metrics(y, labels, tie_mode), abs=1e-12)
    res = similarity_metrics(torch.from_numpy(y), torch.from_numpy(labels), 'reference')
    ref = ref_compute_metrics(ref_group_max(y, labels, 5))
    assert_summary(res, 'v2t_', {k: ref[k] for k in METRIC_NAMES}, tol=1e-12)


def test_reference_summary_of_a_collapsed_model_is_exact_without_expanding():
    n = 300  # every score equal: each row collects ranks 1..300, 90,000 ranks in all
    counts = RankCounts(torch.zeros(n, dtype=torch.long), torch.full((n,), n))
    s = summarize_counts(counts, 'reference')
    assert s == pytest.approx({'R@1': 100 / n, 'R@5': 500 / n, 'R@10': 1000 / n, 'MdR': 150.5, 'MnR': 150.5})
    assert summarize_counts(counts, 'pessimistic') == {'R@1': 0, 'R@5': 0, 'R@10': 0, 'MdR': n, 'MnR': n}
    assert summarize_counts(counts, 'optimistic')['R@1'] == 100
    huge = RankCounts(torch.zeros(100_000, dtype=torch.long), torch.full((100_000,), 100_000))
    assert summarize_counts(huge, 'reference')['MdR'] == 50_000.5  # 1e10 collected ranks, never materialised


def test_collapsed_embeddings_are_not_a_perfect_score():
    text = torch.ones(4, 2) / math.sqrt(2)
    t2v, v2t = retrieval_ranks(text, text.clone(), torch.arange(4))
    assert t2v.tolist() == [4, 4, 4, 4] and v2t.tolist() == [4, 4, 4, 4]
    t2v, v2t = retrieval_ranks(text, text.clone(), torch.arange(4), tie_mode='optimistic')
    assert t2v.tolist() == [1, 1, 1, 1] and v2t.tolist() == [1, 1, 1, 1]
    t2v, _ = retrieval_ranks(text, text.clone(), torch.arange(4), tie_mode='reference')
    assert sorted(t2v.tolist()) == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4]


@pytest.mark.parametrize('dsl', [False, True])
def test_embedding_path_is_chunk_independent_and_equals_the_matrix_path(dsl):
    g = torch.Generator().manual_seed(0)
    V, D = 17, 8
    labels = torch.cat([torch.arange(V), torch.randint(0, V, (23,), generator=g)])[
        torch.randperm(40, generator=g)
    ]
    video = unit(V, D, g)
    text = F.normalize(video[labels] + 0.8 * torch.randn(len(labels), D, generator=g), dim=-1)
    sim = (text.double() @ video.double().T).float()
    matrix = dual_softmax(sim.double(), 100.0) if dsl else sim
    expected = rank_counts(matrix, labels)
    for chunk_size in (1, 5, None):
        got = embedding_rank_counts(text, video, labels, chunk_size=chunk_size, dsl=dsl)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a.greater, b.greater)
            torch.testing.assert_close(a.ties, b.ties)
    naive = naive_metrics(matrix.numpy(), labels.numpy(), 'pessimistic')
    assert similarity_metrics(matrix, labels) == pytest.approx(naive, abs=1e-12)


@pytest.mark.parametrize('layout', ['equal', 'uneven', 'skewed'])
def test_video_to_text_group_max_equals_the_loops_for_every_caption_layout(layout):
    """Equal and mildly uneven caption counts take the dense gather path, a few videos with most captions the
    scatter fallback (ranking._v2t_counts); all must give the loops' counts, ties included."""
    g = torch.Generator().manual_seed(1)
    V = 12
    extra = {'equal': torch.arange(V).repeat(3),  # 4 captions each
             'uneven': torch.randint(0, V, (30,), generator=g),
             'skewed': torch.zeros(60, dtype=torch.long)}[layout]  # video 0 owns 61 of 72 captions
    labels = torch.cat([torch.arange(V), extra])[torch.randperm(V + len(extra), generator=g)]
    sim = torch.randint(0, 6, (len(labels), V), generator=g).float() / 5  # coarse scores: many exact ties
    t2v, v2t = rank_counts(sim, labels, chunk_size=5)
    want_t2v, want_v2t = naive_counts(sim.numpy(), labels.numpy())
    assert list(zip(v2t.greater.tolist(), v2t.ties.tolist(), strict=True)) == want_v2t
    assert list(zip(t2v.greater.tolist(), t2v.ties.tolist(), strict=True)) == want_t2v


def test_labels_are_validated():
    with pytest.raises(ValueError, match='no caption'):
        rank_counts(torch.rand(3, 3), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match='text_to_video'):
        rank_counts(torch.rand(3, 3), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match='tie_mode'):
        similarity_metrics(torch.rand(2, 2), torch.arange(2), 'average')


# ---------------------------------------------------------------------------------------------------------------
# RetrievalMetrics and log lines
# ---------------------------------------------------------------------------------------------------------------


def _fill(metric: RetrievalMetrics, text, video, text_vid, text_cap, order) -> None:
    for v in order:
        rows = (text_vid == v).nonzero().flatten()
        metric.update(
            text[rows], video[v : v + 1], text_vid[rows] + 100, text_cap[rows], torch.tensor([v + 100])
        )


@pytest.mark.parametrize('tie_mode', TIE_MODES)
def test_metric_drops_padding_duplicates_orders_by_id_and_reports_dsl(tie_mode):
    g = torch.Generator().manual_seed(1)
    V, D = 6, 4
    video = unit(V, D, g)
    text = unit(2 * V, D, g)
    text_vid = torch.arange(V).repeat_interleave(2)
    text_cap = torch.tensor([0, 1] * V)
    expected = embedding_metrics(text, video, text_vid, tie_mode, dsl=True)

    metric = RetrievalMetrics(tie_mode=tie_mode, dsl=True, chunk_size=4)
    _fill(metric, text, video, text_vid, text_cap, [3, 4, 5, 0, 1, 2, 2])  # video 2 repeated, as padding does
    r1 = metric.compute()
    res = metric.results
    assert res['num_videos'] == V and res['num_texts'] == 2 * V
    assert float(r1) == pytest.approx(expected['t2v_R@1'])
    assert {k: v for k, v in res.items() if not k.startswith('num_')} == pytest.approx(expected)
    assert metric.video_ids.tolist() == list(range(100, 100 + V))
    assert metric.text_ids.tolist() == [[100 + v, c] for v in range(V) for c in (0, 1)]

    other = RetrievalMetrics(tie_mode=tie_mode, dsl=True)
    _fill(other, text, video, text_vid, text_cap, [5, 0, 0, 2, 1, 4, 3])
    other.compute()
    assert other.results == res  # batch order and duplicates do not matter

    torch.testing.assert_close(metric.similarity_matrix(), text @ video.T)
    per = metric.per_query(topk=3)
    assert (
        per['video_index'].tolist() == (text_vid + 100).tolist()
        and per['caption_index'].tolist() == text_cap.tolist()
    )
    t2v, _ = retrieval_ranks(
        text, video, text_vid, tie_mode='optimistic' if tie_mode == 'optimistic' else 'pessimistic'
    )
    assert per['rank'].tolist() == t2v.tolist() and per['ties'].tolist() == [1] * (2 * V)
    assert per['topk_video_index'].tolist() == ((text @ video.T).topk(3, dim=1).indices + 100).tolist()

    metric.reset()
    assert metric.results == {} and metric.text_ids is None
    with pytest.raises(RuntimeError, match='compute'):
        metric.per_query()


def test_metric_without_dsl_has_only_raw_keys_and_names_a_bad_caption():
    metric = RetrievalMetrics()
    text = torch.eye(3)
    metric.update(
        text, torch.eye(3), torch.tensor([4, 5, 6]), torch.tensor([0, 0, 0]), torch.tensor([4, 5, 6])
    )
    metric.compute()
    assert sorted(metric.results) == sorted(
        [f'{d}_{k}' for d in ('t2v', 'v2t') for k in METRIC_NAMES] + ['num_texts', 'num_videos']
    )
    bad = RetrievalMetrics()
    text[1, 2] = math.nan
    bad.update(text, torch.eye(3), torch.tensor([4, 5, 6]), torch.tensor([0, 0, 0]), torch.tensor([4, 5, 6]))
    with pytest.raises(ValueError, match=r'caption query 1, caption \(video_index=5, caption_index=0\)'):
        bad.compute()


def test_log_lines_follow_the_reference_format():
    res = {f'{p}{d}_{k}': 1.0 for p in ('', 'dsl_') for d in ('t2v', 'v2t') for k in METRIC_NAMES}
    lines = format_log_lines(res)
    assert lines[0] == 'Text-to-Video:' and lines[2] == 'Video-to-Text:'
    assert ' (metric) >>>  R@1: 1.0 - R@5: 1.0 - R@10: 1.0 - Median R: 1.0 - Mean R: 1.0' in lines[1]
    assert 'V2T$R@1: 1.0 - V2T$R@5: 1.0 - V2T$R@10: 1.0 - V2T$Median R: 1.0 - V2T$Mean R: 1.0' in lines[3]
    dsl = format_log_lines(res, prefix='dsl_')
    assert dsl[0] == 'DSL Text-to-Video:' and dsl[2] == 'DSL Video-to-Text:' and dsl[1] == lines[1]
