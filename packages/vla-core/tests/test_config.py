from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_core import ComponentConfig, ConfigError


@dataclass(frozen=True, kw_only=True)
class DemoConfig(ComponentConfig):
    width: int = 8
    rate: float = 0.1
    name: str = "demo"
    dims: tuple[int, ...] = (1, 2)
    activation: str | None = None
    use_vae: bool = True


def test_unknown_field_names_it_the_valid_ones_and_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown field 'widht'\. Did you mean 'width'\? Valid fields: width, rate"):
        DemoConfig.from_dict({"widht": 3})


def test_wrong_type_names_field_expected_and_received():
    with pytest.raises(ConfigError, match=r"DemoConfig.width: expected int, received '3' \(str\)"):
        DemoConfig.from_dict({"width": "3"})
    with pytest.raises(ConfigError, match="DemoConfig.use_vae"):
        DemoConfig.from_dict({"use_vae": 1})


def test_lists_become_tuples_and_ints_become_floats():
    cfg = DemoConfig.from_dict({"dims": [3, 4], "rate": 1})
    assert cfg.dims == (3, 4) and isinstance(cfg.rate, float)


def test_replace_validates():
    cfg = DemoConfig().replace(width=4)
    assert cfg.width == 4
    with pytest.raises(ConfigError):
        DemoConfig().replace(nope=1)


@settings(max_examples=50, deadline=None)
@given(
    width=st.integers(1, 10_000),
    rate=st.floats(allow_nan=False, allow_infinity=False),
    name=st.text(max_size=20),
    dims=st.lists(st.integers(-5, 5), max_size=5).map(tuple),
    activation=st.none() | st.sampled_from(["relu", "gelu"]),
    use_vae=st.booleans(),
)
def test_dict_and_json_round_trip(width, rate, name, dims, activation, use_vae):
    cfg = DemoConfig(width=width, rate=rate, name=name, dims=dims, activation=activation, use_vae=use_vae)
    assert DemoConfig.from_dict(cfg.to_dict()) == cfg
    assert DemoConfig.from_json(cfg.to_json()) == cfg
