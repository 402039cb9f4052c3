"""bench data: the three loaders (today's, MDS, on the fly) run end to end on tiny clips and report ratios."""

from __future__ import annotations

import pytest

pytest.importorskip('psutil')


def test_bench_data_smoke(tmp_path, capsys):
    from tempme_composer.bench.data import main

    result = main(['--msrvtt-videos', '2', '--msrvtt-seconds', '3', '--anet-videos', '1', '--anet-seconds', '5',
                   '--replicas', '2', '--batch-size', '2', '--width', '64', '--height', '48', '--fps', '4',
                   '--workers', '1', '--loader-workers', '0', '--seconds-per-path', '0', '--repeats', '1',
                   '--storage', '--work', str(tmp_path)])
    for kind, used in (('msrvtt', 12), ('anet', 64)):
        row = result['kinds'][kind]
        assert row['frames_used'] == used and row['frames_stored_first_clip'] in (3, 5)
        assert all(v > 0 for v in row['samples_per_cpu_s'].values())
        assert row['mds_over_today'] > 0 and row['mds_over_fly'] > 0
    assert [r['format'] for r in result['storage']] == ['jpeg q75', 'jpeg q85', 'jpeg q95', 'raw uint8']
    assert set(result['h100_loader_cores']) == {'train', 'forward'}
    assert all(v['fresh'] > 0 and v['reused'] > 0 for v in result['stack_ms_per_sample'].values())
    assert 'loader cores per H100' in capsys.readouterr().out
