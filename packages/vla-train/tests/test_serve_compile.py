"""`vla serve --compile` / `vla eval --compile`: the served (evaluated) policy runs the compiled path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from serve_helpers import OBS_MAP, observation, reference_actions, tiny_policy
from vla_core import load_policy
from vla_train.serve import PolicyServer


class CountingBackend:
    """A ``torch.compile`` backend that runs each graph eagerly and counts the graphs it received."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.fixture
def policy_dir(tmp_path):
    directory = tmp_path / "policy"
    tiny_policy(directory)
    return directory


def test_served_policy_runs_the_compiled_path(policy_dir):
    torch.compiler.reset()
    reference = load_policy(policy_dir)
    backend = CountingBackend()
    with PolicyServer(load_policy(policy_dir).compile(backend=backend), obs_map=OBS_MAP, port=0) as srv:
        client = WebsocketClientPolicy("127.0.0.1", srv.port)
        assert client.get_server_metadata()["compiled"] is True
        for seed in range(3):
            obs = observation(seed)
            np.testing.assert_allclose(client.infer(obs)["actions"], reference_actions(reference, obs), atol=1e-5)
        client._ws.close()
    assert backend.graphs >= 1  # the server's predict_action_chunk went through torch.compile
    compiled = backend.graphs
    srv.policy.predict_action_chunk({"observation.images.top": torch.rand(1, 3, 8, 8),
                                     "observation.state": torch.randn(1, 3), "task": ["x"]})
    assert backend.graphs == compiled  # batch size 1 again: nothing recompiled
    torch.compiler.reset()


def test_from_path_compiles_with_the_mode(policy_dir):
    with pytest.warns(UserWarning, match="CUDA graphs need the policy on a CUDA device"):
        server = PolicyServer.from_path(policy_dir, device="cpu", compile_mode="reduce-overhead", port=0)
    assert server.policy.is_compiled and server.metadata["compiled"] is True
    assert not PolicyServer.from_path(policy_dir, device="cpu", port=0).policy.is_compiled


@pytest.mark.parametrize("argv,want", [([], None), (["--compile"], "default"),
                                       (["--compile", "reduce-overhead"], "reduce-overhead")])
def test_serve_and_eval_pass_compile_through(monkeypatch, argv, want):
    import vla_train.eval
    import vla_train.serve
    from vla_train.cli import main

    seen = {}
    monkeypatch.setattr(vla_train.serve, "serve", lambda path, **kw: seen.setdefault("serve", kw))
    monkeypatch.setattr(vla_train.eval, "evaluate",
                        lambda path, **kw: seen.setdefault("eval", kw) and {"policy": path, "success_rate": 1.0})
    assert main(["serve", "some/run", *argv]) == 0
    assert main(["eval", "some/run", *argv]) == 0
    assert seen["serve"]["compile_mode"] == want and seen["eval"]["compile_mode"] == want


def test_compile_mode_choices_are_checked(capsys):
    from vla_train.cli import main

    with pytest.raises(SystemExit) as done:
        main(["serve", "some/run", "--compile", "fastest"])
    assert done.value.code == 2 and "invalid choice: 'fastest'" in capsys.readouterr().err
