"""Retrieval metrics: pure ranking (`ranking`) and summaries (`summary`); moment retrieval (temporal IoU,
temporal NMS, VCMR recall) in `moments`. All pure torch: the torchmetrics Metric training evaluates with is
`tempme_composer.metrics.retrieval.RetrievalMetrics`, imported from there so that search and indexing never load
torchmetrics.

Conventions (ties, medians, group-level video→text, DSL) are documented in `tempme_composer.metrics.ranking`.
"""

from tempme_composer.metrics.moments import (
    MOMENT_IOUS,
    MOMENT_KS,
    NMS_THRESHOLD,
    MomentRanks,
    best_temporal_iou,
    moment_ranks,
    moment_retrieval_metrics,
    summarize_moment_ranks,
    temporal_iou,
    temporal_nms,
)
from tempme_composer.metrics.ranking import (
    TIE_MODES,
    NonFiniteScoreError,
    RankCounts,
    TieMode,
    caption_topk,
    dual_softmax,
    embedding_rank_counts,
    rank_counts,
    retrieval_ranks,
)
from tempme_composer.metrics.summary import (
    METRIC_NAMES,
    embedding_metrics,
    format_log_lines,
    retrieval_metrics,
    similarity_metrics,
    summarize_counts,
    summarize_ranks,
)

__all__ = [
    'METRIC_NAMES',
    'MOMENT_IOUS',
    'MOMENT_KS',
    'NMS_THRESHOLD',
    'MomentRanks',
    'TIE_MODES',
    'NonFiniteScoreError',
    'RankCounts',
    'TieMode',
    'best_temporal_iou',
    'caption_topk',
    'dual_softmax',
    'embedding_metrics',
    'embedding_rank_counts',
    'format_log_lines',
    'moment_ranks',
    'moment_retrieval_metrics',
    'rank_counts',
    'retrieval_metrics',
    'retrieval_ranks',
    'similarity_metrics',
    'summarize_counts',
    'summarize_moment_ranks',
    'summarize_ranks',
    'temporal_iou',
    'temporal_nms',
]
