"""The policy server: one policy, many websocket clients, requests batched into one policy call.

Each connection is a session (:class:`Session`: its observation history and timing). Its
requests are decoded and validated on the event loop, then queued; a batcher collects what
arrives within ``batch_window_ms`` (at most ``max_batch``) and runs one ``predict_action_chunk``
on the batch (one per group of real-time chunking requests with equal prefix length and delay) in a
single worker thread, so the loop keeps accepting, decoding and answering
while the policy runs. A rejected request is answered with a text frame and the connection
stays open; a failing batch is retried one request at a time, so one bad request cannot fail
the others.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hmac
import http
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vla_core import Policy, load_policy
from vla_core.errors import ConfigError, require

from vla_train.serve.observations import (
    ObservationAdapter,
    ObservationError,
    ObservationHistory,
    RTCRequest,
    Sample,
    build_obs_map,
    collate,
    load_obs_map,
    parse_rtc,
)
from vla_train.serve.protocol import (
    CONTROL_KEY,
    RTC_KEY,
    ProtocolError,
    action_reply,
    error_text,
    packb,
    unpackb,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 32 * 2**20
API_KEY_SCHEMES = ("api-key", "bearer")  # openpi-client sends "Authorization: Api-Key <key>"


@dataclass
class Session:
    """One connection's state on the server."""

    id: int
    history: ObservationHistory
    requests: int = 0
    prev_total_ms: float | None = None  # the previous request's full cycle, reported like openpi


@dataclass
class ServerStats:
    """Counters, updated on the event loop; ``batch_sizes`` maps a batch size to how many ran."""

    connections: int = 0
    replies: int = 0
    errors: int = 0
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)


