"""``Policy.compile``: the compiled inference path, its options, and the checks that catch recompiles.

The tiny test policy is compiled with a counting backend (a public ``torch.compile`` custom backend that
runs the captured graph as is, and counts the graphs Dynamo hands it): compiles are counted, not timed.
The inductor backend is exercised on every registered pair by the contract suite (tests/test_contract.py).
"""

import pytest
import torch
from vla_core import COMPILE_MODES, ConfigError, VLAPolicy
from vla_core.testing import check_compiled_inference, random_batch
from vla_test_components import policy_config, set_unit_stats


class CountingBackend:
    """A ``torch.compile`` backend that runs each graph eagerly and counts how many it received."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def make_policy():
    torch.manual_seed(0)
    return set_unit_stats(VLAPolicy.from_config(policy_config())).eval()


def batch_for(policy, b=2, seed=0):
    return random_batch(dict(policy.input_features), batch_size=b, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def fresh_compile_caches():
    torch.compiler.reset()
    yield
    torch.compiler.reset()


def test_compiled_chunks_equal_eager_and_same_shapes_never_recompile():
    policy = make_policy()
    batches = [batch_for(policy, seed=s) for s in range(3)]
    expected = [policy.predict_action_chunk(b) for b in batches]
    backend = CountingBackend()
    assert not policy.is_compiled
    assert policy.compile(backend=backend) is policy and policy.is_compiled
    for batch, want in zip(batches, expected):
        torch.testing.assert_close(policy.predict_action_chunk(batch), want, rtol=0, atol=0)
    compiled = backend.graphs
    assert compiled >= 1
    for batch in batches:  # same shapes: nothing new is compiled
        policy.predict_action_chunk(batch)
    assert backend.graphs == compiled
    policy.predict_action_chunk(batch_for(policy, b=3))  # a new batch size compiles (static shapes)
    assert backend.graphs > compiled


def test_fail_on_recompile_stance_catches_a_new_shape():
    """What check_compiled_inference relies on: a recompile under the stance raises."""
    policy = make_policy().compile(backend="eager")
    policy.predict_action_chunk(batch_for(policy))
    with torch.compiler.set_stance("fail_on_recompile"):
        policy.predict_action_chunk(batch_for(policy, seed=1))
        with pytest.raises(Exception, match="(?i)recompil"):
            policy.predict_action_chunk(batch_for(policy, b=5))


def test_select_action_runs_the_compiled_path():
    policy = make_policy()
    backend = CountingBackend()
    policy.compile(backend=backend)
    obs = batch_for(policy, b=1)
    policy.select_action(obs)
    assert backend.graphs >= 1


def test_contract_check_passes_on_the_test_policy():
    policy = make_policy()
    check_compiled_inference(policy, batch_for(policy), backend="aot_eager")
    assert policy.is_compiled


def test_cuda_graph_modes_fall_back_with_a_warning_off_cuda():
    policy = make_policy()
    with pytest.warns(UserWarning, match=r"mode='reduce-overhead'.*CUDA graphs need the policy on a CUDA device.*"
                                         r"mode='default'"):
        policy.compile("reduce-overhead", backend="inductor")
    assert policy.is_compiled and "reduce-overhead" in COMPILE_MODES
    with pytest.warns(UserWarning, match="mode='max-autotune-no-cudagraphs'"):
        policy.compile("max-autotune")


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"mode": "fastest"}, r"mode expected one of \['default', 'reduce-overhead'.*received 'fastest'"),
        ({"dtype": torch.int8}, r"dtype expected one of .*bfloat16.*received torch.int8"),
        ({"backend": "no-such-backend"}, r"backend expected a callable or one of .*received 'no-such-backend'"),
        ({"mode": "reduce-overhead", "backend": "eager"}, r"applies to the 'inductor' backend only"),
    ],
)
def test_bad_arguments_are_refused_before_anything_changes(kwargs, needle):
    policy = make_policy()
    with pytest.raises(ConfigError, match=needle):
        policy.compile(**kwargs)
    assert not policy.is_compiled
    assert {p.dtype for p in policy.parameters()} == {torch.float32}


def test_bf16_casts_weights_keeps_float32_stats_and_returns_float32():
    policy = make_policy()
    batch = batch_for(policy)
    want = policy.predict_action_chunk(batch)
    stats = {k: v.clone() for k, v in policy.normalizer.state_dict().items()}
    policy.compile(backend="eager", dtype=torch.bfloat16)
    assert {p.dtype for p in policy.parameters()} == {torch.bfloat16}
    assert policy.compute_dtype == torch.bfloat16
    for key, value in policy.normalizer.state_dict().items():
        torch.testing.assert_close(value, stats[key], rtol=0, atol=0)
    got = policy.predict_action_chunk(batch)
    assert got.dtype == torch.float32
    assert not torch.equal(got, want)  # it really ran in bf16 ...
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)  # ... to bf16's precision
    policy.compile(backend="eager")  # compiling again keeps the bf16 weights, their autocast and float32 out
    again = policy.predict_action_chunk(batch)
    assert again.dtype == torch.float32
    torch.testing.assert_close(again, got, rtol=0, atol=0)


def test_fullgraph_captures_the_whole_sampling_path_in_one_graph():
    policy = make_policy()
    batch = batch_for(policy)
    want = policy.predict_action_chunk(batch)
    backend = CountingBackend()
    policy.compile(backend=backend, fullgraph=True)
    torch.testing.assert_close(policy.predict_action_chunk(batch), want, rtol=0, atol=0)
    assert backend.graphs == 1
