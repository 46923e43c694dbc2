"""`vla serve`: a tiny saved policy served in a background thread, spoken to with openpi-client."""

from __future__ import annotations

import json
import threading
import urllib.request

import numpy as np
import pytest
import torch
import websockets.sync.client
from openpi_client import msgpack_numpy as openpi_codec
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from serve_helpers import OBS_MAP, observation, reference_actions, tiny_policy
from vla_core import ConfigError, load_policy
from vla_train.serve import PolicyServer, build_obs_map

MAX_MESSAGE = 64 * 1024


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("serve") / "policy"
    tiny_policy(directory)
    return directory


@pytest.fixture(scope="module")
def reference(policy_dir):
    """A second copy of the policy, for in-process answers."""
    return load_policy(policy_dir)


@pytest.fixture(scope="module")
def server(policy_dir):
    with PolicyServer(load_policy(policy_dir), obs_map=OBS_MAP, port=0, max_message_bytes=MAX_MESSAGE) as srv:
        yield srv


@pytest.fixture
def client(server):
    c = WebsocketClientPolicy("127.0.0.1", server.port)
    yield c
    c._ws.close()


def test_metadata_on_connect(client):
    meta = client.get_server_metadata()
    assert meta["policy_type"] == "vla"
    assert meta["policy_config"]["head"]["type"] == "test_mlp"
    assert meta["input_features"] == {"observation.images.top": {"type": "VISUAL", "shape": [3, 8, 8]},
                                      "observation.state": {"type": "STATE", "shape": [3]},
                                      "task": {"type": "LANGUAGE", "shape": []}}
    assert (meta["action_dim"], meta["action_horizon"], meta["n_action_steps"], meta["n_obs_steps"]) == (2, 4, 4, 1)
    assert meta["obs_map"] == {**OBS_MAP, "prompt": "task"}
    assert meta["max_message_bytes"] == MAX_MESSAGE


@pytest.mark.parametrize("image", ["uint8", "float"])
def test_actions_equal_predict_action_chunk(client, reference, image):
    for seed in range(3):
        obs = observation(seed, image=image)
        reply = client.infer(obs)
        assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (4, 2)
        np.testing.assert_allclose(reply["actions"], reference_actions(reference, obs), atol=1e-5, rtol=0)
        assert reply["policy_timing"]["infer_ms"] > 0 and reply["policy_timing"]["batch_size"] == 1
        assert reply["server_timing"]["infer_ms"] >= reply["policy_timing"]["infer_ms"]
        assert ("prev_total_ms" in reply["server_timing"]) == (seed > 0)


def test_prompt_reaches_the_language_feature(server, client, monkeypatch):
    seen = []
    predict = server.policy.predict_action_chunk
    monkeypatch.setattr(server.policy, "predict_action_chunk", lambda batch: seen.append(batch) or predict(batch))
    client.infer(observation(0, prompt="reach the blue target"))
    assert seen[-1]["task"] == ["reach the blue target"]


@pytest.mark.parametrize("change, needles", [
    (lambda o: o.pop("observation/state"), ["'observation/state'", "'observation.state'", "no such key"]),
    (lambda o: o.pop("prompt"), ["'prompt'", "'task'", "expected a str", "no such key"]),
    (lambda o: o.update({"observation/state": np.zeros(4, np.float32)}), ["'observation/state'", "(3,)", "(4,)"]),
    (lambda o: o.update({"observation/state": np.array([0, np.nan, 1], np.float32)}),
     ["'observation/state'", "finite", "1 NaN/Inf"]),
    (lambda o: o.update({"observation/state": "0 0 0"}), ["'observation/state'", "real-valued array", "str"]),
    (lambda o: o.update({"observation/state": np.array([True, False, True])}), ["'observation/state'", "bool"]),
    (lambda o: o.update({"observation/image": np.zeros((8, 8, 3), np.float32)}),
     ["'observation/image'", "uint8 image of shape (8, 8, 3)", "float image of shape (3, 8, 8)",
      "float32 array of shape (8, 8, 3)"]),
    (lambda o: o.update({"observation/image": np.zeros((8, 8, 3), np.int32)}), ["'observation/image'", "int32"]),
    (lambda o: o.update({"observation/image": np.full((3, 8, 8), 255.0, np.float32)}),
     ["'observation/image'", "[0, 1]", "[255, 255]"]),
    (lambda o: o.update({"prompt": 3}), ["'prompt'", "expected a str", "received int"]),
])
def test_bad_observation_gets_an_error_and_the_connection_keeps_serving(client, reference, change, needles):
    obs = observation(1)
    change(obs)
    with pytest.raises(RuntimeError, match="Error in inference server") as err:
        client.infer(obs)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))
    good = observation(2)
    np.testing.assert_allclose(client.infer(good)["actions"], reference_actions(reference, good), atol=1e-5)


