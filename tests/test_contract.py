"""The contract suite (``vla_core.testing``) over every advertised component and every backbone x head pair.

A pair either builds and passes every check the trainer relies on (training step, reproducible
inference, save/load, activation checkpointing + FSDP2 on a 1-rank gloo group, bf16 autocast,
``Policy.compile`` equal to eager with no recompilation across calls with the same shapes), or is refused when the policy is built with a ConfigError that names what the head
needs and what the backbone gives. A new component is covered by declaring its ``tiny_config``.
"""

from __future__ import annotations

import itertools
from importlib import metadata
from pathlib import Path

import pytest
import torch
from vla_core import BACKBONES, HEADS, PROJECTORS, ConfigError, VLAPolicy
from vla_core.testing import check_policy_contract, tiny_policy_config, tiny_spec

BACKBONE_NAMES = sorted(ep.name for ep in metadata.entry_points(group="vla.backbones"))
HEAD_NAMES = sorted(ep.name for ep in metadata.entry_points(group="vla.heads"))
PAIRS = list(itertools.product(BACKBONE_NAMES, HEAD_NAMES))

# The shipped families (configs/): their inference is compiled with inductor; the other pairs with
# aot_eager (what Dynamo traces), which takes seconds instead of minutes on CPU.
FAMILIES = {
    ("resnet_act", "act_vae"),
    ("resnet_spatial_softmax", "unet_diffusion"),
    ("resnet_act", "dit_flow_matching"),
    ("eagle", "dit_flow_matching"),
    ("paligemma", "pi0_flow"),
    ("paligemma", "pi05_flow"),
}

# Pairs refused at build time (the table in the README): pi0_flow and pi05_flow read per-layer prefix
# K/V, which only paligemma gives.
REFUSED = {
    (backbone, head): "reads per-layer prefix K/V"
    for backbone in ("eagle", "resnet_act", "resnet_spatial_softmax")
    for head in ("pi0_flow", "pi05_flow")
}


@pytest.mark.parametrize(
    "kind,name",
    [("backbone", n) for n in BACKBONE_NAMES] + [("head", n) for n in HEAD_NAMES],
)
def test_every_component_declares_a_tiny_config(kind, name, tmp_path):
    registry = {"backbone": BACKBONES, "head": HEADS}[kind]
    spec = tiny_spec(kind, name, tmp_path)
    assert "type" in spec and set(spec) - {"type"} <= set(registry.config_class(name).field_names())


@pytest.mark.parametrize("name", sorted(ep.name for ep in metadata.entry_points(group="vla.projectors")))
def test_projectors_map_features_and_positions(name, tmp_path):
    spec = {"type": name, **PROJECTORS.get(name).tiny_config(tmp_path)}
    if "pos_embed" in PROJECTORS.config_class(name).field_names():
        spec["pos_embed"] = True  # what the policy sets when the backbone gives positions
    projector = PROJECTORS.build(spec)
    x, pos = torch.randn(2, 5, projector.in_dim), torch.randn(1, 5, projector.in_dim)
    features, positions = projector(x, pos)
    assert features.shape == (2, 5, projector.out_dim) and positions.shape == (1, 5, projector.out_dim)
    assert projector(x)[1] is None


@pytest.mark.parametrize("backbone,head", PAIRS, ids=[f"{b}+{h}" for b, h in PAIRS])
def test_pair_contract(backbone, head, tmp_path):
    config = tiny_policy_config(backbone, head, tmp_path)
    if (backbone, head) in REFUSED:
        with pytest.raises(ConfigError, match=REFUSED[backbone, head]) as err:
            VLAPolicy(config)
        assert repr(backbone) in str(err.value) and repr(head) in str(err.value)
        return

    def make() -> VLAPolicy:
        torch.manual_seed(0)
        return VLAPolicy(config)

    check_policy_contract(make, tmp_path, compile_backend="inductor" if (backbone, head) in FAMILIES else "aot_eager")


def _readme_pair_table() -> dict[tuple[str, str], str]:
    """The pair table of packages/vla-core/README.md: (backbone, head) -> cell text."""
    readme = (Path(__file__).parents[1] / "packages" / "vla-core" / "README.md").read_text()
    block = readme.split("<!-- pairs -->", 1)[1].split("<!-- /pairs -->", 1)[0]
    rows = [[cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
            for line in block.strip().splitlines()]
    header, body = rows[0], rows[2:]
    return {(row[0], head): cell for row in body for head, cell in zip(header[1:], row[1:])}


def test_readme_pair_table_matches_the_registry():
    """The README's table names every registered pair, and says "no" exactly for the refused ones."""
    table = _readme_pair_table()
    assert set(table) == set(PAIRS), f"README pair table out of date: {set(table) ^ set(PAIRS)}"
    for pair, cell in table.items():
        assert cell.startswith("no") == (pair in REFUSED), f"{pair}: README says {cell!r}"
