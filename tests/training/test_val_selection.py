"""evaluation.select_on: val — best.pt chosen on a held-out split, three labelled test numbers, the seed spread.

Two tiny real runs (the demo recipe with a generated validation split, seeds 1 and 2, 2 epochs, 1 rank) are
trained once for the module; the files they write are read as a user would.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

import pytest
from demo_fixtures import REPO, DemoRun, RecordedLines

from tempme_composer.callbacks import RetrievalLogger
from tempme_composer.config import load_config
from tempme_composer.errors import ConfigError
from tempme_composer.inference.export import export_checkpoint
from tempme_composer.inference.exported import ExportError
from tempme_composer.inference.seeds import PUBLISHED_TITLE, read_seed_run, seed_summary
from tempme_composer.inference.seeds import main as seeds_main
from tempme_composer.metrics.selection import BEST_ON_TEST, LAST, PROTOCOL_TITLES, SELECTED, selection_summary
from tempme_composer.metrics.spread import spread
from tempme_composer.train import train

DEMO_VAL = REPO / 'yamls' / 'demo_val.yaml'
SEEDS = (1, 2)


def _overrides(output_dir: Path, data_root: Path, *extra: str) -> list[str]:
    """16 train / 12 test / 8 val videos, 2 batches of 8 per epoch, 2 epochs."""
    return [
        f'output_dir={output_dir}',
        f'data.demo.root={data_root}',
        'data.demo.num_train=16',
        'data.demo.num_eval=12',
        'data.demo.num_val=8',
        'epochs=2',
        'batch_size=8',
        'batch_size_val=6',
        'data.num_workers=0',
        'n_display=100',
        *extra,
    ]


@pytest.fixture(scope='module')
def val_runs(tmp_path_factory) -> dict:
    """Two runs selected on val (seeds 1 and 2) on one generated dataset; the last evaluation of each."""
    root = tmp_path_factory.mktemp('val_runs')
    runs, last, lines = {}, {}, RecordedLines()
    report_log = logging.getLogger('tempme_composer.checkpointing.selection_report')
    report_log.addHandler(lines)
    try:
        for seed in SEEDS:
            trainer = train(
                load_config(DEMO_VAL, _overrides(root / f'seed{seed}', root / 'data', f'seed={seed}'))
            )
            (logger,) = [cb for cb in trainer.state.callbacks if isinstance(cb, RetrievalLogger)]
            last[seed] = {k: dict(v) for k, v in logger.last_results.items()}
            trainer.close()
            runs[seed] = root / f'seed{seed}'
    finally:
        report_log.removeHandler(lines)
    return {'root': root, 'runs': runs, 'last': last, 'lines': lines.messages}


def test_best_is_chosen_on_val_and_three_test_numbers_are_recorded(val_runs):
    run = val_runs['runs'][1]
    best = json.loads((run / 'checkpoints' / 'best.json').read_text())
    assert best['eval_label'] == 'val' and best['config']['evaluation']['select_on'] == 'val'
    val_record = json.loads((run / 'eval-val.json').read_text())
    test_record = json.loads((run / 'eval-demo.json').read_text())
    assert val_record['results']['num_videos'] == 8 and test_record['results']['num_videos'] == 12
    selection = best['selection']
    assert selection == val_record['selection'] == test_record['selection']
    assert selection['num_evaluations'] == 2
    chosen, last, best_on_test = selection[SELECTED], selection[LAST], selection[BEST_ON_TEST]
    assert (chosen['epoch'], chosen['batch']) == (best['epoch'], best['batch'])
    assert last['epoch'] == 2 and last['results'] == test_record['results'] == val_runs['last'][1]['demo']
    assert best_on_test['results']['t2v_R@1'] >= max(chosen['results']['t2v_R@1'], last['results']['t2v_R@1'])
    gap = selection['optimism']['t2v_R@1']
    assert gap == best_on_test['results']['t2v_R@1'] - chosen['results']['t2v_R@1'] >= 0
    for key in (SELECTED, LAST, BEST_ON_TEST):
        assert any(line.startswith(PROTOCOL_TITLES[key]) for line in val_runs['lines']), key


def test_the_selected_test_numbers_are_those_of_best_pt_evaluated_again(val_runs, tmp_path):
    """The honest number is exactly what evaluating best.pt on the test split gives."""
    run = val_runs['runs'][1]
    chosen = json.loads((run / 'checkpoints' / 'best.json').read_text())['selection'][SELECTED]
    trainer = train(
        load_config(
            DEMO_VAL,
            _overrides(
                tmp_path / 'eval',
                val_runs['root'] / 'data',
                'do_train=false',
                'do_eval=true',
                f'resume={run / "checkpoints" / "best.pt"}',
                'evaluation.select_on=test',
            ),
        )
    )
    (logger,) = [cb for cb in trainer.state.callbacks if isinstance(cb, RetrievalLogger)]
    results = dict(logger.last_results['demo'])
    trainer.close()
    assert results == chosen['results']


def test_model_card_leads_with_the_val_selected_test_numbers(val_runs, tmp_path, capsys):
    folders = [str(val_runs['runs'][s]) for s in SEEDS]
    assert seeds_main([*folders, '--json']) == 0
    (tmp_path / 'seeds.json').write_text(capsys.readouterr().out)
    run = val_runs['runs'][1]
    export = export_checkpoint(
        run / 'checkpoints' / 'best.pt', tmp_path / 'export', seed_spread=tmp_path / 'seeds.json'
    )
    card = (export / 'README.md').read_text()
    assert 'selected as the best text→video R@1 on a held-out **validation** split' in card
    for key in (SELECTED, LAST, BEST_ON_TEST):
        assert f'| {PROTOCOL_TITLES[key]} |' in card, key
    honest = seed_summary(folders)['protocols'][PROTOCOL_TITLES[SELECTED]]['t2v_R@1']
    assert 'Over 2 runs of this recipe with seeds 1, 2' in card
    assert f'{honest["mean"]:.1f} ± {honest["std"]:.1f} ({honest["min"]:.1f}–{honest["max"]:.1f})' in card
    (tmp_path / 'bad.json').write_text('{"runs": []}')
    with pytest.raises(
        ExportError, match=r'--seed-spread: .*bad.json: expected the JSON of tempme-seeds --json'
    ):
        export_checkpoint(
            run / 'checkpoints' / 'best.pt', tmp_path / 'export2', seed_spread=tmp_path / 'bad.json'
        )


def test_seed_summary_is_the_spread_of_each_run(val_runs, capsys):
    folders = [val_runs['runs'][s] for s in SEEDS]
    summary = seed_summary(folders)
    assert [r['seed'] for r in summary['runs']] == list(SEEDS)
    values = [
        json.loads((f / 'checkpoints' / 'best.json').read_text())['selection'][SELECTED]['results']['t2v_R@1']
        for f in folders
    ]
    honest = summary['protocols'][PROTOCOL_TITLES[SELECTED]]['t2v_R@1']
    assert honest['mean'] == pytest.approx(statistics.mean(values))
    assert honest['std'] == pytest.approx(statistics.stdev(values))
    assert (honest['min'], honest['max'], honest['n']) == (min(values), max(values), 2)
    assert seeds_main([str(f) for f in folders]) == 0
    table = capsys.readouterr().out
    assert PROTOCOL_TITLES[BEST_ON_TEST] in table and 't2v_R@1' in table and '±' in table
    assert seeds_main([str(f) for f in folders] + ['--json']) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(summary))


def test_seed_summary_refuses_runs_of_different_configs(val_runs, demo_run: DemoRun, capsys):
    assert seeds_main([str(val_runs['runs'][1]), str(demo_run.run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('tempme-seeds: error: the runs differ in ') and 'evaluation.select_on' in err
    assert 'data.demo.num_val' in err and 'Traceback' not in err
    assert seeds_main([str(val_runs['runs'][1]), str(val_runs['runs'][1])]) == 2
    assert 'several runs have seed 1' in capsys.readouterr().err


def test_a_published_mode_run_reads_best_and_last(demo_run: DemoRun):
    run = read_seed_run(demo_run.run)
    best = json.loads((demo_run.run / 'checkpoints' / 'best.json').read_text())
    assert run['protocols'][PUBLISHED_TITLE]['t2v_R@1'] == best['results']['t2v_R@1']
    assert run['protocols'][PROTOCOL_TITLES[LAST]]['t2v_R@1'] == demo_run.results['t2v_R@1']


def test_select_on_val_without_a_validation_split_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        load_config(REPO / 'yamls' / 'demo.yaml', ['evaluation.select_on=val'])
    message = str(e.value)
    assert (
        "'evaluation.select_on=val'" in message and 'data.val' in message and 'data.demo.num_val' in message
    )
    with pytest.raises(ConfigError, match='data.demo.num_val'):
        load_config(DEMO_VAL, ['data.demo.num_val=-1'])


def test_selection_summary_keeps_the_first_of_equal_scores():
    history = [
        {'epoch': e, 'batch': 2 * e, 'results': {'t2v_R@1': r, 't2v_R@5': 50.0, 't2v_R@10': 90.0}}
        for e, r in ((1, 10.0), (2, 30.0), (3, 30.0), (4, 20.0))
    ]
    summary = selection_summary(history, (1, 2), 't2v_R@1')
    assert summary[BEST_ON_TEST]['epoch'] == 2 and summary[LAST]['epoch'] == 4
    assert summary[SELECTED]['epoch'] == 1 and summary['optimism']['t2v_R@1'] == 20.0
    assert selection_summary(history, None, 't2v_R@1')[SELECTED] is None


def test_spread_is_mean_sample_std_and_range():
    values = [10.0, 12.5, 11.0]
    assert spread(values) == {
        'mean': pytest.approx(statistics.mean(values)),
        'std': pytest.approx(statistics.stdev(values)),
        'min': 10.0,
        'max': 12.5,
        'n': 3,
    }
    assert spread([4.0])['std'] == 0.0
