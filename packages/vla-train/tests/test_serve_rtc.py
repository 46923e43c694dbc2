"""`vla serve` with real-time chunking: the optional ``__rtc__`` request key, spoken with openpi-client.

A plain openpi request still gets a plain chunk; a request carrying ``{"__rtc__": {"prefix": (H', A),
"delay": d}}`` gets a chunk whose first d actions are the prefix's exactly; bad ``__rtc__`` maps get
errors naming the key and the connection keeps serving; a policy without a flow head refuses RTC.
"""

from __future__ import annotations

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from serve_helpers import OBS_MAP, observation, tiny_policy
from vla_core import load_policy
from vla_heads.dit_flow_matching import DiTFlowMatchingHead
from vla_train.serve import PolicyServer, parse_rtc
from vla_train.serve.observations import ObservationError

HORIZON, ACTION_DIM = 4, 2


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("serve-rtc")
    head = {"type": "dit_flow_matching", **DiTFlowMatchingHead.tiny_config(directory)}
    tiny_policy(directory / "policy", head=head)
    return directory / "policy"


@pytest.fixture(scope="module")
def server(flow_dir):
    with PolicyServer(load_policy(flow_dir), obs_map=OBS_MAP, port=0) as srv:
        yield srv


@pytest.fixture
def client(server):
    c = WebsocketClientPolicy("127.0.0.1", server.port)
    yield c
    c._ws.close()


def test_metadata_advertises_rtc(client, tmp_path):
    assert client.get_server_metadata()["rtc"] is True
    with PolicyServer(tiny_policy(tmp_path / "mlp"), obs_map=OBS_MAP, port=0) as srv:
        assert WebsocketClientPolicy("127.0.0.1", srv.port).get_server_metadata()["rtc"] is False


@pytest.mark.parametrize("delay", [0, 1, 3])
def test_rtc_reply_starts_with_the_prefix(client, delay):
    first = client.infer(observation(0))["actions"]  # a plain openpi request
    assert first.shape == (HORIZON, ACTION_DIM) and np.isfinite(first).all()
    prefix = first[1:]  # one action executed since the chunk started; H' = 3
    reply = client.infer({**observation(1), "__rtc__": {"prefix": prefix, "delay": delay}})["actions"]
    assert reply.shape == (HORIZON, ACTION_DIM) and np.isfinite(reply).all()
    np.testing.assert_array_equal(reply[:delay], prefix[:delay])
    # a list prefix and a numpy integer delay are accepted too
    again = client.infer({**observation(1), "__rtc__": {"prefix": prefix.tolist(), "delay": np.int64(delay)}})
    np.testing.assert_array_equal(again["actions"][:delay], prefix[:delay])


@pytest.mark.parametrize("rtc, needles", [
    ({"prefix": np.zeros((3, 5), np.float32), "delay": 1}, ["'__rtc__.prefix'", "(H', 2)", "(3, 5)"]),
    ({"prefix": np.zeros((5, 2), np.float32), "delay": 1}, ["'__rtc__.prefix'", "1 <= H' <= 4", "(5, 2)"]),
    ({"prefix": np.zeros((0, 2), np.float32), "delay": 0}, ["'__rtc__.prefix'", "(0, 2)"]),
    ({"prefix": np.full((3, 2), np.nan, np.float32), "delay": 1}, ["'__rtc__.prefix'", "finite", "6 NaN/Inf"]),
    ({"prefix": np.zeros((3, 2), np.float32), "delay": 4}, ["'__rtc__.delay'", "[0, H' = 3]", "4"]),
    ({"prefix": np.zeros((3, 2), np.float32), "delay": 1.5}, ["'__rtc__.delay'", "1.5"]),
    ({"prefix": np.zeros((3, 2), np.float32)}, ["'__rtc__'", "'delay'", "['prefix']"]),
    ("prefix", ["'__rtc__'", "a map", "str"]),
])
def test_bad_rtc_gets_an_error_and_the_connection_keeps_serving(client, rtc, needles):
    with pytest.raises(RuntimeError, match="Error in inference server") as err:
        client.infer({**observation(2), "__rtc__": rtc})
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))
    assert client.infer(observation(3))["actions"].shape == (HORIZON, ACTION_DIM)


def test_policy_without_a_flow_head_refuses_rtc(tmp_path):
    with PolicyServer(tiny_policy(tmp_path / "mlp"), obs_map=OBS_MAP, port=0) as srv:
        client = WebsocketClientPolicy("127.0.0.1", srv.port)
        with pytest.raises(RuntimeError, match=r"'__rtc__'.*flow-matching head.*'test_mlp'"):
            client.infer({**observation(0), "__rtc__": {"prefix": np.zeros((2, 2), np.float32), "delay": 1}})
        assert client.infer(observation(0))["actions"].shape == (HORIZON, ACTION_DIM)


def test_a_batch_runs_one_policy_call_per_rtc_shape(server, monkeypatch):
    """Plain and RTC requests batched together: grouped by (H', delay), answered in order."""
    calls = []
    predict = server.policy.predict_action_chunk

    def counted(batch, **kw):
        calls.append((len(batch["observation.state"]), kw.get("delay")))
        return predict(batch, **kw)

    monkeypatch.setattr(server.policy, "predict_action_chunk", counted)
    rng = np.random.default_rng(0)
    rtcs = [None, parse_rtc({"prefix": rng.standard_normal((3, 2)), "delay": 1}, horizon=4, action_dim=2),
            None, parse_rtc({"prefix": rng.standard_normal((3, 2)), "delay": 1}, horizon=4, action_dim=2),
            parse_rtc({"prefix": rng.standard_normal((2, 2)), "delay": 2}, horizon=4, action_dim=2)]
    requests = [(server.adapter.convert(observation(10 + i)), rtc) for i, rtc in enumerate(rtcs)]
    results = server._infer(requests)
    assert sorted(calls, key=str) == sorted([(2, None), (2, 1), (1, 2)], key=str)
    for (actions, _, batch_size), rtc in zip(results, rtcs, strict=True):
        assert actions.shape == (HORIZON, ACTION_DIM)
        if rtc is not None:
            np.testing.assert_array_equal(actions[: rtc.delay], rtc.prefix[: rtc.delay])
            assert batch_size == (2 if rtc.delay == 1 else 1)


def test_parse_rtc_errors_are_observation_errors():
    with pytest.raises(ObservationError, match=r"'__rtc__.delay': expected an int in \[0, H' = 1\], received True"):
        parse_rtc({"prefix": [[0.0, 1.0]], "delay": True}, horizon=4, action_dim=2)
