"""Deterministic random batches in the recipe's batch layout, for model and loss tests."""

import torch

from tempme_composer.clip import CLIPConfig
from tempme_composer.clip.tokenizer import EOT_ID


def random_train_batch(batch: int, config: CLIPConfig, seed: int, frames: int = 4, words: int = 8) -> dict:
    """Videos with some padded frames and captions of random ids ending in EOT at varying positions."""
    g = torch.Generator().manual_seed(seed)
    R = config.image_resolution
    video = torch.randn(batch, frames, 3, R, R, generator=g)
    valid = torch.randint(1, frames + 1, (batch,), generator=g)
    video_mask = (torch.arange(frames)[None, :] < valid[:, None]).long()
    video = video * video_mask[:, :, None, None, None]
    ids = torch.randint(1, EOT_ID - 1, (batch, words), generator=g)
    length = torch.randint(2, words, (batch,), generator=g)
    ids[torch.arange(batch), length] = EOT_ID
    ids = ids * (torch.arange(words)[None, :] <= length[:, None])
    text_mask = (ids != 0).long()
    return {'video': video, 'video_mask': video_mask, 'text_ids': ids, 'text_mask': text_mask}
