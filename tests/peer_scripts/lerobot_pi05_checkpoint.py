"""Peer script (LeRobot 0.6.1 venv): write tiny random pi05 policies the way LeRobot saves them.

Usage: python lerobot_pi05_checkpoint.py OUT_DIR [--seed N] [--batch-size N]

LeRobot's pi05 only knows the gemma_2b / gemma_300m variants and builds SigLIP So400m with a
257k vocabulary, so this script patches, for this process only, the variant table and the two
model constructors to tiny widths (8 heads of dim 8 and 1 K/V head, as the joint attention
hard-codes 8 heads; SigLIP keeps PaliGemma's 16 heads). Everything else is LeRobot's own code,
including the processor step that writes the discretized state into the prompt.

For each case of CASES (config overrides, one option at a time and one combination) writes
OUT_DIR/<case>/policy (``PI05Policy.save_pretrained`` plus the pre/post-processors with random
normalization stats), OUT_DIR/<case>/batch.safetensors + tasks.json (a raw batch) and
OUT_DIR/<case>/expected.safetensors: ``actions`` (preprocessor -> predict_action_chunk ->
postprocessor with ``noise``, zero beyond the real action dims), ``loss`` (``PI05Policy.forward``
with ``train_noise`` and ``train_time``) and ``tokens`` / ``token_mask`` (the prompt as the
preprocessor tokenized it). OUT_DIR/tokenizer is a tiny word-level tokenizer that knows the prompt's
words and every bin number; the processor uses it in place of google/paligemma-3b-pt-224.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch
from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.policies.pi05 import modeling_pi05, processor_pi05
from lerobot.policies.pi05.configuration_pi05 import PI05Config
from lerobot.policies.pi05.modeling_pi05 import GemmaConfig, PI05Policy
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

VOCAB = 320
TASKS = ["pick up the red_cube", "open the top drawer\nslowly"]
TINY = {
    "gemma_2b": GemmaConfig(width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=8),
    "gemma_300m": GemmaConfig(width=32, depth=2, mlp_dim=48, num_heads=8, num_kv_heads=1, head_dim=8),
}
N = NormalizationMode
CASES: dict[str, dict] = {
    "default": {},
    "periods": {"min_period": 0.01, "max_period": 2.0},
    "steps_chunk": {"num_inference_steps": 3, "chunk_size": 6, "n_action_steps": 4},
    "norm_modes": {"normalization_mapping": {"VISUAL": N.IDENTITY, "STATE": N.MEAN_STD, "ACTION": N.MIN_MAX}},
    "combo": {"max_action_dim": 4, "max_state_dim": 6, "image_resolution": (42, 42), "tokenizer_max_length": 40,
              "num_inference_steps": 5, "min_period": 0.002},
}


def patch_lerobot_sizes() -> None:
    paligemma_cls, expert_cls = modeling_pi05.PaliGemmaForConditionalGenerationWithPiGemma, modeling_pi05.PiGemmaForCausalLM

    def paligemma(config):
        vision = config.vision_config
        vision.hidden_size, vision.num_hidden_layers, vision.intermediate_size = 32, 2, 40
        vision.projection_dim = config.text_config.hidden_size
        config.text_config.vocab_size = VOCAB
        return paligemma_cls(config=config)

    def expert(config):
        config.vocab_size = VOCAB
        return expert_cls(config=config)

    modeling_pi05.get_gemma_config = TINY.__getitem__
    modeling_pi05.PaliGemmaForConditionalGenerationWithPiGemma = paligemma
    modeling_pi05.PiGemmaForCausalLM = expert


def tiny_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    words = sorted({w for t in TASKS for w in t.replace("_", " ").split()})
    words += ["Task", "State", "Action", ":", ",", ";", "-", *map(str, range(256))]
    vocab = {"<pad>": 0, "<bos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(words))}}
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>")
    fast.save_pretrained(str(out))
    return fast


def tiny_config(**overrides) -> PI05Config:
    fields = {
        "input_features": {
            "observation.images.top": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 30, 40)),
            "observation.images.wrist": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 28, 28)),
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(5,)),
        },
        "output_features": {"action": PolicyFeature(type=FeatureType.ACTION, shape=(3,))},
        "chunk_size": 8, "n_action_steps": 8, "max_state_dim": 8, "max_action_dim": 8, "num_inference_steps": 10,
        "image_resolution": (28, 28), "tokenizer_max_length": 32, "device": "cpu",
    }
    return PI05Config(**{**fields, **overrides})


def randomize(policy: PI05Policy, g: torch.Generator) -> None:
    """Random weights everywhere (norm weights and the adaptive norms' zero-initialized maps included)."""
    with torch.no_grad():
        for _, t in policy.named_parameters():
            if t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=g) * (0.7 / t.shape[-1] ** 0.5))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)


