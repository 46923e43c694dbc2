"""The long-lived GR00T peer (tests/peer_scripts/groot_server_lerobot.py in the LeRobot 0.5.1 venv) and the
tiny GR00T N1.5 specs the converter tests build in it: one process serves a whole module's requests."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

SERVER = Path(__file__).resolve().parents[1] / "peer_scripts" / "groot_server_lerobot.py"

# Eagle 2.5 (SigLIP 28 px / patch 7: 16 tokens per image; Qwen3 width 32, 3 layers cut at 2), as GR00T N1.5's
EAGLE: dict[str, Any] = {
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 24,
                      "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28, "patch_size": 7,
                      "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6},
    "text_config": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 32,
                    "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
                    "head_dim": 8, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "vocab_size": 64,
                    "max_position_embeddings": 128, "tie_word_embeddings": True},
    "select_layer": 2, "downsample_ratio": 0.5, "image_token_index": 60, "use_pixel_shuffle": False,
    "mlp_connector_layers": 1,
}
# action_head_cfg: a 4-block DiT of width 16 (2 x 8) over a 32-wide context, 2 VL blocks, 5 embodiment rows
HEAD: dict[str, Any] = {
    "add_pos_embed": True,
    "diffusion_model_cfg": {"num_layers": 4, "num_attention_heads": 2, "attention_head_dim": 8, "output_dim": 16,
                            "cross_attention_dim": 32, "norm_type": "ada_norm", "interleave_self_attention": True,
                            "dropout": 0.2, "final_dropout": True, "positional_embeddings": None},
    "input_embedding_dim": 16, "backbone_embedding_dim": 32, "hidden_size": 16, "max_seq_len": 10,
    "action_dim": 6, "action_horizon": 4, "max_state_dim": 8, "max_action_dim": 6, "noise_beta_alpha": 1.5,
    "noise_beta_beta": 1.0, "noise_s": 0.999, "num_timestep_buckets": 1000, "num_inference_timesteps": 4,
    "max_num_embodiments": 5, "use_vlln": True, "num_target_vision_tokens": 3,
    "vl_self_attention_cfg": {"num_layers": 2, "num_attention_heads": 4, "attention_head_dim": 8, "dropout": 0.2,
                              "final_dropout": True, "positional_embeddings": None},
}
BACKBONE: dict[str, Any] = {"select_layer": 2, "tune_llm": False, "tune_visual": True, "project_to_dim": None,
                            "reproject_vision": False, "use_flash_attention": False, "load_bf16": False}
# GrootConfig fields (features as [type, shape]); two cameras, declared out of sorted order
POLICY: dict[str, Any] = {
    "input_features": {"observation.images.top": ["VISUAL", [3, 28, 28]],
                       "observation.images.a_wrist": ["VISUAL", [3, 28, 28]],
                       "observation.state": ["STATE", [5]]},
    "output_features": {"action": ["ACTION", [4]]},
    "chunk_size": 4, "n_action_steps": 4, "max_state_dim": 8, "max_action_dim": 6, "embodiment_tag": "so100",
    "use_bf16": False, "device": "cpu", "tokenizer_assets_repo": "lerobot/eagle2hg-processor-groot-n1p5",
}
STATS: dict[str, Any] = {
    "observation.state": {"min": [-3.0, -2, -1, 0, -5], "max": [3.0, 2, 4, 1, 5], "mean": [0.0] * 5, "std": [1.0] * 5},
    "action": {"min": [-1.0, -2, 0, -3], "max": [1.0, 2, 0.5, 3], "mean": [0.0] * 4, "std": [1.0] * 4},
}


class GrootPeer:
    """``with GrootPeer(python, home) as peer: peer.request("head", out=..., cfg=...)``; a failed request
    raises ``RuntimeError`` with the peer's traceback. ``home`` becomes the peer's HF_LEROBOT_HOME."""

    def __init__(self, python: Path, home: Path) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_LEROBOT_HOME": str(self.home), "HF_HUB_OFFLINE": "1"}
        self.log = self.home / "peer_stderr.log"  # LeRobot's progress prints; its tail explains a crash
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([str(python), str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, text=True, env=env)

    def request(self, kind: str, **fields: Any) -> None:
        self.proc.stdin.write(json.dumps({"kind": kind, **fields}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"GR00T peer exited (status {self.proc.wait()}):\n{self.log.read_text()[-3000:]}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"GR00T peer failed on {kind}: {reply['error']}\n{reply['trace']}")

    def __enter__(self) -> GrootPeer:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