def test_malformed_frames_get_errors(server, reference):
    with websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}") as ws:
        openpi_codec.unpackb(ws.recv())  # metadata
        for frame, needle in [(b"\xc1\x00", "malformed message"), ("hello", "text frame"),
                              (openpi_codec.packb([1, 2]), "expected a msgpack map"),
                              (openpi_codec.packb({"__ctrl__": "jump"}), "expected one of ['reset']")]:
            ws.send(frame)
            reply = ws.recv()
            assert isinstance(reply, str) and "ProtocolError" in reply and needle in reply, reply
        ws.send(openpi_codec.packb(observation(3)))
        reply = openpi_codec.unpackb(ws.recv())
        np.testing.assert_allclose(reply["actions"], reference_actions(reference, observation(3)), atol=1e-5)


def test_oversized_message_closes_only_that_connection(server, client, reference):
    bystander = WebsocketClientPolicy("127.0.0.1", server.port)
    obs = observation(4)
    obs["extra"] = np.zeros(MAX_MESSAGE, np.uint8)
    with pytest.raises(websockets.exceptions.ConnectionClosedError) as err:
        client.infer(obs)
    assert err.value.rcvd.code == 1009 and "exceeds limit" in err.value.rcvd.reason  # message too big
    for c in (bystander, WebsocketClientPolicy("127.0.0.1", server.port)):  # others serve; a reconnect works
        np.testing.assert_allclose(c.infer(observation(5))["actions"], reference_actions(reference, observation(5)),
                                   atol=1e-5)


def test_api_key_and_health_check(policy_dir, reference):
    with PolicyServer(load_policy(policy_dir), obs_map=OBS_MAP, port=0, api_key="s3cret-key") as srv:
        for key in (None, "wrong-key", "s3cret-ke"):
            with pytest.raises(websockets.exceptions.InvalidStatus, match="401"):
                WebsocketClientPolicy("127.0.0.1", srv.port, api_key=key)
        client = WebsocketClientPolicy("127.0.0.1", srv.port, api_key="s3cret-key")
        np.testing.assert_allclose(client.infer(observation(6))["actions"], reference_actions(reference, observation(6)),
                                   atol=1e-5)
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=10) as health:
            assert health.status == 200 and health.read() == b"OK\n"


def test_concurrent_clients_are_batched(policy_dir, reference):
    n_clients, n_requests = 6, 10
    replies: dict[int, list] = {}
    with PolicyServer(load_policy(policy_dir), obs_map=OBS_MAP, port=0, batch_window_ms=20) as srv:
        clients = [WebsocketClientPolicy("127.0.0.1", srv.port) for _ in range(n_clients)]
        barrier = threading.Barrier(n_clients)

        def run(i: int) -> None:
            barrier.wait()
            replies[i] = [clients[i].infer(observation(1000 * i + r))["actions"] for r in range(n_requests)]

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = srv.stats
    assert sorted(replies) == list(range(n_clients)) and all(len(r) == n_requests for r in replies.values())
    for i, chunks in replies.items():
        for r, actions in enumerate(chunks):
            np.testing.assert_allclose(actions, reference_actions(reference, observation(1000 * i + r)), atol=1e-5)
    assert max(stats.batch_sizes) > 1, stats.batch_sizes
    assert sum(size * count for size, count in stats.batch_sizes.items()) == n_clients * n_requests


