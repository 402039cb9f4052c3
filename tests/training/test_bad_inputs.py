"""The bad-input matrix: each bad input gives one clear message naming the input and the fix, and nothing
already saved is lost (docs/troubleshooting.md)."""

import errno
import fractions
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from composer.utils import checkpoint as composer_checkpoint
from real_annotations import ANNOTATIONS
from streaming import MDSWriter
from video_fixtures import PALETTE, write_video

import tempme_composer.composer_wrapper as composer_wrapper
from tempme_composer.checkpointing.best_checkpoint import BestCheckpoint
from tempme_composer.checkpointing.safe_load import safe_torch_load
from tempme_composer.config import load_config
from tempme_composer.data.convert import main as convert
from tempme_composer.errors import CheckpointRefusedError, ConfigError, NonFiniteLossError, RecipeError
from tempme_composer.train import main, train

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / 'yamls' / 'demo.yaml'


def args(root: Path, run: str, *extra: str) -> list[str]:
    """24 train / 12 eval demo videos, 3 train batches of 8 per epoch, a checkpoint every 2 batches."""
    return [
        f'output_dir={root / run}',
        'run_name=bad',
        f'data.demo.root={root / "data"}',
        'data.demo.num_train=24',
        'data.demo.num_eval=12',
        'epochs=1',
        'batch_size=8',
        'batch_size_val=6',
        'save_interval=2ba',
        'data.num_workers=0',
        'n_display=100',
        *extra,
    ]


def on_disk(folder: Path) -> dict[str, str]:
    """Every file (symlinks as their target) and a digest of its bytes."""
    files = {}
    for p in sorted(folder.iterdir()):
        files[p.name] = f'-> {os.readlink(p)}' if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return files


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> Path:
    """One epoch with an eval batch larger than the eval set (must just work); returns the root."""
    root = tmp_path_factory.mktemp('bad')
    train(load_config(DEMO, args(root, 'ok', 'batch_size_val=64'))).close()
    results = json.loads((root / 'ok' / 'eval-demo.json').read_text())['results']
    assert results['num_videos'] == 12  # batch_size_val=64 > 12 eval videos: one short batch, all counted
    return root


def resumed(root: Path, name: str) -> Path:
    """A copy of the trained run, to continue with autoresume (epoch 2: batches 4-6, a checkpoint at 4)."""
    shutil.copytree(root / 'ok', root / name, symlinks=True)
    return root / name


# ---------------------------------------------------------------- works, and says so


def test_more_frames_than_stored_is_padded_and_logged(trained, capsys):
    root = trained
    trainer = train(load_config(DEMO, args(root, 'frames', 'do_train=false', 'do_eval=true',
                                           f'resume={root / "ok" / "checkpoints" / "best.pt"}',
                                           'data.max_frames=48', 'batch_size_val=64')))
    trainer.close()
    out = capsys.readouterr().out  # the recipe logs to stdout
    assert 'data.max_frames=48 but the longest video of the first eval batch has' in out
    assert 'masked out of the mean pooling' in out
    assert json.loads((root / 'frames' / 'eval-demo.json').read_text())['results']['num_videos'] == 12


# ---------------------------------------------------------------- config and data


def test_mistyped_key_and_missing_resume_are_config_errors(tmp_path, capsys):
    assert main([str(DEMO), f'output_dir={tmp_path}', 'optimizer.lrr=1']) == 2
    assert "unknown key 'optimizer.lrr' in the command-line overrides; did you mean 'optimizer.lr'?" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r'resume=.*nope\.pt: no such checkpoint file'):
        train(load_config(DEMO, args(tmp_path, 'r', f'resume={tmp_path / "nope.pt"}')))


def _real_data(tmp_path: Path, train_dir: Path, eval_dir: Path) -> list[str]:
    return args(tmp_path, 'run', 'data.datatype=msrvtt', 'data.demo=null', f'data.train.local={train_dir}',
                f'data.eval.local={eval_dir}')


