"""Moment retrieval metrics: temporal IoU, temporal NMS and VCMR R@K, checked on hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest

from tempme_composer.metrics import NonFiniteScoreError
from tempme_composer.metrics.moments import (
    best_temporal_iou,
    moment_ranks,
    moment_retrieval_metrics,
    temporal_iou,
    temporal_nms,
)


def test_temporal_iou_by_hand():
    iou = temporal_iou([[0, 10], [2, 4], [3, 3]], [[5, 15], [0, 10], [10, 20], [3, 3]])
    # [0,10] vs [5,15]: ∩ 5, ∪ 15 -> 1/3; vs itself 1; vs [10,20]: touching, ∩ 0 -> 0; vs a point: 0
    # [2,4]  vs [5,15]: 0; vs [0,10]: ∩ 2, ∪ 10 -> 0.2
    # a point has no length: IoU 0 even against the same point
    np.testing.assert_allclose(iou, [[1 / 3, 1.0, 0.0, 0.0], [0.0, 0.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert temporal_iou(np.zeros((0, 2)), [[0, 1]]).shape == (0, 1)


def test_several_annotations_count_against_the_best_matching_one():
    # [0,10] vs [5,15] -> 1/3, vs [0,8]: ∩ 8, ∪ 10 -> 0.8: the prediction scores 0.8
    # [6,9]  vs [5,15]: ∩ 3, ∪ 10 -> 0.3, vs [0,8]: ∩ 2, ∪ 9 -> 2/9: scores 0.3
    np.testing.assert_allclose(best_temporal_iou([[0, 10], [6, 9]], [[5, 15], [0, 8]]), [0.8, 0.3])
    np.testing.assert_array_equal(best_temporal_iou([[0, 10]], np.zeros((0, 2))), [0.0])


def test_bad_segments_are_refused():
    with pytest.raises(ValueError, match='ends before it starts'):
        temporal_iou([[5, 4]], [[0, 1]])
    with pytest.raises(ValueError, match='finite'):
        temporal_iou([[0, np.nan]], [[0, 1]])
    with pytest.raises(ValueError, match=r'\[N, 2\]'):
        temporal_iou([[0, 1, 2]], [[0, 1]])


def test_temporal_nms_by_hand():
    segments = [[0, 10], [1, 11], [20, 30], [0, 5]]
    scores = [0.9, 0.8, 0.7, 0.6]
    # visit 0 (kept); 1: tIoU with 0 = 9/11 = 0.82 > 0.5, dropped; 2: no overlap, kept;
    # 3: tIoU with 0 = 5/10 = 0.5, not above the threshold, kept
    np.testing.assert_array_equal(temporal_nms(segments, scores, 0.5), [0, 2, 3])
    # at 0.4, [0, 5] goes too (0.5 > 0.4)
    np.testing.assert_array_equal(temporal_nms(segments, scores, 0.4), [0, 2])
    # moments of another video never suppress each other
    np.testing.assert_array_equal(temporal_nms(segments, scores, 0.5, groups=[0, 1, 0, 0]), [0, 1, 2, 3])
    # equal scores are visited in index order: the lower index is kept
    np.testing.assert_array_equal(temporal_nms([[1, 11], [0, 10]], [0.5, 0.5]), [0])
    np.testing.assert_array_equal(temporal_nms([[0, 10], [1, 11]], [0.4, 0.5]), [1])


def _as_embeddings(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Captions one-hot, moments = the score matrix transposed: text @ moments.T reproduces ``scores`` exactly."""
    scores = np.asarray(scores, dtype=np.float32)
    return np.eye(len(scores), dtype=np.float32), np.ascontiguousarray(scores.T)


# Two videos: A (0) holds m0 [0,10], m1 [1,11], m2 [10,20]; B (1) holds m3 [0,10], m4 [5,15].
VIDEO = [0, 0, 0, 1, 1]
SEGMENTS = [[0, 10], [1, 11], [10, 20], [0, 10], [5, 15]]
SCORES = [
    # caption 0, in A at [0, 8]
    [0.9, 0.95, 0.1, 0.92, 0.3],
    # caption 1, in B, annotated twice: [4, 14] and [6, 9]; m3 and m4 tie at 0.6
    [0.5, 0.2, 0.8, 0.6, 0.6],
]
TRUTH_VIDEO = [0, 1]
TRUTH = [[[0, 8]], [[4, 14], [6, 9]]]


