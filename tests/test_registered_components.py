"""Every advertised component loads by name, is the class its entry point names, and follows the interfaces."""

from importlib import metadata

import pytest
from vla_core import BACKBONES, HEADS, PROJECTORS, ActionHead, Backbone, ComponentConfig, Projector

KINDS = {"vla.backbones": (BACKBONES, Backbone), "vla.heads": (HEADS, ActionHead), "vla.projectors": (PROJECTORS, Projector)}
CONTRACT = {  # the names DESIGN.md promises
    "vla.backbones": {"resnet_act", "resnet_spatial_softmax", "eagle", "paligemma"},
    "vla.heads": {"act_vae", "unet_diffusion", "dit_flow_matching", "pi0_flow", "pi05_flow"},
    "vla.projectors": {"linear", "mlp"},
}
ENTRY_POINTS = [(group, ep) for group in KINDS for ep in metadata.entry_points(group=group)]


def test_the_promised_names_are_advertised():
    for group, names in CONTRACT.items():
        assert names <= set(KINDS[group][0].names()), f"{group} lacks {names - set(KINDS[group][0].names())}"


@pytest.mark.parametrize("group,ep", ENTRY_POINTS, ids=[f"{g}:{ep.name}" for g, ep in ENTRY_POINTS])
def test_entry_point_loads_the_registered_class(group, ep):
    registry, base = KINDS[group]
    cls = registry.get(ep.name)
    assert cls is ep.load()
    assert issubclass(cls, base) and cls.registered_name == ep.name
    assert issubclass(cls.config_class, ComponentConfig)
    assert all(f in cls.config_class.field_names() for f in cls.weight_source_fields)
