"""The openpi websocket protocol: msgpack with numpy arrays, and the messages the server sends.

Wire format (what ``openpi-client``'s ``WebsocketClientPolicy`` speaks, unchanged):

- Every message is one binary websocket frame holding one msgpack value. A numpy array travels as
  the map ``{b"__ndarray__": True, b"data": <raw bytes, C order>, b"dtype": <dtype.str, e.g. "<f4">,
  b"shape": [d0, d1, ...]}`` and a numpy scalar as ``{b"__npgeneric__": True, b"data": <item>,
  b"dtype": <dtype.str>}`` (the keys are msgpack bin, the values native msgpack types).
- On connect the server sends the metadata map first; then each binary request (an observation
  map) gets exactly one reply: a binary action map (:func:`action_reply`), or a text frame (a
  ``str``) holding an error message, which ``openpi-client`` raises as ``RuntimeError``.

Decoding never builds objects from the payload beyond msgpack's own types and plain numeric,
bool or string arrays: no pickle, no object arrays. Shapes and byte counts are checked against
each other, so a crafted array header cannot read past its buffer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from vla_core.errors import require

NDARRAY = b"__ndarray__"
NPGENERIC = b"__npgeneric__"
# array kinds that travel: bool, signed / unsigned int, float, unicode and byte strings
WIRE_KINDS = frozenset("biufUS")
CONTROL_KEY = "__ctrl__"  # a request {"__ctrl__": "reset"} is a control message (vla extension)
# optional request key {"__rtc__": {"prefix": (H', A) array, "delay": int}}: real-time chunking (vla extension)
RTC_KEY = "__rtc__"


class ProtocolError(ValueError):
    """A message is not valid msgpack-numpy (names what was expected and what came)."""


def _msgpack():
    return require("msgpack", "vla-train[serve]")


def _encode(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy arrays and scalars as openpi's maps; anything else is an error."""
    if isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.kind not in WIRE_KINDS:
            raise TypeError(f"cannot send numpy dtype {obj.dtype.str!r} (kind {obj.dtype.kind!r}); "
                            f"expected one of the kinds {''.join(sorted(WIRE_KINDS))}")
        if isinstance(obj, np.generic):
            return {NPGENERIC: True, b"data": obj.item(), b"dtype": obj.dtype.str}
        return {NDARRAY: True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    raise TypeError(f"cannot send an object of type {type(obj).__name__} over msgpack")


def _dtype(value: Any) -> np.dtype:
    if not isinstance(value, (str, bytes)):
        raise ProtocolError(f"numpy dtype: expected a dtype string such as '<f4', received {type(value).__name__}")
    try:
        dtype = np.dtype(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError, UnicodeDecodeError):
        raise ProtocolError(f"numpy dtype: expected a dtype string such as '<f4', received {value!r}") from None
    if dtype.kind not in WIRE_KINDS or dtype.hasobject:
        raise ProtocolError(f"numpy dtype: expected a numeric, bool or string dtype, received {value!r}")
    return dtype


def _decode(obj: dict) -> Any:
    """msgpack ``object_hook``: openpi's array and scalar maps back to numpy; other maps unchanged."""
    if NDARRAY in obj:
        dtype, data, shape = _dtype(obj.get(b"dtype")), obj.get(b"data"), obj.get(b"shape")
        if not isinstance(data, bytes):
            raise ProtocolError(f"numpy array data: expected bytes, received {type(data).__name__}")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ProtocolError(f"numpy array shape: expected a list of non-negative ints, received {shape!r}")
        if math.prod(shape) * dtype.itemsize != len(data):
            raise ProtocolError(f"numpy array of shape {tuple(shape)} and dtype {dtype.str!r}: expected "
                                f"{math.prod(shape) * dtype.itemsize} data bytes, received {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if NPGENERIC in obj:
        dtype = _dtype(obj.get(b"dtype"))
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError):
            raise ProtocolError(f"numpy scalar of dtype {dtype.str!r}: received {obj.get(b'data')!r}") from None
    return obj


def packb(obj: Any) -> bytes:
    """Encode ``obj`` (maps, lists, str, numbers, numpy arrays and scalars) as msgpack-numpy bytes."""
    return _msgpack().packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Decode msgpack-numpy bytes; arrays come back read-only (views of ``data``).

    Raises :class:`ProtocolError` for anything that is not one well-formed msgpack value.
    """
    msgpack = _msgpack()
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False)
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as err:  # ExtraData, FormatError, StackError
        raise ProtocolError(f"malformed message: expected one msgpack value, received {len(data)} bytes "
                            f"that do not decode ({type(err).__name__}: {err})") from None


def action_reply(actions: np.ndarray, *, policy_ms: float, batch_size: int, server_ms: float,
                 prev_total_ms: float | None) -> dict[str, Any]:
    """The reply to one observation, as openpi's server shapes it.

    ``actions`` (H, A) float32 in robot units; ``policy_timing`` is the policy call (for the whole
    batch this request rode in), ``server_timing`` the time from the request's arrival to its
    reply, and ``prev_total_ms`` the previous request's full cycle on this connection (send included).
    """
    server_timing = {"infer_ms": server_ms}
    if prev_total_ms is not None:
        server_timing["prev_total_ms"] = prev_total_ms
    return {
        "actions": np.ascontiguousarray(actions, dtype=np.float32),
        "policy_timing": {"infer_ms": policy_ms, "batch_size": batch_size},
        "server_timing": server_timing,
    }


def error_text(err: BaseException) -> str:
    """The text frame sent for a rejected request: the error's class and message."""
    return f"{type(err).__name__}: {err}"
