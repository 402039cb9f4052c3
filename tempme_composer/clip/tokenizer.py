"""CLIP byte-level BPE tokenization to a fixed length, with the research codebases' truncation rule.

Uses open_clip's `SimpleTokenizer` only for its vocabulary and cleaning (nothing is downloaded): the
sequence is ``[SOT] + BPE(text)``, cut to ``max_words - 1`` tokens, then ``EOT`` is appended and the rest is
padded with id 0 (data_metrics.md §3). Id 0 is a real token, so padding is only visible through the mask.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch

__all__ = ['tokenize', 'SOT_ID', 'EOT_ID', 'VOCAB_SIZE']

log = logging.getLogger(__name__)

SOT_ID = 49406
EOT_ID = 49407
VOCAB_SIZE = 49408


def tokenize(texts: Sequence[str] | str, max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize captions to ``max_words`` ids each.

    Args:
        texts: one caption or a sequence of captions.
        max_words: fixed sequence length, SOT and EOT included (at most ``max_words - 2`` BPE tokens survive).

    Returns:
        ``(ids, mask)``, both int64 of shape ``[len(texts), max_words]``; mask is 1 from SOT to EOT inclusive.

    Raises:
        ValueError: if ``max_words < 2`` or a caption is not a string.
    """
    if isinstance(texts, str):
        texts = [texts]
    if max_words < 2:
        raise ValueError(f'max_words must be >= 2 (room for the start and end tokens), got {max_words}')
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise ValueError(f'captions must be strings, got {type(bad[0]).__name__}: {bad[0]!r}')
    tokenizer = _tokenizer()
    ids = torch.zeros(len(texts), max_words, dtype=torch.long)
    mask = torch.zeros(len(texts), max_words, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = [SOT_ID, *tokenizer.encode(text)][: max_words - 1] + [EOT_ID]
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return ids, mask


@functools.cache
def _tokenizer():
    """open_clip's BPE tokenizer with its bundled vocabulary (lower-casing cleaner, like OpenAI CLIP)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()
