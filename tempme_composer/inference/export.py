"""``tempme-export CHECKPOINT --out DIR``: a training checkpoint → safetensors + JSON + a model card.

Reads ``state['model']`` of a Composer checkpoint of this recipe (``best.pt`` or a resumable one), strips the
ComposerModel's ``model.`` prefix (the llm-foundry exporter's shape), and writes by default only the tensors
that differ from the base CLIP file (new modules always; CLIP tensors only when training changed them), so a
shared model is megabytes and names the exact base it needs. No Composer import.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from tempme_composer.checkpointing.safe_load import safe_torch_load
from tempme_composer.clip import CLIP, CLIP_PRESETS, CLIPCheckpointError, load_clip
from tempme_composer.clip.preprocess import CLIP_MEAN, CLIP_STD
from tempme_composer.data.format import META_FILE
from tempme_composer.errors import ConfigError, UnsafeCheckpointError
from tempme_composer.extras import reports_missing_extras
from tempme_composer.inference.exported import (
    CARD_FILE,
    CONFIG_FILE,
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    WEIGHTS_FILE,
    ExportError,
    FrameRule,
    Preprocessing,
    clip_origin_keys,
    model_hash,
    model_section,
    sha256_file,
)
from tempme_composer.inference.folders import describe_contents, is_inside
from tempme_composer.inference.model_card import model_card
from tempme_composer.inference.run_config import RunConfig, read_run_config
from tempme_composer.inference.seeds import SeedRunError, read_seed_summary
from tempme_composer.inference.terminal import printable
from tempme_composer.model import UnifiedModel

__all__ = ['export_checkpoint', 'read_checkpoint_model_state', 'main']

log = logging.getLogger(__name__)


def read_checkpoint_model_state(path: str | os.PathLike, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """The network's tensors (``UnifiedModel`` names) from a Composer checkpoint of this recipe.

    The file is read with ``torch.load(weights_only=True)`` under the recipe's checkpoint allowlist; a file
    holding anything else is refused unless ``trust`` (only for a file made on a machine you trust).

    Raises:
        ExportError: missing file, not a checkpoint of this recipe, or a refused global.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f'checkpoint {path} does not exist')
    try:
        ckpt = safe_torch_load(path, allow_unsafe=trust)
    except UnsafeCheckpointError as e:
        if e.global_name is None:  # truncated, or not a torch checkpoint
            raise ExportError(str(e)) from e
        raise ExportError(f'{path} holds {e.global_name}, outside the recipe\'s checkpoint allowlist '
                          '(loading it would run its pickled code); if you made this checkpoint yourself on this '
                          'machine, add --trust-checkpoint') from e
    except Exception as e:  # a file-format boundary: any parser failure means "not a checkpoint"
        raise ExportError(f'cannot read checkpoint {path}: {type(e).__name__}: {e}') from e
    state = ckpt.get('state', {}).get('model') if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ExportError(f'{path} is not a Composer checkpoint of this recipe (no state.model entry)')
    tensors = {k[len('model.'):]: v for k, v in state.items() if k.startswith('model.') and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ExportError(f'{path}: state.model holds no tensors named model.* (not a RetrievalModel checkpoint)')
    return tensors


def check_export_out(out_dir: Path, inputs: list[Path], force: bool) -> None:
    """Refuse an ``--out`` that holds an input, is a file, or is a folder that is not an export of ours.

    An existing export (``config.json`` of this format and nothing but the export's own files) is replaced;
    anything else needs ``force`` — and a folder holding the checkpoint, its config or the base CLIP file is
    refused even then, since replacing it would delete what is being exported.

    Raises:
        ExportError: naming the folder, what it holds and the way through.
    """
    for item in inputs:
        if is_inside(item, out_dir):
            raise ExportError(f'--out {out_dir} contains the input {item}: the export replaces its --out folder, '
                              'which would delete it; choose a new folder, e.g. --out '
                              f'{out_dir.resolve().parent / (out_dir.resolve().name + "-export")}')
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f'--out {out_dir} is a file, expected a folder (a new one, or an earlier export to replace)')
    if force or not out_dir.is_dir() or not os.listdir(out_dir):
        return
    names = set(os.listdir(out_dir))
    ours = {WEIGHTS_FILE, CONFIG_FILE, CARD_FILE}
    try:
        is_export = json.loads((out_dir / CONFIG_FILE).read_text(encoding='utf-8')).get('format') == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        is_export = False
    if not is_export or not names <= ours:
        what = 'an export with other files in it' if is_export else 'not an export of tempme-export'
        raise ExportError(f'--out {out_dir} exists and is {what} (it holds {describe_contents(out_dir)}); '
                          'tempme-export replaces its --out folder whole: choose a new folder, or add --force to '
                          'replace it')


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, full: bool = False,
                      config_path: str | os.PathLike | None = None,
                      clip_checkpoint: str | os.PathLike | None = None, trust: bool = False,
                      force: bool = False, seed_spread: str | os.PathLike | None = None) -> Path:
    """Write ``out_dir/{model.safetensors, config.json, README.md}`` for a checkpoint; returns ``out_dir``.

    Args:
        checkpoint: ``best.pt`` or any Composer checkpoint of the recipe, local or remote (``s3://…``).
        full: write every tensor (no base checkpoint needed to load it).
        config_path: the run's ``config.yaml`` (default: found next to the checkpoint or one folder up, else the
            config recorded in ``best.json``).
        clip_checkpoint: the base CLIP file (default: ``model.clip.checkpoint`` of the run's config).
        trust: load a checkpoint outside the allowlist (see `read_checkpoint_model_state`).
        force: replace an ``out_dir`` that is not an earlier export (see `check_export_out`).
        seed_spread: a ``tempme-seeds --json`` file of this recipe's seed runs, recorded and shown in the card.
    """
    out_dir = Path(out_dir).absolute()
    from tempme_composer.remote import is_remote

    inputs = [Path(p) for p in (checkpoint, config_path, clip_checkpoint) if p is not None and not is_remote(str(p))]
    check_export_out(out_dir, inputs, force)
    spread = None
    if seed_spread is not None:
        try:
            spread = read_seed_summary(seed_spread)
        except SeedRunError as e:
            raise ExportError(f'--seed-spread: {e}') from None
    with tempfile.TemporaryDirectory(prefix='tempme-export-') as scratch:
        checkpoint = _local_copy(str(checkpoint), Path(scratch))
        best_file = checkpoint.parent / 'best.json'
        best = json.loads(best_file.read_text()) if checkpoint.name == 'best.pt' and best_file.is_file() else None
        cfg_file = Path(config_path) if config_path else _find_beside(checkpoint, 'config.yaml')
        if cfg_file is None and best is not None and best.get('config'):  # best.json carries the resolved config
            cfg_file = Path(scratch) / 'config.yaml'
            cfg_file.write_text(yaml.safe_dump(best['config'], sort_keys=False))
        if cfg_file is None:
            raise ExportError(f'no config.yaml next to {checkpoint} or in {checkpoint.parent.parent} (nor a best.json '
                              'holding the config): pass the run\'s config with --config PATH (every run writes it to '
                              'output_dir/config.yaml)')
        check_export_out(out_dir, [cfg_file, checkpoint], force)  # the config found beside the checkpoint too
        return _export(checkpoint, out_dir, full=full, cfg_file=cfg_file, best=best, clip_checkpoint=clip_checkpoint,
                       trust=trust, seed_spread=spread)


