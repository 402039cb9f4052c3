"""Training controls: freezing by name, ParameterReport, ClampLogitScale, optimizers (AdamW groups, BertAdam),
fp32 loss under autocast, gradient accumulation that keeps every negative (GradCache), full resume, visibility."""

import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from composer import Trainer
from composer.core import Callback, DataSpec
from torch.utils.data import DataLoader

from tempme_composer.algorithms import (
    ClampLogitScale,
    FreezeParameters,
    GradCache,
    freeze_parameters,
    is_new_module,
)
from tempme_composer.callbacks import ParameterReport
from tempme_composer.callbacks.parameter_report import parameter_table
from tempme_composer.clip import CLIP, CLIP_PRESETS
from tempme_composer.composer_wrapper import RetrievalModel
from tempme_composer.config import load_config
from tempme_composer.errors import ConfigError, FreezeError
from tempme_composer.model import UnifiedModel
from tempme_composer.model.loss import symmetric_infonce
from tempme_composer.optim import BertAdam, build_optimizer, param_groups, warmup_cosine
from tempme_composer.train import train

sys.path.insert(0, str(Path(__file__).parents[1] / 'scripts'))
from batches import random_train_batch  # noqa: E402
from grad_accum_on_ranks import _Rows, one_step  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / 'yamls' / 'demo.yaml'
SEED_SESSION = REPO / 'yamls' / 'demo_seed_session.yaml'
GRAD_SCRIPT = Path(__file__).parents[1] / 'scripts' / 'grad_accum_on_ranks.py'


def tiny_model() -> RetrievalModel:
    torch.manual_seed(0)
    return RetrievalModel(UnifiedModel(CLIP(CLIP_PRESETS['tiny'])))


def tiny_trainer(model, *, batches=2, batch=8, microbatch=8, algorithms=(), callbacks=(), optimizer=None, **kw):
    data = random_train_batch(batch * batches, model.model.clip.config, seed=1)
    loader = DataLoader(_Rows(data), batch_size=batch, shuffle=False)
    return Trainer(
        model=model,
        train_dataloader=DataSpec(loader),
        max_duration=f'{batches}ba',
        optimizers=optimizer or torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0),
        algorithms=list(algorithms),
        callbacks=list(callbacks),
        device='cpu',
        precision='fp32',
        device_train_microbatch_size=microbatch,
        progress_bar=False,
        seed=0,
        **kw,
    )


# ---------------------------------------------------------------- freezing


def test_freeze_clip_keeps_only_what_keep_substrings_names():
    model = tiny_model()
    report = freeze_parameters(model, freeze_clip=True, keep_substrings=['logit_scale'])
    assert report.trainable == ('model.clip.logit_scale',)
    assert report.num_trainable == 1 and report.num_total == sum(p.numel() for p in model.parameters())
    assert not model.model.clip.visual.conv1.weight.requires_grad


def test_freeze_clip_keeps_new_modules_trainable():
    model = tiny_model()
    prompt = torch.nn.Parameter(torch.zeros(4, 128))
    model.model.clip.visual.register_parameter('prompt_embeddings', prompt)
    report = freeze_parameters(model, freeze_clip=True)
    assert report.trainable == ('model.clip.visual.prompt_embeddings',)
    assert is_new_module('model.clip.visual.TemporalPrompt.conv.weight') and is_new_module('x.LoRA_q.weight')
    groups = param_groups(model, lr=1e-4, coef_lr=1e-3, weight_decay=0.2)
    assert len(groups) == 1 and groups[0]['lr'] == 1e-4  # new modules at the full lr


def test_freeze_substrings_and_keep_wins():
    model = tiny_model()
    report = freeze_parameters(model, freeze_substrings=['visual.ln_', 'text.ln_'], keep_substrings=['ln_post'])
    frozen = set(report.frozen)
    assert 'model.clip.visual.ln_pre.weight' in frozen and 'model.clip.text.ln_final.bias' in frozen
    assert 'model.clip.visual.ln_post.weight' not in frozen  # keep wins
    assert 'model.clip.visual.transformer.resblocks.0.ln_1.weight' not in frozen  # case-sensitive substring
    assert len(frozen) == 4


