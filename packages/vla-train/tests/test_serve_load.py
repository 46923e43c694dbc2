"""Bounded load test on loopback: 8 openpi clients x 200 requests, each from its own thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from serve_helpers import OBS_MAP, observation, reference_actions, tiny_policy
from vla_core import load_policy
from vla_train.serve import PolicyServer

CLIENTS, REQUESTS = 8, 200


@pytest.fixture
def one_intra_op_thread():
    """The 8 client threads share this process (and, in CI, 2 cores) with the server: a 2-thread intra-op
    pool then waits on descheduled workers at every op (~25-100 ms per tiny batch instead of ~1 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_many_clients_lose_no_reply_and_get_the_single_request_answer(tmp_path, one_intra_op_thread):
    tiny_policy(tmp_path / "policy")
    reference = load_policy(tmp_path / "policy")
    replies: dict[int, list[np.ndarray]] = {}
    latencies: list[float] = []
    errors: list[BaseException] = []
    with PolicyServer(load_policy(tmp_path / "policy"), obs_map=OBS_MAP, port=0) as srv:
        clients = [WebsocketClientPolicy("127.0.0.1", srv.port) for _ in range(CLIENTS)]
        barrier = threading.Barrier(CLIENTS + 1)

        def run(i: int) -> None:
            barrier.wait()
            out = []
            try:
                for r in range(REQUESTS):
                    start = time.perf_counter()
                    out.append(clients[i].infer(observation(REQUESTS * i + r, image="uint8" if r % 2 else "float"))
                               ["actions"])
                    latencies.append(time.perf_counter() - start)
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(err)
            replies[i] = out

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join(300)
        wall = time.perf_counter() - start
        stats = srv.stats
    assert not errors, errors[:3]
    assert [len(replies.get(i, [])) for i in range(CLIENTS)] == [REQUESTS] * CLIENTS
    for i in range(CLIENTS):
        for r, actions in enumerate(replies[i]):
            obs = observation(REQUESTS * i + r, image="uint8" if r % 2 else "float")
            np.testing.assert_allclose(actions, reference_actions(reference, obs), atol=1e-5, rtol=0)
    total = CLIENTS * REQUESTS
    assert stats.replies == total and stats.errors == 0
    assert sum(size * n for size, n in stats.batch_sizes.items()) == total
    assert max(stats.batch_sizes) > 1, stats.batch_sizes
    ms = np.array(latencies) * 1e3
    print(f"\n{CLIENTS} clients x {REQUESTS} requests: {wall:.2f} s, {total / wall:.0f} replies/s, "
          f"latency p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, "
          f"{sum(stats.batch_sizes.values())} policy calls, mean batch {total / sum(stats.batch_sizes.values()):.2f}, "
          f"batch sizes {dict(sorted(stats.batch_sizes.items()))}")
