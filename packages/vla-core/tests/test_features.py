import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_core import ACTION, ACTION_IS_PAD, FeatureType, PolicyFeature, validate_batch
from vla_core.features import parse_features

FEATURES = parse_features(
    {
        "observation.images.top": {"type": "VISUAL", "shape": [3, 8, 8]},
        "observation.state": {"type": "STATE", "shape": [5]},
        "task": {"type": "LANGUAGE", "shape": []},
        "action": {"type": "ACTION", "shape": [2]},
    }
)


def batch(b=2, h=4):
    return {
        "observation.images.top": torch.rand(b, 3, 8, 8),
        "observation.state": torch.randn(b, 5),
        "task": ["a"] * b,
        "action": torch.randn(b, h, 2),
        "action_is_pad": torch.zeros(b, h, dtype=torch.bool),
    }


def test_valid_batch_returns_batch_size():
    assert validate_batch(batch(3), FEATURES, horizon=4) == 3


def test_missing_key_names_it_and_the_expected_shape():
    b = batch()
    del b["observation.images.top"]
    with pytest.raises(ValueError, match=r"missing batch key 'observation.images.top'.*\(B, 3, 8, 8\)"):
        validate_batch(b, FEATURES)


def test_wrong_shape_names_expected_and_received():
    b = batch()
    b["observation.state"] = torch.randn(2, 7)
    with pytest.raises(ValueError, match=r"'observation.state': expected shape \(B, 5\), received \(2, 7\)"):
        validate_batch(b, FEATURES)


def test_wrong_dtype_is_named():
    b = batch()
    b["observation.state"] = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="observation.state.*floating-point.*torch.int64"):
        validate_batch(b, FEATURES)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_are_rejected(bad):
    b = batch()
    b["observation.state"][1, 2] = bad
    with pytest.raises(ValueError, match="'observation.state': contains 1 NaN/Inf"):
        validate_batch(b, FEATURES)


def test_chunk_longer_than_horizon_is_rejected():
    with pytest.raises(ValueError, match=r"'action': expected shape \(B, H<=4, 2\), received \(2, 6, 2\)"):
        validate_batch(batch(h=6), FEATURES, horizon=4)


def test_action_is_pad_must_match_action():
    b = batch()
    b[ACTION_IS_PAD] = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="action_is_pad.*bool tensor of shape \\(2, 4\\)"):
        validate_batch(b, FEATURES)


def test_inconsistent_batch_sizes_are_rejected():
    b = batch()
    b["observation.state"] = torch.randn(3, 5)
    with pytest.raises(ValueError, match="batch size 3 differs from 2"):
        validate_batch(b, FEATURES)


def test_task_must_be_a_list_of_strings():
    b = batch()
    b["task"] = "one string"
    with pytest.raises(ValueError, match="'task': expected a list of B strings"):
        validate_batch(b, FEATURES)


def test_observation_window_needs_n_obs_steps():
    b = batch()
    b["observation.state"] = torch.randn(2, 3, 5)
    b["observation.images.top"] = torch.rand(2, 3, 3, 8, 8)
    assert validate_batch(b, FEATURES, n_obs_steps=3) == 2
    with pytest.raises(ValueError, match=r"expected shape \(B, 2, 3, 8, 8\)"):
        validate_batch(b, FEATURES, n_obs_steps=2)


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 4),
    dims=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    t=st.integers(1, 3),
)
def test_any_matching_shape_validates(b, dims, t):
    feats = {"observation.state": PolicyFeature(FeatureType.STATE, tuple(dims))}
    shape = (b, t, *dims) if t > 1 else (b, *dims)
    assert validate_batch({"observation.state": torch.zeros(shape)}, feats, n_obs_steps=t) == b


def test_feature_parsing_errors_name_the_key():
    with pytest.raises(ValueError, match="feature 'x': unknown feature type 'PIXELS'"):
        parse_features({"x": {"type": "PIXELS", "shape": [3]}})
    assert PolicyFeature.from_dict({"type": "state", "shape": [2]}).to_dict() == {"type": "STATE", "shape": [2]}
    assert FEATURES[ACTION].type is FeatureType.ACTION
