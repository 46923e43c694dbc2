import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vla_core import ConfigError, PolicyConfig, TemporalEnsembler, VLAPolicy
from vla_core.errors import UnknownComponentError
from vla_core.testing import random_batch
from vla_test_components import FEATURES, policy_config, set_unit_stats


def make_policy(**overrides):
    torch.manual_seed(0)
    return set_unit_stats(VLAPolicy.from_config(policy_config(**overrides)))


def batch_for(policy, b=4, seed=0):
    return random_batch({**policy.input_features, **policy.output_features}, batch_size=b,
                        horizon=policy.head.horizon, n_obs_steps=policy.config.n_obs_steps,
                        generator=torch.Generator().manual_seed(seed))


def test_composition_fills_derived_fields():
    policy = make_policy()
    assert policy.config.backbone["image_keys"] == ["observation.images.top"]
    assert policy.config.backbone["state_dim"] == 3
    assert policy.config.head["action_dim"] == 2 and policy.config.head["context_dim"] == 16
    assert policy.projector is None


def test_contradicting_derived_field_is_an_error():
    with pytest.raises(ConfigError, match=r"head.action_dim: the features give 2 but the head spec says 5"):
        VLAPolicy.from_config(policy_config(head={"type": "test_mlp", "action_dim": 5}))


def test_projector_is_built_when_widths_differ():
    policy = make_policy(head={"type": "test_mlp", "context_dim": 24}, projector={"type": "mlp"})
    assert policy.projector.in_dim == 16 and policy.projector.out_dim == 24
    assert policy(batch_for(policy)).loss.isfinite()
    auto = make_policy(head={"type": "test_mlp", "context_dim": 8})
    assert type(auto.projector).__name__ == "LinearProjector"


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 6), st.integers(0, 2**16))
def test_linear_projector_maps_positions_so_sums_project_alike(in_dim, out_dim, tokens, seed):
    from vla_core import LinearProjector
    from vla_core.projectors import LinearProjectorConfig

    torch.manual_seed(seed)
    projector = LinearProjector(LinearProjectorConfig(in_dim=in_dim, out_dim=out_dim))
    x, pos = torch.randn(2, tokens, in_dim), torch.randn(1, tokens, in_dim)
    features, positions = projector(x, pos)
    torch.testing.assert_close(features + positions, projector(x + pos)[0])


def test_projector_settings_that_contradict_the_pair_are_errors():
    with pytest.raises(ConfigError, match="projector.in_dim: the backbone gives width 16"):
        make_policy(head={"type": "test_mlp", "context_dim": 24}, projector={"type": "linear", "in_dim": 8})
    with pytest.raises(ConfigError, match="projector.out_dim: head 'test_mlp' needs width 24"):
        make_policy(head={"type": "test_mlp", "context_dim": 24}, projector={"type": "linear", "out_dim": 12})


def test_unknown_component_and_field_errors():
    with pytest.raises(UnknownComponentError, match="Did you mean 'test_mlp'"):
        VLAPolicy.from_config(policy_config(head={"type": "test_mpl"}))
    with pytest.raises(ConfigError, match="unknown field 'hidden'.*hidden_dim"):
        VLAPolicy.from_config(policy_config(head={"type": "test_mlp", "hidden": 3}))
    with pytest.raises(ConfigError, match="unknown field 'n_action_step'"):
        VLAPolicy.from_config(policy_config(n_action_step=3))


