"""The policy boundary: every entry point checks (and converts) its batch before any state changes."""

import pytest
import torch
from vla_core import ConfigError, VLAPolicy
from vla_core.testing import random_batch
from vla_test_components import policy_config, set_unit_stats

CAM, STATE = "observation.images.top", "observation.state"


def make_policy(**overrides):
    torch.manual_seed(0)
    return set_unit_stats(VLAPolicy.from_config(policy_config(**overrides))).eval()


def batch_for(policy, b=2, seed=0, **kw):
    return random_batch({**policy.input_features, **policy.output_features}, batch_size=b,
                        horizon=policy.horizon, n_obs_steps=kw.get("n_obs_steps", policy.config.n_obs_steps),
                        generator=torch.Generator().manual_seed(seed))


def observation(policy, seed, b=1):
    return random_batch(policy.input_features, batch_size=b, generator=torch.Generator().manual_seed(seed))


def snapshot(policy):
    return {k: v.clone() for k, v in policy.state_dict().items()}


# ------------------------------------------------------------------------------------------- dtypes
def test_other_float_dtypes_are_cast_to_the_compute_dtype():
    policy = make_policy().train()
    batch = batch_for(policy)
    wide = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in batch.items()}
    assert policy.compute_dtype == torch.float32
    torch.testing.assert_close(policy(wide).loss, policy(batch).loss, rtol=0, atol=0)  # float64 action too
    half = {**batch, CAM: batch[CAM].half(), STATE: batch[STATE].bfloat16()}
    assert policy.predict_action_chunk(half).dtype == torch.float32


def test_a_bf16_policy_takes_float32_observations():
    policy = make_policy().to(torch.bfloat16)
    assert policy.compute_dtype == torch.bfloat16
    batch = batch_for(policy)
    chunk = policy.predict_action_chunk(batch)
    cast = {k: v.bfloat16() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in batch.items()}
    assert chunk.dtype == torch.float32 and torch.equal(chunk, policy.predict_action_chunk(cast))
    assert policy.select_action(observation(policy, 1)).dtype == torch.float32


def test_normalization_stats_stay_float32_and_exact_when_the_policy_is_cast():
    policy = make_policy()
    before = {k: v.clone() for k, v in policy.normalizer.state_dict().items()}
    for cast in (lambda p: p.to(torch.bfloat16), lambda p: p.half(), lambda p: p.set_dtype("bf16")):
        cast(policy)
        for key, value in policy.normalizer.state_dict().items():
            assert value.dtype == torch.float32 and torch.equal(value, before[key]), key
    assert {p.dtype for p in policy.parameters()} == {torch.bfloat16}


def test_compute_dtype_follows_most_parameter_elements():
    policy = make_policy().to(torch.bfloat16)
    small = min(policy.parameters(), key=lambda p: p.numel())
    small.data = small.data.float()  # e.g. an fp32 adapter on a bf16 base
    assert policy.compute_dtype == torch.bfloat16
    policy.float()
    assert policy.compute_dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bfloat16", "bf16", "torch.bfloat16"])
def test_from_pretrained_in_bf16(dtype, tmp_path):
    policy = make_policy()
    batch = batch_for(policy)
    policy.save_pretrained(tmp_path)
    loaded = VLAPolicy.from_pretrained(tmp_path, dtype=dtype)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert {b.dtype for b in loaded.normalizer.buffers()} == {torch.float32}
    weights = {k: v for k, v in policy.state_dict().items() if not k.startswith("normalizer.")}
    for key, value in weights.items():  # the checkpoint's fp32 values, rounded once to bf16
        assert torch.equal(loaded.state_dict()[key], value.to(torch.bfloat16)), key
    chunk = loaded.predict_action_chunk(batch)  # float32 observations
    assert chunk.dtype == torch.float32
    torch.testing.assert_close(chunk, policy.predict_action_chunk(batch), rtol=0.05, atol=0.05)


