"""CLIP BPE tokenization: reference ids from OpenAI's tokenizer; truncation keeps EOT; mask is SOT..EOT."""

import pytest
import torch

from tempme_composer.clip.tokenizer import EOT_ID, SOT_ID, tokenize

CASES = [
    (
        'a person is connecting something to system',
        32,
        [49406, 320, 2533, 533, 41429, 2006, 531, 2422, 49407],
    ),
    ('A little girl does gymnastics.', 32, [49406, 320, 1274, 1611, 1897, 20116, 269, 49407]),
    (
        "SOMEONE's face contorts in anguish as she gazes at the comatose woman.",
        32,
        [
            49406,
            2100,
            568,
            1710,
            616,
            937,
            590,
            530,
            11209,
            1061,
            601,
            1043,
            4837,
            542,
            536,
            518,
            610,
            7987,
            611,
            2308,
            269,
            49407,
        ],
    ),  # fmt: skip
    # Truncation keeps SOT + the first max_words - 2 words + EOT.
    (
        'one two three four five six seven eight nine ten',
        8,
        [49406, 637, 1237, 2097, 2721, 3127, 4093, 49407],
    ),
]


@pytest.mark.parametrize(('text', 'max_words', 'expected'), CASES)
def test_reference_ids(text, max_words, expected):
    ids, mask = tokenize(text, max_words)
    assert ids.shape == mask.shape == (1, max_words)
    assert ids.dtype == mask.dtype == torch.long
    padded = expected + [0] * (max_words - len(expected))
    assert ids[0].tolist() == padded
    assert mask[0].tolist() == [1] * len(expected) + [0] * (max_words - len(expected))
    assert mask.sum().item() == len(expected)


def test_batch_and_eot_is_the_argmax():
    texts = [text for text, max_words, _ in CASES if max_words == 32]
    ids, mask = tokenize(texts, 32)
    assert ids.shape == (len(texts), 32)
    assert (ids[:, 0] == SOT_ID).all()
    eot = ids.argmax(dim=-1)  # the text tower pools here
    assert (ids[torch.arange(len(texts)), eot] == EOT_ID).all()
    assert (eot == mask.sum(dim=-1) - 1).all()


def test_errors():
    with pytest.raises(ValueError, match='max_words'):
        tokenize('hello', 1)
    with pytest.raises(ValueError, match='strings'):
        tokenize(['hello', 3], 8)
