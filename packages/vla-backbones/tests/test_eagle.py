"""eagle backbone: shapes, select_layer truncation, freezing, image-token placement, padding, processor."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vla_backbones.eagle import EagleBackbone, EagleConfig
from vla_backbones.eagle.convert import eagle_name_mapping, load_eagle_weights
from vla_backbones.eagle.processor import IMAGE_TOKEN, PROMPT_TOKENS
from vla_backbones.word_tokenizer import save_word_tokenizer
from vla_core import ConfigError, build_backbone
from vla_core.features import PolicyFeature
from vla_core.testing import check_backbone, random_batch

IMG = 60
VISION = {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 28, "patch_size": 7}
LLM = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4,
       "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 64, "max_position_embeddings": 128}


def tiny(**overrides) -> EagleBackbone:
    fields = {"vision": VISION, "llm": LLM, "select_layer": 2, "image_token_id": IMG, "tune_llm": True,
              "tune_visual": True}
    fields.update(overrides)
    torch.manual_seed(0)
    return EagleBackbone(EagleConfig(**fields)).eval()


def tokens(bsz: int, n_img_tokens: int, text: int = 5, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (bsz, text + n_img_tokens), generator=g)
    ids[:, 2 : 2 + n_img_tokens] = IMG
    return {"eagle_input_ids": ids, "eagle_attention_mask": torch.ones_like(ids, dtype=torch.bool),
            "eagle_pixel_values": torch.randn(bsz, 3, 28, 28, generator=g)}


@settings(max_examples=6, deadline=None)
@given(bsz=st.integers(1, 3), text=st.integers(3, 8), connector=st.sampled_from(["linear", "pixel_shuffle_mlp"]),
       llm_type=st.sampled_from(["qwen3", "qwen2"]), project=st.sampled_from([None, 12]))
def test_shapes(bsz, text, connector, llm_type, project):
    bb = tiny(connector=connector, llm_type=llm_type, project_to_dim=project)
    q = bb.config.tokens_per_image
    assert q == (4 if connector == "pixel_shuffle_mlp" else 16)
    out = bb(tokens(bsz, q, text))
    assert out.features.shape == (bsz, text + q, project or 32) and bb.output_dim == (project or 32)
    assert out.attention_mask.dtype == torch.bool and out.attention_mask.all()


@pytest.mark.parametrize("llm_type", ["qwen3", "qwen2"])
def test_select_layer_removes_layers_and_equals_full_model_hidden_state(llm_type):
    full, cut = tiny(llm_type=llm_type, select_layer=3), tiny(llm_type=llm_type, select_layer=2)
    assert len(cut.llm.layers) == 2 and not any(".layers.2." in n for n, _ in cut.named_parameters())
    per_layer = sum(p.numel() for p in full.llm.layers[2].parameters())
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in cut.parameters()) == per_layer
    sd = {k: v for k, v in full.state_dict().items() if ".layers.2." not in k}
    cut.load_state_dict(sd, strict=True)
    batch = tokens(2, 16)
    with torch.no_grad():
        got = cut(batch).features
        embeds = full.llm.embed_tokens(batch["eagle_input_ids"]).masked_scatter(
            (batch["eagle_input_ids"] == IMG).unsqueeze(-1), full.encode_images(batch["eagle_pixel_values"]))
        hidden = full.llm(inputs_embeds=embeds, output_hidden_states=True).hidden_states[2]
        want = full.llm.norm(hidden)  # the output is the kept layers' last state after the final norm
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_vision_features_come_before_the_final_norm():
    bb = tiny()
    assert not hasattr(bb.vision, "post_layernorm") and not any("post_layernorm" in n for n, _ in bb.named_parameters())


@pytest.mark.parametrize(("tune_llm", "tune_visual"), [(False, True), (True, False), (False, False)])
def test_freezing_flags(tune_llm, tune_visual):
    bb = tiny(tune_llm=tune_llm, tune_visual=tune_visual)
    assert all(p.requires_grad == tune_llm for p in bb.llm.parameters())
    assert all(p.requires_grad == tune_visual for p in bb.vision.parameters())
    assert all(p.requires_grad == tune_visual for p in bb.connector.parameters())  # connector follows vision
    bb.train()
    assert bb.training and bb.llm.training == tune_llm and bb.vision.training == tune_visual
    if tune_llm or tune_visual:
        bb(tokens(1, 16)).features.square().mean().backward()
        assert all((p.grad is not None) == p.requires_grad for p in bb.parameters() if p.requires_grad)


def test_image_tokens_go_to_image_positions_in_batch_order():
    bb = tiny()
    batch = tokens(2, 16)
    with torch.no_grad():
        base = bb(batch).features
        other = dict(batch, eagle_pixel_values=batch["eagle_pixel_values"].clone())
        other["eagle_pixel_values"][1] += 1.0  # change only sample 1's image
        changed = bb(other).features
    torch.testing.assert_close(changed[0], base[0])  # sample 0 uses image 0
    torch.testing.assert_close(changed[1, :2], base[1, :2])  # causal: text before the image is unaffected
    assert (changed[1, 2:] - base[1, 2:]).abs().max() > 1e-4
    # the image positions carry the connector output (checked at the LLM input)
    seen = {}
    hook = bb.llm.register_forward_pre_hook(lambda m, a, kw: seen.update(x=kw["inputs_embeds"]), with_kwargs=True)
    with torch.no_grad():
        bb(batch)
        imgs = bb.encode_images(batch["eagle_pixel_values"])
    hook.remove()
    torch.testing.assert_close(seen["x"][:, 2:18], imgs)


def test_image_token_count_mismatch_raises():
    batch = tokens(2, 16)
    batch["eagle_input_ids"][0, 2] = 1
    with pytest.raises(ValueError, match="image-token positions"):
        tiny()(batch)


def test_left_padding_leaves_valid_tokens_unchanged():
    bb = tiny()
    batch = tokens(1, 16)
    pad = {k: v for k, v in batch.items()}
    pad["eagle_input_ids"] = torch.cat([torch.zeros(1, 3, dtype=torch.long), batch["eagle_input_ids"]], 1)
    pad["eagle_attention_mask"] = torch.cat([torch.zeros(1, 3, dtype=torch.bool), batch["eagle_attention_mask"]], 1)
    with torch.no_grad():
        plain, padded = bb(batch), bb(pad)
    assert padded.attention_mask[0, :3].logical_not().all() and padded.attention_mask[0, 3:].all()
    # RoPE is relative, so the shifted positions of left padding do not change the valid outputs
    torch.testing.assert_close(padded.features[:, 3:], plain.features, atol=2e-5, rtol=1e-4)


def test_loads_groot_checkpoint_keys_and_drops_unused():
    src = tiny(project_to_dim=8)
    theirs = {}
    mapping = eagle_name_mapping("backbone.eagle_model", projector="backbone.eagle_linear")
    for key, value in src.state_dict().items():
        prefix = next(p for p in mapping if key.startswith(p + "."))
        theirs[mapping[prefix] + key[len(prefix):]] = value
    theirs["backbone.eagle_model.vision_model.vision_model.post_layernorm.weight"] = torch.ones(16)
    theirs["backbone.eagle_model.language_model.lm_head.weight"] = torch.zeros(64, 32)
    theirs["backbone.eagle_model.language_model.model.layers.2.input_layernorm.weight"] = torch.ones(32)
    theirs["action_head.whatever"] = torch.zeros(1)
    assert "backbone.eagle_model.language_model.model.layers.0.self_attn.q_proj.weight" in theirs
    assert "backbone.eagle_model.mlp1.0.weight" in theirs
    dst = EagleBackbone(EagleConfig(vision=VISION, llm=LLM, select_layer=2, image_token_id=IMG, project_to_dim=8))
    report = load_eagle_weights(dst, theirs, prefix="backbone.eagle_model", projector="backbone.eagle_linear")
    assert report.ok
    batch = tokens(1, 16)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(batch).features, src(batch).features)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="select_layer"):
        EagleConfig(vision=VISION, llm=LLM, select_layer=5)
    with pytest.raises(ConfigError, match="connector"):
        EagleConfig(vision=VISION, llm=LLM, connector="mlp")
    with pytest.raises(ConfigError, match="tokenizer_path"):
        tiny(image_keys=("observation.images.top",))({"task": ["x"], "observation.images.top": torch.rand(1, 3, 28, 28)})


# ----------------------------------------------------------------- processor (a tiny local tokenizer)
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """(directory, image token id) of a word-level tokenizer with the Eagle prompt tokens."""
    path = tmp_path_factory.mktemp("tok")
    vocab = save_word_tokenizer(path, ["pick up the cube", "open the drawer", "user assistant"],
                                special_tokens=[*PROMPT_TOKENS, IMAGE_TOKEN])
    return str(path), vocab[IMAGE_TOKEN]


def test_processor_builds_prompt_with_image_tokens_and_left_padding(tokenizer):
    cams = ("observation.images.top", "observation.images.wrist")
    path, img = tokenizer
    bb = tiny(image_keys=cams, tokenizer_path=path, image_token_id=img)
    batch = {"task": ["pick up the cube", "open"], cams[0]: torch.rand(2, 3, 32, 40), cams[1]: torch.rand(2, 3, 28, 28)}
    enc = bb.processor()(batch)
    ids, mask = enc["eagle_input_ids"], enc["eagle_attention_mask"]
    assert ((ids == img).sum(1) == 2 * 16).all()  # two cameras x 16 tokens per sample
    assert enc["eagle_pixel_values"].shape == (4, 3, 28, 28)  # resized, sample-major
    assert enc["eagle_pixel_values"].min() >= -1 and enc["eagle_pixel_values"].max() <= 1
    assert not mask[1, 0] and mask[1, -1] and mask[0].all()  # the shorter prompt is left-padded
    out = bb(batch)
    assert out.features.shape == (2, ids.shape[1], 32)
    torch.testing.assert_close(out.attention_mask, mask)


def test_contract_suite_with_task_and_images(tokenizer):
    features = {"observation.images.top": PolicyFeature("VISUAL", (3, 28, 28)), "task": PolicyFeature("LANGUAGE", ())}
    path, img = tokenizer
    bb = build_backbone({"type": "eagle", "vision": VISION, "llm": LLM, "select_layer": 2, "image_token_id": img,
                         "image_keys": ["observation.images.top"], "tokenizer_path": path})
    check_backbone(bb, random_batch(features, batch_size=2))


def test_tiny_config_takes_two_32px_cameras_and_task_strings(tmp_path):
    cams = ["observation.images.top", "observation.images.wrist"]
    bb = build_backbone({"type": "eagle", **EagleBackbone.tiny_config(tmp_path), "image_keys": cams})
    assert bb.config.tokens_per_image == 4 and all(p.requires_grad for p in bb.parameters())
    g = torch.Generator().manual_seed(0)
    batch = {"task": ["pick up the red cube", "reach the blue target"],
             **{k: torch.rand(2, 3, 32, 32, generator=g) for k in cams}}
    out = check_backbone(bb, batch)
    ids = bb.processor()(batch)["eagle_input_ids"]
    assert out.features.shape == (2, ids.shape[1], 32)
    assert ((ids == bb.config.image_token_id).sum(1) == 2 * 4).all()
    assert not (ids == bb.processor().tokenizer.unk_token_id).any()  # the tiny vocabulary knows these tasks


def test_no_kv_cache_is_built_so_recomputed_layers_see_the_same_inputs():
    """A KV cache would be appended to again when activation checkpointing recomputes a layer."""
    bb = tiny()
    seen = []
    hook = bb.llm.layers[0].register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("past_key_values")),
                                                      with_kwargs=True)
    bb(tokens(1, 16))
    hook.remove()
    assert seen == [None]
