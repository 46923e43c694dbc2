"""Real-time chunking (vla_core.rtc) through ``predict_action_chunk`` for both flow heads.

With a prefix (the previous chunk's unexecuted actions) and a delay d, the first d actions of the new
chunk equal the prefix's exactly, the overlap is pulled toward the prefix, bad prefixes and delays are
refused by name, and heads that do not sample by flow matching refuse RTC.
"""

from __future__ import annotations

import math

import pytest
import torch
import vla_test_components as tc
from hypothesis import given, settings
from hypothesis import strategies as st
from vla_core import FlowActionHead, RTCGuide, VLAPolicy, build_policy
from vla_core.rtc import DEFAULT_MAX_GUIDANCE_WEIGHT, guidance_weight, prefix_weights
from vla_core.testing import check_rtc, policy_batch, set_random_stats, tiny_policy_config

FLOW_PAIRS = [("paligemma", "pi0_flow"), ("paligemma", "pi05_flow"), ("test_linear", "dit_flow_matching")]


@pytest.fixture(scope="module", params=FLOW_PAIRS, ids=[h for _, h in FLOW_PAIRS])
def flow_policy(request, tmp_path_factory):
    backbone, head = request.param
    torch.manual_seed(0)
    config = tiny_policy_config(backbone, head, tmp_path_factory.mktemp(head))
    if head in ("pi0_flow", "pi05_flow"):
        config["head"]["horizon"] = 8
    else:
        config["head"]["horizon"] = 8
        config["head"]["max_seq_len"] = 16
    return set_random_stats(VLAPolicy(config)).eval()


def _noise(policy, bsz, seed):
    return torch.randn(bsz, policy.horizon, policy.action_dim, generator=torch.Generator().manual_seed(seed))


def test_flow_heads_implement_the_flow_interface(flow_policy):
    assert isinstance(flow_policy.head, FlowActionHead) and flow_policy.supports_rtc


@pytest.mark.parametrize("delay", [0, 1, 3, 5])
def test_first_delay_actions_equal_the_previous_chunk(flow_policy, delay):
    batch = policy_batch(flow_policy, 2, seed=1)
    previous = flow_policy.predict_action_chunk(batch, noise=_noise(flow_policy, 2, 0))
    prefix = previous[:, 3:]  # 3 actions executed since the previous chunk started: H' = H - 3 = 5
    batch2 = policy_batch(flow_policy, 2, seed=2)
    new = flow_policy.predict_action_chunk(batch2, noise=_noise(flow_policy, 2, 1), prefix=prefix, delay=delay)
    assert new.shape == previous.shape and torch.isfinite(new).all()
    assert torch.equal(new[:, :delay], prefix[:, :delay])
    # one prefix (H', A) for the whole batch works too
    one = flow_policy.predict_action_chunk(batch2, noise=_noise(flow_policy, 2, 1), prefix=prefix[0], delay=delay)
    assert torch.equal(one[:, :delay], prefix[0, :delay].expand(2, -1, -1))


def test_guidance_pulls_the_overlap_toward_the_prefix(flow_policy):
    """Against the same noise without RTC, the guided chunk is closer to the prefix over the soft region."""
    batch = policy_batch(flow_policy, 4, seed=3)
    noise = _noise(flow_policy, 4, 5)
    prefix = flow_policy.predict_action_chunk(batch, noise=_noise(flow_policy, 4, 6))[:, 2:]
    free = flow_policy.predict_action_chunk(batch, noise=noise)
    guided = flow_policy.predict_action_chunk(batch, noise=noise, prefix=prefix, delay=2)
    soft = slice(2, prefix.shape[1])
    gap_free = (free[:, soft] - prefix[:, soft]).abs().mean()
    gap_guided = (guided[:, soft] - prefix[:, soft]).abs().mean()
    assert gap_guided < gap_free, (gap_guided, gap_free)
    # beyond the prefix nothing is guided toward, but the chunk stays finite
    assert torch.isfinite(guided).all()


def test_rtc_without_prefix_is_plain_sampling(flow_policy):
    batch = policy_batch(flow_policy, 2, seed=4)
    noise = _noise(flow_policy, 2, 7)
    torch.testing.assert_close(flow_policy.predict_action_chunk(batch, noise=noise, prefix=None),
                               flow_policy.predict_action_chunk(batch, noise=noise), rtol=0, atol=0)


def test_contract_rtc_check(flow_policy):
    check_rtc(flow_policy, policy_batch(flow_policy, 2), delay=2)


