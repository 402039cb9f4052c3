"""Checkpoint selection on a validation split, summarised as three labelled test numbers.

The published recipes evaluate the test split every epoch (or every 150 steps) and report the best of those
looks; with ``evaluation.select_on: val`` the checkpoint is chosen on a held-out split instead, and the test
split is still evaluated at each evaluation so all three protocols can be read off one run
(docs/evaluation.md#selecting-on-a-validation-split):

- ``test_of_selected_on_val``: the test numbers of the evaluation whose validation score was best (the honest
  number; evaluation is deterministic, so they equal a re-evaluation of ``best.pt`` on test);
- ``test_of_last``: the test numbers of the last evaluation (the last checkpoint);
- ``best_test_over_all_evaluations``: the best test numbers over all evaluations (the optimistic protocol the
  papers report).

Pure functions over plain dicts: the training callback records, the model card reads.
"""

from __future__ import annotations

from typing import Any

from tempme_composer.metrics.summary import format_log_lines

__all__ = [
    'SELECTED',
    'LAST',
    'BEST_ON_TEST',
    'PROTOCOL_TITLES',
    'selection_summary',
    'format_selection_lines',
]

SELECTED = 'test_of_selected_on_val'
LAST = 'test_of_last'
BEST_ON_TEST = 'best_test_over_all_evaluations'

#: How each number is labelled in the log, the JSON files and the model card.
PROTOCOL_TITLES = {
    SELECTED: 'test, checkpoint selected on val (honest)',
    LAST: 'test, last checkpoint',
    BEST_ON_TEST: 'test, best over all evaluations (optimistic, as published tables report)',
}

#: The recall figures whose optimism (best over all evaluations minus selected on val) is reported.
_GAP_KEYS = ('t2v_R@1', 't2v_R@5', 't2v_R@10', 'v2t_R@1', 'v2t_R@5', 'v2t_R@10')


def selection_summary(
    test_history: list[dict[str, Any]], selected_at: tuple[int, int] | None, metric: str
) -> dict[str, Any]:
    """The three labelled test records of a run.

    Args:
        test_history: one ``{'epoch', 'batch', 'results'}`` per evaluation of the test split, in order.
        selected_at: ``(epoch, batch)`` of the evaluation chosen on the validation split; None before one.
        metric: the results key both selections maximise (text→video R@1); the first of equal maxima wins,
            as `BestCheckpoint` keeps the first.

    Returns:
        ``{'selected_on': 'val', 'metric', 'num_evaluations', SELECTED, LAST, BEST_ON_TEST, 'optimism'}``;
        ``SELECTED`` is None while no validation score was recorded, ``optimism`` is best-over-all minus
        selected-on-val for each recall.
    """
    if not test_history:
        raise ValueError('no test evaluation was recorded')
    best = test_history[0]
    for record in test_history[1:]:
        if record['results'][metric] > best['results'][metric]:
            best = record
    selected = None
    if selected_at is not None:
        matches = [r for r in test_history if (r['epoch'], r['batch']) == tuple(selected_at)]
        selected = matches[-1] if matches else None
    optimism = (
        {k: best['results'][k] - selected['results'][k] for k in _GAP_KEYS if k in best['results']}
        if selected is not None
        else {}
    )
    return {
        'selected_on': 'val',
        'metric': metric,
        'num_evaluations': len(test_history),
        SELECTED: selected,
        LAST: test_history[-1],
        BEST_ON_TEST: best,
        'optimism': optimism,
    }


def format_selection_lines(summary: dict[str, Any]) -> list[str]:
    """The three labelled results, each a title line (which checkpoint, its epoch and batch) and the research
    codebases' two result lines."""
    lines = [f'selection on val by {summary["metric"]}; test evaluated {summary["num_evaluations"]} time(s):']
    for key in (SELECTED, LAST, BEST_ON_TEST):
        record = summary[key]
        if record is None:
            lines.append(f'{PROTOCOL_TITLES[key]}: none yet (no validation score recorded)')
            continue
        lines.append(f'{PROTOCOL_TITLES[key]}, epoch {record["epoch"]}, batch {record["batch"]}:')
        lines += format_log_lines(record['results'])
    gap = summary.get('optimism') or {}
    if 't2v_R@1' in gap:
        lines.append(
            f'optimism of best-over-all-evaluations over selected-on-val: text→video R@1 {gap["t2v_R@1"]:+.1f}, '
            f'R@5 {gap["t2v_R@5"]:+.1f}, R@10 {gap["t2v_R@10"]:+.1f}'
        )
    return lines