def resolve_device(device: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else as torch spells it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, received {device!r}") from None


def read_api_key(env_name: str | None) -> str | None:
    """The API key held by environment variable ``env_name`` (None: no key required)."""
    if env_name is None:
        return None
    key = os.environ.get(env_name, "")
    if not key:
        raise ConfigError(f"--api-key-env {env_name}: expected the environment variable {env_name} to hold the "
                          f"API key, but it is unset or empty")
    return key


def policy_metadata(policy: Policy, obs_map: Mapping[str, str], **extra: Any) -> dict[str, Any]:
    """What the server sends on connect: the policy, its features and how to feed it."""
    config = json.loads(json.dumps(policy.config_to_save(), default=str))
    inputs = config.pop("input_features")
    return {
        "server": "vla",
        "policy_type": policy.registered_name,
        "policy_config": config,
        "input_features": inputs,
        "action_dim": policy.action_dim,
        "action_horizon": policy.horizon,
        "n_action_steps": policy.n_action_steps,
        "n_obs_steps": policy.config.n_obs_steps,
        "obs_map": dict(obs_map),
        "image_formats": ["uint8 HWC", "float CHW in [0, 1]"],
        "control": ["reset"],
        # real-time chunking: a request may carry {"__rtc__": {"prefix": (H', A), "delay": d}} (flow heads)
        "rtc": bool(policy.supports_rtc),
        **extra,
    }


class PolicyServer:
    """Serves ``policy`` over the openpi websocket protocol.

    ``start()`` runs it in a background thread (``stop()`` ends it; also a context manager);
    ``serve_forever()`` runs it in the calling thread. ``port=0`` picks a free port, read back
    from ``self.port`` once started.
    """

    def __init__(self, policy: Policy, *, obs_map: Mapping[str, str] | None = None, host: str = "127.0.0.1",
                 port: int = 8000, api_key: str | None = None, max_batch: int = 16,
                 batch_window_ms: float = 2.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch: expected >= 1, received {max_batch}")
        if batch_window_ms < 0:
            raise ConfigError(f"batch_window_ms: expected >= 0, received {batch_window_ms}")
        self.policy = policy.eval()
        self.device = next(iter(policy.parameters()), torch.empty(0)).device
        self.obs_map = build_obs_map(policy.input_features, obs_map)
        self.adapter = ObservationAdapter(policy.input_features, self.obs_map)
        self.host, self.port, self.max_batch = host, port, max_batch
        self.batch_window_s = batch_window_ms / 1000
        self.max_message_bytes = max_message_bytes
        self._api_key = api_key
        self.metadata = policy_metadata(policy, self.obs_map, max_message_bytes=max_message_bytes,
                                        device=str(self.device), compiled=policy.is_compiled)
        self.stats = ServerStats()
        self._session_ids = itertools.count()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_path(cls, path: str | Path, *, device: str = "auto", compile_mode: str | None = None,
                  **kwargs: Any) -> PolicyServer:
        """A server for a run directory (its ``pretrained/``) or a policy directory; ``compile_mode``
        (a :data:`vla_core.COMPILE_MODES` name) serves it compiled (:meth:`vla_core.Policy.compile`; the
        first request of each batch size compiles)."""
        from vla_train.eval import resolve_policy_dir

        policy = load_policy(resolve_policy_dir(path)).to(resolve_device(device))
        if compile_mode is not None:
            policy.compile(compile_mode)
        return cls(policy, **kwargs)

    # ----------------------------------------------------------------- running
    def serve_forever(self, on_ready: Callable[[PolicyServer], None] | None = None) -> None:
        """Serve in this thread until interrupted; ``on_ready(self)`` runs once the port is bound."""
        asyncio.run(self._main(on_ready))

    def start(self, timeout: float = 30.0) -> PolicyServer:
        """Serve in a daemon thread; returns once the port is bound (``self.port`` is the real one)."""
        ready, failure = threading.Event(), []

        def run() -> None:
            try:
                asyncio.run(self._main(lambda _: ready.set()))
            except BaseException as err:  # reported to start() below, or logged once running
                failure.append(err)
                ready.set()
                logger.exception("policy server stopped with an error")

        self._thread = threading.Thread(target=run, name="vla-serve", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"the policy server did not bind {self.host}:{self.port} within {timeout} s")
        if failure:
            raise failure[0]
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Close every connection and stop the server started with :meth:`start`."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> PolicyServer:  # noqa: PYI034 - Self needs Python 3.11
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _main(self, on_ready: Callable[[PolicyServer], None] | None) -> None:
        ws_server = require("websockets.asyncio.server", "vla-train[serve]")
        self._loop = asyncio.get_running_loop()
        self._queue, self._stopping = asyncio.Queue(), asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vla-infer")
        batcher = asyncio.create_task(self._batch_loop())
        try:
            async with ws_server.serve(self._handle, self.host, self.port, process_request=self._process_request,
                                       max_size=self.max_message_bytes, compression=None) as server:
                self.port = server.sockets[0].getsockname()[1]
                if self._api_key is None and self.host not in ("127.0.0.1", "localhost", "::1"):
                    logger.warning("serving on %s without an API key: anyone who reaches port %d can drive "
                                   "this policy (set --api-key-env)", self.host, self.port)
                if on_ready is not None:
                    on_ready(self)
                await self._stopping.wait()
        finally:
            batcher.cancel()
            self._executor.shutdown(wait=True)

    # ----------------------------------------------------------------- one connection
    def _process_request(self, connection: Any, request: Any) -> Any:
        """Before the websocket handshake: answer ``/healthz``; refuse a missing or wrong API key."""
        if request.path.split("?", 1)[0] == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self._api_key is not None and not _authorized(request.headers.get("Authorization"), self._api_key):
            logger.info("refused a connection without a valid API key")
            return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                      "missing or wrong API key: send the header 'Authorization: Api-Key <key>'\n")
        return None

    async def _handle(self, websocket: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        session = Session(next(self._session_ids), ObservationHistory(self.policy.config.n_obs_steps))
        self.stats.connections += 1
        logger.info("session %d: connected from %s", session.id, websocket.remote_address)
        try:
            await websocket.send(packb(self.metadata))
            async for message in websocket:
                start = time.perf_counter()
                await websocket.send(await self._answer(session, message, start))
                session.prev_total_ms = (time.perf_counter() - start) * 1e3
        except ConnectionClosed as closed:
            logger.info("session %d: closed (%s)", session.id, closed)
        logger.info("session %d: %d requests", session.id, session.requests)

    async def _answer(self, session: Session, message: bytes | str, start: float) -> bytes | str:
        """The reply to one message: an action map, a control acknowledgement, or an error text."""
        session.requests += 1
        try:
            if isinstance(message, str):
                raise ProtocolError("expected a binary frame holding a msgpack map, received a text frame")
            obs = unpackb(message)
            if not isinstance(obs, dict):
                raise ProtocolError(f"expected a msgpack map of observation keys, received {type(obs).__name__}")
            if CONTROL_KEY in obs:
                return packb(self._control(session, obs[CONTROL_KEY]))
            rtc = self._rtc(obs[RTC_KEY]) if RTC_KEY in obs else None
            sample = session.history.window(self.adapter.convert(obs))
            future = asyncio.get_running_loop().create_future()
            await self._queue.put((sample, rtc, future))
            actions, policy_ms, batch_size = await future
        except Exception as err:  # noqa: BLE001 - any failure is this request's error reply; the server serves on
            self.stats.errors += 1
            log = logger.info if isinstance(err, ValueError) else logger.exception
            log("session %d: request %d rejected: %s", session.id, session.requests, err)
            return error_text(err)
        self.stats.replies += 1
        server_ms = (time.perf_counter() - start) * 1e3
        return packb(action_reply(actions, policy_ms=policy_ms, batch_size=batch_size, server_ms=server_ms,
                                  prev_total_ms=session.prev_total_ms))

    def _rtc(self, value: Any) -> RTCRequest:
        """vla's protocol extension: a request's ``__rtc__`` map, checked against the policy."""
        if not self.policy.supports_rtc:
            raise ObservationError(RTC_KEY, "no __rtc__ key: real-time chunking needs a flow-matching head (the "
                                   "server metadata says rtc: false)", f"one, for policy {self.policy.rtc_unsupported_reason()}")
        return parse_rtc(value, horizon=self.policy.horizon, action_dim=self.policy.action_dim, key=RTC_KEY)

    def _control(self, session: Session, command: Any) -> dict[str, Any]:
        """vla's protocol extension: ``{"__ctrl__": "reset"}`` clears the session's history."""
        if command != "reset":
            raise ProtocolError(f"{CONTROL_KEY}: expected one of ['reset'], received {command!r}")
        session.history.reset()
        return {"__ack__": command}

    # ----------------------------------------------------------------- batching and inference
    async def _batch_loop(self) -> None:
        """Collect the requests that arrive together and answer them with one policy call."""
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            if self.max_batch > 1 and self.batch_window_s > 0:
                await asyncio.sleep(self.batch_window_s)
            while len(items) < self.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                results = await loop.run_in_executor(self._executor, self._infer, [(s, r) for s, r, _ in items])
            except Exception as err:  # noqa: BLE001 - the executor itself failed: answer everyone, keep batching
                results = [err] * len(items)
            self.stats.batch_sizes[len(items)] += 1
            for (_, _, future), result in zip(items, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _infer(self, requests: list[tuple[Sample, RTCRequest | None]]) -> list[tuple[np.ndarray, float, int] | Exception]:
        """Worker thread: chunks (H, A) float32 with the policy time (ms) and batch size, or errors, in order.

        Plain requests run in one policy call, real-time chunking requests in one call per (H', delay).
        """
        groups: dict[Any, list[int]] = collections.defaultdict(list)
        for i, (_, rtc) in enumerate(requests):
            groups[None if rtc is None else rtc.group].append(i)
        results: list[Any] = [None] * len(requests)
        for indices in groups.values():
            for i, result in zip(indices, self._infer_group([requests[i] for i in indices])):
                results[i] = result
        return results

    def _infer_group(self, requests: list[tuple[Sample, RTCRequest | None]]) -> list[Any]:
        """One policy call for requests with the same RTC shape. A batch that fails is retried one request
        at a time, so each request gets its own answer."""
        try:
            start = time.perf_counter()
            batch = collate([s for s, _ in requests], self.device)
            rtc = requests[0][1]
            if rtc is None:
                chunk = self.policy.predict_action_chunk(batch)
            else:
                prefix = torch.from_numpy(np.stack([r.prefix for _, r in requests]))
                chunk = self.policy.predict_action_chunk(batch, prefix=prefix, delay=rtc.delay)
            chunk = chunk.float().cpu().numpy()
            policy_ms = (time.perf_counter() - start) * 1e3
            return [(c, policy_ms, len(requests)) for c in chunk]
        except Exception as err:  # noqa: BLE001 - reported to the request(s) it belongs to
            if len(requests) == 1:
                return [err]
            return [self._infer_group([r])[0] for r in requests]


def _authorized(header: str | None, api_key: str) -> bool:
    """``Authorization: Api-Key <key>`` (openpi-client's form) or ``Bearer <key>``, compared in constant time."""
    scheme, _, token = (header or "").strip().partition(" ")
    ok = hmac.compare_digest(token.strip().encode(), api_key.encode())
    return ok and scheme.lower() in API_KEY_SCHEMES


def serve(path: str | Path, *, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          api_key_env: str | None = None, obs_map: str | Mapping[str, str] | None = None,
          compile_mode: str | None = None, **kwargs: Any) -> None:
    """``vla serve``: load the policy at ``path`` (run or policy directory) and serve it until interrupted.

    ``obs_map`` is a mapping, inline JSON or a JSON / YAML file; ``api_key_env`` names the environment
    variable holding the API key; ``compile_mode`` serves the policy compiled (see :meth:`from_path`). Prints ``serving PATH on ws://HOST:PORT ...`` once listening.
    """
    if isinstance(obs_map, (str, Path)):
        obs_map = load_obs_map(obs_map)
    server = PolicyServer.from_path(path, device=device, host=host, port=port, api_key=read_api_key(api_key_env),
                                    obs_map=obs_map, compile_mode=compile_mode, **kwargs)

    def ready(s: PolicyServer) -> None:
        compiled = f", compiled: {compile_mode}" if s.policy.is_compiled else ""
        print(f"serving {path} on ws://{s.host}:{s.port} ({s.device}{compiled}); health check: /healthz", flush=True)

    try:
        server.serve_forever(on_ready=ready)
    except KeyboardInterrupt:
        pass
