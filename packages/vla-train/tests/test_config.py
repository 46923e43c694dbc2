"""The training config: strict keys, overrides, the resolved copy saved with the run, clear CLI errors."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from vla_core import ConfigError
from vla_train.cli import main
from vla_train.config import TrainConfig, apply_overrides, load_config, parse_value

BASE = {"policy": {"backbone": {"type": "test_linear"}}, "data": {"type": "toy_reach"}, "steps": 3, "batch_size": 2,
        "output_dir": "runs/x"}


def test_unknown_top_level_key_names_it_and_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({**BASE, "stepz": 3})
    msg = str(err.value)
    assert "'stepz'" in msg and "Did you mean 'steps'" in msg and "batch_size" in msg and "output_dir" in msg


def test_unknown_section_field_names_the_dotted_key():
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({**BASE, "optim": {"lrr": 1e-3}})
    msg = str(err.value)
    assert "optim" in msg and "'lrr'" in msg and "Did you mean 'lr'" in msg and "weight_decay" in msg


@pytest.mark.parametrize("section,value,field", [("optim", {"lr": -1.0}, "optim.lr"),
                                                 ("schedule", {"name": "linear"}, "schedule.name"),
                                                 ("checkpoint", {"keep_last": 0}, "checkpoint.keep_last"),
                                                 ("optim", {"lr": "fast"}, "optim.lr")])
def test_bad_values_name_the_field(section, value, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        TrainConfig.from_dict({**BASE, section: value})


def test_missing_required_keys_are_listed():
    with pytest.raises(ConfigError, match="output_dir"):
        TrainConfig.from_dict({k: v for k, v in BASE.items() if k != "output_dir"})


def test_overrides_parse_yaml_values_and_create_nested_keys():
    out = apply_overrides(BASE, ["optim.lr=1e-4", "steps=7", "policy.head.type=test_mlp", "log.tensorboard=true",
                                 "optim.betas=[0.8, 0.9]", "data.type=toy_reach"])
    assert out["optim"]["lr"] == pytest.approx(1e-4) and isinstance(out["optim"]["lr"], float)
    assert out["steps"] == 7 and out["policy"]["head"] == {"type": "test_mlp"} and out["log"]["tensorboard"] is True
    assert TrainConfig.from_dict(out).optim.betas == (0.8, 0.9)
    assert BASE["steps"] == 3  # the input is not modified
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides(BASE, ["steps.x=1"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides(BASE, ["steps"])


@given(st.floats(allow_nan=False, allow_infinity=False, width=64), st.integers(-10**9, 10**9))
def test_parse_value_round_trips_numbers(x, n):
    assert parse_value(repr(x)) == x
    assert parse_value(str(n)) == n and isinstance(parse_value(str(n)), int)


def test_config_round_trips_through_yaml(tmp_path):
    cfg = TrainConfig.from_dict({**BASE, "optim": {"lr": 3e-4, "lr_scales": {"backbone": 0.1}}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(path) == cfg
    assert load_config(path, ["seed=5"]).seed == 5


def test_cli_reports_known_errors_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "optimizer": {}}))
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown config key 'optimizer'" in err[0] and "Did you mean 'optim'" in err[0]
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "training config not found" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "neither a run directory" in capsys.readouterr().err
