"""Padding trim before the text tower: the same bits as the untrimmed forward, for every query length and
batch composition (docs/serving.md#padding-trim)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tempme_composer.clip import CLIP, CLIP_PRESETS
from tempme_composer.clip.tokenizer import EOT_ID, SOT_ID
from tempme_composer.inference.text_padding import simd_floats, trim_block, trimmed_ids

BLOCK = simd_floats()
needs_width = pytest.mark.skipif(
    BLOCK is None, reason='torch reports no CPU vector width here: nothing is trimmed'
)


def _ids(lengths: list[int], context: int, rng: np.random.Generator) -> torch.Tensor:
    """Token ids ``[len(lengths), context]`` as the tokenizer pads them: SOT, words, EOT, zeros."""
    ids = torch.zeros(len(lengths), context, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0] = SOT_ID
        ids[i, 1 : n - 1] = torch.from_numpy(rng.integers(1, SOT_ID, n - 2))
        ids[i, n - 1] = EOT_ID
    return ids


def test_trimmed_ids_cut_to_a_multiple_of_the_block_through_the_longest_eot():
    rng = np.random.default_rng(0)
    ids = _ids([5, 3, 9], 40, rng)
    assert trimmed_ids(ids, 8).shape == (3, 16)
    assert torch.equal(trimmed_ids(ids, 8), ids[:, :16])
    assert trimmed_ids(ids, 4).shape == (3, 12)
    assert trimmed_ids(ids, 1).shape == (3, 9)
    assert trimmed_ids(ids, None) is ids
    assert trimmed_ids(_ids([40], 40, rng), 16).shape == (1, 40)  # a full query: nothing to cut
    assert trimmed_ids(_ids([33], 40, rng), 16).shape == (1, 40)  # the rounding stops at the context


def test_trim_only_where_it_was_shown_exact():
    assert trim_block(torch.device('cpu'), torch.float32, prompted=False) == BLOCK
    assert trim_block(torch.device('cpu'), torch.float32, prompted=True) is None
    assert trim_block(torch.device('cpu'), torch.bfloat16, prompted=False) is None
    assert trim_block(torch.device('cuda'), torch.float32, prompted=False) is None
    assert simd_floats('AVX512') == 16 and simd_floats('AVX2') == 8 and simd_floats('DEFAULT') is None


@needs_width
@torch.inference_mode()
def test_trimmed_forward_equals_untrimmed_bit_for_bit_for_every_length():
    """A text tower with ViT-B/32's head size and CLIP's full context: for every longest length of a batch,
    in batches of 1 to 32 queries of random shorter lengths, the trimmed embeddings are the untrimmed ones."""
    config = dataclasses.replace(CLIP_PRESETS['tiny'], context_length=CLIP_PRESETS['ViT-B/32'].context_length)
    assert config.transformer_width // config.transformer_heads == (
        CLIP_PRESETS['ViT-B/32'].transformer_width // CLIP_PRESETS['ViT-B/32'].transformer_heads
    )
    torch.manual_seed(0)
    tower = CLIP(config).text.eval()
    rng = np.random.default_rng(0)
    context = config.context_length
    checked = 0
    for longest in range(2, context + 1):
        size = int(rng.integers(1, 33))
        lengths = [longest, *rng.integers(2, longest + 1, size - 1).tolist()]
        ids = _ids(rng.permutation(lengths).tolist(), context, rng)
        cut = trimmed_ids(ids, BLOCK)
        assert cut.shape[1] == min(context, -(-longest // BLOCK) * BLOCK)
        assert torch.equal(tower(cut), tower(ids)), f'longest {longest}, batch {size}'
        checked += size
    assert checked > context


@needs_width
def test_encode_texts_gives_the_untrimmed_embeddings(tiny_export):
    """The path of tempme-search and tempme-serve: each batch's embeddings equal the untrimmed forward's."""
    from tempme_composer.inference import load_exported
    from tempme_composer.inference.index import encode_texts
    from tempme_composer.inference.preprocess import tokenize_queries

    model = load_exported(tiny_export)
    words = 'a red square moves over the blue circle while someone cooks pasta on a beach at night'.split()
    rng = np.random.default_rng(1)
    texts = [' '.join(rng.choice(words, int(rng.integers(1, 20)))) for _ in range(40)]
    ids, _ = tokenize_queries(texts, model.preprocessing)
    assert len(set((ids.argmax(-1) + 1).tolist())) > 5
    for batch_size in (1, 3, 16, 64):
        got = encode_texts(model, ids, batch_size=batch_size)
        with torch.inference_mode():
            want = torch.cat(
                [model.model.encode_text(ids[s : s + batch_size]) for s in range(0, len(ids), batch_size)]
            )
        assert np.array_equal(got, want.float().numpy()), f'batch size {batch_size}'
