"""Retrieval ranking against a naive reference: ties, multi-sentence, duplicates, NaN."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tempme_composer.metrics import RetrievalMetrics, format_log_lines, retrieval_ranks, summarize_ranks


def naive_ranks(sim: np.ndarray, text_to_video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loop-based reference: rank = number of candidates scoring at least the ground truth."""
    Q, V = sim.shape
    t2v = np.array([sum(sim[q, v] >= sim[q, text_to_video[q]] for v in range(V)) for q in range(Q)])
    v2t = []
    for v in range(V):
        own = [q for q in range(Q) if text_to_video[q] == v]
        v2t.append(min(sum(sim[q2, v] >= sim[q, v] for q2 in range(Q)) for q in own))
    return t2v, np.array(v2t)


def test_matches_naive_reference_multi_sentence_uneven_and_chunked():
    g = torch.Generator().manual_seed(0)
    V, D = 17, 8
    text_to_video = torch.cat([torch.arange(V), torch.randint(0, V, (23,), generator=g)])
    video = F.normalize(torch.randn(V, D, generator=g), dim=-1)
    text = F.normalize(video[text_to_video] + 0.8 * torch.randn(len(text_to_video), D, generator=g), dim=-1)
    t2v, v2t = retrieval_ranks(text, video, text_to_video, chunk_size=5)
    ref_t2v, ref_v2t = naive_ranks((text @ video.T).numpy(), text_to_video.numpy())
    np.testing.assert_array_equal(t2v.numpy(), ref_t2v)
    np.testing.assert_array_equal(v2t.numpy(), ref_v2t)


def test_ties_with_the_ground_truth_count_against_it():
    video = torch.eye(3)
    text = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # caption 0 ties videos 0 and 1
    t2v, _ = retrieval_ranks(text, video, torch.arange(3))
    assert t2v.tolist() == [2, 1, 1]


def test_identical_embeddings_are_not_a_perfect_score():
    text = torch.ones(4, 2) / math.sqrt(2)
    video = torch.ones(4, 2) / math.sqrt(2)
    t2v, v2t = retrieval_ranks(text, video, torch.arange(4))
    assert t2v.tolist() == [4, 4, 4, 4] and v2t.tolist() == [4, 4, 4, 4]


def test_summary_uses_numpy_median_convention():
    s = summarize_ranks(torch.tensor([1, 2, 3, 4]))
    assert s['MdR'] == 2.5 and s['MnR'] == 2.5 and s['R@1'] == 25.0 and s['R@5'] == 100.0


def test_nan_score_names_the_query():
    text = torch.eye(3)
    text[1, 0] = float('nan')
    with pytest.raises(ValueError, match='caption query 1'):
        retrieval_ranks(text, torch.eye(3), torch.arange(3))


def test_metric_drops_padding_duplicates_and_orders_by_id():
    g = torch.Generator().manual_seed(1)
    V, D = 6, 4
    video = F.normalize(torch.randn(V, D, generator=g), dim=-1)
    text = F.normalize(torch.randn(2 * V, D, generator=g), dim=-1)
    text_vid = torch.arange(V).repeat_interleave(2)
    text_cap = torch.tensor([0, 1] * V)
    expected_t2v, expected_v2t = retrieval_ranks(text, video, text_vid)

    metric = RetrievalMetrics()
    order = [3, 4, 5, 0, 1, 2, 2]  # shuffled batches, video 2 repeated as streaming padding does
    for v in order:
        rows = (text_vid == v).nonzero().flatten()
        metric.update(text[rows], video[v : v + 1], text_vid[rows], text_cap[rows], torch.tensor([v]))
    r1 = metric.compute()
    res = metric.results
    assert res['num_videos'] == V and res['num_texts'] == 2 * V
    assert float(r1) == pytest.approx(summarize_ranks(expected_t2v)['R@1'])
    assert res['v2t_MnR'] == pytest.approx(summarize_ranks(expected_v2t)['MnR'])


def test_log_lines_follow_the_reference_format():
    res = {f'{d}_{k}': 1.0 for d in ('t2v', 'v2t') for k in ('R@1', 'R@5', 'R@10', 'MdR', 'MnR')}
    lines = format_log_lines(res)
    assert lines[0] == 'Text-to-Video:' and lines[2] == 'Video-to-Text:'
    assert ' (metric) >>>  R@1: 1.0 - R@5: 1.0 - R@10: 1.0 - Median R: 1.0 - Mean R: 1.0' in lines[1]
    assert 'V2T$R@1: 1.0 - V2T$R@5: 1.0 - V2T$R@10: 1.0 - V2T$Median R: 1.0 - V2T$Mean R: 1.0' in lines[3]
