"""CLIP byte-level BPE tokenization to a fixed length, with the research codebases' truncation rule.

Uses open_clip's `SimpleTokenizer` only for its vocabulary and cleaning (nothing is downloaded): the
sequence is ``[SOT] + BPE(text)``, cut to ``max_words - 1`` tokens, then ``EOT`` is appended and the rest is
padded with id 0 (docs/reference/evaluation-protocol.md#text-tokenisation). Id 0 is a real token, so padding
is only visible through the mask.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

import torch

__all__ = ['tokenize', 'bpe_tokenizer', 'SOT_ID', 'EOT_ID', 'VOCAB_SIZE']

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
    tokenizer = bpe_tokenizer()
    ids = torch.zeros(len(texts), max_words, dtype=torch.long)
    mask = torch.zeros(len(texts), max_words, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = [SOT_ID, *tokenizer.encode(text)][: max_words - 1] + [EOT_ID]
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return ids, mask


@functools.cache
def bpe_tokenizer():
    """open_clip's BPE tokenizer with its bundled vocabulary (lower-casing cleaner, like OpenAI CLIP)."""
    return _open_clip_tokenizer_module().SimpleTokenizer()


def _open_clip_tokenizer_module() -> ModuleType:
    """``open_clip/tokenizer.py`` itself, without running ``open_clip/__init__``.

    The package's ``__init__`` imports its model zoo (transformers, timm — and through timm, wandb when it is
    installed): about 5 s in every process that only needs the tokenizer (each loader worker, each CLI call).
    The tokenizer module imports nothing from its package (ftfy, regex, torch, its bundled vocabulary beside
    it), so it is loaded from its file. Where ``open_clip`` is already imported, its own module is used.
    """
    if 'open_clip.tokenizer' in sys.modules:
        return sys.modules['open_clip.tokenizer']
    name = '_tempme_open_clip_tokenizer'
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec('open_clip')  # locates the package without importing it
    if package is None or not package.submodule_search_locations:
        raise ImportError(
            'the CLIP tokenizer needs open_clip_torch: pip install -e . (it is a core dependency)'
        )
    location = next(iter(package.submodule_search_locations))
    spec = importlib.util.spec_from_file_location(name, f'{location}/tokenizer.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
