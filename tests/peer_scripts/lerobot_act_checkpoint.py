"""Peer script (LeRobot 0.6.1 venv): write tiny random ACT policies the way LeRobot saves them.

Usage::

    python lerobot_act_checkpoint.py OUT_ROOT --cases CASES.json   # a JSON list of cases, one run
    python lerobot_act_checkpoint.py OUT_ROOT --serve              # one JSON case per stdin line

Importing LeRobot's ACT takes tens of seconds, so one process writes every case of a sweep. With
``--serve`` it answers each case with one JSON line on stdout (``{"name", "ok", "forward_error",
"error"}``; everything else it prints goes to stderr) and exits at end of input.

A case is a JSON object; every field but ``name`` is optional:

- ``cameras``: list of (C, H, W), one per camera (default one 3x64x96 camera; [] for none);
  ``state`` / ``env_state`` / ``action``: vector sizes (``state`` / ``env_state`` null: absent);
- ``config``: :class:`ACTConfig` fields over the tiny defaults of :data:`TINY`;
- ``config_json``: fields written into ``config.json`` after saving (e.g. the default
  ``pretrained_backbone_weights`` string a trained checkpoint carries, which we cannot download here);
- ``seed``, ``batch_size``; ``loss``: also record the training loss; ``select_steps``: also record
  ``select_action`` over that many steps.

Per case, OUT_ROOT/<name>/ holds ``policy/`` (``ACTPolicy.save_pretrained`` plus the pre/post-processors
with random normalization stats), ``batch.safetensors`` (a raw, un-normalized observation batch) and
``expected.safetensors`` (``actions``: the un-normalized ``predict_action_chunk`` output, preprocessor ->
policy -> postprocessor, eval mode). When LeRobot's own forward raises (e.g. ``feedforward_activation:
glu``), the reply's ``forward_error`` holds the message and there is no ``expected.safetensors``.
``loss``: ``train_batch.safetensors`` (observation + ``action`` + ``action_is_pad``, some steps padded)
and ``loss.safetensors`` (``loss``, ``l1``, ``kld``: train mode after ``torch.manual_seed(seed)``;
with dropout 0 the latent's ``randn_like`` is the only random draw; ``eval_loss``: eval mode). ``select_steps``:
``select.safetensors`` with ``obs.<key>`` (N, B, ...) and ``actions`` (N, B, A) from ``select_action``.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.policies.act.configuration_act import ACTConfig
from lerobot.policies.act.modeling_act import ACTPolicy
from lerobot.policies.act.processor_act import make_act_pre_post_processors
from safetensors.torch import save_file

# The tiny architecture every case starts from (LeRobot's own defaults are ALOHA-sized).
TINY: dict[str, Any] = {
    "chunk_size": 10,
    "n_action_steps": 10,
    "vision_backbone": "resnet18",
    "pretrained_backbone_weights": None,
    "dim_model": 64,
    "n_heads": 4,
    "dim_feedforward": 96,
    "n_encoder_layers": 2,
    "n_decoder_layers": 1,
    "n_vae_encoder_layers": 2,
    "latent_dim": 8,
    "device": "cpu",
}


def make_config(case: dict[str, Any]) -> ACTConfig:
    inputs = {}
    if case.get("state", 6) is not None:
        inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(case.get("state", 6),))
    if case.get("env_state") is not None:
        inputs["observation.environment_state"] = PolicyFeature(type=FeatureType.ENV, shape=(case["env_state"],))
    for i, shape in enumerate(case.get("cameras", [[3, 64, 96]])):
        inputs[f"observation.images.cam{i}"] = PolicyFeature(type=FeatureType.VISUAL, shape=tuple(shape))
    fields = {**TINY, **case.get("config", {})}
    if "normalization_mapping" in fields:
        fields["normalization_mapping"] = {k: NormalizationMode(v) for k, v in fields["normalization_mapping"].items()}
    return ACTConfig(
        input_features=inputs,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(case.get("action", 4),))},
        **fields,
    )


def randomize(policy: ACTPolicy, g: torch.Generator) -> None:
    """Random weights everywhere, FrozenBatchNorm buffers included (they start as identity)."""
    with torch.no_grad():
        for name, t in policy.state_dict().items():
            if name.endswith("vae_encoder_pos_enc"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (0.5 / max(1, t.shape[-1]) ** 0.5 if t.dim() > 1 else 0.1))


def _around(mean: torch.Tensor, below: float, above: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high): random, with low < mean - below and high > mean + above."""
    return mean - below - torch.rand(mean.shape, generator=g), mean + above + torch.rand(mean.shape, generator=g)


