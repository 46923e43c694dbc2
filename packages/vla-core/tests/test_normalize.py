import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_core import ConfigError, FeatureType, Normalizer, PolicyFeature

MODES = ["mean_std", "min_max", "quantile", "quantile10", "identity"]


def stats_for(shape, g, zero_spread=False):
    center = torch.randn(shape, generator=g) * 3
    spread = torch.zeros(shape) if zero_spread else torch.rand(shape, generator=g) * 2 + 0.1
    return {"mean": center, "std": spread, "min": center - spread, "max": center + spread,
            "q01": center - 0.9 * spread, "q99": center + 0.9 * spread,
            "q10": center - 0.5 * spread, "q90": center + 0.5 * spread}


@settings(max_examples=60, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    dims=st.lists(st.integers(1, 4), min_size=1, max_size=2),
    lead=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    seed=st.integers(0, 2**16),
    zero=st.booleans(),
)
def test_inverse_is_exact_for_random_stats_and_shapes(mode, dims, lead, seed, zero):
    g = torch.Generator().manual_seed(seed)
    feature = PolicyFeature(FeatureType.STATE, tuple(dims))
    norm = Normalizer({"observation.state": feature}, {"STATE": mode})
    if mode != "identity":
        norm.set_stats({"observation.state": stats_for(tuple(dims), g, zero)})
    x = torch.randn(*lead, *dims, generator=g, dtype=torch.float64) * 5
    y = norm.normalize("observation.state", x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(norm.unnormalize("observation.state", y), x, rtol=1e-9, atol=1e-9)


def test_formulas_match_the_documented_ones():
    feature = PolicyFeature(FeatureType.STATE, (2,))
    x = torch.tensor([[1.0, 4.0]])
    s = {"mean": torch.tensor([0.0, 2.0]), "std": torch.tensor([2.0, 4.0]), "min": torch.tensor([0.0, 0.0]),
         "max": torch.tensor([2.0, 8.0]), "q01": torch.tensor([0.5, 1.0]), "q99": torch.tensor([1.5, 5.0]),
         "q10": torch.tensor([0.0, 3.0]), "q90": torch.tensor([4.0, 7.0])}
    expected = {
        "mean_std": (x - s["mean"]) / (s["std"] + 1e-8),
        "min_max": torch.tensor([[0.0, 0.0]]),
        "quantile": torch.tensor([[0.0, 0.5]]),
        "quantile10": torch.tensor([[-0.5, -0.5]]),
    }
    for mode, want in expected.items():
        norm = Normalizer({"s": feature}, {"s": mode})
        norm.set_stats({"s": s})
        torch.testing.assert_close(norm.normalize("s", x), want)


def test_zero_variance_feature_stays_finite():
    norm = Normalizer({"s": PolicyFeature(FeatureType.STATE, (2,))}, {"s": "mean_std"})
    norm.set_stats({"s": {"mean": torch.tensor([1.0, 1.0]), "std": torch.tensor([0.0, 1.0])}})
    y = norm.normalize("s", torch.tensor([[3.0, 3.0]]))
    torch.testing.assert_close(y, torch.tensor([[2.0, 2.0]]))


def test_stats_are_buffers_in_the_state_dict_and_images_are_per_channel():
    feats = {"observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, 4, 4)),
             "observation.state": PolicyFeature(FeatureType.STATE, (2,))}
    norm = Normalizer(feats, {"VISUAL": "mean_std"})
    sd = norm.state_dict()
    assert sd["stats.observation__images__top.mean"].shape == (3, 1, 1)
    assert sd["stats.observation__state.std"].shape == (2,)
    norm.set_stats({"observation.images.top": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]},
                    "observation.state": {"mean": [0, 0], "std": [1, 1]}})
    other = Normalizer(feats, {"VISUAL": "mean_std"})
    other.load_state_dict(norm.state_dict())
    img = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(other.normalize("observation.images.top", img), norm.normalize("observation.images.top", img))


def test_unset_stats_raise_a_clear_error():
    norm = Normalizer({"s": PolicyFeature(FeatureType.STATE, (2,))})
    with pytest.raises(RuntimeError, match="normalization stats for 's' .* are not set"):
        norm.normalize("s", torch.zeros(1, 2))


def test_bad_stats_are_rejected_before_any_change():
    norm = Normalizer({"a": PolicyFeature(FeatureType.STATE, (2,)), "b": PolicyFeature(FeatureType.STATE, (2,))})
    good = {"mean": [0.0, 0.0], "std": [1.0, 1.0]}
    with pytest.raises(ValueError, match=r"'b'.std: expected 2 values"):
        norm.set_stats({"a": good, "b": {"mean": [0.0, 0.0], "std": [1.0, 1.0, 1.0]}})
    assert torch.isnan(norm.stats_of("a")["mean"]).all(), "a failed set_stats changed a buffer"
    with pytest.raises(ValueError, match="missing key 'b'"):
        norm.set_stats({"a": good})
    with pytest.raises(ValueError, match="NaN/Inf"):
        norm.set_stats({"a": good, "b": {"mean": [float("nan"), 0.0], "std": [1.0, 1.0]}})


def test_unknown_mode_or_key_is_a_config_error():
    feats = {"s": PolicyFeature(FeatureType.STATE, (2,))}
    with pytest.raises(ConfigError, match="expected one of"):
        Normalizer(feats, {"s": "zscore"})
    with pytest.raises(ConfigError, match="'t' is neither a feature key"):
        Normalizer(feats, {"t": "mean_std"})
