"""FSDP option on CPU: torch's FullyShardedDataParallel (gloo, two ranks, FULL_SHARD) wraps the model the way the
recipe prepares it and Composer wraps it, trains, evaluates, and its full checkpoint loads into a plain
(DDP-shaped) model and back.

Composer 0.32's own FSDP path needs CUDA (docs/scale-out.md, "FSDP for large backbones"), so the end-to-end
FSDP run is the gpu test in test_ddp_resume.py; this checks what torch's FSDP asks of our model, with real
sharding.
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tempme_composer.callbacks.training_scalars import logit_scale_value
from tempme_composer.checkpointing.matching import check_checkpoint_matches
from tempme_composer.config import load_config
from tempme_composer.errors import ConfigError
from tempme_composer.fsdp import prepare_for_fsdp, same_shape_up_to_scalar, vectorise_scalar_parameters

REPO = Path(__file__).resolve().parents[2]
YAMLS = {'baseline': REPO / 'yamls' / 'demo_baseline.yaml', 'unified': REPO / 'yamls' / 'demo_unified.yaml'}


def _model(variant: str = 'unified'):
    from tempme_composer.composer_wrapper import RetrievalModel
    from tempme_composer.recipe.model import build_model

    torch.manual_seed(0)
    return RetrievalModel(build_model(load_config(YAMLS[variant], [])))


def _batch(model, batch: int = 2) -> dict[str, torch.Tensor]:
    frames = load_config(YAMLS['unified'], []).data.max_frames
    side = model.model.clip.config.image_resolution
    g = torch.Generator().manual_seed(2)
    # uint8 frames as the loader hands them: normalised in RetrievalModel.forward, outside the FSDP unit
    video = torch.randint(0, 256, (batch, frames, side, side, 3), generator=g).to(torch.uint8)
    return {'video': video, 'video_mask': torch.ones(batch, frames),
            'text_ids': torch.randint(1, 100, (batch, model.model.clip.config.context_length), generator=g)}


def _first_loss(model) -> float:
    """The loss of the whole 4-video batch in one process (eval mode: no dropout draws to line up)."""
    batch = _batch(model, 4)
    return float(model.eval().loss(model(batch), batch))


def fsdp_worker(out: Path, variants: list[str]) -> None:
    """One rank (run under torchrun): for each variant in turn, wrap as Composer does, two training steps, an
    eval forward, save to ``out``/``fsdp-{variant}.pt``. Each variant builds its model from seed 0 and keeps
    nothing of the one before, so one launch serves the tests of both (one set of process starts)."""
    import torch.distributed as dist

    dist.init_process_group('gloo')
    for variant in variants:
        _train_one_variant(out / f'fsdp-{variant}.pt', variant, dist.get_rank())
    dist.destroy_process_group()


def _train_one_variant(out: Path, variant: str, rank: int) -> None:
    """One variant on this rank: what the test of that variant reads from ``out``."""
    import functools

    import torch.distributed as dist
    from torch.distributed.fsdp import FullStateDictConfig, ShardingStrategy, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    wrap = functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda m: getattr(m, '_fsdp_wrap', False))
    kwargs = dict(device_id=torch.device('cpu'), use_orig_params=True, auto_wrap_policy=wrap,
                  sharding_strategy=ShardingStrategy.FULL_SHARD)
    if variant == 'unified':
        try:
            FSDP(_model(variant).model, **kwargs)
            raise AssertionError('torch FSDP accepted the 0-d logit_scale: this test no longer checks anything')
        except ValueError as e:
            assert 'scalar parameters' in str(e), e
    model = _model(variant)
    per_block = model.model.blocks_called_whole
    prepare_for_fsdp(model, activation_checkpointing=False, per_block_units=per_block)
    model.model = FSDP(model.model, **kwargs)  # Composer wraps the ComposerModel's children like this
    units = sum(isinstance(m, FSDP) for m in model.modules())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    model.eval()  # no dropout: rank r's half of the batch must see what the single process saw
    for _ in range(2):  # the second forward starts from resharded parameters
        batch = {k: v[2 * rank : 2 * rank + 2] for k, v in _batch(model, 4).items()}  # global negatives: all 4
        outputs = model(batch)
        loss = model.loss(outputs, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    held = torch.tensor([model.model.clip.logit_scale.numel()])
    dist.all_reduce(held)
    scale = logit_scale_value(model, outputs)  # the logged value, on a rank with or without the shard
    with torch.no_grad():
        evaluated = model.eval_forward(_batch(model))
    with FSDP.state_dict_type(model.model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=True)):
        state = model.state_dict()
    if rank == 0:
        torch.save({'state': {'model': state}, 'units': units, 'losses': losses, 'held': int(held),
                    'scale': scale, 'eval_shapes': [tuple(evaluated[k].shape) for k in ('text', 'video')]}, out)
    dist.barrier()  # rank 0 has saved before either rank goes on


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


VARIANTS = ('baseline', 'unified')


@pytest.fixture(scope='module')
def fsdp_runs(tmp_path_factory) -> Path:
    """One two-rank torchrun of ``fsdp_worker`` over every variant: the folder of its ``fsdp-{variant}.pt``."""
    out = tmp_path_factory.mktemp('fsdp')
    run = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                          '--master_port', str(_free_port()), __file__, str(out), *VARIANTS],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return out


@pytest.mark.parametrize('variant', VARIANTS)
def test_fsdp_on_two_ranks_trains_evaluates_and_its_checkpoint_loads_without_fsdp(fsdp_runs, variant):
    out = fsdp_runs / f'fsdp-{variant}.pt'
    saved = torch.load(out, weights_only=False)
    plain = _model(variant)
    blocks = len(plain.model.clip.visual.transformer.resblocks) + len(plain.model.clip.text.transformer.resblocks)
    # baseline: the model plus one unit per residual block; TempMe/STOP call blocks piece by piece: one unit
    assert saved['units'] == (1 + blocks if variant == 'baseline' else 1)
    assert saved['losses'][0] == pytest.approx(_first_loss(plain), rel=1e-5)  # same loss as one process
    assert saved['losses'][1] != saved['losses'][0]  # the sharded optimizer step changed the model
    assert saved['held'] == 1  # exactly one rank holds the 1-element logit_scale between steps...
    assert math.isfinite(saved['scale']) and saved['scale'] > 0  # ...and rank 0 still logs a value
    assert saved['eval_shapes'] == [(2, plain.model.clip.config.embed_dim)] * 2
    state = saved['state']['model']
    assert tuple(state['model.clip.logit_scale'].shape) == (1,)
    assert set(state) == set(plain.state_dict())  # clean names: no FSDP prefixes in the checkpoint
    check_checkpoint_matches(out, plain, 'resume')  # [1] in the file vs [] here is accepted
    plain.load_state_dict(state, strict=True)  # 0-d model loads the FSDP run's 1-element logit_scale
    assert plain.model.clip.logit_scale.shape == ()
    assert torch.equal(plain.model.clip.logit_scale.reshape(1), state['model.clip.logit_scale'])
    back = _model(variant)
    prepare_for_fsdp(back, activation_checkpointing=False, per_block_units=back.model.blocks_called_whole)
    back.load_state_dict(plain.state_dict(), strict=True)  # and an FSDP run resumes a DDP checkpoint
    assert torch.equal(back.model.clip.logit_scale, state['model.clip.logit_scale'])


def test_activation_checkpointing_with_tempme_or_stop_is_a_config_error():
    with pytest.raises(ConfigError, match='fsdp.activation_checkpointing=true.*baseline model only'):
        load_config(YAMLS['unified'], ['fsdp={activation_checkpointing: true}'])
    assert load_config(YAMLS['baseline'], ['fsdp={activation_checkpointing: true}']).fsdp.activation_checkpointing


def test_vectorised_logit_scale_trains_like_the_scalar_one():
    scalar, vector = _model(), _model()
    assert vectorise_scalar_parameters(vector) == ['model.clip.logit_scale']
    assert all(p.dim() > 0 for p in vector.parameters())
    vector.load_state_dict(scalar.state_dict(), strict=True)  # 0-d value into the 1-element parameter
    batch = _batch(scalar)
    losses = []
    for m in (scalar, vector):
        torch.manual_seed(1)  # same dropout draws in both
        outputs = m(batch)
        assert outputs['logit_scale'].shape == ()  # the loss and GradCache see a scalar either way
        losses.append(m.loss(outputs, batch))
    assert torch.allclose(*losses)
    for loss in losses:
        loss.backward()
    assert torch.allclose(scalar.model.clip.logit_scale.grad.reshape(1), vector.model.clip.logit_scale.grad)


def test_scalar_and_one_element_shapes_are_the_same_checkpoint_shape():
    assert same_shape_up_to_scalar((), (1,)) and same_shape_up_to_scalar((1,), ())
    assert not same_shape_up_to_scalar((), (2,)) and not same_shape_up_to_scalar((1, 1), (1,))


def test_logged_logit_scale_falls_back_to_the_forward_output_when_this_rank_holds_no_shard():
    model = _model()
    assert math.isclose(logit_scale_value(model), float(model.model.clip.logit_scale.exp()), rel_tol=1e-6)
    model.model.clip.logit_scale = torch.nn.Parameter(torch.empty(0))  # what a rank sees after FSDP sharded it away
    assert math.isclose(logit_scale_value(model, {'logit_scale': torch.tensor(42.0)}), 42.0)
    assert math.isnan(logit_scale_value(model, None))


if __name__ == '__main__':  # a torchrun rank of the two-rank test above
    fsdp_worker(Path(sys.argv[1]), sys.argv[2:])
