"""``config_from_eagle`` is strict: Eagle25VLConfig's defaults for missing keys, its vision ``select_layer``
reproduced by building only that many SigLIP layers, and every field it cannot reproduce refused by name."""

from __future__ import annotations

import copy

import pytest
from vla_backbones.eagle.convert import config_from_eagle
from vla_core import ConfigError

EAGLE = {
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 24,
                      "num_hidden_layers": 6, "num_attention_heads": 2, "image_size": 28, "patch_size": 7},
    "text_config": {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 32, "intermediate_size": 48,
                    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                    "vocab_size": 64, "tie_word_embeddings": True, "use_sliding_window": False},
    "select_layer": 6, "use_pixel_shuffle": False, "mlp_connector_layers": 1, "image_token_index": 60,
    "template": "qwen3-chat", "_attn_implementation": "flash_attention_2", "return_dict": True,
}


def with_(**changes):
    cfg = copy.deepcopy(EAGLE)
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize(("select", "layers"), [(6, 6), (3, 3), (-2, 5), (-7, 0)])
def test_vision_select_layer_builds_that_many_siglip_layers(select, layers):
    if layers == 0:
        with pytest.raises(ConfigError, match="select_layer"):
            config_from_eagle(with_(select_layer=select), select_layer=2)
        return
    assert config_from_eagle(with_(select_layer=select), select_layer=2).vision["num_hidden_layers"] == layers


def test_missing_keys_take_eagle25vlconfig_defaults():
    cfg = with_()
    for key in ("select_layer", "use_pixel_shuffle", "mlp_connector_layers"):
        del cfg[key]
    out = config_from_eagle(cfg, select_layer=2)  # -4, pixel shuffle, 2-layer connector
    assert out.vision["num_hidden_layers"] == 3 and out.connector == "pixel_shuffle_mlp"


@pytest.mark.parametrize(("changes", "field"), [
    ({"surprise": 1}, "surprise"),
    ({"select_layer": -1}, "select_layer"),
    ({"use_pixel_shuffle": True}, "mlp_connector_layers"),
    ({"mlp_connector_layers": 2}, "mlp_connector_layers"),
    ({"force_image_size": 56}, "force_image_size"),
    ({"use_llm_lora": 8}, "lora"),
    ({"image_token_index": None}, "image_token_index"),
])
def test_fields_it_cannot_reproduce_are_refused_by_name(changes, field):
    with pytest.raises(ConfigError, match=field):
        config_from_eagle(with_(**changes), select_layer=2)


@pytest.mark.parametrize(("text", "field"), [
    ({"surprise": 1}, "surprise"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"architectures": ["LlamaForCausalLM"]}, "architectures"),
])
def test_text_config_fields_it_cannot_reproduce_are_refused(text, field):
    cfg = with_()
    cfg["text_config"] = {**cfg["text_config"], **text}
    with pytest.raises(ConfigError, match=field):
        config_from_eagle(cfg, select_layer=2)
    cfg = with_()
    cfg["vision_config"] = {**cfg["vision_config"], "surprise": 1}
    with pytest.raises(ConfigError, match="vision_config"):
        config_from_eagle(cfg, select_layer=2)