def test_vcmr_worked_example():
    """Caption 0. NMS in A: m1 (0.95) first; m0 overlaps it at 9/11 = 0.82 > 0.5 and is dropped; m2 overlaps
    at 1/19, kept. B: m3 kept, m4 (tIoU 1/3 with m3) kept. Survivors: m1 .95, m3 .92, m4 .3, m2 .1.
    m1 vs [0, 8]: ∩ 7, ∪ 11 -> 0.64: correct at tIoU 0.3 and 0.5 at rank 1; at 0.7 nothing is correct
    (m0 had 0.8 but NMS removed it; m2 has 0) -> missed at every K.

    Caption 1. NMS in A: m2 .8, m0 .5 (no overlap) kept, m1 dropped by m0 (0.82). B: m3 and m4 tie at 0.6,
    m3 visited first, m4 kept (1/3). Survivors: m2 .8, m3 .6, m4 .6, m0 .5.
    m4 [5,15] vs [4,14]: ∩ 9, ∪ 11 -> 0.82 (vs [6,9]: 0.3): correct at 0.3, 0.5, 0.7.
    m3 [0,10] vs [4,14]: 6/14 = 0.43 (vs [6,9]: 0.3): correct at 0.3 only.
    Best correct score 0.6, and three survivors score >= 0.6 (the tie counts against): rank 3 at every
    threshold (an optimistic rank would be 2). Missed at R@1, found at R@5 and R@10.

    Videos (best moment): caption 0: A .95 > B .92 -> rank 1; caption 1: A .8 > B .6 -> rank 2.
    """
    text, moments = _as_embeddings(SCORES)
    ranks = moment_ranks(text, moments, VIDEO, SEGMENTS, TRUTH_VIDEO, TRUTH)
    np.testing.assert_array_equal(ranks.moment, [[1, 1, 11], [3, 3, 3]])  # 11 = not within the top 10
    np.testing.assert_array_equal(ranks.video, [1, 2])
    m = moment_retrieval_metrics(text, moments, VIDEO, SEGMENTS, TRUTH_VIDEO, TRUTH)
    assert m == {
        'moment_R@1_tIoU0.3': 50.0, 'moment_R@5_tIoU0.3': 100.0, 'moment_R@10_tIoU0.3': 100.0,
        'moment_R@1_tIoU0.5': 50.0, 'moment_R@5_tIoU0.5': 100.0, 'moment_R@10_tIoU0.5': 100.0,
        'moment_R@1_tIoU0.7': 0.0, 'moment_R@5_tIoU0.7': 50.0, 'moment_R@10_tIoU0.7': 50.0,
        'video_R@1': 50.0, 'video_R@5': 100.0, 'video_R@10': 100.0,
        'num_captions': 2.0, 'num_moments': 5.0, 'num_videos': 2.0,
    }


def test_the_right_segment_in_the_wrong_video_does_not_count():
    # caption 0 scored as above but its ground truth put in B: m3 [0,10] is in B with tIoU 0.8 vs [0,8];
    # survivors m1 .95 (A), m3 .92 (B): rank 2 at 0.3/0.5/0.7; m4 [5,15] vs [0,8]: 3/15 = 0.2, no help
    text, moments = _as_embeddings(SCORES[:1])
    ranks = moment_ranks(text, moments, VIDEO, SEGMENTS, [1], TRUTH[:1])
    np.testing.assert_array_equal(ranks.moment, [[2, 2, 2]])
    np.testing.assert_array_equal(ranks.video, [2])


def test_all_scores_equal_is_the_worst_case():
    # a collapsed model: every moment scores 0. Visited in row order, NMS keeps m0, m2 (A; m1 dropped by m0),
    # m3, m4 (B): 4 survivors, all tied. Caption 0's m0 (0.8 vs [0, 8]) and caption 1's m4 (0.82) are correct
    # at every threshold, yet at rank 4, not 1; the videos tie too: rank 2
    text, moments = _as_embeddings(np.zeros((2, 5)))
    ranks = moment_ranks(text, moments, VIDEO, SEGMENTS, TRUTH_VIDEO, TRUTH)
    np.testing.assert_array_equal(ranks.moment, [[4, 4, 4], [4, 4, 4]])
    np.testing.assert_array_equal(ranks.video, [2, 2])