def test_sessions_keep_their_own_observation_history(tmp_path):
    """n_obs_steps = 2: each connection's window is its own last two observations; reset clears it."""
    policy = tiny_policy(tmp_path / "p", language=False, n_obs_steps=2)
    seen = []
    predict = policy.predict_action_chunk
    policy.predict_action_chunk = lambda batch: seen.append(batch) or predict(batch)
    with PolicyServer(policy, obs_map=OBS_MAP, port=0, max_batch=1) as srv:
        a, b = (WebsocketClientPolicy("127.0.0.1", srv.port) for _ in range(2))
        obs = [observation(s, prompt=None) for s in range(4)]
        for c, o in [(a, obs[0]), (b, obs[1]), (a, obs[2]), (b, obs[3])]:
            c.infer(o)
        assert a.infer({"__ctrl__": "reset"}) == {"__ack__": "reset"}
        a.infer(obs[3])
    states = [batch["observation.state"][0] for batch in seen]
    expect = [(0, 0), (1, 1), (0, 2), (1, 3), (3, 3)]
    for window, (first, last) in zip(states, expect, strict=True):
        assert window.shape == (2, 3)
        torch.testing.assert_close(window, torch.from_numpy(np.stack([obs[first]["observation/state"],
                                                                      obs[last]["observation/state"]])))


def test_obs_map_errors_name_the_feature(reference):
    with pytest.raises(ConfigError, match="'observation.images.topp'.*Did you mean 'observation.images.top'"):
        build_obs_map(reference.input_features, {"img": "observation.images.topp"})
    with pytest.raises(ConfigError, match="fed by two client keys"):
        build_obs_map(reference.input_features, {"a": "observation.state", "b": "observation.state"})
    assert build_obs_map(reference.input_features) == {"observation.images.top": "observation.images.top",
                                                       "observation.state": "observation.state", "prompt": "task"}


def test_identity_map_by_default(policy_dir, reference):
    obs = observation(7)
    raw = {"observation.images.top": obs["observation/image"], "observation.state": obs["observation/state"],
           "prompt": obs["prompt"], "ignored": np.zeros(2)}
    with PolicyServer(load_policy(policy_dir), port=0) as srv:
        reply = WebsocketClientPolicy("127.0.0.1", srv.port).infer(raw)
    np.testing.assert_allclose(reply["actions"], reference_actions(reference, obs), atol=1e-5)


def test_serve_help(capsys):
    from vla_train.cli import main

    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--device", "--api-key-env", "--obs-map"):
        assert flag in out


def test_vla_serve_command_on_a_trained_run(tmp_path):
    """`vla train` a tiny run, `vla serve` it as a subprocess with an API key and an obs-map file."""
    from train_helpers import kill_tree, run_vla, tiny_config, write_config
    from vla_train.config import load_config
    from vla_train.trainer import train

    run_dir = train(load_config(write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run"))))
    policy = load_policy(run_dir / "pretrained")
    keys = {"observation/image": "observation.images.top", "observation/state": "observation.state"}
    (tmp_path / "map.json").write_text(json.dumps(keys))
    proc = run_vla(["serve", str(run_dir), "--port", "0", "--device", "cpu", "--api-key-env", "ROBOT_KEY",
                    "--obs-map", str(tmp_path / "map.json")], env={"ROBOT_KEY": "k-123"})
    try:
        lines = []
        while not (lines and lines[-1].startswith("serving ")):  # stdout carries stderr too
            lines.append(proc.stdout.readline())
            assert lines[-1], "".join(lines)  # the command ended before serving
        line = lines[-1]
        port = int(line.split("ws://127.0.0.1:")[1].split(" ")[0])
        client = WebsocketClientPolicy("127.0.0.1", port, api_key="k-123")
        size = policy.input_features["observation.images.top"].shape[-1]
        rng = np.random.default_rng(0)
        obs = {"observation/image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
               "observation/state": rng.random(2, dtype=np.float32)}
        image = torch.from_numpy(obs["observation/image"]).permute(2, 0, 1).float()[None] / 255
        want = policy.predict_action_chunk({"observation.images.top": image,
                                            "observation.state": torch.from_numpy(obs["observation/state"])[None]})
        np.testing.assert_allclose(client.infer(obs)["actions"], want[0].numpy(), atol=1e-5)
    finally:
        kill_tree(proc)
