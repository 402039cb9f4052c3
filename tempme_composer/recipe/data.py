"""The run's data: per-rank batch sizes, the checked MDS sources, the train and eval loaders, the evaluator."""

from __future__ import annotations

import dataclasses

from composer.core import DataSpec, Evaluator
from composer.utils import dist

from tempme_composer.clip import CLIP
from tempme_composer.config import DataSourceConfig, TrainConfig, paragraph_mode
from tempme_composer.errors import ConfigError
from tempme_composer.preflight import check_dataset

__all__ = [
    'VAL_LABEL',
    'build_dataloaders',
    'build_evaluator',
    'build_val_evaluator',
    'check_batch_split',
    'check_epoch_has_batches',
    'per_rank',
]

#: The validation split's evaluator label: its metrics are logged as metrics/val/... and written to eval-val.json.
VAL_LABEL = 'val'


def per_rank(global_batch: int, key: str) -> int:
    """A global batch size split over the ranks; ``key`` names it in the error when it does not divide."""
    world = dist.get_world_size()
    if global_batch % world:
        raise ConfigError(
            f'{key}={global_batch} is global and must be divisible by the number of ranks ({world})'
        )
    return global_batch // world


def check_batch_split(cfg: TrainConfig) -> int:
    """The microbatch per rank: gradient accumulation must split each rank's batch evenly."""
    rank_batch = per_rank(cfg.batch_size, 'batch_size')
    k = cfg.gradient_accumulation_steps
    if rank_batch % k:
        raise ConfigError(
            f'gradient_accumulation_steps={k} must divide the per-rank batch {rank_batch} '
            f'(batch_size={cfg.batch_size} over {dist.get_world_size()} rank(s))'
        )
    return rank_batch // k


def check_epoch_has_batches(cfg: TrainConfig, train_spec: DataSpec) -> None:
    """drop_last with fewer videos per rank than the batch would train on nothing, silently."""
    if len(train_spec.dataloader) == 0:
        raise ConfigError(
            f'batch_size={cfg.batch_size} is larger than the training set ({len(train_spec.dataloader.dataset)} '
            f'videos per rank over {dist.get_world_size()} rank(s)), and training drops the last incomplete '
            'batch, so an epoch would have zero batches. Lower batch_size to at most the number of training '
            'videos (times the ranks), or add training data.'
        )


def build_evaluator(
    cfg: TrainConfig, eval_spec: DataSpec, metric: str, label: str | None = None
) -> Evaluator:
    """An evaluator; its label (the datatype for the test split) names the metrics: metrics/<label>/..."""
    return Evaluator(
        label=label or cfg.data.datatype,
        dataloader=eval_spec,
        metric_names=[metric],
        device_eval_microbatch_size=per_rank(cfg.batch_size_val, 'batch_size_val'),
    )


def build_val_evaluator(cfg: TrainConfig, val_spec: DataSpec | None, metric: str) -> Evaluator | None:
    """The validation split's evaluator (label `VAL_LABEL`), or None when the run has no validation split."""
    return None if val_spec is None else build_evaluator(cfg, val_spec, metric, label=VAL_LABEL)


def build_dataloaders(cfg: TrainConfig, clip: CLIP) -> tuple[DataSpec | None, DataSpec, DataSpec | None]:
    """Train, eval (test) and validation loaders over MDS shards; the demo dataset is generated on first use.

    The validation loader is built only with ``evaluation.select_on: val`` (None otherwise)."""
    from tempme_composer.data import LoaderOptions, build_video_text_dataloader

    data = cfg.data
    train_src, eval_src = data.train, data.eval
    val_src = data.val if cfg.evaluation.select_on == 'val' else None
    if data.datatype == 'demo':
        from tempme_composer.data.synthetic import generate_demo_dataset

        demo = data.demo
        with dist.run_local_rank_zero_first():
            paths = generate_demo_dataset(
                demo.root,
                num_train=demo.num_train,
                num_eval=demo.num_eval,
                seed=demo.seed,
                num_val=demo.num_val,
            )
        train_src = train_src or DataSourceConfig(local=str(paths.train_dir))
        eval_src = eval_src or DataSourceConfig(local=str(paths.eval_dir))
        if cfg.evaluation.select_on == 'val' and val_src is None:
            val_src = DataSourceConfig(local=str(paths.val_dir))
    common = dict(
        max_frames=data.max_frames,
        image_resolution=clip.config.image_resolution,
        max_words=data.max_words,
        num_workers=data.num_workers,
        shuffle_seed=cfg.seed,
        slice_framepos=data.slice_framepos,
        paragraph=paragraph_mode(data),
        check_remote_hashes=data.validate_hash,
    )
    for key, src in (('data.train', train_src), ('data.eval', eval_src), ('data.val', val_src)):
        if (key == 'data.train' and not cfg.do_train) or src is None:
            continue
        for i, one in enumerate(src.streams or [src]):
            one = one if isinstance(one, dict) else dataclasses.asdict(one)
            if one.get('remote') is None:  # a remote dataset is downloaded (and checked) by streaming
                check_dataset(
                    f'{key}.streams[{i}]' if src.streams else key,
                    one.get('local'),
                    one.get('split'),
                    validate_hash=data.validate_hash,
                )
    train_spec = None
    if cfg.do_train:
        train_spec = build_video_text_dataloader(
            LoaderOptions(
                **_source_kwargs(train_src),
                batch_size=per_rank(cfg.batch_size, 'batch_size'),
                train=True,
                frame_order=data.train_frame_order,
                expand_sentences=data.expand_msrvtt_sentences,
                **common,
            )
        )
    eval_specs = [
        build_video_text_dataloader(
            LoaderOptions(
                **_source_kwargs(src),
                batch_size=per_rank(cfg.batch_size_val, 'batch_size_val'),
                train=False,
                frame_order=data.eval_frame_order,
                **common,
            )
        )
        if src is not None
        else None
        for src in (eval_src, val_src)
    ]
    return train_spec, eval_specs[0], eval_specs[1]


def _source_kwargs(src: DataSourceConfig) -> dict:
    """One dataset (local/remote/split) or a mix of streams, as `LoaderOptions` takes them."""
    if src.streams:
        return {
            'local': None,
            'remote': None,
            'split': None,
            'streams': [dataclasses.asdict(s) for s in src.streams],
        }
    return {'local': src.local, 'remote': src.remote, 'split': src.split}
