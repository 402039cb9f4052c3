"""FSDP option on CPU: torch's FullyShardedDataParallel (gloo, one rank) wraps the model the way the recipe
prepares it, trains a step, and its full checkpoint loads into a plain (DDP-shaped) model and back.

Composer 0.32's own FSDP path needs CUDA (see README "Scale out"), so the end-to-end FSDP run is the gpu test in
test_ddp_resume.py; this checks the part that does not need a GPU: what torch's FSDP asks of our model.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import torch

from tempme_composer.callbacks.training_scalars import logit_scale_value
from tempme_composer.config import load_config
from tempme_composer.fsdp import prepare_for_fsdp, same_shape_up_to_scalar, vectorise_scalar_parameters
from tempme_composer.preflight import check_checkpoint_matches

REPO = Path(__file__).resolve().parents[1]
UNIFIED = REPO / 'yamls' / 'demo_unified.yaml'


def _model():
    from tempme_composer.composer_model import RetrievalModel
    from tempme_composer.train import build_model

    torch.manual_seed(0)
    return RetrievalModel(build_model(load_config(UNIFIED, [])))


def _batch(model, batch: int = 2) -> dict[str, torch.Tensor]:
    cfg = load_config(UNIFIED, [])
    side = model.model.clip.config.image_resolution
    frames = cfg.data.max_frames
    return {'video': torch.randn(batch, frames, 3, side, side), 'video_mask': torch.ones(batch, frames),
            'text_ids': torch.randint(1, 100, (batch, model.model.clip.config.context_length))}


def fsdp_round_trip(out: Path) -> None:
    """Run in a fresh process (its own process group): wrap, train one step, save a full state dict."""
    import functools
    import os

    import torch.distributed as dist
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=os.environ.get('FSDP_TEST_PORT', '29541'))
    dist.init_process_group('gloo', rank=0, world_size=1)
    model = _model()
    unprepared = _model()
    try:
        FSDP(unprepared, device_id=torch.device('cpu'), use_orig_params=True)
        raise AssertionError('torch FSDP accepted the 0-d logit_scale: this test no longer checks anything')
    except ValueError as e:
        assert 'scalar parameters' in str(e), e
    prepare_for_fsdp(model, activation_checkpointing=False)
    flagged = functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda m: getattr(m, '_fsdp_wrap', False))
    wrapped = FSDP(model, device_id=torch.device('cpu'), use_orig_params=True, auto_wrap_policy=flagged)
    units = sum(isinstance(m, FSDP) for m in wrapped.modules())
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
    batch = _batch(model)
    loss = model.loss(wrapped(batch), batch)
    loss.backward()
    optimizer.step()
    with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=False)):
        state = wrapped.state_dict()
    torch.save({'state': {'model': state}, 'units': units, 'loss': float(loss)}, out)
    dist.destroy_process_group()


def test_fsdp_wraps_the_prepared_model_and_its_checkpoint_loads_without_fsdp(tmp_path):
    out = tmp_path / 'fsdp.pt'
    code = f'import sys; sys.path.insert(0, {str(REPO / "tests")!r}); import test_fsdp; ' \
           f'test_fsdp.fsdp_round_trip(__import__("pathlib").Path({str(out)!r}))'
    run = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    saved = torch.load(out, weights_only=False)
    plain = _model()
    vision_blocks = len(plain.model.clip.visual.transformer.resblocks)
    text_blocks = len(plain.model.clip.text.transformer.resblocks)
    assert saved['units'] == 1 + vision_blocks + text_blocks  # root + one unit per residual block
    state = saved['state']['model']
    assert tuple(state['model.clip.logit_scale'].shape) == (1,)
    assert set(state) == set(plain.state_dict())  # clean names: no FSDP prefixes in the checkpoint
    check_checkpoint_matches(out, plain, 'resume')  # [1] in the file vs [] here is accepted
    plain.load_state_dict(state, strict=True)  # 0-d model loads the FSDP run's 1-element logit_scale
    assert plain.model.clip.logit_scale.shape == ()
    assert torch.equal(plain.model.clip.logit_scale.reshape(1), state['model.clip.logit_scale'])
    back = _model()
    prepare_for_fsdp(back, activation_checkpointing=False)
    back.load_state_dict(plain.state_dict(), strict=True)  # and an FSDP run resumes a DDP checkpoint
    assert torch.equal(back.model.clip.logit_scale, state['model.clip.logit_scale'])


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
