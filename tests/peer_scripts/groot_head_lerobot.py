"""Peer side of the GR00T N1.5 action-head parity test (runs in the LeRobot 0.5.1 venv).

Builds LeRobot 0.5.1's FlowmatchingActionHead tiny with random weights and writes to OUT_DIR:
``config.json`` (its config fields), ``model.safetensors`` (its state dict under ``action_head.``) and
``io.safetensors`` (inputs, the velocity for given noisy actions / timesteps, the actions for a given
initial noise, and the eval-mode training loss under a fixed seed). Usage: python groot_head_lerobot.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from lerobot.policies.groot.action_head.flow_matching_action_head import (
    FlowmatchingActionHead,
    FlowmatchingActionHeadConfig,
)
from transformers.feature_extraction_utils import BatchFeature

B, S, H, A_REAL, A_PAD, S_PAD, CTX = 3, 7, 4, 4, 6, 8, 32
CFG = {
    "add_pos_embed": True,
    "diffusion_model_cfg": {
        "num_layers": 4, "num_attention_heads": 2, "attention_head_dim": 8, "output_dim": 16,
        "cross_attention_dim": CTX, "norm_type": "ada_norm", "interleave_self_attention": True,
        "dropout": 0.2, "final_dropout": True, "positional_embeddings": None,
    },
    "input_embedding_dim": 16,
    "backbone_embedding_dim": CTX,
    "hidden_size": 16,
    "max_seq_len": 10,
    "action_dim": A_PAD,
    "action_horizon": H,
    "max_state_dim": S_PAD,
    "max_action_dim": A_PAD,
    "noise_beta_alpha": 1.5,
    "noise_beta_beta": 1.0,
    "noise_s": 0.999,
    "num_timestep_buckets": 1000,
    "num_inference_timesteps": 4,
    "max_num_embodiments": 5,
    "use_vlln": True,
    "vl_self_attention_cfg": {
        "num_layers": 2, "num_attention_heads": 4, "attention_head_dim": 8, "dropout": 0.2,
        "final_dropout": True, "positional_embeddings": None,
    },
    "num_target_vision_tokens": 3,
}


def main(out: Path) -> None:
    torch.manual_seed(0)
    head = FlowmatchingActionHead(FlowmatchingActionHeadConfig(**CFG))
    with torch.no_grad():  # give zero-initialised biases values so a mis-mapped bias shows
        for name, p in head.named_parameters():
            if name.endswith(".b") or name.endswith("bias"):
                p.normal_(0, 0.05)
    head.eval()
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(B, S, CTX, generator=g)
    attn = torch.ones(B, S, dtype=torch.bool)
    attn[0, :2] = False  # left padding (N1.5 attends to it anyway)
    state = torch.zeros(B, 1, S_PAD)
    state[..., :5] = torch.randn(B, 1, 5, generator=g)
    action = torch.zeros(B, H, A_PAD)
    action[..., :A_REAL] = torch.randn(B, H, A_REAL, generator=g)
    action_mask = torch.zeros(B, H, A_PAD)
    action_mask[..., :A_REAL] = 1.0
    emb_mixed = torch.tensor([4, 1, 4])
    emb_single = torch.tensor([2, 2, 2])
    x_t = torch.randn(B, H, A_PAD, generator=g)
    t_disc = torch.tensor([0, 437, 999])

    def backbone():
        return BatchFeature({"backbone_features": feats.clone(), "backbone_attention_mask": attn})

    def velocity(emb):
        with torch.no_grad():
            vl = head.process_backbone_output(backbone())["backbone_features"]
            sf = head.state_encoder(state, emb)
            af = head.action_encoder(x_t, t_disc, emb)
            af = af + head.position_embedding(torch.arange(H)).unsqueeze(0)
            fut = head.future_tokens.weight.unsqueeze(0).expand(B, -1, -1)
            out = head.model(hidden_states=torch.cat([sf, fut, af], 1), encoder_hidden_states=vl, timestep=t_disc)
            return head.action_decoder(out, emb)[:, -H:]

    io = {"features": feats, "attention_mask": attn, "state": state[:, 0, :5].contiguous(),
          "action": action[..., :A_REAL].contiguous(), "x_t": x_t, "t_disc": t_disc,
          "emb_mixed": emb_mixed, "emb_single": emb_single}
    for tag, emb in (("mixed", emb_mixed), ("single", emb_single)):
        io[f"velocity_{tag}"] = velocity(emb)
        torch.manual_seed(123)
        io[f"noise_{tag}"] = torch.randn(B, H, A_PAD)
        torch.manual_seed(123)
        inp = BatchFeature({"state": state, "embodiment_id": emb})
        io[f"actions_{tag}"] = head.get_action(backbone(), inp)["action_pred"]
        torch.manual_seed(7)
        inp = BatchFeature({"state": state, "embodiment_id": emb, "action": action, "action_mask": action_mask})
        with torch.no_grad():
            io[f"loss_{tag}"] = head(backbone(), inp)["loss"].reshape(1)
    out.mkdir(parents=True, exist_ok=True)
    sd = {f"action_head.{k}": v.contiguous() for k, v in head.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in io.items()}, str(out / "io.safetensors"))
    (out / "config.json").write_text(json.dumps(CFG, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