@pytest.mark.parametrize("prefix_shape, delay, needles", [
    ((2, 5, 4), 1, ["prefix", "(B, H', 3)", "(2, 5, 4)"]),
    ((2, 9, 3), 1, ["prefix", "1 <= H' <= the horizon 8", "(2, 9, 3)"]),
    ((2, 0, 3), 0, ["prefix", "(2, 0, 3)"]),
    ((3, 5, 3), 1, ["prefix", "B = 2", "(3, 5, 3)"]),
    ((5,), 1, ["prefix", "(B, H', A)", "(5,)"]),
    ((2, 5, 3), 6, ["delay", "[0, H' = 5]", "6"]),
    ((2, 5, 3), -1, ["delay", "-1"]),
    ((2, 5, 3), 1.0, ["delay", "1.0"]),
    (None, 2, ["delay", "needs a prefix", "prefix=None"]),
])
def test_bad_prefix_or_delay_is_refused_by_name(flow_policy, prefix_shape, delay, needles):
    batch = policy_batch(flow_policy, 2)
    prefix = None if prefix_shape is None else torch.zeros(prefix_shape)
    with pytest.raises(ValueError) as err:
        flow_policy.predict_action_chunk(batch, prefix=prefix, delay=delay)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_nonfinite_prefix_is_refused(flow_policy):
    prefix = torch.zeros(2, 4, 3)
    prefix[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"prefix: expected finite actions, received 1 NaN/Inf"):
        flow_policy.predict_action_chunk(policy_batch(flow_policy, 2), prefix=prefix, delay=1)


@pytest.mark.parametrize("head", ["test_mlp", "act_vae", "unet_diffusion"])
def test_non_flow_heads_refuse_rtc(head, tmp_path):
    if head == "test_mlp":
        policy = tc.set_unit_stats(build_policy(tc.policy_config()))
        batch = {"observation.images.top": torch.rand(1, 3, 8, 8), "observation.state": torch.randn(1, 3)}
    else:
        backbone = "resnet_spatial_softmax" if head == "unet_diffusion" else "resnet_act"
        policy = set_random_stats(VLAPolicy(tiny_policy_config(backbone, head, tmp_path)))
        batch = policy_batch(policy, 1)
    assert not policy.supports_rtc
    with pytest.raises(ValueError, match=rf"real-time chunking needs a flow-matching head.*head '{head}' is not one"):
        policy.eval().predict_action_chunk(batch, prefix=torch.zeros(1, 2, policy.action_dim), delay=1)


# ----------------------------------------------------------------- the guide itself
@settings(max_examples=60, deadline=None)
@given(horizon=st.integers(1, 20), data=st.data())
def test_prefix_weights_shape_the_overlap(horizon, data):
    end = data.draw(st.integers(0, horizon))
    delay = data.draw(st.integers(0, end))
    w = prefix_weights(delay, end, horizon)
    assert w.shape == (horizon,)
    assert torch.equal(w[:delay], torch.ones(delay)) and torch.equal(w[end:], torch.zeros(horizon - end))
    soft = w[delay:end]
    assert ((soft > 0) & (soft < 1)).all() and (soft[1:] < soft[:-1]).all()  # strictly decaying, exclusive ends


def test_prefix_weights_are_the_papers_exp_schedule():
    lin = torch.tensor([0.75, 0.5, 0.25])
    want = torch.cat([torch.ones(2), lin * torch.expm1(lin) / (math.e - 1), torch.zeros(1)])
    torch.testing.assert_close(prefix_weights(2, 5, 6), want)


def test_guidance_weight_is_clipped():
    assert guidance_weight(0.0, DEFAULT_MAX_GUIDANCE_WEIGHT) == 5.0
    assert guidance_weight(0.1, 5.0) == 5.0  # (0.01 + 0.81) / 0.09 = 9.1 -> clipped
    assert guidance_weight(0.5, 5.0) == pytest.approx(2.0)
    assert guidance_weight(0.9, 5.0) == 5.0


def test_guide_on_a_linear_field_hits_the_prefix():
    """A field that forgets x (v = a - x at tau = 0): one guided step lands x1 on the prefix over the frozen rows."""
    prefix = torch.randn(1, 3, 2)
    guide = RTCGuide(prefix, 2, 4, max_guidance_weight=1.0)
    x = torch.randn(1, 4, 5)
    anchor = torch.randn(1, 4, 5)
    v = guide.guided_velocity(x, 0.0, lambda y: anchor - y)
    # x1 = x + v(x) = anchor, J = d x1 / d x = 0: no correction possible
    torch.testing.assert_close(v, anchor - x)
    v = guide.guided_velocity(x, 0.0, lambda y: anchor)  # x1 = x + anchor, J = I: correction = weights * error
    x1 = x + anchor
    w = guide.weights[:, None]
    torch.testing.assert_close(v[0, :3, :2], anchor[0, :3, :2] + w[:3] * (prefix[0] - x1[0, :3, :2]))
    torch.testing.assert_close(v[0, :, 2:], anchor[0, :, 2:])  # padded dims are not guided
    torch.testing.assert_close(guide.freeze(x1)[0, :2, :2], prefix[0, :2])


