"""Long-lived peer for the GR00T N1.5 converter tests (runs in the LeRobot 0.5.1 venv).

Reads one JSON request per stdin line and answers one JSON line on stdout (``{"ok": true}`` or
``{"ok": false, "error": ...}``), so one process serves a whole option sweep. Requests:

- ``{"kind": "head", "out": DIR, "cfg": {...}}``: LeRobot's FlowmatchingActionHead built from ``cfg``
  (an ``action_head_cfg``) with random weights; writes ``config.json``, ``model.safetensors`` (keys under
  ``action_head.``) and ``io.safetensors`` (context features, state, embodiment ids, the initial noise,
  the actions ``get_action`` returns, and the training loss under seed 7).
- ``{"kind": "eagle", "out": DIR, "cfg": {...}, "select_layer": N}``: the vendored Eagle 2.5 VL model
  built from ``cfg`` (an Eagle ``config.json``), LLM cut at ``select_layer`` as GR00T's EagleBackbone
  does; writes ``config.json``, ``model.safetensors`` (full, before the cut) and ``io.safetensors``.
- ``{"kind": "policy", "out": DIR, "base": DIR, "eagle": {...}, "backbone_cfg": {...},
  "action_head_cfg": {...}, "policy": {...}, "stats": {...}}``: a tiny GR00T N1.5 base model saved to
  ``base``, then LeRobot's own ``GrootPolicy`` built on it (``GrootConfig(**policy)``), perturbed (unless
  ``"finetune": false``), and
  saved with ``save_pretrained`` plus its pre/post-processors (stats) to ``out``; ``io.safetensors``
  holds pre-tokenized Eagle inputs, the raw state, the noise and the unnormalized action chunk.

Eagle's config is read, as LeRobot does, from ``$HF_LEROBOT_HOME/<tokenizer_assets_repo>/config.json``
(the test sets HF_LEROBOT_HOME to a temporary directory). Nothing is downloaded: the vendored-file
copy and the tokenizer download are skipped, and SigLIP is built with sdpa (the reference forces
flash_attention_2, which is not installed on CPU; the attention kernel is the only change).
"""

import json
import os
import sys
import traceback
from pathlib import Path

import torch
from safetensors.torch import save_file


def _setup_eagle_shims():
    import lerobot.policies.groot.eagle2_hg_model.modeling_eagle2_5_vl as eagle_modeling
    from lerobot.policies.groot import groot_n1
    from lerobot.policies.groot.eagle2_hg_model.configuration_eagle2_5_vl import Eagle25VLConfig

    siglip = eagle_modeling.SiglipVisionModel

    def siglip_sdpa(config):
        config._attn_implementation = "sdpa"
        return siglip(config)

    eagle_modeling.SiglipVisionModel = siglip_sdpa

    class AutoConfigShim:  # reads the cache dir's config.json (no remote code: the vendored class)
        @staticmethod
        def from_pretrained(path, trust_remote_code=True):
            cfg = json.loads((Path(path) / "config.json").read_text())
            return Eagle25VLConfig(**{k: v for k, v in cfg.items() if k not in ("model_type", "auto_map")})

    class AutoModelShim:
        @staticmethod
        def from_config(config, trust_remote_code=True):
            return build_eagle(config)

    groot_n1.AutoConfig, groot_n1.AutoModel = AutoConfigShim, AutoModelShim
    groot_n1.ensure_eagle_cache_ready = lambda *a, **k: None

    # transformers 5.x builds GR00TN15 under the meta device in from_pretrained, where the head's
    # (parameter-free) torch.distributions.Beta fails its argument check: build it from CPU tensors.
    import lerobot.policies.groot.action_head.flow_matching_action_head as fm

    beta = fm.Beta
    fm.Beta = lambda a, b: beta(torch.tensor(float(a), device="cpu"), torch.tensor(float(b), device="cpu"))

    # ... and then fails in its tied-weights bookkeeping (GR00TN15 never calls post_init). Load a local
    # base model the plain way instead: build from its config.json, load model.safetensors strictly,
    # then set the trainable parts as GR00TN15.from_pretrained does.
    from safetensors.torch import load_file

    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        path = pretrained_model_name_or_path
        tune = {k: kwargs.pop(k) for k in ("tune_visual", "tune_llm", "tune_projector", "tune_diffusion_model")}
        model = cls(groot_n1.GR00TN15Config.from_pretrained(path), local_model_path=str(path))
        model.load_state_dict(load_file(str(Path(path) / "model.safetensors")), strict=True)
        model.backbone.set_trainable_parameters(tune_visual=tune["tune_visual"], tune_llm=tune["tune_llm"])
        model.action_head.set_trainable_parameters(tune_projector=tune["tune_projector"],
                                                   tune_diffusion_model=tune["tune_diffusion_model"])
        return model

    groot_n1.GR00TN15.from_pretrained = classmethod(from_pretrained)


