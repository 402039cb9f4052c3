"""Padding trim before the text tower: the same bits as the untrimmed forward, for every query length and
batch composition (docs/serving.md#padding-trim)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tempme_composer.clip import CLIP, CLIP_PRESETS
from tempme_composer.clip.tokenizer import EOT_ID, SOT_ID
from tempme_composer.inference.text_padding import TESTED_DISPATCHES, TRIM_MULTIPLE, trim_block, trimmed_ids

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BLOCK = trim_block(torch.device('cpu'), torch.float32, prompted=False)
needs_width = pytest.mark.skipif(
    BLOCK is None, reason='a torch CPU dispatch the trim was not shown exact under'
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
    cpu = torch.device('cpu')
    assert BLOCK in (TRIM_MULTIPLE, None)
    for dispatch in TESTED_DISPATCHES:
        assert trim_block(cpu, torch.float32, prompted=False, dispatch=dispatch) == TRIM_MULTIPLE
        assert trim_block(cpu, torch.float32, prompted=True, dispatch=dispatch) is None
        assert trim_block(cpu, torch.bfloat16, prompted=False, dispatch=dispatch) is None
        assert trim_block(torch.device('cuda'), torch.float32, prompted=False, dispatch=dispatch) is None
    assert trim_block(cpu, torch.float32, prompted=False, dispatch='DEFAULT') is None


@torch.inference_mode()
def sweep(block: int) -> list[str]:
    """A text tower with ViT-B/32's head size and CLIP's full context, and for every longest length of a batch,
    a batch of 1 to 32 queries of random shorter lengths: the batches whose trimmed embeddings differ."""
    vit = CLIP_PRESETS['ViT-B/32']
    config = dataclasses.replace(CLIP_PRESETS['tiny'], context_length=vit.context_length)
    assert (
        config.transformer_width // config.transformer_heads == vit.transformer_width // vit.transformer_heads
    )
    torch.manual_seed(0)
    tower = CLIP(config).text.eval()
    rng = np.random.default_rng(0)
    context = config.context_length
    differ = []
    for longest in range(2, context + 1):
        size = int(rng.integers(1, 33))
        lengths = [longest, *rng.integers(2, longest + 1, size - 1).tolist()]
        ids = _ids(rng.permutation(lengths).tolist(), context, rng)
        cut = trimmed_ids(ids, block)
        assert cut.shape[1] == min(context, -(-longest // block) * block)
        if not torch.equal(tower(cut), tower(ids)):
            differ.append(f'longest {longest}, batch {size}')
    return differ


@needs_width
def test_trimmed_forward_equals_untrimmed_bit_for_bit_for_every_length():
    assert sweep(BLOCK) == []


@pytest.mark.parametrize('dispatch', sorted(TESTED_DISPATCHES))
def test_every_tested_dispatch_is_exact(dispatch):
    """The sweep again in a process that torch runs on that dispatch (``ATEN_CPU_CAPABILITY``), where this CPU
    has it."""
    code = (
        'import sys, json, torch; sys.path.insert(0, sys.argv[1]); import test_text_padding as t; '
        'print(json.dumps([torch.backends.cpu.get_cpu_capability(), t.sweep(t.TRIM_MULTIPLE)]))'
    )
    env = {
        **os.environ,
        'ATEN_CPU_CAPABILITY': dispatch.lower(),
        'PYTHONPATH': os.pathsep.join(
            filter(None, [str(REPO), str(REPO / 'tests'), os.environ.get('PYTHONPATH')])
        ),
    }
    run = subprocess.run(
        [sys.executable, '-c', code, str(HERE)], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got, differ = json.loads(run.stdout.strip().splitlines()[-1])
    if got != dispatch:
        pytest.skip(f'this CPU runs torch on {got}, not {dispatch}')
    assert differ == []


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