def _local_copy(checkpoint: str, scratch: Path) -> Path:
    """A local checkpoint as is; a remote one (``s3://…``, any store streaming supports) downloaded into
    ``scratch`` with the ``best.json`` beside it, if there is one."""
    from tempme_composer.remote import RemoteStorageError, download_file, fetch_checkpoint, is_remote

    if not is_remote(checkpoint):
        return Path(checkpoint)
    try:
        local = fetch_checkpoint(checkpoint, scratch)
    except RemoteStorageError as e:
        raise ExportError(f'cannot download checkpoint {checkpoint}: {e}') from e
    if local.name == 'best.pt':
        with contextlib.suppress(RemoteStorageError):
            download_file(checkpoint.rsplit('/', 1)[0] + '/best.json', scratch / 'best.json', attempts=1)
    return local


def _export(checkpoint: Path, out_dir: Path, *, full: bool, cfg_file: Path, best: dict[str, Any] | None,
            clip_checkpoint: str | os.PathLike | None, trust: bool,
            seed_spread: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    cfg = _read_run_config(cfg_file)
    trained = read_checkpoint_model_state(checkpoint, trust=trust)

    base_path = Path(clip_checkpoint) if clip_checkpoint else (Path(cfg.model.clip.checkpoint) if cfg.model.clip.checkpoint else None)
    if base_path is not None:
        try:
            clip = load_clip(base_path)
        except CLIPCheckpointError as e:
            raise ExportError(f'base CLIP checkpoint of the run: {e} (pass the file with --clip-checkpoint)') from e
        base = {'kind': 'openai_checkpoint', 'file_name': base_path.name, 'sha256': sha256_file(base_path)}
    else:
        clip = CLIP(CLIP_PRESETS[cfg.model.clip.preset])
        base = {'kind': 'random_init', 'preset': cfg.model.clip.preset, 'sha256': None,
                'note': 'the run started from randomly initialised CLIP weights (model.clip.checkpoint: null), '
                        'so there is no base file: every tensor is exported'}
        full = True
    architecture = clip.config
    base['architecture'] = dataclasses.asdict(architecture)
    base_values = {f'clip.{k}': v for k, v in clip.state_dict().items()} if not full else {}
    fresh = UnifiedModel.from_config(clip, cfg.model, num_frames=cfg.data.max_frames)
    expected = fresh.state_dict()
    _check_same_model(trained, expected, checkpoint, cfg_file)

    origin = clip_origin_keys(architecture)
    tensors: dict[str, torch.Tensor] = {}
    for name, value in trained.items():
        value = value.reshape(expected[name].shape).contiguous()  # an FSDP run's 1-element logit_scale → 0-d
        if not full and name in origin and name in base_values and torch.equal(value, base_values[name]):
            continue  # unchanged base CLIP tensor: loaded from the base file
        tensors[name] = value

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.tmp-{out_dir.name}-', dir=out_dir.parent))  # unique: never another's
    save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={'format': EXPORT_FORMAT})
    weights_sha = sha256_file(tmp / WEIGHTS_FILE)
    section = model_section(cfg.model)
    prep = _preprocessing(cfg, architecture.image_resolution)
    total = sum(v.numel() for v in expected.values() if v.is_floating_point())
    config = {
        'format': EXPORT_FORMAT,
        'format_version': EXPORT_FORMAT_VERSION,
        'model_hash': model_hash(weights_sha, section, base),
        'model': section,
        'base_clip': base,
        'weights': {'file': WEIGHTS_FILE, 'contents': 'full' if full else 'delta', 'sha256': weights_sha,
                    'tensors': sorted(tensors), 'num_elements': sum(v.numel() for v in tensors.values())},
        'preprocessing': dataclasses.asdict(prep),
        'evaluation': {'tie_mode': cfg.evaluation.tie_mode, 'dsl': cfg.evaluation.dsl,
                       'batch_size_val': cfg.batch_size_val},
        'parameters': {'total': total, 'trainable': _trainable_count(checkpoint, cfg_file, expected)},
        'gmac_per_video': _gmac_per_video(fresh, prep),
        'training': {'checkpoint': checkpoint.name, 'best': {k: v for k, v in (best or {}).items() if k != 'config'},
                     'datatype': cfg.data.datatype, 'eval_data': _eval_source(cfg),
                     'config': cfg.raw, **({'seed_spread': seed_spread} if seed_spread else {})},
        'exported': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    }
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + '\n')
    (tmp / CARD_FILE).write_text(model_card(config))
    _replace_folder(tmp, out_dir)
    log.info('exported %d tensors (%s) to %s', len(tensors), config['weights']['contents'], out_dir)
    return out_dir