def test_training_reduces_the_loss():
    policy = make_policy()
    batch = batch_for(policy, b=8)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        out = policy(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_prediction_is_in_robot_units():
    policy = make_policy()
    batch = batch_for(policy)
    nbatch = policy.normalizer.normalize_batch(batch)
    raw = policy.head.predict_action(policy.encode(nbatch), nbatch)
    stats = policy.normalizer.stats_of("action")
    torch.testing.assert_close(policy.predict_action_chunk(batch), raw * (stats["std"] + 1e-8) + stats["mean"])


def test_save_and_load_round_trip(tmp_path):
    policy = make_policy(head={"type": "test_mlp", "context_dim": 8})
    batch = batch_for(policy)
    policy.save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "config.json").read_text())["head"]["context_dim"] == 8
    loaded = VLAPolicy.from_pretrained(tmp_path / "p")
    torch.testing.assert_close(loaded.predict_action_chunk(batch), policy.predict_action_chunk(batch))
    assert torch.equal(loaded.normalizer.stats_of("action")["mean"], policy.normalizer.stats_of("action")["mean"])


def test_camera_order_survives_save_and_load(tmp_path):
    """Cameras not in alphabetical order keep their order (the order of the image tokens) through
    config.json; a sorted config.json reordered them and the reload failed."""
    cams = {"observation.images.wrist": {"type": "VISUAL", "shape": [3, 8, 8]},
            "observation.images.top": {"type": "VISUAL", "shape": [3, 8, 8]}}
    policy = make_policy(input_features={**cams, "observation.state": {"type": "STATE", "shape": [3]}})
    assert policy.config.backbone["image_keys"] == list(cams)
    policy.save_pretrained(tmp_path / "p")
    loaded = VLAPolicy.from_pretrained(tmp_path / "p")
    assert loaded.config.backbone["image_keys"] == list(cams)
    assert list(loaded.input_features)[:2] == list(cams)


def test_saved_policy_does_not_depend_on_its_initial_weight_files(tmp_path):
    from vla_core import save_safetensors

    donor = make_policy()
    save_safetensors(donor.backbone.state_dict(), tmp_path / "init.safetensors")
    policy = make_policy(backbone={"type": "test_linear", "pretrained_weights": str(tmp_path / "init.safetensors")})
    assert torch.equal(policy.backbone.block.lin.weight, donor.backbone.block.lin.weight)
    policy.save_pretrained(tmp_path / "p")
    (tmp_path / "init.safetensors").unlink()
    saved = json.loads((tmp_path / "p" / "config.json").read_text())
    assert saved["backbone"]["pretrained_weights"] is None
    loaded = VLAPolicy.from_pretrained(tmp_path / "p")
    assert torch.equal(loaded.backbone.block.lin.weight, donor.backbone.block.lin.weight)
    assert policy.config.backbone["pretrained_weights"] == str(tmp_path / "init.safetensors")  # unchanged


def test_from_pretrained_uses_the_hub_for_non_directories(tmp_path, monkeypatch):
    make_policy().save_pretrained(tmp_path / "snap")
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        return str(tmp_path / "snap")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    VLAPolicy.from_pretrained("someone/some-policy", revision="v1")
    assert calls == [("someone/some-policy", "v1", ("config.json", "model.safetensors"))]


