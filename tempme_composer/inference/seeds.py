"""``tempme-seeds RUN_DIR...``: each metric's mean ± standard deviation and range over runs that differ in seed.

Reads only the run folders' files (``config.yaml``, ``checkpoints/best.json``, ``eval-<label>.json``): no
Composer, no model. Runs whose resolved configs differ in anything but the seed, the run name and paths are
refused, naming the keys, since their spread would not be a seed's (docs/evaluation.md#spread-over-seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tempme_composer.metrics.selection import BEST_ON_TEST, LAST, PROTOCOL_TITLES, SELECTED
from tempme_composer.metrics.spread import spread
from tempme_composer.metrics.summary import METRIC_NAMES

__all__ = [
    'IGNORED_KEYS',
    'SeedRunError',
    'read_seed_run',
    'differing_keys',
    'seed_summary',
    'read_seed_summary',
    'format_table',
    'main',
]

#: Config keys that may differ between the runs of one seed study: the seed, names and where files are.
IGNORED_KEYS = ('seed', 'run_name', 'output_dir', 'save_folder', 'resume', 'autoresume')
#: Keys ending so are paths (a dataset's local folder or remote, the demo's root) and may differ too.
IGNORED_SUFFIXES = ('.local', '.remote', '.root')
#: The metrics summarised, in table order.
METRICS = tuple(f'{d}_{m}' for d in ('t2v', 'v2t') for m in METRIC_NAMES)
#: The largest run file read (a run's JSON records are kilobytes; anything larger is not one of ours).
MAX_RECORD_BYTES = 16 << 20
#: What a run folder's best.json says without a ``selection`` block (best.pt chosen on the test split).
PUBLISHED_TITLE = 'test, best over all evaluations (optimistic; best.pt selected on test, as published)'


class SeedRunError(ValueError):
    """A run folder that cannot be summarised, or runs that are not one seed study: one line each."""


def _read(path: Path, what: str) -> Any:
    if not path.is_file():
        raise SeedRunError(f'{path}: no {what} (expected a finished training run folder)')
    size = path.stat().st_size
    if size > MAX_RECORD_BYTES:
        raise SeedRunError(
            f'{path}: {size:,} bytes, more than the {MAX_RECORD_BYTES:,} a run record may have'
        )
    text = path.read_text(encoding='utf-8', errors='replace')
    try:
        return yaml.safe_load(text) if path.suffix == '.yaml' else json.loads(text)
    except (ValueError, yaml.YAMLError) as e:
        raise SeedRunError(f'{path}: not a readable {what}: {str(e).splitlines()[0]}') from None


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f'{prefix}{key}.'))
        return out
    if isinstance(tree, list) and any(isinstance(v, (dict, list)) for v in tree):
        out = {}
        for i, value in enumerate(tree):
            out.update(_flatten(value, f'{prefix}{i}.'))
        return out
    return {prefix.rstrip('.'): tree}


def _results(record: Any, where: str) -> dict[str, float]:
    results = record.get('results') if isinstance(record, dict) else None
    if not isinstance(results, dict) or any(not isinstance(results.get(m), (int, float)) for m in METRICS):
        raise SeedRunError(f'{where}: expected "results" with {", ".join(METRICS)}')
    return {m: float(results[m]) for m in METRICS}


def read_seed_run(folder: str | Path) -> dict[str, Any]:
    """One run: ``{'folder', 'seed', 'config' (flattened), 'protocols': {title: results}}``.

    With ``evaluation.select_on: val`` the three labelled test numbers of best.json's ``selection``; in the
    published-comparison mode best.json's (the best test evaluation) and the last test evaluation.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SeedRunError(f'{folder}: not a folder (expected a finished training run folder)')
    config = _read(folder / 'config.yaml', 'config.yaml')
    if not isinstance(config, dict):
        raise SeedRunError(f'{folder / "config.yaml"}: expected a mapping of keys')
    best = _read(folder / 'checkpoints' / 'best.json', 'checkpoints/best.json')
    if not isinstance(best, dict):
        raise SeedRunError(f'{folder / "checkpoints" / "best.json"}: expected a JSON object')
    datatype = str((config.get('data') or {}).get('datatype', ''))
    selection = best.get('selection')
    where = f'{folder / "checkpoints" / "best.json"}'
    if isinstance(selection, dict):
        protocols = {
            PROTOCOL_TITLES[k]: _results(selection.get(k), f'{where} selection.{k}')
            for k in (SELECTED, LAST, BEST_ON_TEST)
        }
    else:
        last_path = folder / f'eval-{datatype}.json'
        protocols = {
            PUBLISHED_TITLE: _results(best, where),
            PROTOCOL_TITLES[LAST]: _results(_read(last_path, f'eval-{datatype}.json'), str(last_path)),
        }
    return {
        'folder': str(folder),
        'seed': config.get('seed'),
        'config': _flatten(config),
        'protocols': protocols,
    }


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.endswith(IGNORED_SUFFIXES)


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The flattened config keys whose values are not the same in every run (the ignored ones aside)."""
    keys = sorted(set().union(*configs))
    missing = object()
    return [k for k in keys if not _ignored(k) and len({repr(c.get(k, missing)) for c in configs}) > 1]


def seed_summary(folders: Sequence[str | Path]) -> dict[str, Any]:
    """The spread of every metric of every protocol over the runs in ``folders``.

    Raises:
        SeedRunError: fewer than two runs, a folder that is not a finished run, two runs with one seed, or
            configs that differ in more than the seed, names and paths (the keys are named).
    """
    if len(folders) < 2:
        raise SeedRunError(
            f'give at least two run folders (got {len(folders)}): a spread needs several seeds'
        )
    runs = [read_seed_run(f) for f in folders]
    differing = differing_keys([r['config'] for r in runs])
    if differing:
        shown = '; '.join(
            f'{k}: ' + ', '.join(repr(r['config'].get(k)) for r in runs) for k in differing[:5]
        ) + ('; ...' if len(differing) > 5 else '')
        raise SeedRunError(
            f'the runs differ in {", ".join(differing)} (not only in seed, run name or paths): {shown}'
        )
    seeds = [r['seed'] for r in runs]
    repeated = sorted({str(s) for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise SeedRunError(f'several runs have seed {", ".join(repeated)}: give one run per seed')
    protocols = {
        title: {m: spread([r['protocols'][title][m] for r in runs]) for m in METRICS}
        for title in runs[0]['protocols']
    }
    return {'runs': [{'folder': r['folder'], 'seed': r['seed']} for r in runs], 'protocols': protocols}


def read_seed_summary(path: str | Path) -> dict[str, Any]:
    """A ``tempme-seeds --json`` file, checked (the model card includes it with ``tempme-export --seed-spread``).

    Raises:
        SeedRunError: a missing, oversized or malformed file, naming what is wrong.
    """
    path = Path(path)
    data = _read(path, 'tempme-seeds --json output')
    protocols = data.get('protocols') if isinstance(data, dict) else None
    if not isinstance(protocols, dict) or not protocols or not isinstance(data.get('runs'), list):
        raise SeedRunError(f'{path}: expected the JSON of tempme-seeds --json ("runs" and "protocols")')
    fields = ('mean', 'std', 'min', 'max', 'n')
    for title, metrics in protocols.items():
        for name in METRICS:
            entry = metrics.get(name) if isinstance(metrics, dict) else None
            if not isinstance(entry, dict) or any(not isinstance(entry.get(f), (int, float)) for f in fields):
                raise SeedRunError(
                    f'{path}: protocols.{title}.{name}: expected {", ".join(fields)} as numbers'
                )
    return data


def format_table(summary: dict[str, Any]) -> str:
    """One row per protocol and metric: mean ± std, min–max, n."""
    runs = ', '.join(f'{r["folder"]} (seed {r["seed"]})' for r in summary['runs'])
    width = max(len(t) for t in summary['protocols'])
    rows = [f'runs: {runs}', f'{"protocol":<{width}}  {"metric":<9} {"mean ± std":>15}  {"min–max":>13}  n']
    for title, metrics in summary['protocols'].items():
        for name, s in metrics.items():
            rows.append(
                f'{title:<{width}}  {name:<9} {s["mean"]:>7.2f} ± {s["std"]:<5.2f}  '
                f'{s["min"]:>6.1f}–{s["max"]:<6.1f}  {s["n"]}'
            )
    return '\n'.join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """``tempme-seeds RUN_DIR RUN_DIR... [--json]``; exit 2 with one line for runs that cannot be summarised."""
    parser = argparse.ArgumentParser(
        prog='tempme-seeds',
        description="Each metric's mean ± standard deviation and min–max over training runs that differ only "
        'in their seed.',
        epilog='Example: tempme-seeds outputs/demo_val/seed1 outputs/demo_val/seed2 outputs/demo_val/seed3',
    )
    parser.add_argument('runs', nargs='+', metavar='RUN_DIR', help="a finished run's output_dir")
    parser.add_argument('--json', action='store_true', help='print the summary as JSON instead of the table')
    args = parser.parse_args(argv)
    try:
        summary = seed_summary(args.runs)
    except SeedRunError as e:
        print(f'tempme-seeds: error: {e}', file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
