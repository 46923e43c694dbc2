"""``vla serve``: a policy server that speaks the openpi websocket protocol.

A robot runs the published ``openpi-client`` unchanged::

    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy("gpu-box", 8000, api_key="...")
    actions = client.infer({"observation/image": img, "observation/state": q, "prompt": "pick"})["actions"]

The modules: ``protocol`` (msgpack-numpy wire format and reply shapes), ``observations``
(client keys -> policy batches, validation, the ``__rtc__`` request part), ``server`` (websocket server, sessions, batching).
Needs the ``serve`` extra (``websockets``, ``msgpack``), imported on first use.
"""

from vla_train.serve.observations import (
    PROMPT,
    ObservationAdapter,
    ObservationError,
    ObservationHistory,
    RTCRequest,
    build_obs_map,
    collate,
    load_obs_map,
    parse_rtc,
)
from vla_train.serve.protocol import RTC_KEY, ProtocolError, action_reply, packb, unpackb
from vla_train.serve.server import (
    PolicyServer,
    ServerStats,
    Session,
    policy_metadata,
    read_api_key,
    resolve_device,
    serve,
)

__all__ = [
    "PROMPT",
    "RTC_KEY",
    "ObservationAdapter",
    "ObservationError",
    "ObservationHistory",
    "PolicyServer",
    "ProtocolError",
    "RTCRequest",
    "ServerStats",
    "Session",
    "action_reply",
    "build_obs_map",
    "collate",
    "load_obs_map",
    "packb",
    "parse_rtc",
    "policy_metadata",
    "read_api_key",
    "resolve_device",
    "serve",
    "unpackb",
]