def test_bad_inputs_raise_before_running():
    policy = make_policy()
    batch = batch_for(policy)
    missing = {k: v for k, v in batch.items() if k != "observation.images.top"}
    with pytest.raises(ValueError, match="missing batch key 'observation.images.top'"):
        policy.predict_action_chunk(missing)
    wrong = {**batch, "observation.state": torch.randn(4, 5)}
    with pytest.raises(ValueError, match=r"'observation.state': expected shape \(B, 3\), received \(4, 5\)"):
        policy(wrong)
    long = {**batch, "action": torch.randn(4, 6, 2), "action_is_pad": torch.zeros(4, 6, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"H<=4"):
        policy(long)
    with pytest.raises(ValueError, match="training needs the target chunk"):
        policy({k: v for k, v in batch.items() if k != "action"})
    with pytest.raises(ValueError, match=r"noise: expected shape \(4, 4, 2\)"):
        policy.predict_action_chunk(batch, noise=torch.zeros(4, 3, 2))


def test_freezing_by_flag_and_glob():
    policy = make_policy(freeze_backbone=True)
    assert not any(p.requires_grad for p in policy.backbone.parameters())
    assert all(p.requires_grad for p in policy.head.parameters())
    policy = make_policy(freeze=["head.net.0.*"])
    frozen = {n for n, p in policy.named_parameters() if not p.requires_grad}
    assert frozen == {"head.net.0.weight", "head.net.0.bias"}
    with pytest.raises(ConfigError, match="pattern 'head.nett.*' matches no parameter"):
        make_policy(freeze=["head.nett.*"])


def test_select_action_pops_the_queue_then_predicts_again():
    policy = make_policy(n_action_steps=2)
    policy.eval()
    batch = batch_for(policy, b=1)
    chunk = policy.predict_action_chunk(batch)
    calls = []
    original = policy.predict_action_chunk
    policy.predict_action_chunk = lambda b, **kw: calls.append(1) or original(b, **kw)
    a0, a1, a2 = (policy.select_action(batch) for _ in range(3))
    torch.testing.assert_close(a0, chunk[:, 0])
    torch.testing.assert_close(a1, chunk[:, 1])
    torch.testing.assert_close(a2, chunk[:, 0])
    assert len(calls) == 2
    policy.reset()
    policy.select_action(batch)
    assert len(calls) == 3


def test_n_action_steps_above_horizon_is_rejected():
    with pytest.raises(ConfigError, match="n_action_steps: expected <= the horizon 4, received 5"):
        make_policy(n_action_steps=5)
    with pytest.raises(ConfigError, match="n_action_steps must be 1"):
        make_policy(n_action_steps=2, temporal_ensemble_coeff=0.01)


@settings(max_examples=20, deadline=None)
@given(coeff=st.floats(-0.5, 0.5), horizon=st.integers(1, 6), steps=st.integers(1, 10), seed=st.integers(0, 1000))
def test_temporal_ensemble_matches_its_definition(coeff, horizon, steps, seed):
    g = torch.Generator().manual_seed(seed)
    chunks = [torch.randn(2, horizon, 3, generator=g, dtype=torch.float64) for _ in range(steps)]
    ens = TemporalEnsembler(coeff, horizon)
    for t, chunk in enumerate(chunks):
        got = ens.update(chunk)
        # every chunk predicted at step s <= t with t - s < horizon covers step t; the oldest gets weight exp(0)
        preds = [chunks[s][:, t - s] for s in range(max(0, t - horizon + 1), t + 1)]
        weights = torch.exp(-coeff * torch.arange(len(preds), dtype=torch.float64))
        want = sum(w * p for w, p in zip(weights, preds)) / weights.sum()
        torch.testing.assert_close(got, want)


def test_policy_with_temporal_ensembling_runs():
    policy = make_policy(n_action_steps=1, temporal_ensemble_coeff=0.01)
    batch = batch_for(policy, b=1)
    first = policy.select_action(batch)
    torch.testing.assert_close(first, policy.predict_action_chunk(batch)[:, 0])


def test_observation_history_is_stacked_for_multi_step_policies():
    policy = make_policy(n_obs_steps=2)
    single = random_batch(policy.input_features, batch_size=1)
    assert policy.select_action(single).shape == (1, 2)
    assert policy._obs_history["observation.state"].maxlen == 2


def test_fsdp_units_and_config_round_trip():
    policy = make_policy()
    assert {u.__name__ for u in policy.fsdp_units()} == {"TokenLayer"}
    assert PolicyConfig.from_dict(policy.config.to_dict()) == policy.config
    assert FEATURES["output_features"]["action"]["shape"] == [2]


def test_multi_step_policies_execute_from_the_current_step_by_default():
    policy = make_policy(n_obs_steps=2)  # training windows start at the oldest observed step
    batch = batch_for(policy, b=1)
    chunk = policy.predict_action_chunk(batch)
    assert policy.n_action_steps == 3
    torch.testing.assert_close(policy.select_action(batch), chunk[:, 1])
    torch.testing.assert_close(make_policy(n_obs_steps=2, action_start=0).select_action(batch), chunk[:, 0])
