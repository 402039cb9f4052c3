"""CLIP towers and OpenAI checkpoint loading: shapes, names, exact round trips, and clear errors."""

import logging
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from clip_fixtures import save_openai_state_dict, save_openai_torchscript, tiny_clip
from torch import nn

from tempme_composer.clip import (
    CLIP,
    CLIP_PRESETS,
    EOT_ID,
    Attention,
    CLIPCheckpointError,
    CLIPConfig,
    clip_config_from_dict,
    infer_clip_config,
    load_clip,
    load_openai_weights,
    openai_to_ours,
    ours_to_openai,
    read_openai_state_dict,
)

TINY = CLIP_PRESETS['tiny']


def _images(n: int = 2, config: CLIPConfig = TINY, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, config.image_resolution, config.image_resolution, generator=g)


def _ids(b: int = 3, length: int = TINY.context_length, seed: int = 2) -> torch.Tensor:
    """Random captions: SOT, words, EOT at varying positions, zero padding after it."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(b, length, dtype=torch.long)
    for row in range(b):
        n_words = 2 + row % (length - 3)
        ids[row, 0] = EOT_ID - 1
        ids[row, 1 : 1 + n_words] = torch.randint(1, 49000, (n_words,), generator=g)
        ids[row, 1 + n_words] = EOT_ID
    return ids


@pytest.fixture(scope='module')
def model() -> CLIP:
    return tiny_clip()


@pytest.fixture(scope='module', params=['state_dict', 'nested_state_dict', 'torchscript'])
def saved(request, tmp_path_factory, model):
    path = tmp_path_factory.mktemp('ckpt') / f'{request.param}.pt'
    if request.param == 'torchscript':
        save_openai_torchscript(model, path)
    else:
        save_openai_state_dict(model, path, nested=request.param == 'nested_state_dict')
    return path


# ---------------------------------------------------------------------------------------------- config


def test_config_derived_values():
    assert TINY.vision_heads == 2 and TINY.grid_size == 4 and TINY.num_visual_tokens == 17
    b32, b16, l14 = (CLIP_PRESETS[k] for k in ('ViT-B/32', 'ViT-B/16', 'ViT-L/14'))
    assert (b32.num_visual_tokens, b16.num_visual_tokens, l14.num_visual_tokens) == (50, 197, 257)
    assert (b32.vision_heads, l14.vision_heads) == (12, 16)


@pytest.mark.parametrize(
    ('overrides', 'field'),
    [
        ({'image_resolution': 30}, 'image_resolution'),
        ({'vision_heads': 3}, 'vision_width'),
        ({'transformer_heads': 3}, 'transformer_width'),
        ({'embed_dim': 0}, 'embed_dim'),
        ({'vision_layers': 2.0}, 'vision_layers'),
    ],
)
def test_config_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        clip_config_from_dict({'preset': 'tiny', **overrides})


def test_config_from_dict():
    assert clip_config_from_dict({'preset': 'ViT-B/32'}) == CLIP_PRESETS['ViT-B/32']
    wide = clip_config_from_dict({'preset': 'tiny', 'vision_width': 256})
    assert wide.vision_heads == 4  # re-derived, not kept from the preset
    full = {f: getattr(TINY, f) for f in TINY.__dataclass_fields__ if f != 'vision_heads'}
    assert clip_config_from_dict(full) == TINY
    with pytest.raises(ValueError, match="did you mean 'embed_dim'"):
        clip_config_from_dict({'preset': 'tiny', 'embed_dims': 3})
    with pytest.raises(ValueError, match='ViT-B/32'):
        clip_config_from_dict({'preset': 'ViT-B-32'})
    with pytest.raises(ValueError, match='vocab_size'):
        clip_config_from_dict({k: v for k, v in full.items() if k != 'vocab_size'})


# ---------------------------------------------------------------------------------------------- model


def test_output_shapes(model):
    assert model.encode_image(_images(2)).shape == (2, TINY.embed_dim)
    assert model.encode_text(_ids(3)).shape == (3, TINY.embed_dim)
    assert model.encode_text(_ids(3, length=8)).shape == (3, TINY.embed_dim)  # shorter than context is fine
    assert model.visual.embed(_images(2)).shape == (2, TINY.num_visual_tokens, TINY.vision_width)
    image_features, text_features, scale = model(_images(2), _ids(3))
    assert torch.allclose(image_features.norm(dim=-1), torch.ones(2))
    assert text_features.shape == (3, TINY.embed_dim)
    assert math.isclose(scale.item(), 1 / 0.07, rel_tol=1e-5)


def test_seams_compose_to_forward(model):
    images = _images(2)
    manual = model.visual.pool(model.visual.transformer(model.visual.embed(images)))
    assert torch.equal(manual, model.encode_image(images))


def test_bad_inputs_raise_clear_errors(model):
    with pytest.raises(ValueError, match='image_resolution'):
        model.encode_image(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r'\[N, 3, H, W\]'):
        model.encode_image(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match='context_length'):
        model.encode_text(torch.zeros(1, TINY.context_length + 1, dtype=torch.long))


def test_parameter_names_follow_the_architecture(model):
    names = {n for n, _ in model.named_parameters()}
    for expected in [
        'logit_scale',
        'visual.conv1.weight',
        'visual.class_embedding',
        'visual.positional_embedding',
        'visual.ln_pre.weight',
        'visual.ln_post.bias',
        'visual.proj',
        'visual.transformer.resblocks.1.mlp.c_fc.weight',
        'visual.transformer.resblocks.0.attn.out_proj.weight',
        'text.token_embedding.weight',
        'text.positional_embedding',
        'text.ln_final.weight',
        'text.text_projection',
        'text.transformer.resblocks.0.attn.in_proj_weight',
        'text.transformer.resblocks.1.mlp.c_proj.bias',
    ]:
        assert expected in names, expected
    assert 'visual.conv1.bias' not in names
    assert all(n == 'logit_scale' or n.startswith(('visual.', 'text.')) for n in names)
    blocks = {n.split('.')[3] for n in names if n.startswith('visual.transformer.resblocks.')}
    assert len(blocks) == TINY.vision_layers


def test_eot_pooling_uses_argmax_position(model):
    ids = _ids(3)
    before = model.encode_text(ids)
    after_eot = ids.argmax(dim=-1) + 1
    changed = ids.clone()
    changed[torch.arange(3), after_eot] = 1234  # a padding token after EOT: causal attention never sees it
    assert torch.equal(model.encode_text(changed), before)
    moved = ids.clone()
    moved[0, 1] = 4321  # a word before EOT does change the embedding
    assert not torch.allclose(model.encode_text(moved)[0], before[0])


def _attention_pair(width: int = 32, heads: int = 4):
    torch.manual_seed(0)
    ours = Attention(width, heads).eval()
    nn.init.normal_(ours.in_proj_bias)
    nn.init.normal_(ours.out_proj.bias)
    ref = nn.MultiheadAttention(width, heads, batch_first=True).eval()
    ref.load_state_dict(ours.state_dict())  # same parameter names, same fused QKV layout
    return ours, ref


def test_attention_matches_multihead_attention():
    ours, ref = _attention_pair()
    x = torch.randn(3, 7, 32)
    expected, _ = ref(x, x, x, need_weights=False)
    assert torch.allclose(ours(x), expected, atol=1e-5)
    causal_mask = torch.ones(7, 7, dtype=torch.bool).triu(1)
    expected_causal, _ = ref(x, x, x, attn_mask=causal_mask, need_weights=False)
    assert torch.allclose(ours(x, causal=True), expected_causal, atol=1e-5)


def test_attention_bias():
    ours, ref = _attention_pair()
    x = torch.randn(3, 7, 32)
    assert torch.allclose(ours(x, attn_bias=torch.zeros(3, 1, 1, 7)), ours(x), atol=1e-6)
    assert torch.allclose(
        ours(x, attn_bias=torch.zeros(3, 1, 1, 7), causal=True), ours(x, causal=True), atol=1e-6
    )
    # A per-key bias (proportional attention's log(size)) equals MHA with the same float mask per head.
    bias = torch.randn(3, 1, 1, 7)
    mha_mask = bias.expand(3, 4, 7, 7).reshape(12, 7, 7)  # [N*heads, L, L]
    expected, _ = ref(x, x, x, attn_mask=mha_mask, need_weights=False)
    assert torch.allclose(ours(x, attn_bias=bias), expected, atol=1e-5)
    causal = torch.zeros(7, 7).masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float('-inf'))
    expected, _ = ref(x, x, x, attn_mask=mha_mask + causal, need_weights=False)
    assert torch.allclose(ours(x, attn_bias=bias, causal=True), expected, atol=1e-5)


def test_qkv_projection_is_an_overridable_seam():
    ours, _ = _attention_pair()
    x = torch.randn(2, 5, 32)
    base = ours(x)

    class Shifted(Attention):
        def project_qkv(self, x):
            return super().project_qkv(x) + 1.0

    shifted = Shifted(32, 4)
    shifted.load_state_dict(ours.state_dict())
    assert not torch.allclose(shifted(x), base)


def test_random_tiny_model_trains():
    model = tiny_clip(seed=3).train()
    model.text.token_embedding.requires_grad_(False)  # the 49408-row table only slows the test down
    images, ids = _images(4, seed=4), _ids(4, seed=5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    labels = torch.arange(4)
    losses = []
    for _ in range(6):
        image_features, text_features, scale = model(images, ids)
        logits = scale * image_features @ text_features.T
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5, losses


# ---------------------------------------------------------------------------------------------- weights


def test_key_remapping_round_trips(model):
    ours = model.state_dict()
    openai = ours_to_openai(ours)
    assert 'transformer.resblocks.0.attn.in_proj_weight' in openai
    assert {'token_embedding.weight', 'positional_embedding', 'ln_final.weight', 'text_projection'} <= set(
        openai
    )
    assert 'visual.positional_embedding' in openai and 'logit_scale' in openai
    assert openai_to_ours(openai).keys() == ours.keys()
    extras = {k: torch.tensor(1) for k in ('input_resolution', 'context_length', 'vocab_size')}
    assert openai_to_ours({**openai, **extras}).keys() == ours.keys()


def test_load_round_trip_is_bit_identical(model, saved):
    loaded = load_clip(saved, expected=TINY).eval()
    assert loaded.config == TINY
    images, ids = _images(3), _ids(4)
    assert torch.equal(loaded.encode_image(images), model.encode_image(images))
    assert torch.equal(loaded.encode_text(ids), model.encode_text(ids))
    assert torch.equal(loaded.logit_scale, model.logit_scale)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_torchscript_archive_looks_like_openais(model, saved):
    sd = read_openai_state_dict(saved)
    if saved.stem == 'torchscript':
        assert {'input_resolution', 'context_length', 'vocab_size'} <= set(sd)
        assert sd['input_resolution'].item() == TINY.image_resolution
    assert 'transformer.resblocks.0.ln_1.weight' in sd and 'text.ln_final.weight' not in sd


def test_load_fp16_archive_as_fp32(model, tmp_path):
    path = tmp_path / 'half.pt'
    save_openai_torchscript(model, path, dtype=torch.float16)
    assert read_openai_state_dict(path)['visual.proj'].dtype == torch.float16
    loaded = load_clip(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.allclose(loaded.encode_image(_images()), model.encode_image(_images()), atol=5e-2)


def test_load_into_existing_model(model, saved):
    fresh = CLIP(TINY)
    load_openai_weights(fresh, saved)
    assert torch.equal(fresh.visual.proj, model.visual.proj)
    with pytest.raises(CLIPCheckpointError, match='embed_dim'):
        load_openai_weights(CLIP(clip_config_from_dict({'preset': 'tiny', 'embed_dim': 32})), saved)


def test_load_logs_the_architecture(saved, caplog):
    with caplog.at_level(logging.INFO, logger='tempme_composer.clip.weights'):
        load_clip(saved)
    assert 'ViT 2 layers x 128 wide' in caplog.text and str(saved) in caplog.text


def _shapes_only_state_dict(config: CLIPConfig) -> dict[str, torch.Tensor]:
    """OpenAI-named state dict of the right shapes without allocating memory (meta tensors)."""
    return ours_to_openai(CLIP(config, device='meta').state_dict())


@pytest.mark.parametrize('name', ['tiny', 'ViT-B/32', 'ViT-B/16', 'ViT-L/14'])
def test_infer_clip_config(name):
    assert infer_clip_config(_shapes_only_state_dict(CLIP_PRESETS[name])) == CLIP_PRESETS[name]


def test_infer_rejects_resnet_and_incomplete_state_dicts():
    sd = _shapes_only_state_dict(TINY)
    with pytest.raises(CLIPCheckpointError, match='only ViT CLIP models are supported'):
        infer_clip_config({**sd, 'visual.layer1.0.conv1.weight': torch.empty(1, device='meta')})
    incomplete = {k: v for k, v in sd.items() if k not in ('text_projection', 'visual.conv1.weight')}
    with pytest.raises(CLIPCheckpointError, match='visual.conv1.weight.*text_projection'):
        infer_clip_config(incomplete)
    no_text_blocks = {k: v for k, v in sd.items() if not k.startswith('transformer.')}
    with pytest.raises(CLIPCheckpointError, match=r'transformer\.resblocks\.\*'):
        infer_clip_config(no_text_blocks)
    odd_grid = {**sd, 'visual.positional_embedding': torch.empty(16, 128, device='meta')}
    with pytest.raises(CLIPCheckpointError, match='grid'):
        infer_clip_config(odd_grid)


def test_missing_file(tmp_path):
    path = tmp_path / 'nope.pt'
    with pytest.raises(CLIPCheckpointError, match='not found.*nope.pt'):
        load_clip(path)
    with pytest.raises(CLIPCheckpointError, match='directory'):
        read_openai_state_dict(tmp_path)


@pytest.mark.parametrize(
    'kind', ['text', 'random_bytes', 'pickled_list', 'other_tensors', 'non_tensor_values', 'truncated']
)
def test_non_clip_files(tmp_path, model, kind):
    path = tmp_path / f'{kind}.pt'
    if kind == 'text':
        path.write_text('this is not a checkpoint\n')
    elif kind == 'random_bytes':
        path.write_bytes(
            torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))
            .byte()
            .numpy()
            .tobytes()
        )
    elif kind == 'pickled_list':
        torch.save([1, 2, 3], path)
    elif kind == 'other_tensors':
        torch.save({'fc.weight': torch.zeros(2, 2)}, path)
    elif kind == 'non_tensor_values':
        path.write_bytes(pickle.dumps({'token_embedding.weight': 'nope'}, protocol=2))
    else:
        save_openai_state_dict(model, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CLIPCheckpointError, match=f'{kind}.pt') as info:
        load_clip(path)
    assert 'OpenAI CLIP' in str(info.value)


def test_our_own_names_get_a_hint(tmp_path, model):
    path = tmp_path / 'ours.pt'
    torch.save(model.state_dict(), path)
    with pytest.raises(CLIPCheckpointError, match='ours_to_openai'):
        read_openai_state_dict(path)


def _saved_variant(tmp_path, model, edit) -> object:
    sd = ours_to_openai(model.state_dict())
    edit(sd)
    path = tmp_path / 'edited.pt'
    torch.save(sd, path)
    return path


def test_missing_and_unexpected_keys_are_named(tmp_path, model):
    path = _saved_variant(tmp_path, model, lambda sd: sd.pop('transformer.resblocks.1.attn.in_proj_weight'))
    with pytest.raises(
        CLIPCheckpointError, match=r'missing keys.*text\.transformer\.resblocks\.1\.attn\.in_proj_weight'
    ):
        load_clip(path)
    path = _saved_variant(tmp_path, model, lambda sd: sd.update({'visual.extra_prompt': torch.zeros(3)}))
    with pytest.raises(CLIPCheckpointError, match=r'unexpected keys.*visual\.extra_prompt'):
        load_clip(path)


def test_truncated_tower_is_an_architecture_mismatch(tmp_path, model):
    def drop_last_block(sd):
        for key in [k for k in sd if k.startswith('visual.transformer.resblocks.1.')]:
            del sd[key]

    path = _saved_variant(tmp_path, model, drop_last_block)
    assert load_clip(path).config.vision_layers == 1  # a consistent 1-layer model is still a valid checkpoint
    with pytest.raises(CLIPCheckpointError, match='vision_layers: expected 2, checkpoint has 1'):
        load_clip(path, expected=TINY)


def test_wrong_shapes_are_named_with_both_shapes(tmp_path, model):
    path = _saved_variant(tmp_path, model, lambda sd: sd.update({'visual.ln_post.weight': torch.ones(7)}))
    with pytest.raises(
        CLIPCheckpointError, match=r'visual\.ln_post\.weight \(expected \[128\], found \[7\]\)'
    ):
        load_clip(path)


def test_low_precision_runs(model):
    images, ids = _images(2), _ids(2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        image_bf16, text_bf16 = model.encode_image(images), model.encode_text(ids)
    assert image_bf16.dtype == torch.bfloat16
    assert F.cosine_similarity(image_bf16.float(), model.encode_image(images)).min() > 0.98
    assert F.cosine_similarity(text_bf16.float(), model.encode_text(ids)).min() > 0.98
    half = CLIP(TINY, dtype=torch.bfloat16)  # LayerNorm upcasts its half-precision weights too
    assert half.encode_image(images).dtype == torch.bfloat16
    assert torch.isfinite(half.encode_text(ids).float()).all()
