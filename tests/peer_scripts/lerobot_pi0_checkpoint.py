"""Peer script (LeRobot 0.6.1 venv): write a tiny random pi0 policy the way LeRobot saves it.

Usage::

    python lerobot_pi0_checkpoint.py OUT_DIR [--seed N] [--batch-size N]   # the default tiny case
    python lerobot_pi0_checkpoint.py OUT_ROOT --serve                      # one JSON case per stdin line

With ``--serve`` (an option sweep: importing LeRobot takes tens of seconds) each case is a JSON object
(``name`` and optionally ``config``: PI0Config fields over :func:`tiny_config`; ``config_json``: fields
written into ``config.json`` after saving; ``variants``: GemmaConfig fields per variant name over
:data:`TINY`; ``cameras``: {key suffix: (C, H, W)}; ``state`` / ``action``: sizes; ``seed``,
``batch_size``) written to OUT_ROOT/<name>/ as below, answered by one JSON line on stdout
(``{"name", "ok", "forward_error", "error"}``). With ``dtype: bfloat16`` the case also records
``actions_fp32``: the same weights run by LeRobot in float32.

LeRobot's pi0 only knows the gemma_2b / gemma_300m variants and builds SigLIP So400m with a
257k vocabulary, so this script patches, for this process only, the variant table and the two
model constructors to tiny widths (8 heads of dim 8 and 1 K/V head, as pi0's joint attention
hard-codes 8 heads; SigLIP keeps PaliGemma's 16 heads). Everything else is LeRobot's own code.

Writes OUT_DIR/policy (``PI0Policy.save_pretrained`` plus the pre/post-processors with random
normalization stats), OUT_DIR/tokenizer (a tiny word-level tokenizer; the processor uses it in place
of google/paligemma-3b-pt-224), OUT_DIR/batch.safetensors + OUT_DIR/tasks.json (a raw batch) and
OUT_DIR/expected.safetensors: ``actions`` (preprocessor -> predict_action_chunk -> postprocessor with
``noise``, zero beyond the real action dims) and ``loss`` (``PI0Policy.forward`` with
``train_noise`` and ``train_time``).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch
from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.policies.pi0 import modeling_pi0, processor_pi0
from lerobot.policies.pi0.configuration_pi0 import PI0Config
from lerobot.policies.pi0.modeling_pi0 import GemmaConfig, PI0Policy
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

VOCAB = 64
TASKS = ["pick up the red cube", "open the top drawer slowly"]
TINY = {
    "gemma_2b": GemmaConfig(width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=8),
    "gemma_300m": GemmaConfig(width=32, depth=2, mlp_dim=48, num_heads=8, num_kv_heads=1, head_dim=8),
}


VARIANTS = dict(TINY)  # the table get_gemma_config reads; a served case may change it


def patch_lerobot_sizes() -> None:
    paligemma_cls, expert_cls = modeling_pi0.PaliGemmaForConditionalGenerationWithPiGemma, modeling_pi0.PiGemmaForCausalLM

    def paligemma(config):
        vision = config.vision_config
        vision.hidden_size, vision.num_hidden_layers, vision.intermediate_size = 32, 2, 40
        vision.projection_dim = config.text_config.hidden_size
        config.text_config.vocab_size = VOCAB
        return paligemma_cls(config=config)

    def expert(config):
        config.vocab_size = VOCAB
        return expert_cls(config=config)

    modeling_pi0.get_gemma_config = lambda variant: VARIANTS[variant]
    modeling_pi0.PaliGemmaForConditionalGenerationWithPiGemma = paligemma
    modeling_pi0.PiGemmaForCausalLM = expert


def tiny_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    words = sorted({w for t in TASKS for w in t.split()})
    vocab = {"<pad>": 0, "<bos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>")
    fast.save_pretrained(str(out))
    return fast


CAMERAS = {"top": (3, 30, 40), "wrist": (3, 28, 28)}


def tiny_config(case: dict | None = None) -> PI0Config:
    case = case or {}
    inputs = {f"observation.images.{k}": PolicyFeature(type=FeatureType.VISUAL, shape=tuple(v))
              for k, v in case.get("cameras", CAMERAS).items()}
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(case.get("state", 5),))
    fields = {
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
        "chunk_size": 8,
        "n_action_steps": 8,
        "max_state_dim": 8,
        "max_action_dim": 8,
        "num_inference_steps": 10,
        "image_resolution": (28, 28),
        "tokenizer_max_length": 8,
        "device": "cpu",
        **case.get("config", {}),
    }
    fields["normalization_mapping"] = {k: NormalizationMode(v) for k, v in fields["normalization_mapping"].items()}
    fields["image_resolution"] = tuple(fields["image_resolution"])
    if isinstance(fields.get("rtc_config"), dict):
        from lerobot.policies.rtc.configuration_rtc import RTCConfig

        fields["rtc_config"] = RTCConfig(**fields["rtc_config"])
    return PI0Config(
        input_features=inputs,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(case.get("action", 3),))},
        **fields,
    )


def randomize(policy: PI0Policy, g: torch.Generator) -> None:
    """Random weights everywhere (norm weights included: they start at zero)."""
    with torch.no_grad():
        for _, t in policy.named_parameters():
            if t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=g) * (0.7 / t.shape[-1] ** 0.5))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)


def random_stats(config: PI0Config, g: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
    """Every statistic any mode reads (mean/std, min/max, q01/q99, q10/q90), low < high."""
    stats = {}
    for key, f in {**config.input_features, **config.output_features}.items():
        shape = (f.shape[0], 1, 1) if f.type is FeatureType.VISUAL else f.shape
        mean = torch.randn(shape, generator=g) * 0.3
        spread = [torch.rand(shape, generator=g) + d for d in (0.5, 1.0, 1.5)]
        stats[key] = {"mean": mean, "std": torch.rand(shape, generator=g) + 0.5,
                      "min": mean - spread[2], "max": mean + spread[2], "q01": mean - spread[1],
                      "q99": mean + spread[1], "q10": mean - spread[0], "q90": mean + spread[0]}
    return stats


def write_case(case: dict, out: Path) -> dict:
    """Build, save and run one case into ``out`` (see the module docstring)."""
    seed, b = case.get("seed", 0), case.get("batch_size", 2)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    VARIANTS.clear()
    VARIANTS.update({k: GemmaConfig(**{**vars(v), **case.get("variants", {}).get(k, {})}) for k, v in TINY.items()})
    config = tiny_config(case)
    policy = PI0Policy(config)
    randomize(policy, g)
    pre, post = processor_pi0.make_pi0_pre_post_processors(config, dataset_stats=random_stats(config, g))
    policy_dir = out / "policy"
    policy.save_pretrained(policy_dir)
    pre.save_pretrained(policy_dir)
    post.save_pretrained(policy_dir)
    if case.get("config_json"):
        path = policy_dir / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **case["config_json"]}, indent=4))

    h, amax, adim = config.chunk_size, config.max_action_dim, config.output_features["action"].shape[0]
    batch = {
        key: (torch.rand if f.type is FeatureType.VISUAL else torch.randn)(b, *f.shape, generator=g)
        for key, f in config.input_features.items()
    }
    tasks = [TASKS[i % len(TASKS)] for i in range(b)]
    noise = torch.randn(b, h, amax, generator=g)
    noise[..., adim:] = 0.0  # our policy takes (B, H, A) noise and zero-pads it
    train_noise = torch.randn(b, h, amax, generator=g)
    train_time = torch.rand(b, generator=g) * 0.98 + 0.01
    action = torch.randn(b, h, adim, generator=g)
    save_file({**batch, "action": action}, str(out / "batch.safetensors"))
    (out / "tasks.json").write_text(json.dumps(tasks))

    def run(p: PI0Policy) -> tuple[torch.Tensor, torch.Tensor]:
        p.eval()
        p.model.sample_noise = lambda shape, device: noise.clone()
        with torch.no_grad():
            actions = post(p.predict_action_chunk(pre({**batch, "task": list(tasks)})))
        p.train()
        p.model.sample_noise = lambda shape, device: train_noise.clone()
        p.model.sample_time = lambda bsize, device: train_time.clone()
        with torch.no_grad():
            loss, _ = p.forward(pre({**batch, "task": list(tasks), "action": action}))
        return actions.contiguous(), loss.reshape(1).float()

    try:
        actions, loss = run(policy)
    except Exception as err:  # noqa: BLE001 - LeRobot builds and saves some configurations it cannot run
        return {"name": case["name"], "ok": True, "forward_error": f"{type(err).__name__}: {err}"}
    extra = {}
    if config.dtype == "bfloat16":  # the same weights, run by LeRobot in float32
        twin = PI0Policy(tiny_config({**case, "config": {**case.get("config", {}), "dtype": "float32"}}))
        twin.load_state_dict({k: v.float() for k, v in policy.state_dict().items()})
        extra["actions_fp32"], extra["loss_fp32"] = run(twin)
    save_file({"actions": actions, "loss": loss, "noise": noise, "train_noise": train_noise,
               "train_time": train_time, **extra}, str(out / "expected.safetensors"))
    return {"name": case["name"], "ok": True, "forward_error": None}


def serve(root: Path) -> None:
    import sys
    import traceback

    replies, sys.stdout = sys.stdout, sys.stderr  # stdout carries the replies only
    patch_lerobot_sizes()
    tok = tiny_tokenizer(root / "tokenizer")
    processor_pi0.TokenizerProcessorStep = functools.partial(processor_pi0.TokenizerProcessorStep, tokenizer=tok)
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        try:
            reply = write_case(case, root / case["name"])
        except Exception as err:  # noqa: BLE001 - reported to the test, which names the case
            reply = {"name": case.get("name"), "ok": False, "error": f"{type(err).__name__}: {err}",
                     "traceback": traceback.format_exc()[-3000:]}
        print(json.dumps(reply), file=replies, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--serve", action="store_true", help="read one JSON case per stdin line")
    a = ap.parse_args()
    if a.serve:
        serve(a.out)
        return
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    patch_lerobot_sizes()
    tok = tiny_tokenizer(a.out / "tokenizer")
    processor_pi0.TokenizerProcessorStep = functools.partial(processor_pi0.TokenizerProcessorStep, tokenizer=tok)

    config = tiny_config()
    policy = PI0Policy(config)
    randomize(policy, g)
    stats = {}
    for key, f in {**config.input_features, **config.output_features}.items():
        shape = (f.shape[0], 1, 1) if f.type is FeatureType.VISUAL else f.shape
        stats[key] = {"mean": torch.randn(shape, generator=g) * 0.3, "std": torch.rand(shape, generator=g) + 0.5}
    pre, post = processor_pi0.make_pi0_pre_post_processors(config, dataset_stats=stats)
    policy_dir = a.out / "policy"
    policy.save_pretrained(policy_dir)
    pre.save_pretrained(policy_dir)
    post.save_pretrained(policy_dir)

    b, h, amax = a.batch_size, config.chunk_size, config.max_action_dim
    batch = {
        key: (torch.rand if f.type is FeatureType.VISUAL else torch.randn)(b, *f.shape, generator=g)
        for key, f in config.input_features.items()
    }
    tasks = [TASKS[i % len(TASKS)] for i in range(b)]
    noise = torch.randn(b, h, amax, generator=g)
    noise[..., 3:] = 0.0  # our policy takes (B, H, A) noise and zero-pads it
    train_noise = torch.randn(b, h, amax, generator=g)
    train_time = torch.rand(b, generator=g) * 0.98 + 0.01
    action = torch.randn(b, h, 3, generator=g)

    policy.eval()
    policy.model.sample_noise = lambda shape, device: noise.clone()
    with torch.no_grad():
        actions = post(policy.predict_action_chunk(pre({**batch, "task": list(tasks)})))
    policy.train()
    policy.model.sample_noise = lambda shape, device: train_noise.clone()
    policy.model.sample_time = lambda bsize, device: train_time.clone()
    with torch.no_grad():
        loss, _ = policy.forward(pre({**batch, "task": list(tasks), "action": action}))

    save_file({**batch, "action": action}, str(a.out / "batch.safetensors"))
    (a.out / "tasks.json").write_text(json.dumps(tasks))
    save_file(
        {"actions": actions.contiguous(), "loss": loss.reshape(1), "noise": noise, "train_noise": train_noise,
         "train_time": train_time},
        str(a.out / "expected.safetensors"),
    )
    print(f"wrote {policy_dir}: actions {tuple(actions.shape)}, loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
