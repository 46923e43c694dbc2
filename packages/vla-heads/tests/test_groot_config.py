"""``head_config_from_groot``: any embodiment count translates, the reference defaults apply to missing keys,
and every field it does not understand (or cannot reproduce) is refused, naming the field."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vla_core import ConfigError
from vla_heads.dit_flow_matching import DiTFlowMatchingHead
from vla_heads.dit_flow_matching.convert import GROOT_EMBODIMENTS, head_config_from_groot

N15 = {  # the released GR00T-N1.5-3B action_head_cfg
    "action_dim": 32, "action_horizon": 16, "add_pos_embed": True, "backbone_embedding_dim": 2048,
    "diffusion_model_cfg": {"attention_head_dim": 48, "cross_attention_dim": 2048, "dropout": 0.2,
                            "final_dropout": True, "interleave_self_attention": True, "norm_type": "ada_norm",
                            "num_attention_heads": 32, "num_layers": 16, "output_dim": 1024,
                            "positional_embeddings": None},
    "hidden_size": 1024, "input_embedding_dim": 1536, "max_action_dim": 32, "max_state_dim": 64,
    "model_dtype": "float32", "noise_beta_alpha": 1.5, "noise_beta_beta": 1.0, "noise_s": 0.999,
    "num_inference_timesteps": 4, "num_target_vision_tokens": 32, "num_timestep_buckets": 1000,
    "tune_diffusion_model": True, "tune_projector": True, "use_vlln": True,
    "vl_self_attention_cfg": {"attention_head_dim": 64, "dropout": 0.2, "final_dropout": True, "num_attention_heads": 32,
                              "num_layers": 4, "positional_embeddings": None},
}


def build(fields):
    return DiTFlowMatchingHead.config_class.from_dict({**fields, "state_dim": 6})


def test_released_config_translates_to_32_rows_with_new_embodiment_at_31():
    cfg = head_config_from_groot(N15, action_dim=6)
    assert cfg["num_embodiments"] == 32 and cfg["embodiments"]["new_embodiment"] == 31
    assert cfg["default_embodiment"] == "new_embodiment" and sorted(cfg["embodiments"].values()) == list(range(32))
    assert (cfg["context_dim"], cfg["horizon"], cfg["max_action_dim"], cfg["dropout"]) == (2048, 16, 32, 0.2)
    assert build(cfg).embodiment_rows == 32


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40))
def test_any_embodiment_count_translates_and_builds(rows):
    cfg = head_config_from_groot({**N15, "max_num_embodiments": rows}, action_dim=6)
    built = build(cfg)
    assert built.embodiment_rows == rows and sorted(cfg["embodiments"].values()) == list(range(rows))
    known = {k: v for k, v in GROOT_EMBODIMENTS.items() if v < rows}
    assert all(cfg["embodiments"][k] == v for k, v in known.items())  # the GR00T tags keep their rows
    want_default = "new_embodiment" if rows > 31 else next(k for k, v in cfg["embodiments"].items() if v == 0)
    assert built.default_embodiment == want_default


def test_given_embodiment_names_and_default():
    cfg = head_config_from_groot({**N15, "max_num_embodiments": 5}, embodiments={"arm": 4, "mobile": 1},
                                 default_embodiment="mobile")
    assert cfg["embodiments"] == {"arm": 4, "mobile": 1, "embodiment_0": 0, "embodiment_2": 2, "embodiment_3": 3}
    assert build(cfg).default_embodiment == "mobile"


@pytest.mark.parametrize(("path", "value", "field"), [
    (("surprise",), 1, "surprise"),
    (("diffusion_model_cfg", "surprise"), 1, "surprise"),
    (("vl_self_attention_cfg", "surprise"), 1, "surprise"),
    (("diffusion_model_cfg", "positional_embeddings"), "sinusoidal", "positional_embeddings"),
    (("diffusion_model_cfg", "norm_type"), "layer_norm", "norm_type"),
    (("diffusion_model_cfg", "activation_fn"), "geglu", "activation_fn"),
    (("diffusion_model_cfg", "attention_bias"), False, "attention_bias"),
    (("diffusion_model_cfg", "norm_elementwise_affine"), True, "norm_elementwise_affine"),
    (("diffusion_model_cfg", "final_dropout"), False, "final_dropout"),
    (("diffusion_model_cfg", "output_dim"), 512, "output_dim"),
    (("diffusion_model_cfg", "cross_attention_dim"), 1024, "cross_attention_dim"),
    (("vl_self_attention_cfg", "dropout"), 0.1, "dropout"),
    (("vl_self_attention_cfg", "attention_head_dim"), 32, "attention_head_dim"),
    (("input_embedding_dim",), 1024, "input_embedding_dim"),
    (("expand_batch",), 2, "expand_batch"),
    (("max_action_dim",), 24, "max_action_dim"),
])
def test_fields_it_cannot_reproduce_are_refused_by_name(path, value, field):
    cfg = copy.deepcopy(N15)
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=field):
        head_config_from_groot(cfg)


def test_missing_keys_take_the_reference_class_defaults():
    """The DiT class default positional_embeddings='sinusoidal' is not what N1.5 ships: leaving it out is refused."""
    cfg = copy.deepcopy(N15)
    del cfg["diffusion_model_cfg"]["positional_embeddings"]
    with pytest.raises(ConfigError, match="positional_embeddings"):
        head_config_from_groot(cfg)
    cfg = copy.deepcopy(N15)
    del cfg["diffusion_model_cfg"]["dropout"], cfg["vl_self_attention_cfg"]["dropout"]
    assert head_config_from_groot(cfg)["dropout"] == 0.1  # the DiT class default, not the released 0.2
    del cfg["num_inference_timesteps"]
    with pytest.raises(ConfigError, match="num_inference_timesteps"):
        head_config_from_groot(cfg)


def test_without_vlln_the_context_width_is_the_cross_attention_dim():
    cfg = copy.deepcopy(N15)
    cfg.update(use_vlln=False, backbone_embedding_dim=999)  # unused by the reference without vlln
    cfg["diffusion_model_cfg"]["cross_attention_dim"] = 64
    out = head_config_from_groot(cfg)
    assert (out["context_dim"], out["use_vlln"], out["vl_self_attention_layers"]) == (64, False, 0)
    with torch.device("meta"):
        DiTFlowMatchingHead(build(out))