def _replace_folder(new: Path, out_dir: Path) -> None:
    """Move ``new`` to ``out_dir``; an earlier ``out_dir`` (already checked to be ours) is moved aside first and
    deleted only once the new one is in place."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f'.old-{out_dir.name}-', dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
    os.replace(new, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _find_beside(checkpoint: Path, name: str) -> Path | None:
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_run_config(path: Path) -> RunConfig:
    try:
        return read_run_config(path)
    except ConfigError as e:
        raise ExportError(f'the run config {path} cannot be read: {e}') from e
    except Exception as e:  # a YAML parser failure
        raise ExportError(f'the run config {path} is not a recipe config: {e}') from e


def _check_same_model(trained: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], checkpoint: Path,
                      cfg_file: Path) -> None:
    missing, extra = sorted(set(expected) - set(trained)), sorted(set(trained) - set(expected))
    shapes = [k for k in set(trained) & set(expected) if trained[k].numel() != expected[k].numel()]
    if missing or extra or shapes:
        raise ExportError(
            f'{checkpoint} does not match the model {cfg_file} describes ({len(missing)} tensors missing from the '
            f'file: {missing[:5]}; {len(extra)} only in the file: {extra[:5]}; {len(shapes)} with another shape: '
            f'{sorted(shapes)[:5]}); pass the config of the run that wrote it with --config')


def _trainable_count(checkpoint: Path, cfg_file: Path, expected: dict[str, torch.Tensor]) -> int | None:
    """From the run's ``trainable_parameters.txt`` (written by ParameterReport at fit start), if present."""
    for folder in (cfg_file.parent, checkpoint.parent, checkpoint.parent.parent):
        listing = folder / 'trainable_parameters.txt'
        if listing.is_file():
            names = [line.strip().removeprefix('model.') for line in listing.read_text().splitlines() if line.strip()]
            return sum(expected[n].numel() for n in names if n in expected)
    return None


