"""Peer script (LeRobot 0.6.1 venv): write tiny random DiffusionPolicy checkpoints, one per case, served.

Usage::

    python lerobot_diffusion_checkpoint.py OUT_ROOT --serve   # one JSON case per stdin line

Importing LeRobot takes tens of seconds, so one process writes every case of an option sweep: it
answers each case with one JSON line on stdout (``{"name", "ok", "forward_error", "error"}``;
everything else it prints goes to stderr) and exits at end of input.

A case is a JSON object; every field but ``name`` is optional:

- ``cameras``: list of (C, H, W), one per camera (default one 3x40x48 camera; [] for none);
  ``state`` / ``env_state`` / ``action``: vector sizes (``env_state`` null: absent);
- ``config``: :class:`DiffusionConfig` fields over the tiny defaults of :data:`TINY`;
- ``config_json``: fields written into ``config.json`` after saving (e.g. the default
  ``pretrained_backbone_weights`` string a trained checkpoint carries, which we cannot download here);
- ``seed``, ``batch_size``; ``loss``: also record the training loss.

Per case, OUT_ROOT/<name>/ holds ``policy/`` (``DiffusionPolicy.save_pretrained`` plus the pre/post-
processors with random normalization stats), ``batch.safetensors`` (raw observations (B, n_obs_steps, ...)
and the initial ``noise`` (B, horizon, A)) and ``expected.safetensors``: ``actions``, LeRobot's
un-normalized ``predict_action_chunk`` (preprocessor -> policy -> postprocessor, eval mode; the
``n_action_steps`` window from step ``n_obs_steps - 1``), sampled right after ``torch.manual_seed(1234)``
(DDPM draws its per-step noise from the global RNG). When LeRobot's own forward raises, the reply's
``forward_error`` holds the message and there is no ``expected.safetensors``. ``loss``:
``train_batch.safetensors`` (observations + ``action`` + ``action_is_pad``) and ``loss.safetensors``
(``loss``: train mode after ``torch.manual_seed(seed)``; ``eval_loss``: eval mode, same seed).
``compile_model``: LeRobot wraps the UNet in ``torch.compile`` before saving (its tensors are then
named ``diffusion.unet._orig_mod.*``); the expected outputs come from the same UNet run eagerly.
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
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors
from safetensors.torch import save_file

# The tiny architecture every case starts from (LeRobot's defaults are PushT-sized).
TINY: dict[str, Any] = {
    "n_obs_steps": 2,
    "horizon": 8,
    "n_action_steps": 4,
    "pretrained_backbone_weights": None,
    "spatial_softmax_num_keypoints": 8,
    "down_dims": (16, 32),
    "diffusion_step_embed_dim": 16,
    "num_train_timesteps": 10,
    "device": "cpu",
}


def make_config(case: dict[str, Any]) -> DiffusionConfig:
    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(case.get("state", 3),))}
    if case.get("env_state") is not None:
        inputs["observation.environment_state"] = PolicyFeature(type=FeatureType.ENV, shape=(case["env_state"],))
    for i, shape in enumerate(case.get("cameras", [[3, 40, 48]])):
        inputs[f"observation.images.cam{i}"] = PolicyFeature(type=FeatureType.VISUAL, shape=tuple(shape))
    fields = {**TINY, **case.get("config", {})}
    if "normalization_mapping" in fields:
        fields["normalization_mapping"] = {k: NormalizationMode(v) for k, v in fields["normalization_mapping"].items()}
    for key in ("down_dims", "crop_shape", "resize_shape"):
        if fields.get(key) is not None:
            fields[key] = tuple(fields[key])
    return DiffusionConfig(
        input_features=inputs,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(case.get("action", 2),))},
        **fields,
    )


def randomize(policy: DiffusionPolicy, g: torch.Generator) -> None:
    """Random weights everywhere, BatchNorm running statistics and GroupNorm affines included."""
    with torch.no_grad():
        for name, t in policy.state_dict().items():
            if name.endswith(("pos_grid", "num_batches_tracked")):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=g) * (1.0 / max(1, t[0].numel())) ** 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2 + (1.0 if name.endswith("weight") else 0.0))


def _around(mean: torch.Tensor, below: float, above: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return mean - below - torch.rand(mean.shape, generator=g), mean + above + torch.rand(mean.shape, generator=g)


def random_stats(config: DiffusionConfig, g: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
    """Every statistic any mode reads (mean/std, min/max, q01/q99, q10/q90), low < high."""
    stats = {}
    for key, f in {**config.input_features, **config.output_features}.items():
        shape = (f.shape[0], 1, 1) if f.type is FeatureType.VISUAL else f.shape
        mean = torch.randn(shape, generator=g) * 0.2
        (lo1, hi1), (lo10, hi10), (low, high) = (_around(mean, d, u, g) for d, u in ((1.0, 1.0), (0.5, 0.5), (2.0, 1.5)))
        stats[key] = {"mean": mean, "std": torch.rand(shape, generator=g) + 0.5, "min": low, "max": high,
                      "q01": lo1, "q99": hi1, "q10": lo10, "q90": hi10}
    return stats


def observation(config: DiffusionConfig, bsz: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    batch = {}
    for key, f in config.input_features.items():
        gen = torch.rand if f.type is FeatureType.VISUAL else torch.randn
        batch[key] = gen(bsz, config.n_obs_steps, *f.shape, generator=g)
    return batch


def save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def write_case(case: dict[str, Any], root: Path) -> dict[str, Any]:
    name, seed, bsz = case["name"], case.get("seed", 0), case.get("batch_size", 2)
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    config = make_config(case)
    policy = DiffusionPolicy(config)
    randomize(policy, g)
    policy.eval()
    pre, post = make_diffusion_pre_post_processors(config, dataset_stats=random_stats(config, g))
    policy_dir = out / "policy"
    policy.save_pretrained(policy_dir)
    pre.save_pretrained(policy_dir)
    post.save_pretrained(policy_dir)
    if case.get("config_json"):
        path = policy_dir / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **case["config_json"]}, indent=4))
    if config.compile_model:  # the saved names carry _orig_mod; run the same UNet eagerly
        policy.diffusion.unet = policy.diffusion.unet._orig_mod

    batch = observation(config, bsz, g)
    noise = torch.randn(bsz, config.horizon, config.action_feature.shape[0], generator=g)
    save({**batch, "noise": noise}, out / "batch.safetensors")
    try:
        policy.reset()
        with torch.no_grad():
            torch.manual_seed(1234)
            actions = post(policy.predict_action_chunk(pre(dict(batch)), noise=noise.clone()))
    except Exception as err:  # noqa: BLE001 - LeRobot builds and saves some configurations it cannot run
        return {"name": name, "ok": True, "forward_error": f"{type(err).__name__}: {err}"}
    save({"actions": actions}, out / "expected.safetensors")

    if case.get("loss"):
        train = dict(batch)
        train["action"] = torch.randn(bsz, config.horizon, config.action_feature.shape[0], generator=g)
        is_pad = torch.zeros(bsz, config.horizon, dtype=torch.bool)
        is_pad[0, config.horizon // 2 :] = True  # one episode ends inside the chunk
        train["action_is_pad"] = is_pad
        save(train, out / "train_batch.safetensors")
        policy.train()
        torch.manual_seed(seed)
        loss, _ = policy.forward(pre(dict(train)))
        policy.eval()
        torch.manual_seed(seed)
        with torch.no_grad():
            eval_loss, _ = policy.forward(pre(dict(train)))
        save({"loss": loss.detach(), "eval_loss": eval_loss}, out / "loss.safetensors")
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
    ap.add_argument("--serve", action="store_true", required=True, help="read one JSON case per stdin line")
    a = ap.parse_args()
    replies, sys.stdout = sys.stdout, sys.stderr  # stdout carries the replies only
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run(json.loads(line), a.out)), file=replies, flush=True)


if __name__ == "__main__":
    main()
