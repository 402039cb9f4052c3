"""One Composer training batch of a tiny model; returns the DDP-averaged parameter gradients and the loss.

``one_step(global_batch, accumulation)`` runs in-process (1 rank). Under ``composer -n N
tests/scripts/grad_accum_on_ranks.py OUT.pt GLOBAL_BATCH K`` each rank trains on its slice of the same
global batch with K microbatches (GradCache when K > 1) and rank 0 writes ``{'loss', 'grads'}`` to OUT.pt.
The learning rate is 0, so the gradients are read at AFTER_TRAIN_BATCH of the only batch.
"""

import sys
from pathlib import Path

import torch
from composer import Trainer
from composer.core import Callback, DataSpec, State
from composer.loggers import Logger
from composer.utils import dist
from torch.utils.data import DataLoader, Dataset

from tempme_composer.algorithms import GradCache
from tempme_composer.clip import CLIP, CLIP_PRESETS
from tempme_composer.composer_wrapper import RetrievalModel
from tempme_composer.model import UnifiedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from batches import random_train_batch  # noqa: E402


class _Rows(Dataset):
    def __init__(self, batch: dict) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(next(iter(self.batch.values())))

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.batch.items()}


class _GradRecorder(Callback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}
        self.loss = float('nan')

    def after_train_batch(self, state: State, logger: Logger) -> None:
        del logger  # unused
        model = state.model.module if state.is_model_ddp else state.model
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    def batch_end(self, state: State, logger: Logger) -> None:
        del logger  # unused
        self.loss = float(state.loss.detach()) if isinstance(state.loss, torch.Tensor) else float('nan')


def one_step(global_batch: int, accumulation: int) -> dict:
    """Loss (rank 0's Composer-scaled total) and gradients after one batch with ``accumulation`` microbatches."""
    torch.manual_seed(0)
    model = RetrievalModel(UnifiedModel(CLIP(CLIP_PRESETS['tiny'])))
    batch = random_train_batch(global_batch, model.model.clip.config, seed=1)
    b = global_batch // dist.get_world_size()
    # Rank r gets rows r, r + W, ...: a permutation of the global batch, which InfoNCE does not see.
    rows = _Rows(batch)
    loader = DataLoader(rows, batch_size=b, sampler=dist.get_sampler(rows, shuffle=False))
    recorder = _GradRecorder()
    trainer = Trainer(
        model=model,
        train_dataloader=DataSpec(loader),
        max_duration='1ba',
        optimizers=torch.optim.SGD(model.parameters(), lr=0.0),
        algorithms=[GradCache()] if accumulation > 1 else [],
        callbacks=[recorder],
        device='cpu',
        precision='fp32',
        device_train_microbatch_size=b // accumulation,
        progress_bar=False,
        seed=0,
    )
    trainer.fit()
    total = trainer.state.total_loss_dict['loss/train/total']
    trainer.close()
    return {'loss': total, 'grads': recorder.grads}


if __name__ == '__main__':
    out, global_batch, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    result = one_step(global_batch, k)
    if dist.get_global_rank() == 0:
        torch.save(result, out)
    dist.barrier()
