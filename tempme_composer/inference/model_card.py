"""The model card (``README.md``) of an exported model, generated from its ``config.json``.

It says what a reader needs to trust and reproduce the numbers: the variant, the parameter and compute cost,
the metrics with the evaluation protocol (split, gallery size, tie mode, how the checkpoint was chosen, no
re-ranking in the headline), the base weights and the exact training config.
"""

from __future__ import annotations

import json
from typing import Any

from tempme_composer.metrics.selection import BEST_ON_TEST, LAST, PROTOCOL_TITLES, SELECTED
from tempme_composer.metrics.summary import format_log_lines

__all__ = ['model_card', 'variant_name']


def variant_name(model: dict[str, Any]) -> str:
    """CLIP4Clip meanP / TempMe / STOP / unified TempMe-STOP, from the ``model`` section."""
    tempme, stop = model['tempme']['enabled'], model['stop']['enabled']
    if tempme and stop:
        return 'unified TempMe-STOP'
    if tempme:
        return 'TempMe'
    if stop:
        return 'STOP'
    return 'CLIP4Clip meanP' + (' + LoRA' if model['lora']['enabled'] else '')


def _selection_results(selection: dict[str, Any], dataset: str, split: str, tie_mode: str) -> list[str]:
    """The results of a checkpoint chosen on a validation split: its test numbers first, then beside them the
    last checkpoint's and the best over all evaluations (the protocol published tables use)."""
    chosen = selection[SELECTED]
    results = chosen['results']
    lines = [
        f'Evaluated on **{dataset}**, split `{split}`: {int(results.get("num_texts", 0))} texts, '
        f'{int(results.get("num_videos", 0))} videos; tie mode `{tie_mode}`. The checkpoint was selected as the '
        f'best text→video R@1 on a held-out **validation** split (epoch {chosen["epoch"]}, batch {chosen["batch"]}), '
        'so the test numbers below were not used to choose it. The headline numbers use no re-ranking (no DSL, '
        'no QB-Norm).',
        '',
        '```',
        *format_log_lines(results),
        '```',
        '',
        f'The test split was evaluated at each of the {selection["num_evaluations"]} evaluations; three labelled '
        'text→video numbers of the same run:',
        '',
        '| protocol | epoch | R@1 | R@5 | R@10 | MdR | MnR |',
        '|---|---|---|---|---|---|---|',
    ]
    for key in (SELECTED, LAST, BEST_ON_TEST):
        record = selection[key]
        lines.append(f'| {PROTOCOL_TITLES[key]} | {record["epoch"]} | '
                     + ' | '.join(f'{record["results"]["t2v_" + k]:.1f}' for k in ('R@1', 'R@5', 'R@10', 'MdR', 'MnR'))
                     + ' |')
    return lines


def _seed_spread_lines(spread: dict[str, Any]) -> list[str]:
    """The text→video recalls of the same recipe over several seeds (``tempme-seeds --json``)."""
    seeds = ', '.join(str(r.get('seed')) for r in spread.get('runs', []))
    lines = [
        '',
        f'Over {len(spread.get("runs", []))} runs of this recipe with seeds {seeds} (`tempme-seeds`), text→video '
        'mean ± sample standard deviation (min–max):',
        '',
        '| protocol | R@1 | R@5 | R@10 |',
        '|---|---|---|---|',
    ]
    for title, metrics in spread['protocols'].items():
        cells = [
            f'{m["mean"]:.1f} ± {m["std"]:.1f} ({m["min"]:.1f}–{m["max"]:.1f})'
            for m in (metrics[f't2v_{k}'] for k in ('R@1', 'R@5', 'R@10'))
        ]
        lines.append(f'| {title} | ' + ' | '.join(cells) + ' |')
    return lines


