#!/usr/bin/env python3
"""Our ``dit_flow_matching`` head vs LeRobot 0.5.1's GR00T N1.5 ``FlowmatchingActionHead``.

Runs in the LeRobot 0.5.1 peer venv (``python benchmarks/peer_env.py lerobot-0.5.1`` prints its python).
Both heads are built with the N1.5-3B dimensions (context 2048, DiT 16 x 32 heads x 48, VL stack 4
layers, horizon 16, action 32, state 64, 32 embodiments, 300 context tokens). Ours loads LeRobot's
weights through the name mapping *sharing their storage*, so one copy of the ~1.07B fp32 parameters
(4.3 GB) serves both; the train step uses one optimizer over the shared parameters (SGD by default:
AdamW state for 1B parameters adds 8.5 GB). Prints medians and ratios ours / LeRobot for inference
(batch 1, 4 Euler steps) and a train step (batch 8: forward, backward, optimizer step), and checks
that outputs are identical (actions from the same noise, eval-mode loss under the same seed).

    .venvs/lerobot-0.5.1/bin/python benchmarks/groot_head_vs_lerobot.py [--skip-train] [--dit-layers 16]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(p) for p in sorted((REPO / "packages").glob("*/src"))]  # this checkout's packages first

import torch  # noqa: E402
from transformers.feature_extraction_utils import BatchFeature  # noqa: E402

from vla_core import BackboneOutput, apply_name_mapping  # noqa: E402
from vla_heads.dit_flow_matching import DiTFlowMatchingConfig, DiTFlowMatchingHead  # noqa: E402
from vla_heads.dit_flow_matching.convert import groot_name_mapping, head_config_from_groot  # noqa: E402


def import_lerobot_head(src: str | None):
    """LeRobot 0.5.1's head classes. With ``src`` (a copy of the installed ``lerobot`` package dir), load
    the action-head modules by path without LeRobot's package imports (datasets, draccus, ...), so the
    benchmark also runs on a machine that has only torch, transformers and diffusers."""
    if src is not None:
        import types

        root = Path(src).resolve()
        for name in ("lerobot", "lerobot.utils", "lerobot.policies", "lerobot.policies.groot",
                     "lerobot.policies.groot.action_head"):
            mod = types.ModuleType(name)
            mod.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            sys.modules[name] = mod
        shim = types.ModuleType("lerobot.utils.import_utils")
        shim._transformers_available = True
        sys.modules[shim.__name__] = shim
    from lerobot.policies.groot.action_head.flow_matching_action_head import (
        FlowmatchingActionHead,
        FlowmatchingActionHeadConfig,
    )

    return FlowmatchingActionHead, FlowmatchingActionHeadConfig


def groot_config(args) -> dict:
    return {
        "add_pos_embed": True,
        "diffusion_model_cfg": {
            "num_layers": args.dit_layers, "num_attention_heads": 32, "attention_head_dim": 48, "output_dim": 1024,
            "cross_attention_dim": 2048, "norm_type": "ada_norm", "interleave_self_attention": True,
            "dropout": 0.2, "final_dropout": True, "positional_embeddings": None,
        },
        "input_embedding_dim": 1536, "backbone_embedding_dim": 2048, "hidden_size": 1024, "max_seq_len": 1024,
        "action_dim": 32, "action_horizon": 16, "max_state_dim": 64, "max_action_dim": 32,
        "noise_beta_alpha": 1.5, "noise_beta_beta": 1.0, "noise_s": 0.999, "num_timestep_buckets": 1000,
        "num_inference_timesteps": 4, "max_num_embodiments": args.embodiments, "use_vlln": True,
        "vl_self_attention_cfg": {
            "num_layers": args.vl_layers, "num_attention_heads": 32, "attention_head_dim": 64, "dropout": 0.2,
            "final_dropout": True, "positional_embeddings": None,
        },
        "num_target_vision_tokens": 32,
    }


def build(args):
    cfg = groot_config(args)
    FlowmatchingActionHead, FlowmatchingActionHeadConfig = import_lerobot_head(args.lerobot_src)
    torch.manual_seed(0)
    theirs = FlowmatchingActionHead(FlowmatchingActionHeadConfig(**cfg)).to(args.device)
    fields = head_config_from_groot(cfg, embodiments={"new_embodiment": args.embodiments - 1})
    fields.update(state_dim=64)
    with torch.device("meta"):
        ours = DiTFlowMatchingHead(DiTFlowMatchingConfig.from_dict(fields))
    tensors = apply_name_mapping(
        {f"action_head.{k}": v for k, v in theirs.state_dict().items()},
        groot_name_mapping(args.dit_layers, args.vl_layers),
    )
    ours.load_state_dict(tensors, strict=True, assign=True)  # shares LeRobot's parameter storage
    shared = {p.data_ptr() for p in theirs.parameters()}
    assert all(p.data_ptr() in shared for p in ours.parameters()), "weights are not shared"
    return theirs, ours


def inputs(batch_size: int, tokens: int, emb_row: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch_size, tokens, 2048, generator=g).to(device)
    mask = torch.ones(batch_size, tokens, dtype=torch.bool, device=device)
    state = torch.randn(batch_size, 1, 64, generator=g).to(device)
    action = torch.randn(batch_size, 16, 32, generator=g).to(device)
    emb = torch.full((batch_size,), emb_row, dtype=torch.long, device=device)
    theirs = {
        "backbone": lambda: BatchFeature({"backbone_features": feats, "backbone_attention_mask": mask}),
        "action": lambda: BatchFeature(
            {"state": state, "embodiment_id": emb, "action": action, "action_mask": torch.ones_like(action)}
        ),
    }
    ours = (
        BackboneOutput(features=feats, attention_mask=mask),
        {"observation.state": state[:, 0], "embodiment_id": emb, "action": action},
    )
    return theirs, ours


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dit-layers", type=int, default=16)
    ap.add_argument("--vl-layers", type=int, default=4)
    ap.add_argument("--embodiments", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-repeats", type=int, default=2)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lerobot-src", default=None, help="load LeRobot's head from this package dir (see above)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    theirs, ours = build(args)
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"params: {n_params / 1e6:.1f}M (shared by both heads); device {args.device}; threads {args.threads}; "
          f"torch {torch.__version__}")
    row = args.embodiments - 1

    # ---- inference, batch 1
    theirs.eval(), ours.eval()
    t_in, o_in = inputs(1, args.tokens, row, args.device)

    def run_theirs():
        torch.manual_seed(11)  # get_action draws its noise from the global RNG
        return theirs.get_action(t_in["backbone"](), t_in["action"]())["action_pred"]

    torch.manual_seed(11)
    noise = torch.randn(1, 16, 32, device=args.device)
    with torch.no_grad():
        ref = run_theirs()
        got = ours.predict_action(*o_in, noise=noise)
        got_nc = ours.predict_action(*o_in, noise=noise, use_cache=False)
    diff, diff_nc = (got - ref).abs().max().item(), (got_nc - ref).abs().max().item()
    with torch.no_grad():
        t_ref = median_time(run_theirs, args.repeats)
        t_ours = median_time(lambda: ours.predict_action(*o_in, noise=noise), args.repeats)
        t_nc = median_time(lambda: ours.predict_action(*o_in, noise=noise, use_cache=False), args.repeats)
    print(f"inference b=1  lerobot {t_ref * 1e3:8.1f} ms | ours {t_ours * 1e3:8.1f} ms | ratio {t_ours / t_ref:.3f} "
          f"| max|diff| {diff:.2e}")
    print(f"  ours without cache {t_nc * 1e3:8.1f} ms | ratio {t_nc / t_ref:.3f} | max|diff| {diff_nc:.2e}")
    print(f"  peak RSS so far {rss_gb():.1f} GB")
    if args.skip_train:
        return

    # ---- train step, batch 8
    b = args.train_batch
    t_in, o_in = inputs(b, args.tokens, row, args.device, seed=1)
    with torch.no_grad():
        torch.manual_seed(5)
        loss_ref = theirs(t_in["backbone"](), t_in["action"]())["loss"].item()
        torch.manual_seed(5)
        loss_ours = ours(*o_in).loss.item()
    print(f"eval-mode loss, same seed: lerobot {loss_ref:.6f} | ours {loss_ours:.6f} | diff {abs(loss_ref - loss_ours):.2e}")
    params = list(ours.parameters())
    opt = (torch.optim.SGD(params, lr=1e-6) if args.optimizer == "sgd"
           else torch.optim.AdamW(params, lr=1e-6, foreach=True))
    theirs.train(), ours.train()

    def step(loss_fn):
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    step_ref = lambda: step(lambda: theirs(t_in["backbone"](), t_in["action"]())["loss"])  # noqa: E731
    step_ours = lambda: step(lambda: ours(*o_in).loss)  # noqa: E731
    t_ref = median_time(step_ref, args.train_repeats)
    gc.collect()
    t_ours = median_time(step_ours, args.train_repeats)
    print(f"train step b={b} ({args.optimizer})  lerobot {t_ref:8.2f} s | ours {t_ours:8.2f} s | ratio {t_ours / t_ref:.3f}")
    print(f"  peak RSS {rss_gb():.1f} GB")


if __name__ == "__main__":
    main()
