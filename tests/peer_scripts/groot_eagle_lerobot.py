"""Peer side of the Eagle backbone parity test (runs in the LeRobot 0.5.1 venv).

Builds LeRobot 0.5.1's vendored Eagle 2.5 VL model tiny with random weights, truncates its LLM to
``select_layer`` layers as GR00T N1.5's EagleBackbone does, and writes one directory per variant:
``config.json`` (the Eagle config), ``model.safetensors`` (the full state dict before truncation,
reference key names) and ``io.safetensors`` (input ids with left padding, attention mask, pixel
values and the reference features ``hidden_states[select_layer]``).
Usage: python groot_eagle_lerobot.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import lerobot.policies.groot.eagle2_hg_model.modeling_eagle2_5_vl as eagle_modeling
from lerobot.policies.groot.eagle2_hg_model.configuration_eagle2_5_vl import Eagle25VLConfig
from lerobot.policies.groot.eagle2_hg_model.modeling_eagle2_5_vl import Eagle25VLForConditionalGeneration

_SIGLIP = eagle_modeling.SiglipVisionModel


def _siglip_sdpa(config):
    """The reference forces flash_attention_2 on SigLIP; flash-attn is not installed on CPU, so build it
    with sdpa (the attention kernel is the only change)."""
    config._attn_implementation = "sdpa"
    return _SIGLIP(config)


eagle_modeling.SiglipVisionModel = _siglip_sdpa

IMG_TOKEN, SELECT = 60, 2
VISION = {"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
          "num_attention_heads": 2, "image_size": 28, "patch_size": 7, "hidden_act": "gelu_pytorch_tanh",
          "layer_norm_eps": 1e-6}
TEXT = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "vocab_size": 64, "max_position_embeddings": 128,
        "tie_word_embeddings": True}
VARIANTS = {
    "linear": {"use_pixel_shuffle": False, "mlp_connector_layers": 1},  # GR00T N1.5
    "pixel_shuffle_mlp": {"use_pixel_shuffle": True, "mlp_connector_layers": 2},  # Eagle 2
}


def build(variant: dict) -> Eagle25VLForConditionalGeneration:
    cfg = Eagle25VLConfig(vision_config=dict(VISION), text_config=dict(TEXT), select_layer=VISION["num_hidden_layers"],
                          downsample_ratio=0.5, image_token_index=IMG_TOKEN, **variant)
    cfg._attn_implementation = "sdpa"
    cfg.text_config._attn_implementation = "sdpa"
    model = Eagle25VLForConditionalGeneration(cfg)
    shuffle = model.pixel_shuffle  # its .view() needs contiguous input, which sdpa's output is not
    model.pixel_shuffle = lambda x, scale_factor=0.5: shuffle(x.contiguous(), scale_factor)
    for sub in (model.vision_model, model.language_model):
        sub.config._attn_implementation = "sdpa"  # flash-attn is not installed; sdpa on CPU
    with torch.no_grad():  # non-trivial norms and biases, so a mis-mapped one shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def main(out: Path) -> None:
    for name, variant in VARIANTS.items():
        torch.manual_seed(0)
        model = build(variant)
        full = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
        while len(model.language_model.model.layers) > SELECT:
            model.language_model.model.layers.pop(-1)
        n_img = model.num_image_token
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, 50, (2, 6 + n_img), generator=g)
        ids[:, 2 : 2 + n_img] = IMG_TOKEN
        mask = torch.ones_like(ids)
        mask[0, :2] = 0  # left padding
        pixels = torch.randn(2, 3, 28, 28, generator=g)
        with torch.no_grad():
            out_ = model(pixel_values=pixels, input_ids=ids, attention_mask=mask, output_hidden_states=True,
                         return_dict=True)
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        save_file(full, str(d / "model.safetensors"))
        save_file({"input_ids": ids, "attention_mask": mask, "pixel_values": pixels,
                   "features": out_.hidden_states[SELECT].contiguous()}, str(d / "io.safetensors"))
        (d / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