def test_substring_matching_nothing_lists_the_closest_names():
    with pytest.raises(FreezeError, match=r"'visul\.ln_' matches no parameter.*model\.clip\.visual\.ln_"):
        freeze_parameters(tiny_model(), freeze_substrings=['visul.ln_'])
    with pytest.raises(FreezeError, match=r"'logit_scal3' matches no parameter.*logit_scale"):
        freeze_parameters(tiny_model(), keep_substrings=['logit_scal3'])


def test_absent_new_modules_in_keep_substrings_only_warn(caplog):
    with caplog.at_level(logging.WARNING, logger='tempme_composer'):
        report = freeze_parameters(tiny_model(), True, [], ['logit_scale', 'LoRA', 'prompt', 'TemporalPrompt'])
    assert report.absent_new_modules == ('LoRA', 'prompt', 'TemporalPrompt')
    assert 'not enabled' in caplog.text


def test_freezing_everything_is_an_error():
    with pytest.raises(FreezeError, match='no trainable parameter'):
        freeze_parameters(tiny_model(), freeze_clip=True)


def test_optimizer_gets_trainable_parameters_only():
    model = tiny_model()
    freeze_parameters(model, freeze_substrings=['visual.'])
    opt = build_optimizer(model, 'AdamW', lr=1e-3)
    in_opt = {id(p) for g in opt.param_groups for p in g['params']}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}


def test_freeze_algorithm_at_init_prunes_an_existing_optimizer_and_frozen_weights_stay_put():
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    algo = FreezeParameters(freeze_substrings=['visual.'])
    trainer = tiny_trainer(model, algorithms=[algo], optimizer=opt)
    in_opt = {id(p) for g in opt.param_groups for p in g['params']}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad} and algo.report is not None
    trainer.fit()
    for n, p in model.named_parameters():
        if 'visual.' in n:
            assert torch.equal(p, before[n]), n
    assert not torch.equal(model.model.clip.text.text_projection, before['model.clip.text.text_projection'])
    trainer.close()


def test_parameter_report_table_and_trainable_names_file(tmp_path):
    model = tiny_model()
    freeze_parameters(model, freeze_clip=True, keep_substrings=['logit_scale', 'visual.proj'])
    table, counts = parameter_table(model)
    assert set(counts) == {'clip.visual', 'clip.text', 'clip.logit_scale'}
    assert counts['clip.logit_scale'] == (1, 1) and counts['clip.text'][0] == 0
    assert 'total' in table and 'trainable %' in table
    report = ParameterReport(tmp_path)
    trainer = tiny_trainer(model, batches=1, callbacks=[report])
    trainer.fit()
    names = (tmp_path / 'trainable_parameters.txt').read_text().split()
    assert sorted(names) == ['model.clip.logit_scale', 'model.clip.visual.proj']
    trainer.close()


# ---------------------------------------------------------------- logit_scale clamp


class _Count(Callback):
    def __init__(self) -> None:
        self.forwards = 0

    def before_forward(self, state, logger) -> None:
        self.forwards += 1


class _CountingClamp(ClampLogitScale):
    calls = 0

    def apply(self, event, state, logger):
        type(self).calls += 1
        return super().apply(event, state, logger)


def test_clamp_runs_once_per_optimizer_step_with_gradient_accumulation():
    model = tiny_model()
    with torch.no_grad():
        model.model.clip.logit_scale.fill_(10.0)
    clamp, count = _CountingClamp(), _Count()
    trainer = tiny_trainer(model, batches=2, batch=8, microbatch=2, algorithms=[clamp], callbacks=[count])
    trainer.fit()
    assert count.forwards == 8 and _CountingClamp.calls == 2  # 2 steps x 4 microbatches; 2 clamps
    assert model.model.clip.logit_scale.item() == pytest.approx(4.6052)
    trainer.close()