def random_stats(config: ACTConfig, g: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
    """Every statistic any mode reads (mean/std, min/max, q01/q99, q10/q90), low < high."""
    stats = {}
    for key, f in {**config.input_features, **config.output_features}.items():
        shape = (f.shape[0], 1, 1) if f.type is FeatureType.VISUAL else f.shape
        mean = torch.randn(shape, generator=g) * 0.2
        (lo1, hi1), (lo10, hi10), (low, high) = (_around(mean, d, u, g) for d, u in ((1.0, 1.0), (0.5, 0.5), (2.0, 1.5)))
        stats[key] = {"mean": mean, "std": torch.rand(shape, generator=g) + 0.5, "min": low, "max": high,
                      "q01": lo1, "q99": hi1, "q10": lo10, "q90": hi10}
    return stats


def observation(config: ACTConfig, bsz: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    batch = {}
    for key, f in config.input_features.items():
        gen = torch.rand if f.type is FeatureType.VISUAL else torch.randn
        batch[key] = gen(bsz, *f.shape, generator=g)
    return batch


def for_lerobot(config: ACTConfig, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LeRobot 0.6.1's ACT reads ``batch["observation.state"]`` for a device even without a state
    feature (``ACT.forward``: the zero latent and the VAE padding mask): give it a placeholder."""
    if config.robot_state_feature is None:
        bsz = next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))
        batch = {**batch, "observation.state": torch.zeros(bsz, 1)}
    return batch


def save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def write_case(case: dict[str, Any], root: Path) -> dict[str, Any]:
    name, seed, bsz = case["name"], case.get("seed", 0), case.get("batch_size", 3)
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    config = make_config(case)
    policy = ACTPolicy(config)
    randomize(policy, g)
    policy.eval()
    pre, post = make_act_pre_post_processors(config, dataset_stats=random_stats(config, g))
    policy_dir = out / "policy"
    policy.save_pretrained(policy_dir)
    pre.save_pretrained(policy_dir)
    post.save_pretrained(policy_dir)
    if case.get("config_json"):
        path = policy_dir / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **case["config_json"]}, indent=4))

    batch = observation(config, bsz, g)
    save(batch, out / "batch.safetensors")
    try:
        with torch.no_grad():
            actions = post(policy.predict_action_chunk(for_lerobot(config, pre(dict(batch)))))
    except Exception as err:  # noqa: BLE001 - LeRobot builds and saves some configurations it cannot run
        return {"name": name, "ok": True, "forward_error": f"{type(err).__name__}: {err}"}
    save({"actions": actions}, out / "expected.safetensors")

    if case.get("loss"):
        train = dict(batch)
        train["action"] = torch.randn(bsz, config.chunk_size, config.action_feature.shape[0], generator=g)
        is_pad = torch.zeros(bsz, config.chunk_size, dtype=torch.bool)
        is_pad[0, config.chunk_size // 2 :] = True  # one episode ends inside the chunk
        train["action_is_pad"] = is_pad
        save(train, out / "train_batch.safetensors")
        policy.train()
        torch.manual_seed(seed)
        loss, info = policy.forward(for_lerobot(config, pre(dict(train))))
        policy.eval()
        with torch.no_grad():
            eval_loss, _ = policy.forward(for_lerobot(config, pre(dict(train))))
        save({"loss": loss.detach(), "l1": torch.tensor(info["l1_loss"]),
              "kld": torch.tensor(info.get("kld_loss", 0.0)), "eval_loss": eval_loss}, out / "loss.safetensors")

    steps = case.get("select_steps", 0)
    if steps:
        policy.reset()
        observations = [observation(config, bsz, g) for _ in range(steps)]
        with torch.no_grad():
            chosen = [post(policy.select_action(for_lerobot(config, pre(dict(o))))) for o in observations]
        record = {f"obs.{k}": torch.stack([o[k] for o in observations]) for k in observations[0]}
        save({**record, "actions": torch.stack(chosen)}, out / "select.safetensors")
    return {"name": name, "ok": True, "forward_error": None}


def run(case: dict[str, Any], root: Path) -> dict[str, Any]:
    try:
        return write_case(case, root)
    except Exception as err:  # noqa: BLE001 - reported to the test, which names the case
        return {"name": case.get("name"), "ok": False, "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-3000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cases", type=Path, help="a JSON list of cases")
    mode.add_argument("--serve", action="store_true", help="read one JSON case per stdin line")
    a = ap.parse_args()
    replies, sys.stdout = sys.stdout, sys.stderr  # stdout carries the replies only
    if a.cases:
        results = [run(case, a.out) for case in json.loads(a.cases.read_text())]
        print(json.dumps(results), file=replies, flush=True)
        sys.exit(0 if all(r["ok"] for r in results) else 1)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run(json.loads(line), a.out)), file=replies, flush=True)


if __name__ == "__main__":
    main()