def test_from_pretrained_refuses_an_unknown_dtype(tmp_path):
    make_policy().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"from_pretrained\(dtype\): expected one of .*bfloat16.*received 'int8'"):
        VLAPolicy.from_pretrained(tmp_path, dtype="int8")


def test_uint8_images_become_floats_in_0_1():
    policy = make_policy()
    batch = batch_for(policy)
    as_bytes = (batch[CAM] * 255).round().to(torch.uint8)
    expected = policy.predict_action_chunk({**batch, CAM: as_bytes.float() / 255})
    torch.testing.assert_close(policy.predict_action_chunk({**batch, CAM: as_bytes}), expected, rtol=0, atol=0)


@pytest.mark.parametrize("key,value,match", [
    (STATE, torch.ones(2, 3, dtype=torch.long), "'observation.state': expected a floating-point tensor, received dtype torch.int64"),
    (CAM, torch.zeros(2, 3, 8, 8, dtype=torch.bool), r"'observation.images.top': expected a floating-point tensor in \[0, 1\] or uint8, received dtype torch.bool"),
    (CAM, torch.full((2, 3, 8, 8), 200.0), r"'observation.images.top': expected image values in \[0, 1\].*received values in \[200, 200\]"),
    (CAM, torch.full((2, 3, 8, 8), -0.5), r"'observation.images.top': expected image values in \[0, 1\].*received values in \[-0.5, -0.5\]"),
    (CAM, torch.full((2, 3, 8, 8), float("nan")), "'observation.images.top': contains 384 NaN/Inf"),
    (STATE, torch.tensor([[0.0, float("inf"), 0.0]] * 2), "'observation.state': contains 2 NaN/Inf"),
    ("action", torch.full((2, 4, 2), float("nan")), "'action': contains 16 NaN/Inf"),
    ("observation.images.side", torch.rand(2, 3, 8, 8), r"'observation.images.side' is not a declared input feature \(declared: \['observation.images.top', 'observation.state'\]\)"),
    ("observation.state_2", torch.rand(2, 3), "'observation.state_2' is not a declared input feature"),
])
def test_bad_inputs_are_refused_by_name_before_anything_runs(key, value, match):
    policy = make_policy().train()
    before = snapshot(policy)
    batch = {**batch_for(policy), key: value}
    with pytest.raises(ValueError, match=match):
        policy(batch)
    if key != "action":
        with pytest.raises(ValueError, match=match):
            policy.predict_action_chunk(batch)
    assert all(torch.equal(v, before[k]) for k, v in policy.state_dict().items())


def test_undeclared_types_and_padding_masks_pass_through():
    policy = make_policy()
    batch = {**batch_for(policy), "observation.environment_state": torch.randn(2, 5),  # no ENV feature declared
             "observation.state_is_pad": torch.zeros(2, 1, dtype=torch.bool), "episode_index": torch.arange(2)}
    assert policy.predict_action_chunk(batch).shape == (2, 4, 2)


def test_an_empty_batch_is_refused_not_a_nan_loss():
    policy = make_policy().train()
    batch = batch_for(policy, b=2)
    empty = {k: v[:0] for k, v in batch.items()}
    with pytest.raises(ValueError, match=r"empty batch.*B >= 1"):
        policy(empty)
    with pytest.raises(ValueError, match="empty batch"):
        policy.select_action({k: v[:0] for k, v in observation(policy, 0).items()})


def test_the_callers_batch_is_not_modified():
    policy = make_policy()
    batch = {**batch_for(policy), CAM: (batch_for(policy)[CAM] * 255).to(torch.uint8)}
    kept = dict(batch)
    policy.predict_action_chunk(batch)
    assert batch.keys() == kept.keys() and all(batch[k] is kept[k] for k in batch)
    assert batch[CAM].dtype == torch.uint8