def test_clamp_leaves_a_frozen_logit_scale_alone():
    model = tiny_model()
    with torch.no_grad():
        model.model.clip.logit_scale.fill_(10.0)
    freeze_parameters(model, freeze_substrings=['logit_scale'])
    trainer = tiny_trainer(model, batches=1, algorithms=[ClampLogitScale(0.1, 4.6052)])
    trainer.fit()
    assert model.model.clip.logit_scale.item() == 10.0
    trainer.close()


# ---------------------------------------------------------------- optimizers


def test_param_groups_decay_and_coef_lr():
    model = tiny_model()
    groups = param_groups(model, lr=1e-4, coef_lr=0.01, weight_decay=0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {names[id(p)]: g for g in groups for p in g['params']}
    assert len(by_name) == len(names)
    for n in ('model.clip.logit_scale', 'model.clip.visual.ln_pre.weight', 'model.clip.text.token_embedding.weight',
              'model.clip.visual.class_embedding',
              'model.clip.text.transformer.resblocks.0.attn.in_proj_bias'):
        assert by_name[n]['weight_decay'] == 0.0, n
    assert by_name['model.clip.visual.transformer.resblocks.0.attn.in_proj_weight']['weight_decay'] == 0.2
    assert all(g['lr'] == pytest.approx(1e-6) for g in groups)  # every parameter here is pretrained CLIP


def test_warmup_cosine_schedule():
    assert warmup_cosine(0.0, 0.1) == 0.0
    assert warmup_cosine(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.1, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert warmup_cosine(1.0, 0.1) == pytest.approx(0.0)


def test_bert_adam_step_matches_the_formula_and_accepts_a_closure():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = BertAdam([p], lr=0.1, warmup=0.1, t_total=10, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                   max_grad_norm=0.0)
    g = torch.tensor([0.5, 0.25])
    p.grad = g.clone()
    assert opt.step(closure=lambda: 7.0) == 7.0
    assert torch.equal(p.detach(), torch.tensor([1.0, -2.0]))  # step 0: warmup factor 0
    before = p.detach().clone()
    p.grad = g.clone()
    opt.step()
    m = 0.9 * (0.1 * g) + 0.1 * g
    v = 0.999 * (0.001 * g * g) + 0.001 * g * g
    update = m / (v.sqrt() + 1e-6) + 0.01 * before
    lr = 0.1 * warmup_cosine(1 / 10, 0.1)
    torch.testing.assert_close(p.detach(), before - lr * update)


def test_bert_adam_clips_each_tensor():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = BertAdam([p], lr=1.0, max_grad_norm=1.0, weight_decay=0.0)
    p.grad = torch.tensor([30.0, 40.0])
    opt.step()
    torch.testing.assert_close(opt.state[p]['exp_avg'], 0.1 * torch.tensor([0.6, 0.8]))


# ---------------------------------------------------------------- precision


def test_loss_is_fp32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=-1)
    ref = symmetric_infonce(t, v, torch.tensor(30.0))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = symmetric_infonce(t.bfloat16(), v.bfloat16(), torch.tensor(30.0))
        exact = symmetric_infonce(t, v, torch.tensor(30.0))
    assert loss.dtype == torch.float32 and exact.dtype == torch.float32
    assert exact.item() == ref.item()  # the similarity matmul did not drop to bf16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_amp_bf16_training_runs_on_gpu(tmp_path):
    trainer = train(load_config(DEMO, small_demo(tmp_path, 'precision=amp_bf16', 'epochs=1', 'gradient_accumulation_steps=2')))
    assert trainer.state.precision.value == 'amp_bf16'
    trainer.close()


def test_amp_on_cpu_is_a_config_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip('has a GPU')
    with pytest.raises(ConfigError, match='needs a GPU'):
        train(load_config(DEMO, small_demo(tmp_path, 'precision=amp_bf16')))


# ---------------------------------------------------------------- gradient accumulation (GradCache)


def assert_grads_close(actual: dict, expected: dict) -> None:
    """fp32 agreement: relative 1e-4, absolute 1e-5 of the tensor's largest entry (summation order differs)."""
    for name, grad in expected.items():
        atol = 1e-5 * float(grad.abs().max()) + 1e-12
        torch.testing.assert_close(actual[name], grad, rtol=1e-4, atol=atol, msg=name)


def test_accumulated_gradients_equal_full_batch_gradients():
    full, accumulated = one_step(8, 1), one_step(8, 4)
    assert accumulated['loss'] == pytest.approx(full['loss'], rel=1e-6)  # the logged loss is the true loss
    assert full['grads'].keys() == accumulated['grads'].keys() and len(full['grads']) > 10
    assert_grads_close(accumulated['grads'], full['grads'])


def test_plain_microbatching_would_lose_negatives():
    """The control: without GradCache, 4 microbatches give different gradients (the bug GradCache fixes)."""
    model = tiny_model()
    rec = {}

    class Grab(Callback):
        def after_train_batch(self, state, logger):
            rec.update({n: p.grad.clone() for n, p in state.model.named_parameters() if p.grad is not None})

    tiny_trainer(model, batches=1, microbatch=2, callbacks=[Grab()]).fit()
    full = one_step(8, 1)['grads']
    assert not torch.allclose(rec['model.clip.logit_scale'], full['model.clip.logit_scale'], rtol=1e-3)


def test_gradcache_stores_row_aligned_tensors():
    model = tiny_model()
    seen = {}

    class Peek(Callback):
        def before_forward(self, state, logger):
            seen.setdefault('keys', sorted(state.batch))
            seen.setdefault('rows', state.batch['gradcache_text_grad'].shape)

    tiny_trainer(model, batches=1, microbatch=2, algorithms=[GradCache()], callbacks=[Peek()]).fit()
    assert {'gradcache_text_grad', 'gradcache_video_grad', 'gradcache_scale_grad', 'gradcache_loss'} <= set(seen['keys'])
    assert seen['rows'][0] == 2  # split with the microbatch


@pytest.mark.multiprocess
def test_accumulated_gradients_under_ddp_equal_one_rank_full_batch(tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    out = tmp_path / 'two.pt'
    cmd = [sys.executable, '-m', 'composer.cli.launcher', '-n', '2', str(GRAD_SCRIPT), str(out), '16', '4']
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    double = torch.load(out)
    single = one_step(16, 1)
    assert double['loss'] == pytest.approx(single['loss'], rel=1e-5)
    assert single['grads'].keys() == double['grads'].keys()
    assert_grads_close(double['grads'], single['grads'])


def test_accumulation_must_divide_the_per_rank_batch(tmp_path):
    with pytest.raises(ConfigError, match='gradient_accumulation_steps=3 must divide the per-rank batch 8'):
        train(load_config(DEMO, small_demo(tmp_path, 'gradient_accumulation_steps=3')))


def test_config_checks(tmp_path):
    with pytest.raises(ConfigError, match='save_interval'):
        load_config(DEMO, ['output_dir=x', 'save_interval=3'])
    with pytest.raises(ConfigError, match='min < max'):
        load_config(DEMO, ['output_dir=x', 'logit_scale_clamp.min=5'])
    with pytest.raises(ConfigError, match='gradient_accumulation_steps'):
        load_config(DEMO, ['output_dir=x', 'gradient_accumulation_steps=0'])
    assert load_config(DEMO, ['output_dir=x', 'logit_scale_clamp=null']).logit_scale_clamp is None
    with pytest.raises(ConfigError, match=r"'visul\.ln_' matches no parameter"):
        train(load_config(DEMO, small_demo(tmp_path, 'freeze_substrings=[visul.ln_]')))


# ---------------------------------------------------------------- end to end


def small_demo(tmp_path: Path, *extra: str, run: str = 'run') -> list[str]:
    """Overrides that shrink the demo to seconds: 24 train / 12 eval videos (3 batches of 8 per epoch)."""
    return [
        f'output_dir={tmp_path / run}',
        f'data.demo.root={tmp_path.parent / "demo_data_controls"}',  # shared by the tests of this module
        'data.demo.num_train=24',
        'data.demo.num_eval=12',
        'epochs=2',
        'batch_size=8',
        'batch_size_val=6',
        'data.num_workers=0',
        'n_display=1',
        *extra,
    ]


def _scalar_tags(tb_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in tb_dir.rglob('events.out.tfevents.*'):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()['scalars'])
    return tags


@pytest.mark.e2e
def test_seed_session_yaml_runs_and_logs_everything(tmp_path, caplog):
    overrides = small_demo(tmp_path, 'epochs=1', 'data.max_frames=4')
    overrides = [o for o in overrides if not o.startswith('n_display')] + ['n_display=1']
    with caplog.at_level(logging.INFO, logger='tempme_composer'):
        trainer = train(load_config(SEED_SESSION, overrides))
    cfg_run = tmp_path / 'run'
    assert (cfg_run / 'trainable_parameters.txt').read_text().split() == ['model.clip.logit_scale']
    (report,) = [cb for cb in trainer.state.callbacks if isinstance(cb, ParameterReport)]
    assert 'clip.logit_scale' in report.table and 'clip.visual' in report.table
    assert trainer.state.device_train_microbatch_size == 4  # 8 per rank / 2
    trainer.close()
    tags = _scalar_tags(cfg_run / 'tensorboard')
    for tag in ('loss/train/total', 'lr-AdamW/group0', 'train/logit_scale', 'memory/peak_rss_mib',
                'params/trainable', 'params/total', 'throughput/batches_per_sec'):
        assert tag in tags, (tag, sorted(tags))


@pytest.mark.e2e
def test_bert_adam_trains_checkpoints_and_resumes(tmp_path):
    trainer = train(load_config(DEMO, small_demo(tmp_path, 'optimizer.optim=BertAdam', 'epochs=1',
                                                 'optimizer.clip_grad_norm=1.0')))
    assert trainer.state.schedulers == []
    trainer.close()
    trainer = train(load_config(DEMO, small_demo(tmp_path, 'optimizer.optim=BertAdam', 'epochs=2', 'autoresume=true',
                                                 'optimizer.clip_grad_norm=1.0')))
    (opt,) = trainer.state.optimizers
    assert isinstance(opt, BertAdam) and int(trainer.state.timestamp.batch) == 6
    steps = {int(s['step']) for s in opt.state.values()}
    assert steps == {6}  # 3 steps restored from the checkpoint + 3 more
    assert opt.param_groups[0]['t_total'] == 6
    trainer.close()


@pytest.mark.e2e
@pytest.mark.multiprocess
def test_sigkill_mid_epoch_then_autoresume_ends_with_the_uninterrupted_weights(tmp_path):
    common = ('save_interval=2ba', 'autoresume=true')
    # Uninterrupted reference, in this process.
    trainer = train(load_config(DEMO, small_demo(tmp_path, *common, run='full')))
    trainer.close()
    # The same run in a subprocess, SIGKILLed once the batch-2 checkpoint (mid-epoch 1 of 3 batches) is latest.
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    cmd = [sys.executable, '-m', 'composer.cli.launcher', '-n', '1', str(REPO / 'recipes' / 'train.py'), str(DEMO)]
    proc = subprocess.Popen(cmd + small_demo(tmp_path, *common, run='killed'), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = tmp_path / 'killed' / 'checkpoints' / 'latest-rank0.pt'
    deadline = time.time() + 300
    try:
        while not latest.is_symlink():
            assert proc.poll() is None, 'the run ended before its first checkpoint'
            assert time.time() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its training process
        proc.wait()
    assert os.readlink(latest) == 'ep0-ba2-rank0.pt'
    # Resume (in this process) with the same command line.
    trainer = train(load_config(DEMO, small_demo(tmp_path, *common, run='killed')))
    trainer.close()
    final = {}
    for run in ('full', 'killed'):
        ckpt = torch.load(tmp_path / run / 'checkpoints' / 'latest-rank0.pt', weights_only=False)
        assert int(ckpt['state']['timestamp']['Timestamp']['batch']) == 6
        final[run] = ckpt['state']['model']
    assert final['full'].keys() == final['killed'].keys()
    for key, value in final['full'].items():
        assert torch.equal(final['killed'][key], value), key
