"""Benchmarks, one entry: ``python -m tempme_composer.bench NAME [ARGS...]`` (``--help`` after NAME).

NAME: ``efficiency`` (the four variants' parameters, tokens, GMAC, videos/s, memory, MFU), ``conv`` (exact ways
to run STOP's pixel Conv3d stack), ``tempme`` (per-block tokens, GMAC and videos/s: meanP vs TempMe),
``metrics`` (evaluation time and memory), ``data`` (video storage and loader throughput), ``search`` (exact vs
HNSW search over 10k-1M indexed videos) and ``index-memory`` (peak RSS of ``tempme-index`` on a huge-frame clip
and a two-hour video, whole-video vs bounded decoding), ``index-throughput`` (windows/s and hours of video per
hour of ``tempme-index --window`` on a long video, decoding vs forward, loader cores per GPU), ``search-startup``
(opening a 1M-row index and answering a first query: JSON-lines vs SQLite metadata), ``serve`` (queries/s,
latency and memory of ``tempme-serve`` under 1-32 concurrent clients, micro-batching on vs off). Shared timing,
table and JSON helpers are in `tempme_composer.bench.common`.
"""

from __future__ import annotations

BENCHMARKS = {
    'efficiency': 'tempme_composer.bench.efficiency',
    'conv': 'tempme_composer.bench.conv',
    'tempme': 'tempme_composer.bench.tempme',
    'metrics': 'tempme_composer.bench.metrics',
    'data': 'tempme_composer.bench.data',
    'search': 'tempme_composer.bench.search',
    'index-memory': 'tempme_composer.bench.index_memory',
    'index-throughput': 'tempme_composer.bench.index_throughput',
    'search-startup': 'tempme_composer.bench.search_startup',
    'serve': 'tempme_composer.bench.serve',
}

__all__ = ['BENCHMARKS']