# -------------------------------------------------------------------------------- select_action
BAD_OBSERVATIONS = {
    "nan state": lambda o: {**o, STATE: torch.full_like(o[STATE], float("nan"))},
    "missing camera": lambda o: {k: v for k, v in o.items() if k != CAM},
    "wrong width": lambda o: {**o, CAM: torch.rand(1, 3, 8, 9)},
    "0..255 floats": lambda o: {**o, CAM: o[CAM] * 255},
    "extra camera": lambda o: {**o, "observation.images.side": o[CAM]},
    "integer state": lambda o: {**o, STATE: o[STATE].long()},
}


@pytest.mark.parametrize("bad", sorted(BAD_OBSERVATIONS))
def test_a_rejected_observation_leaves_the_history_as_a_fresh_policys(bad):
    policy, fresh = make_policy(n_obs_steps=2, n_action_steps=1), make_policy(n_obs_steps=2, n_action_steps=1)
    good = [observation(policy, s) for s in (1, 2, 3)]
    policy.select_action(good[0])
    with pytest.raises(ValueError):
        policy.select_action(BAD_OBSERVATIONS[bad](good[1]))
    got = [policy.select_action(good[1]), policy.select_action(good[2])]
    fresh.select_action(good[0])
    want = [fresh.select_action(good[1]), fresh.select_action(good[2])]
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert policy._obs_history.keys() == fresh._obs_history.keys()
    for key, history in policy._obs_history.items():
        assert all(torch.equal(a, b) for a, b in zip(history, fresh._obs_history[key]))


@pytest.mark.parametrize("bad", sorted(BAD_OBSERVATIONS))
def test_queued_actions_are_not_consumed_by_a_rejected_observation(bad):
    policy = make_policy(n_action_steps=3)
    obs = observation(policy, 1)
    chunk = policy.predict_action_chunk(obs)
    assert torch.equal(policy.select_action(obs), chunk[:, 0])
    assert policy.queued_actions == 2
    with pytest.raises(ValueError):
        policy.select_action(BAD_OBSERVATIONS[bad](obs))
    assert policy.queued_actions == 2
    assert torch.equal(policy.select_action(obs), chunk[:, 1])


def test_a_rejected_observation_leaves_the_temporal_ensemble_unchanged():
    policy = make_policy(n_action_steps=1, temporal_ensemble_coeff=0.01)
    fresh = make_policy(n_action_steps=1, temporal_ensemble_coeff=0.01)
    a, b = observation(policy, 1), observation(policy, 2)
    policy.select_action(a)
    with pytest.raises(ValueError, match="NaN"):
        policy.select_action({**b, STATE: b[STATE] * float("nan")})
    fresh.select_action(a)
    assert torch.equal(policy.select_action(b), fresh.select_action(b))


def test_reset_after_a_rejected_observation_starts_afresh():
    policy, fresh = make_policy(n_obs_steps=2), make_policy(n_obs_steps=2)
    obs = observation(policy, 1)
    policy.select_action(observation(policy, 5))
    with pytest.raises(ValueError):
        policy.select_action({**obs, CAM: obs[CAM] - 1})
    policy.reset()
    assert policy.queued_actions == 0 and not policy._obs_history
    assert torch.equal(policy.select_action(obs), fresh.select_action(obs))
    policy.reset()
    policy.reset()  # idempotent, and fine before any call
    make_policy().reset()


def test_select_action_takes_uint8_and_float64_observations():
    policy, fresh = make_policy(n_obs_steps=2), make_policy(n_obs_steps=2)
    obs = observation(policy, 1)
    raw = {**obs, CAM: (obs[CAM] * 255).round().to(torch.uint8), STATE: obs[STATE].double()}
    expected = fresh.select_action({**obs, CAM: raw[CAM].float() / 255})
    assert torch.equal(policy.select_action(raw), expected)
    assert policy._obs_history[CAM][0].dtype == torch.float32  # the history holds converted observations
