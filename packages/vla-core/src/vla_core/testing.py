"""The contract suite: checks every component and policy passes, for our tests and for plugin authors.

Run the whole contract on your component, paired with a registered backbone or head (both built from
their ``tiny_config``)::

    from vla_core.testing import check_policy_contract, tiny_policy_config
    from vla_core import VLAPolicy

    def make():
        return VLAPolicy.from_config(tiny_policy_config("resnet_act", "my_head", workdir))
    check_policy_contract(make, workdir)

It checks, in one process on CPU: the training forward and backward (finite loss, a finite gradient
for every trainable parameter the loss reaches), reproducible ``predict_action_chunk`` from fixed noise,
the ``save_pretrained`` / ``from_pretrained`` round trip, one training step under activation
checkpointing and FSDP2 ``fully_shard`` on a 1-rank gloo group (equal to the plain step; every
checkpointed unit called as a module and recomputed), inference on the sharded policy, one step under
bf16 autocast, ``from_pretrained(dtype=torch.bfloat16)`` fed fp32 observations, ``Policy.compile`` of
the inference path equal to eager without recompiling, and real-time chunking (:func:`check_rtc`) for
policies that support it (flow-matching heads).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vla_core.config import ComponentConfig
from vla_core.features import ACTION, ACTION_IS_PAD, FeatureType, PolicyFeature, parse_features
from vla_core.interfaces import ActionHead, Backbone, BackboneOutput
from vla_core.parallel import apply_activation_checkpointing, apply_fsdp2, unit_modules
from vla_core.registry import BACKBONES, HEADS

# The features every pair is built with: two cameras, a state, a language instruction, a 3-dim action.
CONTRACT_FEATURES: dict[str, dict[str, Any]] = {
    "input_features": {
        "observation.images.top": {"type": "VISUAL", "shape": [3, 32, 32]},
        "observation.images.wrist": {"type": "VISUAL", "shape": [3, 32, 32]},
        "observation.state": {"type": "STATE", "shape": [4]},
        "task": {"type": "LANGUAGE", "shape": []},
    },
    "output_features": {"action": {"type": "ACTION", "shape": [3]}},
}
TASKS = ("pick up the cube", "open the drawer")


# --------------------------------------------------------------------------- building tiny things
def tiny_spec(kind: str, name: str, workdir: str | os.PathLike) -> dict[str, Any]:
    """``{"type": name, **tiny_config}`` of a registered ``"backbone"`` or ``"head"``."""
    registry = {"backbone": BACKBONES, "head": HEADS}[kind]
    directory = Path(workdir) / f"{kind}-{name}"
    directory.mkdir(parents=True, exist_ok=True)
    return {"type": name, **registry.get(name).tiny_config(directory)}


def tiny_policy_config(
    backbone: str, head: str, workdir: str | os.PathLike, features: Mapping[str, Any] = CONTRACT_FEATURES, **fields: Any
) -> dict[str, Any]:
    """A ``VLAPolicy`` config pairing two registered components at their tiny sizes."""
    return {
        **features,
        "backbone": tiny_spec("backbone", backbone, workdir),
        "head": tiny_spec("head", head, workdir),
        **fields,
    }


def set_random_stats(policy: nn.Module, seed: int = 0) -> nn.Module:
    """Give every normalized feature of ``policy`` finite statistics from a fixed random draw."""
    g = torch.Generator().manual_seed(seed)
    stats = {}
    for key, feature in {**policy.input_features, **policy.output_features}.items():
        shape = (feature.shape[0], 1, 1) if feature.type is FeatureType.VISUAL else feature.shape
        low = torch.randn(shape, generator=g)
        stats[key] = {"mean": low, "std": torch.rand(shape, generator=g) + 0.5, "min": low - 1, "max": low + 1,
                      "q01": low - 0.9, "q99": low + 0.9}
    policy.normalizer.set_stats(stats)
    return policy


def random_batch(
    features: Mapping[str, PolicyFeature],
    *,
    batch_size: int,
    horizon: int | None = None,
    n_obs_steps: int = 1,
    generator: torch.Generator | None = None,
    tasks: tuple[str, ...] = TASKS,
) -> dict[str, Any]:
    """A random batch for ``features``: images in [0, 1], Gaussian state and action."""
    g = generator or torch.Generator().manual_seed(0)
    batch: dict[str, Any] = {}
    for key, f in features.items():
        if f.type is FeatureType.LANGUAGE:
            batch[key] = [tasks[i % len(tasks)] for i in range(batch_size)]
        elif f.type is FeatureType.ACTION:
            if horizon is None:
                raise ValueError("random_batch: an ACTION feature needs horizon")
            batch[key] = torch.randn(batch_size, horizon, *f.shape, generator=g)
            batch[ACTION_IS_PAD] = torch.zeros(batch_size, horizon, dtype=torch.bool)
        else:
            time = (n_obs_steps,) if n_obs_steps > 1 else ()
            shape = (batch_size, *time, *f.shape)
            batch[key] = torch.rand(shape, generator=g) if f.type is FeatureType.VISUAL else torch.randn(shape, generator=g)
    return batch


def policy_batch(policy: nn.Module, batch_size: int = 2, seed: int = 0) -> dict[str, Any]:
    """A random training batch (target included) for ``policy``'s features and horizon."""
    features = {**policy.input_features, **policy.output_features}
    return random_batch(features, batch_size=batch_size, horizon=policy.horizon,
                        n_obs_steps=policy.config.n_obs_steps, generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def single_process_group() -> Iterator[None]:
    """A 1-rank gloo process group for the duration (reuses one that is already initialized)."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


# --------------------------------------------------------------------------- single components
def check_config_roundtrip(config: ComponentConfig) -> None:
    """to_dict -> from_dict and to_json -> from_json give back an equal config."""
    assert type(config).from_dict(config.to_dict()) == config, "config dict round trip changed the config"
    assert type(config).from_json(config.to_json()) == config, "config JSON round trip changed the config"


def _check_units(module: nn.Module) -> None:
    units = module.fsdp_units()
    assert isinstance(units, set) and all(isinstance(u, type) and issubclass(u, nn.Module) for u in units)
    present = {type(m) for m in module.modules()}
    missing = units - present
    assert not missing, f"fsdp_units names classes the module does not contain: {missing}"


def check_backbone(backbone: Backbone, batch: Mapping[str, Any]) -> BackboneOutput:
    """Output types and shapes, the context spec, gradients and fsdp_units; returns the output."""
    check_config_roundtrip(backbone.config)
    out = backbone(batch)
    assert isinstance(out, BackboneOutput), f"forward returned {type(out).__name__}, expected BackboneOutput"
    feats, mask = out.features, out.attention_mask
    spec = backbone.context_spec()
    assert feats.dim() == 3 and feats.shape[-1] == backbone.output_dim == spec.width, (
        f"features: expected (B, T, {backbone.output_dim}) (context_spec width {spec.width}), received {tuple(feats.shape)}"
    )
    if spec.num_tokens is not None:
        assert feats.shape[1] == spec.num_tokens, f"context_spec says {spec.num_tokens} tokens, forward gave {feats.shape[1]}"
    assert mask.dtype == torch.bool and tuple(mask.shape) == tuple(feats.shape[:2]), (
        f"attention_mask: expected bool {tuple(feats.shape[:2])}, received {mask.dtype} {tuple(mask.shape)}"
    )
    assert (out.pos_embed is not None) == spec.pos_embed, f"context_spec.pos_embed is {spec.pos_embed}"
    if out.pos_embed is not None:
        assert out.pos_embed.shape[1:] == feats.shape[1:] and out.pos_embed.shape[0] in (1, feats.shape[0])
    assert (out.past_key_values is not None) == (spec.kv is not None), f"context_spec.kv is {spec.kv}"
    if spec.kv is not None:
        assert len(out.past_key_values) == spec.kv.num_layers
        k = out.past_key_values[0][0]
        assert k.shape[1] == spec.kv.num_kv_heads and k.shape[3] == spec.kv.head_dim, f"K/V shape {tuple(k.shape)}"
    assert torch.isfinite(feats).all(), "features contain NaN/Inf"
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    if trainable:
        feats.float().square().mean().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable), "no gradient reached the backbone"
        backbone.zero_grad(set_to_none=True)
    _check_units(backbone)
    return BackboneOutput(
        features=feats.detach(),
        attention_mask=mask,
        pos_embed=None if out.pos_embed is None else out.pos_embed.detach(),
        past_key_values=out.past_key_values,
    )


def check_head(head: ActionHead, context: BackboneOutput, batch: Mapping[str, Any]) -> None:
    """Loss is a finite differentiable scalar, metrics are detached, predictions are (B, H, A)
    and reproducible from the same noise and generator seed."""
    check_config_roundtrip(head.config)
    bsz = context.features.shape[0]
    head.train()
    out = head(context, batch)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss), f"loss must be a finite scalar, got {out.loss}"
    assert all(not m.requires_grad and m.dim() == 0 for m in out.metrics.values()), "metrics must be detached scalars"
    out.loss.backward()
    assert any(p.grad is not None for p in head.parameters()), "the loss reaches no head parameter"
    head.zero_grad(set_to_none=True)
    head.eval()
    noise = torch.randn(bsz, head.horizon, head.action_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = head.predict_action(context, batch, noise=noise, generator=torch.Generator().manual_seed(2))
        b = head.predict_action(context, batch, noise=noise.clone(), generator=torch.Generator().manual_seed(2))
    assert tuple(a.shape) == (bsz, head.horizon, head.action_dim), f"predict_action gave {tuple(a.shape)}"
    assert torch.isfinite(a).all(), "predicted actions contain NaN/Inf"
    torch.testing.assert_close(a, b, msg="predict_action is not reproducible from the same noise and generator")
    _check_units(head)
    assert ACTION in batch


# --------------------------------------------------------------------------- policies
def _predict(policy: nn.Module, batch: Mapping[str, Any], seed: int = 1, fn: Callable | None = None) -> Tensor:
    """predict_action_chunk from fixed noise and a generator seeded with ``seed``."""
    bsz = len(next(v for v in batch.values() if isinstance(v, (Tensor, list))))
    noise = torch.randn(bsz, policy.horizon, policy.action_dim, generator=torch.Generator().manual_seed(seed))
    fn = fn or policy.predict_action_chunk
    return fn(batch, noise=noise, generator=torch.Generator().manual_seed(seed + 1))


def _grads(model: nn.Module) -> dict[str, Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad
            out[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
    return out


def check_training_step(policy: nn.Module, batch: Mapping[str, Any]) -> dict[str, Tensor]:
    """Forward + backward in train mode: a finite scalar loss, detached scalar metrics, a finite
    gradient for every trainable parameter the loss reaches, and some gradient in every trainable
    component. Returns the gradients."""
    policy.train()
    policy.zero_grad(set_to_none=True)
    out = policy(batch)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss), f"loss must be a finite scalar, got {out.loss}"
    assert all(not m.requires_grad and m.dim() == 0 for m in out.metrics.values()), "metrics must be detached scalars"
    out.loss.backward()
    grads = _grads(policy)
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"
    for name, child in policy.named_children():
        trainable = [n for n, p in child.named_parameters() if p.requires_grad]
        if trainable:
            reached = [n for n in trainable if f"{name}.{n}" in grads and grads[f"{name}.{n}"].abs().sum() > 0]
            assert reached, f"the loss reaches none of the {len(trainable)} trainable parameters of {name!r}"
    policy.zero_grad(set_to_none=True)
    return grads


def check_inference(policy: nn.Module, batch: Mapping[str, Any]) -> Tensor:
    """Eval-mode ``predict_action_chunk``: (B, H, A), finite, equal for equal noise and generator seed."""
    policy.eval()
    a, b = _predict(policy, batch), _predict(policy, batch)
    bsz = a.shape[0]
    assert tuple(a.shape) == (bsz, policy.horizon, policy.action_dim), f"predict_action_chunk gave {tuple(a.shape)}"
    assert torch.isfinite(a).all(), "predicted actions contain NaN/Inf"
    torch.testing.assert_close(a, b, rtol=0, atol=0, msg="predict_action_chunk is not reproducible from fixed noise")
    return a


def check_save_load(policy: nn.Module, batch: Mapping[str, Any], directory: str | os.PathLike) -> None:
    """``save_pretrained`` then ``from_pretrained`` gives the same weights, stats and actions."""
    policy.eval()
    expected = _predict(policy, batch)
    policy.save_pretrained(directory)
    loaded = type(policy).from_pretrained(directory)
    assert type(loaded) is type(policy)
    ours, theirs = policy.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys(), f"state dict keys differ: {sorted(set(ours) ^ set(theirs))[:5]}"
    for key in ours:
        torch.testing.assert_close(theirs[key], ours[key], rtol=0, atol=0, msg=f"{key} changed in the round trip")
    torch.testing.assert_close(_predict(loaded, batch), expected, rtol=0, atol=0)


class _UnitCalls:
    """Counts, per unit, calls through ``__call__`` and runs of the original ``forward`` (which
    activation checkpointing runs again in backward)."""

    def __init__(self, model: nn.Module) -> None:
        self.units = unit_modules(model)
        self.calls = [0] * len(self.units)
        self.runs = [0] * len(self.units)
        for i, unit in enumerate(self.units):
            unit.register_forward_pre_hook(lambda *_, i=i: self._count(self.calls, i))
            inner = unit.forward

            def counted(*args, _inner=inner, _i=i, **kwargs):
                self._count(self.runs, _i)
                return _inner(*args, **kwargs)

            unit.forward = counted

    @staticmethod
    def _count(counter: list[int], i: int) -> None:
        counter[i] += 1

    def reset(self) -> None:
        self.calls = [0] * len(self.units)
        self.runs = [0] * len(self.units)

    def names(self, model: nn.Module, indices: list[int]) -> list[str]:
        by_id = {id(m): n for n, m in model.named_modules()}
        return [by_id[id(self.units[i])] for i in indices]


def check_sharded_training(make_policy: Callable[[], nn.Module], batch: Mapping[str, Any], *, seed: int = 0) -> None:
    """Activation checkpointing + FSDP2 on a 1-rank gloo group give the plain policy's results.

    Two policies with the same weights: one plain, one with every unit checkpointed and
    ``fully_shard``-ed (then the root), as the trainer does. Checked: eval-mode actions, the training
    loss and every gradient under one seed, that every unit was called as a module and (when it
    holds trainable parameters) recomputed in backward, and that an AdamW step and another forward work.
    """
    from torch.distributed.device_mesh import init_device_mesh

    plain = make_policy()
    sharded = make_policy()
    sharded.load_state_dict(plain.state_dict())
    calls = _UnitCalls(sharded)
    assert calls.units, f"{type(sharded).__name__}.fsdp_units() names no module of the policy"
    apply_activation_checkpointing(sharded)
    with single_process_group():
        apply_fsdp2(sharded, init_device_mesh("cpu", (1,)))

        plain.eval(), sharded.eval()
        torch.testing.assert_close(_predict(sharded, batch), _predict(plain, batch), rtol=1e-5, atol=1e-5,
                                   msg="actions of the sharded policy differ")
        calls.reset()
        plain.train(), sharded.train()
        torch.manual_seed(seed)
        expected = plain(batch).loss
        expected.backward()
        torch.manual_seed(seed)
        loss = sharded(batch).loss
        unused = [i for i, n in enumerate(calls.calls) if n == 0]
        assert not unused, f"FSDP/checkpointing units never called as modules: {calls.names(sharded, unused)[:5]}"
        skipped = [i for i, (c, r) in enumerate(zip(calls.calls, calls.runs)) if r != c]
        assert not skipped, f"units whose forward did not run when called: {calls.names(sharded, skipped)[:5]}"
        loss.backward()
        trainable = [i for i, u in enumerate(calls.units) if any(p.requires_grad for p in u.parameters())]
        not_recomputed = [i for i in trainable if calls.runs[i] != 2 * calls.calls[i]]
        assert not not_recomputed, (
            f"checkpointed units not recomputed in backward: {calls.names(sharded, not_recomputed)[:5]}"
        )
        torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-5, atol=1e-6,
                                   msg="the sharded, checkpointed loss differs from the plain one")
        ref, got = _grads(plain), _grads(sharded)
        assert ref.keys() == got.keys(), f"gradients differ in which parameters get one: {sorted(ref.keys() ^ got.keys())[:5]}"
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")
        optimizer = torch.optim.AdamW([p for p in sharded.parameters() if p.requires_grad], lr=1e-3)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        again = sharded(batch).loss
        assert torch.isfinite(again), "loss after an optimizer step on the sharded policy is not finite"
        again.backward()


def check_bf16_autocast(policy: nn.Module, batch: Mapping[str, Any]) -> None:
    """One training forward/backward under CPU bf16 autocast: finite loss and gradients; inference too."""
    policy.train()
    policy.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = policy(batch)
    assert torch.isfinite(out.loss), f"bf16 autocast loss is {out.loss}"
    out.loss.backward()
    bad = [n for n, g in _grads(policy).items() if not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradients under bf16 autocast: {bad[:5]}"
    policy.zero_grad(set_to_none=True)
    policy.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actions = _predict(policy, batch)
    assert torch.isfinite(actions).all(), "bf16 autocast actions contain NaN/Inf"


def check_bf16_load(policy: nn.Module, batch: Mapping[str, Any], directory: str | os.PathLike) -> None:
    """``from_pretrained(dtype=torch.bfloat16)`` holds every floating parameter in bf16 and the normalization
    stats in fp32, takes fp32 observations (cast at the boundary), predicts finite float32 actions near the
    fp32 policy's, and trains (finite loss, bf16 gradients)."""
    policy.eval()
    expected = _predict(policy, batch)
    policy.save_pretrained(directory)
    loaded = type(policy).from_pretrained(directory, dtype=torch.bfloat16)
    wrong = [n for n, p in loaded.named_parameters() if p.is_floating_point() and p.dtype != torch.bfloat16]
    assert not wrong, f"from_pretrained(dtype=bfloat16) left parameters in another dtype: {wrong[:5]}"
    stats = [(n, b.dtype) for n, b in loaded.normalizer.named_buffers() if b.dtype != torch.float32]
    assert not stats, f"normalization stats must stay float32: {stats[:5]}"
    assert loaded.compute_dtype == torch.bfloat16, f"compute_dtype is {loaded.compute_dtype}"
    assert all(v.dtype == torch.float32 for v in batch.values() if isinstance(v, Tensor) and v.is_floating_point())
    actions = _predict(loaded, batch)
    assert actions.dtype == torch.float32 and actions.shape == expected.shape, f"{actions.dtype} {tuple(actions.shape)}"
    assert torch.isfinite(actions).all(), "bf16 actions contain NaN/Inf"
    scale = policy.normalizer.normalize("action", expected).abs().mean().item() + 1.0
    error = (policy.normalizer.normalize("action", actions) - policy.normalizer.normalize("action", expected))
    assert error.abs().mean().item() <= 0.1 * scale, f"bf16 actions are far from fp32's: {error.abs().mean():.4f}"
    loaded.train()
    out = loaded(batch)
    assert torch.isfinite(out.loss), f"bf16 loss is {out.loss}"
    out.loss.backward()
    grads = _grads(loaded)
    assert grads and all(g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads.values())


def check_compiled_inference(
    policy: nn.Module,
    batch: Mapping[str, Any],
    *,
    atol: float = 1e-5,
    backend: str | Callable[..., Any] = "inductor",
    mode: str | None = None,
    calls: int = 3,
) -> None:
    """``policy.compile(mode, backend=backend)`` gives eager's chunk (fp32, within ``atol``) and never
    recompiles: after the first call, ``calls - 1`` more with the same shapes (other noise) run under
    ``torch.compiler.set_stance("fail_on_recompile")``, which raises if a guard fails.

    Resets torch's compile caches first (``torch.compiler.reset()``), so earlier compilations in the
    process cannot push this policy past the recompile limit (where Dynamo would silently run eager).
    ``backend="inductor"`` (the default) generates and runs kernels; ``"aot_eager"`` checks what Dynamo
    and AOTAutograd trace (graph breaks, functionalization) in a fraction of the time. The policy stays
    compiled afterwards.
    """
    policy.eval()
    expected = [_predict(policy, batch, seed=seed) for seed in range(1, calls + 1)]
    torch.compiler.reset()
    assert policy.compile(mode, backend=backend) is policy and policy.is_compiled
    torch.testing.assert_close(_predict(policy, batch, seed=1), expected[0], rtol=1e-5, atol=atol,
                               msg="compiled predict_action_chunk differs from eager")
    with torch.compiler.set_stance("fail_on_recompile"):
        for seed in range(2, calls + 1):
            torch.testing.assert_close(_predict(policy, batch, seed=seed), expected[seed - 1], rtol=1e-5,
                                       atol=atol, msg=f"compiled predict_action_chunk differs from eager (call {seed})")


def check_rtc(policy: nn.Module, batch: Mapping[str, Any], *, delay: int = 1) -> None:
    """Real-time chunking, for a policy whose ``supports_rtc``: with the previous chunk's tail as the
    prefix, the first ``delay`` actions equal the prefix's exactly and every action is finite."""
    policy.eval()
    previous = _predict(policy, batch, seed=3)
    shift = min(1, policy.horizon - 1)  # one action executed since the previous chunk started
    prefix = previous[:, shift:]
    delay = min(delay, prefix.shape[1])
    actions = policy.predict_action_chunk(batch, prefix=prefix, delay=delay,
                                          noise=torch.randn(previous.shape, generator=torch.Generator().manual_seed(4)))
    assert tuple(actions.shape) == tuple(previous.shape), f"RTC predict_action_chunk gave {tuple(actions.shape)}"
    assert torch.isfinite(actions).all(), "RTC actions contain NaN/Inf"
    assert torch.equal(actions[:, :delay], prefix[:, :delay]), "RTC: the first delay actions differ from the prefix"


def check_policy_contract(
    make_policy: Callable[[], nn.Module],
    workdir: str | os.PathLike,
    *,
    batch_size: int = 2,
    compile_backend: str | None = "inductor",
) -> None:
    """Every check above on policies from ``make_policy`` (which must give equal policies, e.g. by
    seeding; their normalization stats are set here). ``compile_backend=None`` skips the compile check."""
    def make() -> nn.Module:
        return set_random_stats(make_policy())

    policy = make()
    batch = policy_batch(policy, batch_size)
    check_training_step(policy, batch)
    check_inference(policy, batch)
    check_save_load(policy, batch, Path(workdir) / "saved")
    check_sharded_training(make, batch)
    check_bf16_autocast(policy, batch)
    check_bf16_load(policy, batch, Path(workdir) / "saved-bf16")
    if getattr(policy, "supports_rtc", False):
        check_rtc(policy, batch)
    if compile_backend is not None:
        check_compiled_inference(policy, batch, backend=compile_backend)


__all__ = [
    "CONTRACT_FEATURES",
    "check_backbone",
    "check_bf16_autocast",
    "check_bf16_load",
    "check_compiled_inference",
    "check_config_roundtrip",
    "check_head",
    "check_inference",
    "check_policy_contract",
    "check_rtc",
    "check_save_load",
    "check_sharded_training",
    "check_training_step",
    "parse_features",
    "policy_batch",
    "random_batch",
    "set_random_stats",
    "single_process_group",
    "tiny_policy_config",
    "tiny_spec",
]