def build_eagle(cfg):
    from lerobot.policies.groot.eagle2_hg_model.modeling_eagle2_5_vl import Eagle25VLForConditionalGeneration

    cfg._attn_implementation = "sdpa"
    cfg.text_config._attn_implementation = "sdpa"
    model = Eagle25VLForConditionalGeneration(cfg)
    shuffle = model.pixel_shuffle  # its .view() needs contiguous input, which sdpa's output is not
    model.pixel_shuffle = lambda x, scale_factor=0.5: shuffle(x.contiguous(), scale_factor)
    for sub in (model.vision_model, model.language_model):
        sub.config._attn_implementation = "sdpa"
    return model


def perturb(module, scale=0.05):
    """Non-trivial norms and biases, so a mis-mapped one shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name or name.endswith(("bias", ".b")) or "vlln" in name:
                p.add_(scale * torch.randn_like(p))


def eagle_inputs(num_image_token, image_token, image_size, batch, g, vocab=50):
    ids = torch.randint(0, min(vocab, image_token), (batch, 6 + num_image_token), generator=g)
    ids[:, 2 : 2 + num_image_token] = image_token
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    pixels = torch.randn(batch, 3, image_size, image_size, generator=g)
    return ids, mask, pixels


def head_request(req):
    from lerobot.policies.groot.action_head.flow_matching_action_head import (
        FlowmatchingActionHead,
        FlowmatchingActionHeadConfig,
    )
    from transformers.feature_extraction_utils import BatchFeature

    cfg, out = req["cfg"], Path(req["out"])
    torch.manual_seed(0)
    head = FlowmatchingActionHead(FlowmatchingActionHeadConfig(**cfg))
    perturb(head)
    head.eval()
    B, S = 3, 7
    ctx = cfg["backbone_embedding_dim"] if cfg.get("use_vlln", True) else cfg["diffusion_model_cfg"]["cross_attention_dim"]
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(B, S, ctx, generator=g)
    attn = torch.ones(B, S, dtype=torch.bool)
    state = torch.randn(B, 1, cfg["max_state_dim"], generator=g)
    H, A = cfg["action_horizon"], cfg["action_dim"]
    action = torch.randn(B, H, A, generator=g)
    emb = torch.randint(0, cfg.get("max_num_embodiments", 32), (B,), generator=g)

    def backbone():
        return BatchFeature({"backbone_features": feats.clone(), "backbone_attention_mask": attn})

    torch.manual_seed(123)
    noise = torch.randn(B, H, A)
    torch.manual_seed(123)
    actions = head.get_action(backbone(), BatchFeature({"state": state, "embodiment_id": emb}))["action_pred"]
    torch.manual_seed(7)
    with torch.no_grad():
        loss = head(backbone(), BatchFeature({"state": state, "embodiment_id": emb, "action": action,
                                              "action_mask": torch.ones(B, H, A)}))["loss"].reshape(1)
    out.mkdir(parents=True, exist_ok=True)
    save_file({f"action_head.{k}": v.contiguous() for k, v in head.state_dict().items()}, str(out / "model.safetensors"))
    save_file({"features": feats, "attention_mask": attn, "state": state[:, 0].contiguous(), "action": action,
               "embodiment_id": emb, "noise": noise, "actions": actions.contiguous(), "loss": loss},
              str(out / "io.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))


def eagle_request(req):
    from lerobot.policies.groot.eagle2_hg_model.configuration_eagle2_5_vl import Eagle25VLConfig

    out, select = Path(req["out"]), req["select_layer"]
    torch.manual_seed(0)
    model = build_eagle(Eagle25VLConfig(**req["cfg"]))
    perturb(model, 0.1)
    model.eval()
    full = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    while len(model.language_model.model.layers) > select:
        model.language_model.model.layers.pop(-1)
    g = torch.Generator().manual_seed(1)
    size = model.config.force_image_size or model.config.vision_config.image_size
    ids, mask, pixels = eagle_inputs(model.num_image_token, model.config.image_token_index, size, 2, g,
                                     model.config.text_config.vocab_size)
    with torch.no_grad():
        res = model(pixel_values=pixels, input_ids=ids, attention_mask=mask, output_hidden_states=True, return_dict=True)
    out.mkdir(parents=True, exist_ok=True)
    save_file(full, str(out / "model.safetensors"))
    save_file({"input_ids": ids, "attention_mask": mask, "pixel_values": pixels,
               "features": res.hidden_states[select].contiguous()}, str(out / "io.safetensors"))
    (out / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2, default=str))


def policy_request(req):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.groot.configuration_groot import GrootConfig
    from lerobot.policies.groot.groot_n1 import GR00TN15, GR00TN15Config
    from lerobot.policies.groot.modeling_groot import GrootPolicy
    from lerobot.policies.groot.processor_groot import make_groot_pre_post_processors
    from lerobot.types import TransitionKey

    out, base = Path(req["out"]), Path(req["base"])
    pol = dict(req["policy"])
    repo = pol.get("tokenizer_assets_repo", "lerobot/eagle2hg-processor-groot-n1p5")
    cache = Path(os.environ["HF_LEROBOT_HOME"]) / repo
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "config.json").write_text(json.dumps(req["eagle"]))
    head_cfg = req["action_head_cfg"]
    torch.manual_seed(0)
    base_cfg = GR00TN15Config(backbone_cfg=req["backbone_cfg"], action_head_cfg=head_cfg,
                              action_horizon=head_cfg["action_horizon"], action_dim=head_cfg["action_dim"],
                              compute_dtype="float32", model_type="gr00t_n1_5", architectures=["GR00T_N1_5"])
    model = GR00TN15(base_cfg, local_model_path=str(base))
    perturb(model)
    base.mkdir(parents=True, exist_ok=True)
    base_cfg.save_pretrained(str(base))
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(base / "model.safetensors"))

    kinds = {"VISUAL": FeatureType.VISUAL, "STATE": FeatureType.STATE, "ACTION": FeatureType.ACTION}
    feats = {io: {k: PolicyFeature(type=kinds[t], shape=tuple(s)) for k, (t, s) in pol.pop(io).items()}
             for io in ("input_features", "output_features")}
    config = GrootConfig(base_model_path=str(base), **feats, **pol)
    policy = GrootPolicy(config)
    if req.get("finetune", True):  # a fine-tuned policy: its weights are not the base model's
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.01 * torch.randn_like(p))
    policy.eval()
    stats = {k: {s: torch.tensor(v) for s, v in d.items()} for k, d in req["stats"].items()}
    pre, post = make_groot_pre_post_processors(config, dataset_stats=stats)
    policy.save_pretrained(str(out))
    pre.save_pretrained(str(out))
    post.save_pretrained(str(out))

    eagle = policy._groot_model.backbone.eagle_model
    B = 2
    g = torch.Generator().manual_seed(1)
    size = eagle.config.force_image_size or eagle.config.vision_config.image_size
    n_cams = sum(1 for f in config.input_features.values() if f.type == FeatureType.VISUAL)
    ids, mask, pixels = eagle_inputs(eagle.num_image_token * n_cams, eagle.config.image_token_index, size, B, g,
                                     eagle.config.text_config.vocab_size)
    pixels = torch.randn(B * n_cams, 3, size, size, generator=g)
    state_dim = config.input_features["observation.state"].shape[0]
    raw_state = torch.randn(B, state_dim, generator=g) * 3
    pack = pre.steps[2]
    transition = {TransitionKey.OBSERVATION: {"observation.state": raw_state.clone()},
                  TransitionKey.COMPLEMENTARY_DATA: {"task": ["pick"]}, TransitionKey.ACTION: None}
    packed = pack(transition)
    obs, comp = packed[TransitionKey.OBSERVATION], packed[TransitionKey.COMPLEMENTARY_DATA]
    batch = {"state": obs["state"], "state_mask": obs["state_mask"], "embodiment_id": comp["embodiment_id"],
             "eagle_input_ids": ids, "eagle_attention_mask": mask, "eagle_pixel_values": pixels,
             "eagle_image_sizes": torch.full((B * n_cams, 2), size)}
    torch.manual_seed(5)
    noise = torch.randn(B, head_cfg["action_horizon"], head_cfg["action_dim"])
    torch.manual_seed(5)
    chunk = policy.predict_action_chunk(batch)  # (B, H, A) normalized
    unpack = post.steps[0]
    steps = [unpack({TransitionKey.ACTION: chunk[:, h]})[TransitionKey.ACTION] for h in range(chunk.shape[1])]
    save_file({"eagle_input_ids": ids, "eagle_attention_mask": mask, "eagle_pixel_values": pixels,
               "state": raw_state, "noise": noise, "normalized": chunk.contiguous(),
               "actions": torch.stack(steps, 1).contiguous(), "embodiment_id": comp["embodiment_id"]},
              str(out / "io.safetensors"))


HANDLERS = {"head": head_request, "eagle": eagle_request, "policy": policy_request}


def main():
    proto, sys.stdout = sys.stdout, sys.stderr  # LeRobot prints progress: keep stdout for the replies
    torch.set_num_threads(1)
    _setup_eagle_shims()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            HANDLERS[req["kind"]](req)
            reply = {"ok": True}
        except Exception as err:  # noqa: BLE001 (reported to the test, which fails with it)
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-3000:]}
        print(json.dumps(reply), file=proto, flush=True)


if __name__ == "__main__":
    main()