def test_non_finite_scores_and_bad_inputs_are_refused():
    text, moments = _as_embeddings(SCORES)
    text[1, 1] = np.inf  # caption 1's embedding (a NaN in a moment would reach every caption: 0 * NaN)
    with pytest.raises(NonFiniteScoreError, match='caption query 1'):
        moment_ranks(text, moments, VIDEO, SEGMENTS, TRUTH_VIDEO, TRUTH)
    text, moments = _as_embeddings(SCORES)
    with pytest.raises(ValueError, match='no ground-truth segment'):
        moment_ranks(text, moments, VIDEO, SEGMENTS, TRUTH_VIDEO, [[[0, 8]], []])
    with pytest.raises(ValueError, match='video 2 has no moment'):
        moment_ranks(text, moments, VIDEO, SEGMENTS, [0, 2], TRUTH)
    with pytest.raises(ValueError, match='ends before it starts'):
        moment_ranks(text, moments, VIDEO, SEGMENTS, TRUTH_VIDEO, [[[8, 0]], [[4, 14]]])


def _reference_ranks(scores, video, segments, truth_video, truth, ious, max_k, nms):
    """Straightforward VCMR: full per-video NMS of every caption, then pessimistic ranks of the survivors."""
    video, segments = np.asarray(video), np.asarray(segments, dtype=np.float64)
    out = np.full((len(scores), len(ious)), max_k + 1)
    video_rank = np.zeros(len(scores), dtype=np.int64)
    for q, s in enumerate(np.asarray(scores, dtype=np.float32)):
        kept = []
        for r in sorted(range(len(s)), key=lambda r: (-s[r], r)):
            if all(video[k] != video[r] or temporal_iou(segments[[k]], segments[[r]])[0, 0] <= nms for k in kept):
                kept.append(r)
        kept = np.asarray(kept)
        iou = temporal_iou(segments[kept], truth[q]).max(1)
        for j, m in enumerate(ious):
            ok = kept[(video[kept] == truth_video[q]) & (iou >= m)]
            if ok.size:
                out[q, j] = min(max_k + 1, int((s[kept] >= s[ok].max()).sum()))
        best = np.array([s[video == v].max() for v in range(video.max() + 1)])
        video_rank[q] = int((best >= best[truth_video[q]]).sum())
    return out, video_rank


@pytest.mark.parametrize('levels', [None, 4])
def test_matches_a_full_nms_reference_with_and_without_ties(levels):
    """40 videos of 1-5 moments (top-k shortcut active: 11 x 5 = 55 < 120 rows), scores continuous or
    rounded to 4 levels (ties everywhere, also past the shortcut's depth); several caption chunk sizes."""
    rng = np.random.default_rng(3)
    per_video = rng.integers(1, 6, size=40)
    video = np.repeat(np.arange(40), per_video)
    starts = rng.uniform(0, 50, size=len(video)).round(1)
    segments = np.stack([starts, starts + rng.uniform(1, 20, size=len(video)).round(1)], 1)
    scores = rng.uniform(-1, 1, size=(30, len(video))).astype(np.float32)
    if levels:
        scores = (np.round(scores * levels) / levels).astype(np.float32)
    truth_video = rng.integers(0, 40, size=30)
    truth = []
    for v in truth_video:
        rows = np.flatnonzero(video == v)
        picked = segments[rng.choice(rows, size=min(2, len(rows)), replace=False)]
        truth.append(picked + rng.uniform(-2, 2, size=picked.shape).clip(-picked[:, :1], None))
    truth = [np.sort(t, axis=1) for t in truth]
    want_moment, want_video = _reference_ranks(scores, video, segments, truth_video, truth, (0.3, 0.5, 0.7), 10, 0.5)
    text, moments = _as_embeddings(scores)
    for chunk in (1 << 24, len(video), 7):  # all captions at once, one per block, odd blocks of rows
        got = moment_ranks(text, moments, video, segments, truth_video,
                           truth, chunk_elements=chunk)
        np.testing.assert_array_equal(got.moment, want_moment)
        np.testing.assert_array_equal(got.video, want_video)
    assert (want_moment <= 10).any() and (want_moment > 10).any()  # the example exercises both outcomes