def write_case(out: Path, overrides: dict, seed: int, b: int) -> None:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    config = tiny_config(**overrides)
    policy = PI05Policy(config)
    randomize(policy, g)
    stats = {}
    for key, f in {**config.input_features, **config.output_features}.items():
        shape = (f.shape[0], 1, 1) if f.type is FeatureType.VISUAL else f.shape
        low = torch.randn(shape, generator=g) * 0.3
        stats[key] = {"mean": low, "std": torch.rand(shape, generator=g) + 0.5, "min": low - 1.2, "max": low + 1.3,
                      "q01": low - 1.0, "q99": low + 1.1}
    pre, post = processor_pi05.make_pi05_pre_post_processors(config, dataset_stats=stats)
    policy_dir = out / "policy"
    policy.save_pretrained(policy_dir)
    pre.save_pretrained(policy_dir)
    post.save_pretrained(policy_dir)

    h, amax, adim = config.chunk_size, config.max_action_dim, 3
    batch = {
        key: (torch.rand(b, *f.shape, generator=g) if f.type is FeatureType.VISUAL
              else torch.randn(b, *f.shape, generator=g) * 1.3)  # some states beyond q01 / q99: bins -1 and 255
        for key, f in config.input_features.items()
    }
    tasks = [TASKS[i % len(TASKS)] for i in range(b)]
    noise = torch.randn(b, h, amax, generator=g)
    noise[..., adim:] = 0.0  # our policy takes (B, H, A) noise and zero-pads it
    train_noise = torch.randn(b, h, amax, generator=g)
    train_time = torch.rand(b, generator=g) * 0.98 + 0.01
    action = torch.randn(b, h, adim, generator=g)

    policy.eval()
    policy.model.sample_noise = lambda shape, device: noise.clone()
    processed = pre({**batch, "task": list(tasks)})
    with torch.no_grad():
        actions = post(policy.predict_action_chunk(processed))
    policy.train()
    policy.model.sample_noise = lambda shape, device: train_noise.clone()
    policy.model.sample_time = lambda bsize, device: train_time.clone()
    with torch.no_grad():
        loss, _ = policy.forward(pre({**batch, "task": list(tasks), "action": action}))

    save_file({**batch, "action": action}, str(out / "batch.safetensors"))
    (out / "tasks.json").write_text(json.dumps(tasks))
    save_file(
        {"actions": actions.contiguous(), "loss": loss.reshape(1), "noise": noise, "train_noise": train_noise,
         "train_time": train_time, "tokens": processed["observation.language.tokens"].contiguous(),
         "token_mask": processed["observation.language.attention_mask"].contiguous()},
        str(out / "expected.safetensors"),
    )
    print(f"wrote {policy_dir}: actions {tuple(actions.shape)}, loss {loss.item():.6f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=2)
    a = ap.parse_args()
    patch_lerobot_sizes()
    tok = tiny_tokenizer(a.out / "tokenizer")
    processor_pi05.TokenizerProcessorStep = functools.partial(processor_pi05.TokenizerProcessorStep, tokenizer=tok)
    for i, (name, overrides) in enumerate(CASES.items()):
        write_case(a.out / name, overrides, a.seed + i, a.batch_size)
    (a.out / "cases.json").write_text(json.dumps(list(CASES)))


if __name__ == "__main__":
    main()
