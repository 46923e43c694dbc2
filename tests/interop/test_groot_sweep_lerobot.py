"""Option sweeps of the GR00T N1.5 converters against LeRobot 0.5.1: every architecture option of the reference
configs (``action_head_cfg`` with its DiT / VL-stack blocks, and Eagle's ``config.json``) one at a time away from
the tiny base, then a few random combinations (hypothesis, derandomized). The reference builds each model and
writes its checkpoint and outputs; we translate the config, load the weights and compare. Options vla cannot
reproduce are refused by the translation (packages/vla-heads/tests/test_groot_config.py covers those without a
peer; the ones here are checked against the reference too).

One long-lived peer serves the whole module (tests/support/groot_peer.py).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from groot_peer import EAGLE, HEAD, GrootPeer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from vla_backbones.eagle import EagleBackbone
from vla_core import BackboneOutput, ConfigError, load_tensors
from vla_heads.dit_flow_matching import DiTFlowMatchingHead
from vla_heads.dit_flow_matching.convert import head_config_from_groot, load_groot_head

TOL = 1e-4
SWEEP = settings(max_examples=4, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def peer(lerobot_051_python, tmp_path_factory):
    with GrootPeer(lerobot_051_python, tmp_path_factory.mktemp("groot_sweep_home")) as server:
        yield server


def merged(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------- the action head
HEAD_OPTIONS = {
    "no_pos_embed": {"add_pos_embed": False},
    "max_seq_len": {"max_seq_len": 4},
    "no_future_tokens": {"num_target_vision_tokens": 0},
    "one_future_token": {"num_target_vision_tokens": 1},
    "32_embodiments": {"max_num_embodiments": 32},
    "1_embodiment": {"max_num_embodiments": 1},
    "inference_steps": {"num_inference_timesteps": 7},
    "buckets": {"num_timestep_buckets": 100},
    "beta_alpha": {"noise_beta_alpha": 2.0},
    "beta_beta": {"noise_beta_beta": 1.5},
    "noise_s": {"noise_s": 0.9},
    "no_vlln": {"use_vlln": False, "backbone_embedding_dim": 99},  # backbone_embedding_dim is then unused
    "vl_layers_0": {"vl_self_attention_cfg": {"num_layers": 0}},
    "vl_layers_1": {"vl_self_attention_cfg": {"num_layers": 1}},
    "vl_heads": {"vl_self_attention_cfg": {"num_attention_heads": 2, "attention_head_dim": 16}},
    "dit_layers_odd": {"diffusion_model_cfg": {"num_layers": 3}},
    "no_interleave": {"diffusion_model_cfg": {"interleave_self_attention": False}},
    "dit_heads": {"diffusion_model_cfg": {"num_attention_heads": 4}, "input_embedding_dim": 32},
    "dit_head_dim": {"diffusion_model_cfg": {"attention_head_dim": 4}, "input_embedding_dim": 8},
    "hidden_size": {"hidden_size": 24, "diffusion_model_cfg": {"output_dim": 24}},
    "no_dropout": {"diffusion_model_cfg": {"dropout": 0.0}, "vl_self_attention_cfg": {"dropout": 0.0}},
    "no_final_dropout_without_dropout": {"diffusion_model_cfg": {"dropout": 0.0, "final_dropout": False},
                                         "vl_self_attention_cfg": {"dropout": 0.0, "final_dropout": False}},
    "upcast_attention": {"diffusion_model_cfg": {"upcast_attention": True},
                         "vl_self_attention_cfg": {"upcast_attention": True}},
    "ada_norm_embeds": {"diffusion_model_cfg": {"num_embeds_ada_norm": 500}},
    "pos_embeddings_size": {"diffusion_model_cfg": {"max_num_positional_embeddings": 64}},
    "horizon": {"action_horizon": 2},
    "action_dim": {"action_dim": 3, "max_action_dim": 3},
    "max_action_dim_unset": {"max_action_dim": None},
    "state_dim": {"max_state_dim": 5},
    "context_width": {"backbone_embedding_dim": 16, "diffusion_model_cfg": {"cross_attention_dim": 16},
                      "vl_self_attention_cfg": {"num_attention_heads": 2}},
    "training_switches": {"tune_projector": False, "tune_diffusion_model": False, "model_dtype": "bfloat16"},
}
# Refused: the reference runs them, and its outputs would differ from what vla builds.
HEAD_REFUSED = {
    "sinusoidal_positions": ({"diffusion_model_cfg": {"positional_embeddings": "sinusoidal"}}, "positional_embeddings"),
    "vl_sinusoidal_positions": ({"vl_self_attention_cfg": {"positional_embeddings": "sinusoidal"}}, "positional_embeddings"),
    "norm_eps": ({"diffusion_model_cfg": {"norm_eps": 1e-3}}, "norm_eps"),
    "affine_norm3": ({"diffusion_model_cfg": {"norm_elementwise_affine": True}}, "norm_elementwise_affine"),
    "geglu": ({"diffusion_model_cfg": {"activation_fn": "geglu"}}, "activation_fn"),
    "no_attention_bias": ({"diffusion_model_cfg": {"attention_bias": False}}, "attention_bias"),
    "vl_dropout": ({"vl_self_attention_cfg": {"dropout": 0.1}}, "dropout"),
}


def head_case(peer, tmp_path, changes: dict) -> None:
    cfg = merged(HEAD, changes)
    if cfg.get("use_vlln") is False:
        cfg["diffusion_model_cfg"]["cross_attention_dim"] = 32
    out = tmp_path / "head"
    peer.request("head", out=str(out), cfg={k: v for k, v in cfg.items() if v is not None})
    cfg = json.loads((out / "config.json").read_text())
    fields = head_config_from_groot(cfg)
    head = DiTFlowMatchingHead(DiTFlowMatchingHead.config_class.from_dict({**fields, "state_dim": cfg["max_state_dim"]}))
    load_groot_head(head, load_tensors(out / "model.safetensors"))
    head.eval()
    io = load_file(str(out / "io.safetensors"))
    context = BackboneOutput(features=io["features"], attention_mask=io["attention_mask"])
    batch = {"observation.state": io["state"], "embodiment_id": io["embodiment_id"], "action": io["action"]}
    actions = head.predict_action(context, batch, noise=io["noise"])
    assert actions.shape == io["actions"].shape and io["actions"].abs().max() > 1e-2
    assert (actions - io["actions"]).abs().max().item() <= TOL
    torch.manual_seed(7)
    with torch.no_grad():
        loss = head(context, batch).loss
    assert abs(loss.item() - io["loss"].item()) <= TOL


@pytest.mark.peer
@pytest.mark.parametrize("name", sorted(HEAD_OPTIONS))
def test_head_option_converts_with_equal_outputs(peer, tmp_path, name):
    head_case(peer, tmp_path, HEAD_OPTIONS[name])


@pytest.mark.peer
@pytest.mark.parametrize("name", sorted(HEAD_REFUSED))
def test_head_option_vla_cannot_reproduce_is_refused(peer, tmp_path, name):
    changes, field = HEAD_REFUSED[name]
    out = tmp_path / "head"
    peer.request("head", out=str(out), cfg=merged(HEAD, changes))  # the reference builds and runs it
    with pytest.raises(ConfigError, match=field):
        head_config_from_groot(json.loads((out / "config.json").read_text()))


@pytest.mark.peer
@SWEEP
@given(picks=st.lists(st.sampled_from(sorted(set(HEAD_OPTIONS) - {"no_vlln", "context_width"})), min_size=2,
                      max_size=4, unique=True))
def test_head_random_option_combinations(peer, tmp_path_factory, picks):
    changes: dict = {}
    for name in picks:
        changes = merged(changes, HEAD_OPTIONS[name])
    if changes.get("diffusion_model_cfg", {}).get("attention_head_dim") == 4 and "dit_heads" in picks:
        changes["input_embedding_dim"] = 16  # 4 heads x 4
    head_case(peer, tmp_path_factory.mktemp("combo"), changes)


# ----------------------------------------------------------------- Eagle
EAGLE_OPTIONS = {
    "vision_width": {"vision_config": {"hidden_size": 24}},
    "vision_mlp": {"vision_config": {"intermediate_size": 40}},
    "vision_layers": {"vision_config": {"num_hidden_layers": 3}, "select_layer": 3},
    "vision_heads": {"vision_config": {"num_attention_heads": 4}},
    "patch_size": {"vision_config": {"patch_size": 14}},
    "image_size": {"vision_config": {"image_size": 42}},
    "vision_act": {"vision_config": {"hidden_act": "gelu"}},
    "vision_eps": {"vision_config": {"layer_norm_eps": 1e-5}},
    "vision_select_1": {"select_layer": 1},
    "vision_select_negative": {"select_layer": -2},
    "text_width": {"text_config": {"hidden_size": 48}},
    "text_mlp": {"text_config": {"intermediate_size": 64}},
    "text_heads": {"text_config": {"num_attention_heads": 2, "num_key_value_heads": 1}},
    "text_head_dim": {"text_config": {"head_dim": 16}},
    "text_eps": {"text_config": {"rms_norm_eps": 1e-5}},
    "rope_theta": {"text_config": {"rope_theta": 10000.0}},
    "untied_embeddings": {"text_config": {"tie_word_embeddings": False}},
    "text_attention_bias": {"text_config": {"attention_bias": True}},
    "text_act": {"text_config": {"hidden_act": "gelu"}},
    "vocab_size": {"text_config": {"vocab_size": 80}},
    "max_positions": {"text_config": {"max_position_embeddings": 64}},
    "attention_dropout": {"vision_config": {"attention_dropout": 0.1}, "text_config": {"attention_dropout": 0.1}},
    "pixel_shuffle": {"use_pixel_shuffle": True, "mlp_connector_layers": 2},
    "pixel_shuffle_quarter": {"use_pixel_shuffle": True, "mlp_connector_layers": 2, "downsample_ratio": 0.25},
    "image_token": {"image_token_index": 61},
    "force_image_size_same": {"force_image_size": 28},
    "preprocessing_fields": {"dynamic_image_size": True, "max_dynamic_tiles": 12, "use_thumbnail": True,
                             "template": "qwen3-chat", "pad2square": True, "loss_version": "v2"},
}
EAGLE_LLM_CUTS = (1, 3)
# (force_image_size other than the vision image_size is refused too; the reference cannot run it: its SigLIP
# position table does not fit the forced size. packages/vla-backbones/tests/test_eagle_config.py checks it.)
EAGLE_REFUSED = {
    "vision_last_hidden_state": ({"select_layer": -1}, "select_layer"),
    "linear_after_shuffle": ({"use_pixel_shuffle": True, "mlp_connector_layers": 1}, "mlp_connector_layers"),
}


def eagle_case(peer, tmp_path, changes: dict, select: int = 2) -> None:
    out = tmp_path / "eagle"
    peer.request("eagle", out=str(out), cfg=merged(EAGLE, changes), select_layer=select)
    backbone = EagleBackbone.from_pretrained(out, select_layer=select).eval()
    io = load_file(str(out / "io.safetensors"))
    with torch.no_grad():
        got = backbone({"eagle_input_ids": io["input_ids"], "eagle_attention_mask": io["attention_mask"],
                        "eagle_pixel_values": io["pixel_values"]}).features
    assert got.shape == io["features"].shape and io["features"].abs().max() > 0.1
    assert (got - io["features"]).abs().max().item() <= TOL


@pytest.mark.peer
@pytest.mark.parametrize("name", sorted(EAGLE_OPTIONS))
def test_eagle_option_converts_with_equal_features(peer, tmp_path, name):
    eagle_case(peer, tmp_path, EAGLE_OPTIONS[name])


@pytest.mark.peer
@pytest.mark.parametrize("select", EAGLE_LLM_CUTS)
def test_eagle_llm_cut_converts_with_equal_features(peer, tmp_path, select):
    eagle_case(peer, tmp_path, {}, select)


@pytest.mark.peer
@pytest.mark.parametrize("name", sorted(EAGLE_REFUSED))
def test_eagle_option_vla_cannot_reproduce_is_refused(peer, tmp_path, name):
    changes, field = EAGLE_REFUSED[name]
    out = tmp_path / "eagle"
    peer.request("eagle", out=str(out), cfg=merged(EAGLE, changes), select_layer=2)  # the reference runs it
    with pytest.raises(ConfigError, match=field):
        EagleBackbone.from_pretrained(out, select_layer=2)


@pytest.mark.peer
@SWEEP
@given(picks=st.lists(st.sampled_from(sorted(set(EAGLE_OPTIONS) - {"pixel_shuffle_quarter", "patch_size", "force_image_size_same"})),
                      min_size=2, max_size=4, unique=True),
       select=st.sampled_from((1, 2, 3)))
def test_eagle_random_option_combinations(peer, tmp_path_factory, picks, select):
    changes: dict = {}
    for name in picks:
        changes = merged(changes, EAGLE_OPTIONS[name])
    if "vision_select_1" in picks or "vision_select_negative" in picks:  # one vision select_layer wins
        changes["select_layer"] = 1
    elif "vision_layers" not in picks:
        changes.pop("select_layer", None)
    eagle_case(peer, tmp_path_factory.mktemp("combo"), changes, select)