def test_missing_data_folder(trained, tmp_path, capsys):
    root = trained
    code = main([str(DEMO), *_real_data(tmp_path, tmp_path / 'nowhere', root / 'data' / 'mds' / 'eval')])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith('error: data.train: the dataset folder') and 'nowhere' in err
    assert 'does not exist' in err and 'tempme-convert' in err and 'Traceback' not in err


def test_empty_dataset(trained, tmp_path):
    root = trained
    empty = tmp_path / 'empty'
    with MDSWriter(out=str(empty), columns={'video_id': 'str'}, compression=None):
        pass
    with pytest.raises(RecipeError, match=r"data.eval: the dataset '.*empty' has zero samples.*skipped.csv"):
        train(load_config(DEMO, _real_data(tmp_path, root / 'data' / 'mds' / 'train', empty)))


def test_truncated_shard(trained, tmp_path):
    root = trained
    copy = tmp_path / 'train'
    shutil.copytree(root / 'data' / 'mds' / 'train', copy)
    shard = copy / 'shard.00000.mds'
    size = shard.stat().st_size
    with open(shard, 'r+b') as f:
        f.truncate(size // 2)
    with pytest.raises(RecipeError, match=rf'data.train: shard .*shard.00000.mds is {size // 2} bytes but .* says '
                                          rf'{size}, so the file is truncated.*Copy the folder again'):
        train(load_config(DEMO, _real_data(tmp_path, copy, root / 'data' / 'mds' / 'eval')))


def test_corrupt_shard_of_the_right_size(trained, tmp_path):
    root = trained
    copy = tmp_path / 'train'
    shutil.copytree(root / 'data' / 'mds' / 'train', copy)
    shard = copy / 'shard.00000.mds'
    size = shard.stat().st_size
    with open(shard, 'r+b') as f:  # flip one byte in the middle: same size, different content
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    overrides = _real_data(tmp_path, copy, root / 'data' / 'mds' / 'eval')
    with pytest.raises(RecipeError, match=r'data.train: shard .*shard.00000.mds has the right size but its xxh64 hash '
                                          r'does not match.*Copy the folder again'):
        train(load_config(DEMO, overrides))
    # The check can be switched off (the corrupt bytes then surface, or not, when that sample is decoded).
    assert load_config(DEMO, [*overrides, 'data.validate_hash=false']).data.validate_hash is False


def test_train_batch_larger_than_the_train_set(trained, tmp_path):
    root = trained
    with pytest.raises(ConfigError, match=r'batch_size=32 is larger than the training set \(24 videos per rank.*'
                                          r'zero batches. Lower batch_size'):
        train(load_config(DEMO, args(root, 'big', 'batch_size=32')))


def test_eval_on_a_smaller_test_gallery_says_so(trained, tmp_path, capsys):
    """A converted MSR-VTT 1k-A subset (real ids) with a missing and a non-video file: the metric lines come
    with '3 of 5 test videos', also in eval-msrvtt.json."""
    root = trained
    rows = (ANNOTATIONS / 'msrvtt' / 'MSRVTT_JSFUSION_test.csv').read_bytes().split(b'\r\n')
    (tmp_path / 'MSRVTT_JSFUSION_test.csv').write_bytes(b'\r\n'.join(rows[:6]) + b'\r\n')
    ids = [r.split(b',')[2].decode() for r in rows[1:6]]
    for i, video_id in enumerate(ids[:3]):
        write_video(tmp_path / 'videos' / f'{video_id}.mp4', seconds=3, colours=[PALETTE[i]])
    (tmp_path / 'videos' / f'{ids[3]}.mp4').write_text('not a video')  # ids[4]: no file
    assert convert(['msrvtt', '--test-csv', str(tmp_path / 'MSRVTT_JSFUSION_test.csv'), '--videos',
                    str(tmp_path / 'videos'), '--out', str(tmp_path / 'mds'), '--size', '32', '--workers', '1',
                    '--no-progress', '--max-failed-fraction', '1']) == 0
    capsys.readouterr()
    trainer = train(load_config(DEMO, args(root, 'gallery', 'do_train=false', 'do_eval=true', 'data.datatype=msrvtt',
                                           'data.demo=null', f'data.eval.local={tmp_path / "mds"}',
                                           'data.eval.split=test', f'resume={root / "ok" / "checkpoints" / "best.pt"}')))
    trainer.close()
    out = capsys.readouterr().out
    note = (f'gallery: 3 of 5 test videos of msrvtt/test (2 not converted, reasons in {tmp_path / "mds" / "test"}'
            '/skipped.csv): these metrics are NOT comparable with published tables, which rank against all 5')
    assert note in out and out.index('Text-to-Video:') < out.index(note)
    record = json.loads((root / 'gallery' / 'eval-msrvtt.json').read_text())
    assert record['results']['num_videos'] == 3 and record['gallery_note'] == note


# ---------------------------------------------------------------- checkpoints of another model


def test_checkpoint_of_another_architecture(trained):
    root = trained
    best = root / 'ok' / 'checkpoints' / 'best.pt'
    with pytest.raises(RecipeError, match=r'resume=.*best.pt was saved from a different model .* keys with another shape: '
                                          r'model.clip.*in the file vs .* here.*Set model\.\* to the values'):
        train(load_config(DEMO, args(root, 'arch', 'do_train=false', 'do_eval=true', f'resume={best}',
                                     'model.clip.preset=ViT-B/32')))


def test_checkpoint_of_another_model_variant(trained, tmp_path):
    root = trained
    ckpt = torch.load(root / 'ok' / 'checkpoints' / 'best.pt', weights_only=False)
    model = ckpt['state']['model']
    model['model.clip.visual.transformer.resblocks.0.attn.LoRA_q.weight'] = torch.zeros(4, 128)  # a LoRA run
    del model['model.clip.logit_scale']
    torch.save(ckpt, tmp_path / 'lora.pt')
    with pytest.raises(RecipeError) as info:
        train(load_config(DEMO, args(root, 'variant', 'do_train=false', 'do_eval=true', f'resume={tmp_path / "lora.pt"}')))
    msg = str(info.value)
    assert '1 keys missing from the file: model.clip.logit_scale.' in msg
    assert '1 keys unexpected (only in the file): model.clip.visual.transformer.resblocks.0.attn.LoRA_q' in msg
    assert 'another model variant (LoRA' in msg


def test_autoresume_into_another_architecture(trained):
    root = trained
    run = resumed(root, 'auto-arch')
    before = on_disk(run / 'checkpoints')
    with pytest.raises(RecipeError, match=r'autoresume \(the latest checkpoint of .*auto-arch\)=.*latest-rank0.pt was '
                                          r'saved from a different model.*config.yaml'):
        train(load_config(DEMO, args(root, 'auto-arch', 'autoresume=true', 'epochs=2', 'model.clip.preset=ViT-B/16')))
    assert on_disk(run / 'checkpoints') == before


# ---------------------------------------------------------------- checkpoints whose pickle would run code


class Payload:
    """Unpickling this runs ``touch MARKER``: what a shared checkpoint could do to whoever resumes from it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def _with_metadata(src: Path, dst: Path, value: object) -> Path:
    ckpt = torch.load(src, weights_only=False)  # our own file
    ckpt['state']['metadata']['extra'] = value
    torch.save(ckpt, dst)
    return dst


def test_checkpoint_that_runs_code_is_refused(trained, tmp_path, capsys):
    root = trained
    marker = tmp_path / 'PWNED'
    shared = _with_metadata(root / 'ok' / 'checkpoints' / 'best.pt', tmp_path / 'shared.pt', Payload(marker))
    overrides = args(root, 'evil', 'do_train=false', 'do_eval=true', f'resume={shared}')
    with pytest.raises(CheckpointRefusedError) as info:
        train(load_config(DEMO, overrides))
    assert not marker.exists()
    msg = str(info.value)
    assert msg.startswith(f'resume={shared}: refusing to load checkpoint {shared}: its pickle calls the global '
                          'posix.system, which is not one of the types')
    assert f'tempme-export {shared} --out DIR' in msg and 'allow_unsafe_checkpoint=true' in msg
    assert main([str(DEMO), *overrides]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: resume={shared}: refusing') and 'Traceback' not in err and not marker.exists()
    # autoresume: the run's own latest-rank0.pt replaced by such a file is refused too, and nothing is touched.
    run = resumed(root, 'evil-auto')
    latest = run / 'checkpoints' / os.readlink(run / 'checkpoints' / 'latest-rank0.pt')
    _with_metadata(latest, latest, Payload(marker))
    before = on_disk(run / 'checkpoints')
    with pytest.raises(CheckpointRefusedError, match=r'autoresume \(the latest checkpoint of .*evil-auto\)=.*'
                                                     r'latest-rank0.pt: refusing .* the global posix.system'):
        train(load_config(DEMO, args(root, 'evil-auto', 'autoresume=true', 'epochs=2')))
    assert not marker.exists() and on_disk(run / 'checkpoints') == before


def test_unlisted_type_needs_allow_unsafe_checkpoint(trained, tmp_path):
    root = trained
    other = _with_metadata(root / 'ok' / 'checkpoints' / 'best.pt', tmp_path / 'other.pt', fractions.Fraction(1, 3))
    overrides = args(root, 'other', 'do_train=false', 'do_eval=true', f'resume={other}')
    with pytest.raises(CheckpointRefusedError, match=r'the global fractions\.Fraction, which is not one of'):
        train(load_config(DEMO, overrides))
    train(load_config(DEMO, [*overrides, 'allow_unsafe_checkpoint=true'])).close()  # the user trusts it
    assert json.loads((root / 'other' / 'eval-demo.json').read_text())['results']['num_videos'] == 12


def test_every_checkpoint_kind_the_recipe_writes_loads(trained, tmp_path):
    """best.pt, ep*-ba*-rank0.pt and the latest-rank0.pt symlink of an AdamW run; then BertAdam with GradCache,
    LoRA and TempMe: written, checked by the allowlist and loaded by Composer (eval, resume=, autoresume)."""
    root = trained
    ckpts = root / 'ok' / 'checkpoints'
    kinds = sorted(p.name for p in ckpts.glob('*.pt'))
    assert kinds == ['best.pt', 'ep1-ba3-rank0.pt', 'latest-rank0.pt']
    for name in kinds:
        assert safe_torch_load(ckpts / name, mmap=True)['state']['model']
    eval_run = train(load_config(DEMO, args(root, 'eval-ep', 'do_train=false', 'do_eval=true',
                                            f'resume={ckpts / "ep1-ba3-rank0.pt"}')))
    eval_run.close()
    variant = ['optimizer.optim=BertAdam', 'gradient_accumulation_steps=2', 'model.lora.enabled=true',
               'model.tempme.enabled=true', 'model.tempme.merge_layers=[0,1]', 'model.tempme.merge_frame_num=[2,2]']
    train(load_config(DEMO, args(tmp_path, 'bert', *variant, f'data.demo.root={root / "data"}'))).close()
    files = tmp_path / 'bert' / 'checkpoints'
    for name in ('best.pt', 'ep1-ba3-rank0.pt', 'latest-rank0.pt'):
        state = safe_torch_load(files / name, mmap=True)['state']
        assert any('LoRA' in k for k in state['model'])
    assert 'BertAdam' in safe_torch_load(files / 'latest-rank0.pt')['state']['optimizers']
    trainer = train(load_config(DEMO, args(tmp_path, 'bert', *variant, f'data.demo.root={root / "data"}',
                                           'autoresume=true', 'epochs=2')))
    assert int(trainer.state.timestamp.epoch) == 2 and int(trainer.state.timestamp.batch) == 6
    trainer.close()
    trainer = train(load_config(DEMO, args(tmp_path, 'bert-resume', *variant, f'data.demo.root={root / "data"}',
                                           f'resume={files / "ep1-ba3-rank0.pt"}', 'epochs=2')))
    assert int(trainer.state.timestamp.batch) == 6  # continued from batch 3
    trainer.close()


# ---------------------------------------------------------------- failures during training keep what was saved


def test_nan_loss_stops_with_the_batch_and_keeps_the_checkpoints(trained, monkeypatch):
    root = trained
    run = resumed(root, 'nan')
    best = {name: on_disk(run / 'checkpoints')[name] for name in ('best.pt', 'best.json')}
    real, calls = composer_wrapper.symmetric_infonce, []

    def diverging(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * float('nan') if len(calls) == 2 else loss  # epoch 2, second batch: global batch 4

    monkeypatch.setattr(composer_wrapper, 'symmetric_infonce', diverging)
    with pytest.raises(NonFiniteLossError) as info:
        train(load_config(DEMO, args(root, 'nan', 'autoresume=true', 'epochs=2')))
    msg = str(info.value)
    assert msg.startswith('the training loss is nan at epoch 1, batch 1 of the epoch (global batch 4, 0-based)')
    assert 'latest resumable checkpoint' in msg and 'ep1-ba4-rank0.pt' in msg and 'best.pt (t2v_R@1=' in msg
    assert 'lower optimizer.lr' in msg and 'autoresume=true' in msg
    after = on_disk(run / 'checkpoints')
    assert after['latest-rank0.pt'] == '-> ep1-ba4-rank0.pt' and 'ep1-ba3-rank0.pt' in after
    assert {name: after[name] for name in best} == best


def test_disk_full_while_saving_a_checkpoint(trained, monkeypatch):
    root = trained
    run = resumed(root, 'full-latest')
    before = on_disk(run / 'checkpoints')
    real = composer_checkpoint._write_checkpoint_file

    def full(state_dict, filename):
        with open(filename, 'wb') as f:
            f.write(b'partial')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(composer_checkpoint, '_write_checkpoint_file', full)
    with pytest.raises(RecipeError, match=r'disk full while writing a checkpoint in .*No space left on device.*'
                                          r'Nothing saved before was touched: the latest resumable checkpoint '
                                          r'.*ep1-ba3-rank0.pt and the best weights'):
        train(load_config(DEMO, args(root, 'full-latest', 'autoresume=true', 'epochs=2')))
    after = on_disk(run / 'checkpoints')
    assert {k: after[k] for k in before} == before  # latest -> ep1-ba3, best.pt/best.json: same bytes
    monkeypatch.setattr(composer_checkpoint, '_write_checkpoint_file', real)


def test_disk_full_while_saving_the_best_checkpoint(trained, monkeypatch):
    root = trained
    run = resumed(root, 'full-best')
    before = on_disk(run / 'checkpoints')
    real_write, real_load = composer_checkpoint._write_checkpoint_file, BestCheckpoint.load_state_dict

    def full_for_best(state_dict, filename):
        if '.tmp-best' not in filename:
            return real_write(state_dict, filename)
        with open(filename, 'wb') as f:
            f.write(b'partial')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def forget_best(self, state):  # make the epoch-2 evaluation an improvement, whatever its value
        real_load(self, state)
        self.best = -1.0

    monkeypatch.setattr(composer_checkpoint, '_write_checkpoint_file', full_for_best)
    monkeypatch.setattr(BestCheckpoint, 'load_state_dict', forget_best)
    with pytest.raises(RecipeError, match=r'disk full while writing the best checkpoint .*best.pt and best.json '
                                          r'still hold the previous best \(t2v_R@1=-1.00, epoch 1\).*autoresume=true'):
        train(load_config(DEMO, args(root, 'full-best', 'autoresume=true', 'epochs=2')))
    after = on_disk(run / 'checkpoints')
    assert after['best.pt'] == before['best.pt'] and after['best.json'] == before['best.json']
    assert '.tmp-best.pt' not in after and '.tmp-best.json' not in after


def test_fsdp_on_cpu_is_a_config_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip('has a GPU')
    with pytest.raises(ConfigError, match='fsdp is set but this machine has no GPU.*fsdp=null'):
        train(load_config(DEMO, args(tmp_path, 'fsdp', 'fsdp={sharding_strategy: FULL_SHARD}')))