def test_guide_refuses_a_bad_execution_horizon():
    with pytest.raises(ValueError, match=r"execution_horizon: expected an int in \[delay 2, prefix length 3\]"):
        RTCGuide(torch.zeros(1, 3, 2), 2, 4, execution_horizon=1)
    with pytest.raises(ValueError, match="max_guidance_weight: expected > 0"):
        RTCGuide(torch.zeros(1, 3, 2), 2, 4, max_guidance_weight=0.0)


def test_pi0_field_reproduces_pi0_euler_bit_for_bit(tmp_path):
    """The pi0 head's field (tau = 1 - t, v negated) integrates to exactly pi0's own Euler from t = 1 to 0."""
    from vla_heads.pi0_flow.flow import euler_sample

    torch.manual_seed(0)
    policy = set_random_stats(VLAPolicy(tiny_policy_config("paligemma", "pi0_flow", tmp_path))).eval()
    head = policy.head
    nbatch = policy.normalizer.normalize_batch(policy.prepare(policy_batch(policy, 2))[0])
    with torch.no_grad():
        context = policy.encode(nbatch)
        field = head.flow_field(context, nbatch, noise=_noise(policy, 2, 0), generator=None)
        kv, suffix = head.prefix_kv(context), head.suffix_inputs(context)
        state_tok = head.state_token(nbatch, suffix[0].dtype)
        want = euler_sample(lambda x, t: head.velocity(x, t, state_tok, kv, suffix), field.noise, field.steps)
        assert torch.equal(field.integrate(), want)



def test_pi05_field_reproduces_pi05_euler_bit_for_bit(tmp_path):
    """The shared ExpertFlowHead field gives pi0.5 (no state token, adaptive norms) its own Euler exactly too."""
    from vla_heads.pi0_flow.flow import euler_sample

    torch.manual_seed(0)
    policy = set_random_stats(VLAPolicy(tiny_policy_config("paligemma", "pi05_flow", tmp_path))).eval()
    head = policy.head
    with torch.no_grad():  # LeRobot's zero init leaves time unused; give the adaptive norms an effect
        for name, p in head.named_parameters():
            if ".dense." in name:
                p.normal_(0.0, 0.05)
    nbatch = policy.normalizer.normalize_batch(policy.prepare(policy_batch(policy, 2))[0])
    with torch.no_grad():
        context = policy.encode(nbatch)
        field = head.flow_field(context, nbatch, noise=_noise(policy, 2, 0), generator=None)
        kv, suffix = head.prefix_kv(context), head.suffix_inputs(context)
        fixed = head.fixed_inputs(nbatch, suffix[0].dtype)
        want = euler_sample(lambda x, t: head.velocity(x, t, fixed, kv, suffix), field.noise, field.steps)
        assert torch.equal(field.integrate(), want)
        assert torch.equal(head.predict_action(context, nbatch, noise=_noise(policy, 2, 0)), want[..., : head.action_dim])

@pytest.mark.slow
@pytest.mark.parametrize("backbone,head", FLOW_PAIRS, ids=[h for _, h in FLOW_PAIRS])
def test_compiled_policy_keeps_rtc(backbone, head, tmp_path):
    """``Policy.compile`` and RTC together: the compiled sampler takes the guide and gives eager's chunk."""
    torch.manual_seed(0)
    config = tiny_policy_config(backbone, head, tmp_path)
    config["head"]["horizon"] = 8
    if head == "dit_flow_matching":
        config["head"]["max_seq_len"] = 16
    policy = set_random_stats(VLAPolicy(config)).eval()
    batch = policy_batch(policy, 2, seed=1)
    prefix = policy.predict_action_chunk(batch, noise=_noise(policy, 2, 0))[:, 3:]
    eager = policy.predict_action_chunk(batch, noise=_noise(policy, 2, 1), prefix=prefix, delay=2)
    policy.compile(backend="aot_eager")
    compiled = policy.predict_action_chunk(batch, noise=_noise(policy, 2, 1), prefix=prefix, delay=2)
    assert torch.equal(compiled[:, :2], prefix[:, :2])
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
