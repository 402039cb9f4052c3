"""Compute the training loss and DDP-averaged gradients of a tiny model on this rank's slice of a batch.

Run with ``composer -n N tests/scripts/loss_on_ranks.py OUT.pt GLOBAL_BATCH``; rank 0 writes
``{'loss': float, 'grads': {name: tensor}, 'our_warnings': [str]}`` to OUT.pt (the warnings our code issued on
that rank, attributed as in tests/test_warnings.py). ``loss_and_grads(GLOBAL_BATCH)`` called in-process (1 rank)
is the single-process reference.
"""

import sys

import torch
from composer.utils import dist, get_device
from torch.nn.parallel import DistributedDataParallel

from tempme_composer.clip import CLIP, CLIP_PRESETS
from tempme_composer.composer_wrapper import RetrievalModel
from tempme_composer.model import UnifiedModel

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))
from batches import random_train_batch  # noqa: E402
from warnings_on_our_path import recording_warnings  # noqa: E402


def loss_and_grads(global_batch: int) -> dict:
    """This rank's loss and (DDP-averaged under several ranks) gradients on its slice of the global batch, and
    the warnings our code issued on the way.

    In a process without a process group (pytest's) it is the single-rank reference: no DDP wrapper, the
    whole batch, as under ``composer -n 1``."""
    with recording_warnings() as records:
        loss, grads = _loss_and_grads(global_batch)
    our_warnings = [f'{r["file"]}:{r["line"]}: {r["message"]}' for r in records if r['ours']]
    return {'loss': loss, 'grads': grads, 'our_warnings': our_warnings}


def _loss_and_grads(global_batch: int) -> tuple[float, dict[str, torch.Tensor]]:
    rank, world = dist.get_global_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = RetrievalModel(UnifiedModel(CLIP(CLIP_PRESETS['tiny'])))
    batch = random_train_batch(global_batch, model.model.clip.config, seed=1)
    b = global_batch // world
    local = {k: v[rank * b : (rank + 1) * b] for k, v in batch.items()}
    wrapped = DistributedDataParallel(model) if world > 1 else model
    loss = model.loss(wrapped(local), local)
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def main(out: str, global_batch: int) -> None:
    dist.initialize_dist(get_device('cpu'))
    result = loss_and_grads(global_batch)
    if dist.get_global_rank() == 0:
        torch.save(result, out)
    dist.barrier()


if __name__ == '__main__':
    main(sys.argv[1], int(sys.argv[2]))