def model_card(cfg: dict[str, Any]) -> str:
    """Markdown with YAML front matter (open_clip's card layout: details, usage, results)."""
    model, base, prep = cfg['model'], cfg['base_clip'], cfg['preprocessing']
    training, params = cfg['training'], cfg['parameters']
    best = training.get('best') or {}
    results = best.get('results') or {}
    evaluation = cfg['evaluation']
    arch = base['architecture']
    backbone = f"ViT (patch {arch['vision_patch_size']}, width {arch['vision_width']}, {arch['vision_layers']} layers, " \
               f"{arch['image_resolution']} px)"
    trainable = params.get('trainable')
    trainable_text = (f'{trainable:,} of {params["total"]:,} ({100 * trainable / params["total"]:.2f} %)'
                      if trainable is not None else f'unknown (no trainable_parameters.txt) of {params["total"]:,}')
    eval_data = training.get('eval_data') or {}
    split = eval_data.get('split') or '(the folder itself)'
    dataset = eval_data.get('dataset') or training.get('datatype')
    if base['kind'] == 'random_init':
        base_text = f"random initialisation of the `{base.get('preset')}` architecture (no pretrained weights)"
    else:
        base_text = f"`{base['file_name']}` (sha256 `{base['sha256']}`)"
    lines = [
        '---',
        'library_name: tempme-composer',
        'tags: [text-video-retrieval, clip, ' + variant_name(model).lower().replace(' ', '-') + ']',
        'license: apache-2.0',
        f'datasets: [{dataset}]',
        '---',
        '',
        f'# {variant_name(model)} text–video retrieval model',
        '',
        '## Details',
        '',
        f'- Variant: **{variant_name(model)}** (LoRA: {model["lora"]["enabled"]}, TempMe: {model["tempme"]["enabled"]}, '
        f'STOP: {model["stop"]["enabled"]}) on a CLIP {backbone}.',
        f'- Base weights: {base_text}.',
        f'- Weights in this folder: {cfg["weights"]["contents"]} ({len(cfg["weights"]["tensors"])} tensors, '
        f'{cfg["weights"]["num_elements"]:,} elements), sha256 `{cfg["weights"]["sha256"]}`.',
        f'- Parameters: trainable {trainable_text}.',
        f'- Compute: {cfg.get("gmac_per_video")} GMAC per video ({prep["max_frames"]} frames, video tower forward).',
        f'- Input: {prep["max_frames"]} frames (slice_framepos {prep["slice_framepos"]}) at {prep["image_resolution"]} px, '
        f'CLIP mean/std; frames taken at {prep["frames"]["fps"] or "every decoded frame"} fps, short side '
        f'{prep["frames"]["short_side"] or "as decoded"}; captions: CLIP BPE to {prep["max_words"]} tokens '
        f'(longer ones are truncated){", sentences joined into a paragraph" if prep["paragraph"] else ""}.',
        f'- Exported: {cfg["exported"]} from `{training["checkpoint"]}`; model hash `{cfg["model_hash"]}`.',
        '',
        '## Usage',
        '',
        '```python',
        'from tempme_composer import load_exported',
        "model = load_exported('THIS_FOLDER'" + (", clip_checkpoint='PATH/TO/" + str(base.get('file_name')) + "'"
                                                 if cfg['weights']['contents'] == 'delta' else '') + ')',
        '```',
        '',
        '    tempme-index --model THIS_FOLDER --videos MY_VIDEOS/ --out my_index',
        '    tempme-search my_index "a man is cooking" --top-k 10',
        '',
        '## Results',
        '',
    ]
    selection = best.get('selection')
    if isinstance(selection, dict) and selection.get(SELECTED):
        lines += _selection_results(selection, dataset, split, evaluation['tie_mode'])
    elif results:
        lines += [
            f'Evaluated on **{dataset}**, split `{split}`: {int(results.get("num_texts", 0))} texts, '
            f'{int(results.get("num_videos", 0))} videos; tie mode `{evaluation["tie_mode"]}`. The checkpoint was '
            f'selected as the best text→video R@1 on that same split (epoch {best.get("epoch")}, batch '
            f'{best.get("batch")}), which is how the published recipes choose it: a number selected and reported '
            'on one split is optimistic. The headline numbers use no re-ranking (no DSL, no QB-Norm)'
            + ('; the DSL numbers below are reported separately.' if any(k.startswith('dsl_') for k in results) else '.'),
            '',
            '```',
            *format_log_lines(results),
            '```',
            '',
            '| direction | R@1 | R@5 | R@10 | MdR | MnR |',
            '|---|---|---|---|---|---|',
        ]
        for name, prefix in (('text→video', 't2v_'), ('video→text', 'v2t_')):
            lines.append(f'| {name} | ' + ' | '.join(f'{results[prefix + k]:.1f}' for k in ('R@1', 'R@5', 'R@10', 'MdR', 'MnR')) + ' |')
        if any(k.startswith('dsl_') for k in results):
            lines += ['', 'Dual-softmax (DSL) re-ranked, not comparable with the numbers above:', '', '```',
                      *format_log_lines(results, prefix='dsl_'), '```']
    else:
        lines.append('No evaluation record (`best.json`) was found next to the checkpoint.')
    spread = training.get('seed_spread')
    if isinstance(spread, dict) and spread.get('protocols'):
        lines += _seed_spread_lines(spread)
    lines += [
        '',
        '## Training config',
        '',
        'Reproduce with `composer recipes/train.py config.yaml` on this resolved config:',
        '',
        '```json',
        json.dumps(training.get('config', {}), indent=2),
        '```',
        '',
    ]
    return '\n'.join(lines)