def _preprocessing(cfg: RunConfig, image_resolution: int) -> Preprocessing:
    return Preprocessing(
        max_frames=cfg.data.max_frames,
        max_words=cfg.data.max_words,
        slice_framepos=cfg.data.slice_framepos,
        image_resolution=image_resolution,
        mean=tuple(CLIP_MEAN),
        std=tuple(CLIP_STD),
        frames=_frame_rule(cfg),
        paragraph=cfg.data.paragraph_mode,
    )


def _frame_rule(cfg: RunConfig) -> FrameRule:
    """The decode rule of the run's data: tempme-convert's settings, or the demo's every-frame rule."""
    if cfg.data.datatype == 'demo':
        return FrameRule(fps=None, short_side=None, apply_rotation=True)
    for src in (cfg.data.eval, cfg.data.train):
        if src is None:
            continue
        local = src.local if not src.streams else (src.streams[0].local if src.streams else None)
        split = src.split if not src.streams else src.streams[0].split
        if local is None:
            continue
        meta = Path(local) / (split or '') / META_FILE
        if meta.is_file():
            settings = json.loads(meta.read_text()).get('settings', {})
            return FrameRule(fps=settings.get('fps', 1.0), short_side=settings.get('size', 224),
                             apply_rotation=settings.get('apply_rotation', True))
    log.warning('the run\'s dataset folder is not here: recording tempme-convert\'s default frame rule (1 fps, '
                'short side 224) in the export')
    return FrameRule()


def _eval_source(cfg: RunConfig) -> dict[str, Any]:
    if cfg.data.datatype == 'demo':
        return {'dataset': 'demo (generated)', 'split': 'eval', 'root': cfg.data.demo.root if cfg.data.demo else None}
    src = cfg.data.eval
    if src is None:
        return {}
    if src.streams:
        return {'streams': [{'local': s.local, 'remote': s.remote, 'split': s.split} for s in src.streams]}
    return {'dataset': cfg.data.datatype, 'local': src.local, 'remote': src.remote, 'split': src.split}


def _gmac_per_video(model: UnifiedModel, prep: Preprocessing) -> float | None:
    """Video-tower multiply-accumulates for one video of ``max_frames`` frames (torch's flop counter, one
    real forward on the CPU: data-dependent steps such as STOP's top-k cannot run on the meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    R = prep.image_resolution
    video = torch.zeros(1, prep.max_frames, 3, R, R)
    mask = torch.ones(1, prep.max_frames, dtype=torch.long)
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model.encode_video(video, mask)
    except Exception as e:  # an op the counter cannot follow: report, do not fail the export
        log.warning('could not count GMAC per video (%s)', e)
        return None
    return round(counter.get_total_flops() / 2e9, 3)


@reports_missing_extras('tempme-export')
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='tempme-export', description=__doc__.split('\n')[0])
    parser.add_argument('checkpoint', help='best.pt or any Composer checkpoint written by the recipe')
    parser.add_argument('--out', required=True, help='folder to write (an earlier export there is replaced; any '
                        'other existing folder is refused unless --force)')
    parser.add_argument('--force', action='store_true', help='replace an --out folder that is not an earlier export '
                        '(never one that holds the checkpoint, its config or the base CLIP file)')
    parser.add_argument('--full', action='store_true', help='write every tensor (no base CLIP file needed to load)')
    parser.add_argument('--config', help="the run's config.yaml (default: found next to the checkpoint)")
    parser.add_argument('--clip-checkpoint', help='the base CLIP file (default: model.clip.checkpoint of the run)')
    parser.add_argument('--seed-spread', metavar='FILE', help='the JSON of tempme-seeds --json over this recipe\'s '
                        'seed runs: the model card shows the mean ± std of each protocol')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load a checkpoint that holds objects outside the recipe\'s allowlist (runs its pickle: '
                             'only for a file you made yourself)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        out = export_checkpoint(args.checkpoint, args.out, full=args.full, config_path=args.config,
                                clip_checkpoint=args.clip_checkpoint, trust=args.trust_checkpoint, force=args.force,
                                seed_spread=args.seed_spread)
    except ExportError as e:
        print(f'error: {printable(e)}', file=sys.stderr)
        return 1
    except OSError as e:  # a folder we cannot write
        print(f'error: {printable(e.filename or args.out)}: {e.strerror}', file=sys.stderr)
        return 1
    cfg = json.loads((out / CONFIG_FILE).read_text())
    print(f'wrote {out}: {len(cfg["weights"]["tensors"])} tensors ({cfg["weights"]["contents"]}), '
          f'model hash {cfg["model_hash"][:12]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
