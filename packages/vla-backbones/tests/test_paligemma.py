"""The ``paligemma`` backbone: prefix shapes and masks, per-layer K/V, transformers parity, tokenizer."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pi0_fixtures import CAMERA, TASKS, TINY_BACKBONE, make_tokenizer
from vla_backbones.paligemma import LANGUAGE_MASK, LANGUAGE_TOKENS, PaliGemmaBackbone, TaskTokenizer
from vla_backbones.paligemma.images import resize_with_pad
from vla_core import BACKBONES, ConfigError, ContextNeeds, ContextSpec, KVGeometry, build_backbone
from vla_core.gemma import GemmaDecoderLayer
from vla_core.testing import check_backbone


def tiny(**overrides) -> PaliGemmaBackbone:
    torch.manual_seed(0)
    return build_backbone({**TINY_BACKBONE, **overrides})


def batch(b: int = 2, valid=(3, 6), size=(28, 28), seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 40, (b, 6), generator=g)
    mask = torch.arange(6)[None] < torch.tensor([valid[i % len(valid)] for i in range(b)])[:, None]
    return {CAMERA: torch.rand(b, 3, *size, generator=g), LANGUAGE_TOKENS: ids, LANGUAGE_MASK: mask}


def test_registered_under_paligemma():
    assert BACKBONES.get("paligemma") is PaliGemmaBackbone


def test_contract_and_shapes():
    bb = tiny(return_hidden_states=True)
    out = check_backbone(bb, batch())
    assert out.features.shape == (2, 4 + 6, 64)
    assert out.attention_mask.tolist() == [[True] * 4 + [True] * 3 + [False] * 3, [True] * 10]
    assert len(out.past_key_values) == 2
    for k, v in out.past_key_values:
        assert k.shape == v.shape == (2, 1, 10, 8)
    assert bb.fsdp_units() == {GemmaDecoderLayer, type(bb.vision_tower.vision_model.encoder.layers[0])}
    assert bb.context_spec() == ContextSpec(width=64, num_tokens=None, kv=KVGeometry(2, 1, 8))


def test_tiny_config_takes_two_32px_cameras_and_task_strings(tmp_path):
    cams = ["observation.images.top", "observation.images.wrist"]
    bb = build_backbone({"type": "paligemma", **PaliGemmaBackbone.tiny_config(tmp_path), "image_keys": cams})
    g = torch.Generator().manual_seed(0)
    batch = {"task": ["pick up the red cube", "reach the blue target"],
             **{k: torch.rand(2, 3, 32, 32, generator=g) for k in cams}}
    out = check_backbone(bb, batch)
    assert out.features.shape == (2, 2 * 4 + 8, 64) and len(out.past_key_values) == 2
    ids, _ = bb.tokenizer(batch["task"], "cpu")
    assert ids[:, 0].eq(1).all() and not ids.eq(bb.tokenizer.tokenizer.unk_token_id).any()


def test_configure_for_gives_hidden_states_to_heads_that_read_features():
    config = PaliGemmaBackbone.config_class.from_dict({k: v for k, v in TINY_BACKBONE.items() if k != "type"})
    assert not config.return_hidden_states
    assert PaliGemmaBackbone.configure_for(config, ContextNeeds(kv=True)) == config
    assert PaliGemmaBackbone.configure_for(config, ContextNeeds()).return_hidden_states


def test_kv_only_mode_gives_the_same_kv_and_embeddings_as_features():
    full, short = tiny(return_hidden_states=True), tiny()
    short.load_state_dict(full.state_dict())
    b = batch()
    with torch.no_grad():
        a, c = full(b), short(b)
        prefix, _ = short.embed_prefix(b)
    for (k1, v1), (k2, v2) in zip(a.past_key_values, c.past_key_values):
        torch.testing.assert_close(k1, k2, rtol=0, atol=0)
        torch.testing.assert_close(v1, v2, rtol=0, atol=0)
    torch.testing.assert_close(c.features, prefix)
    assert not torch.allclose(a.features, prefix)


@settings(max_examples=8, deadline=None)
@given(valid=st.integers(1, 5), seed=st.integers(0, 1000))
def test_padded_language_tokens_do_not_change_valid_kv(valid, seed):
    bb = tiny().eval()
    b1 = batch(b=1, valid=(valid,), seed=seed)
    b2 = dict(b1)
    ids = b1[LANGUAGE_TOKENS].clone()
    ids[:, valid:] = (ids[:, valid:] + 7) % 40
    b2[LANGUAGE_TOKENS] = ids
    with torch.no_grad():
        kv1, kv2 = bb(b1).past_key_values, bb(b2).past_key_values
    n = 4 + valid
    for (k1, v1), (k2, v2) in zip(kv1, kv2):
        torch.testing.assert_close(k1[:, :, :n], k2[:, :, :n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v1[:, :, :n], v2[:, :, :n], rtol=1e-5, atol=1e-6)
        assert torch.isfinite(k1).all() and torch.isfinite(v1).all()


def test_language_embeddings_are_scaled_by_sqrt_width_and_images_are_not():
    bb = tiny().eval()
    b = batch()
    with torch.no_grad():
        prefix, _ = bb.embed_prefix(b)
        expected_lang = bb.language_model.embed_tokens(b[LANGUAGE_TOKENS]) * 8.0  # sqrt(64)
        expected_img = bb.multi_modal_projector(bb.vision_tower(b[CAMERA] * 2 - 1))
    torch.testing.assert_close(prefix[:, 4:], expected_lang)
    torch.testing.assert_close(prefix[:, :4], expected_img)


def test_matches_transformers_paligemma_loaded_from_save_pretrained(tmp_path):
    from transformers import DynamicCache, PaliGemmaConfig, PaliGemmaForConditionalGeneration

    cfg = PaliGemmaConfig(
        text_config={"model_type": "gemma", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 40},
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 48,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28, "patch_size": 14,
                       "projection_dim": 64},
        image_token_index=39, vocab_size=40, projection_dim=64,
    )
    torch.manual_seed(0)
    hf = PaliGemmaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    hf.save_pretrained(tmp_path)
    ours = PaliGemmaBackbone.from_pretrained(tmp_path, image_keys=[CAMERA], max_token_len=6, return_hidden_states=True)
    assert (ours.config.width, ours.config.num_heads, ours.config.head_dim, ours.config.vision_depth) == (64, 4, 16, 2)
    b = batch(valid=(6,))
    with torch.no_grad():
        out = ours.eval()(b)
        image = hf.model.get_image_features(b[CAMERA] * 2 - 1)
        image = getattr(image, "pooler_output", image)
        embeds = torch.cat([image, hf.model.language_model.embed_tokens(b[LANGUAGE_TOKENS])], dim=1)
        t = embeds.shape[1]
        cache = DynamicCache()
        ref = hf.model.language_model(
            inputs_embeds=embeds, attention_mask=torch.zeros(2, 1, t, t), position_ids=torch.arange(t).expand(2, t),
            past_key_values=cache, use_cache=True,
        )
    torch.testing.assert_close(out.features, ref.last_hidden_state, rtol=1e-4, atol=1e-5)
    for i, (k, v) in enumerate(out.past_key_values):
        layer = cache.layers[i] if hasattr(cache, "layers") else None
        ref_k, ref_v = (layer.keys, layer.values) if layer is not None else (cache.key_cache[i], cache.value_cache[i])
        torch.testing.assert_close(k, ref_k, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(v, ref_v, rtol=1e-4, atol=1e-5)


def test_tokenizer_appends_newline_pads_right_and_truncates(tmp_path):
    tok = TaskTokenizer(make_tokenizer(tmp_path), max_length=5)
    ids, mask = tok(["pick up", "pick up the red cube"])
    vocab = tok.tokenizer.get_vocab()
    assert ids[0].tolist() == [1, vocab["pick"], vocab["up"], 0, 0]
    assert mask.tolist() == [[True, True, True, False, False], [True] * 5]
    assert ids[1].tolist() == [1, vocab["pick"], vocab["up"], vocab["the"], vocab["red"]]


def test_task_strings_equal_pre_tokenized_inputs(tmp_path):
    bb = tiny(tokenizer=str(make_tokenizer(tmp_path))).eval()
    b = batch()
    ids, mask = bb.tokenizer(list(TASKS), "cpu")
    with torch.no_grad():
        a = bb({CAMERA: b[CAMERA], "task": list(TASKS)})
        c = bb({CAMERA: b[CAMERA], LANGUAGE_TOKENS: ids, LANGUAGE_MASK: mask})
    torch.testing.assert_close(a.features, c.features)
    assert a.attention_mask.tolist() == c.attention_mask.tolist()


def test_task_strings_without_tokenizer_name_the_field():
    with pytest.raises(ConfigError, match="tokenizer"):
        tiny()({CAMERA: torch.rand(1, 3, 28, 28), "task": ["x"]})


def test_freeze_vision_keeps_the_tower_frozen_and_in_eval():
    bb = tiny(freeze_vision=True)
    bb.train()
    assert not any(p.requires_grad for p in bb.vision_tower.parameters())
    assert not bb.vision_tower.training and bb.language_model.training
    out = bb(batch())
    out.past_key_values[-1][0].sum().backward()
    assert bb.language_model.embed_tokens.weight.grad is not None


def test_resize_with_pad_keeps_aspect_and_centres():
    img = torch.ones(1, 3, 30, 40)
    out = resize_with_pad(img, 28)  # 30x40 -> 21x28, 7 rows of padding: 3 on top, 4 below
    assert out.shape == (1, 3, 28, 28)
    assert out[0, 0, :3].abs().sum() == 0 and out[0, 0, 24:].abs().sum() == 0
    torch.testing.assert_close(out[0, 0, 3:24], torch.ones(21, 28))
    bb = tiny().eval()
    with torch.no_grad():
        assert bb(batch(size=(30, 40))).features.shape == (2, 10, 64)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("image_size", 30, "image_size"), ("num_kv_heads", 3, "num_kv_heads"), ("image_keys", [], "image_keys"),
     ("width", 0, "width")],
)
def test_config_errors_name_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        build_backbone({**TINY_BACKBONE, field: value})


def test_a_tower_trained_from_scratch_starts_from_siglips_initializer():
    """Position embeddings at std 1/sqrt(width) (not 0.02: positions would be ~10x below the patch
    content), LeCun-normal patches, Xavier attention / MLP, zero biases; Gemma's std 0.02 elsewhere,
    widened for the narrow layers of a tiny model."""
    model = tiny(vision_width=64, vision_num_heads=2, vision_mlp_dim=128)
    emb = model.vision_tower.vision_model.embeddings
    assert emb.position_embedding.weight.std().item() == pytest.approx(64**-0.5, rel=0.15)
    fan_in = 3 * emb.patch_embedding.kernel_size[0] * emb.patch_embedding.kernel_size[1]
    assert emb.patch_embedding.weight.std().item() == pytest.approx(fan_in**-0.5, rel=0.15)
    attn = model.vision_tower.vision_model.encoder.layers[0].self_attn
    assert attn.q_proj.weight.std().item() == pytest.approx((2 / (64 + 64)) ** 0.5, rel=0.15)
    assert torch.count_nonzero(attn.q_proj.bias) == 0
    width = model.config.width
    q = model.language_model.layers[0].self_attn.q_proj.weight
    assert q.std().item() == pytest.approx(max(0.02, width**-0.5), rel=0.15)
    assert model.language_model.embed_tokens.weight.std().item() == pytest.approx(0.02, rel=0.15)
