"""Contract checks for components, for our tests and for plugin authors.

Run them on your own component::

    from vla_core.testing import check_backbone, check_head, random_batch
    batch = random_batch(features, batch_size=2, horizon=16)
    context = check_backbone(my_backbone, batch)
    check_head(my_head, context, batch)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vla_core.config import ComponentConfig
from vla_core.features import ACTION, ACTION_IS_PAD, FeatureType, PolicyFeature
from vla_core.interfaces import ActionHead, Backbone, BackboneOutput


def random_batch(
    features: Mapping[str, PolicyFeature],
    *,
    batch_size: int,
    horizon: int | None = None,
    n_obs_steps: int = 1,
    generator: torch.Generator | None = None,
    tasks: tuple[str, ...] = ("pick up the cube", "open the drawer"),
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
    """Output types and shapes, output_dim, gradients and fsdp_units; returns the output."""
    check_config_roundtrip(backbone.config)
    out = backbone(batch)
    assert isinstance(out, BackboneOutput), f"forward returned {type(out).__name__}, expected BackboneOutput"
    feats, mask = out.features, out.attention_mask
    assert feats.dim() == 3 and feats.shape[-1] == backbone.output_dim, (
        f"features: expected (B, T, {backbone.output_dim}), received {tuple(feats.shape)}"
    )
    assert mask.dtype == torch.bool and tuple(mask.shape) == tuple(feats.shape[:2]), (
        f"attention_mask: expected bool {tuple(feats.shape[:2])}, received {mask.dtype} {tuple(mask.shape)}"
    )
    if out.pos_embed is not None:
        assert out.pos_embed.shape[1:] == feats.shape[1:] and out.pos_embed.shape[0] in (1, feats.shape[0])
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
    and reproducible from the same noise."""
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
        a = head.predict_action(context, batch, noise=noise)
        b = head.predict_action(context, batch, noise=noise.clone())
    assert tuple(a.shape) == (bsz, head.horizon, head.action_dim), f"predict_action gave {tuple(a.shape)}"
    assert torch.isfinite(a).all(), "predicted actions contain NaN/Inf"
    torch.testing.assert_close(a, b, msg="predict_action is not reproducible from the same noise")
    _check_units(head)
    assert ACTION in batch
