"""The msgpack-numpy codec: round trips, and both directions against openpi-client's own codec."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from openpi_client import msgpack_numpy as openpi_codec
from vla_train.serve import ProtocolError, action_reply, packb, unpackb

DTYPES = st.sampled_from(["?", "i1", "<i2", "<i4", "<i8", "u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8",
                          ">f4", ">i4", "<U3", "S4"])
ARRAYS = DTYPES.flatmap(lambda d: hnp.arrays(np.dtype(d), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0,
                                                                          max_side=5)))


def assert_same(a, b) -> None:
    assert isinstance(b, type(a)) or (isinstance(a, np.generic) and isinstance(b, np.generic)), (type(a), type(b))
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


@settings(max_examples=60, deadline=None)
@given(arrays=st.lists(ARRAYS, min_size=1, max_size=3), prompt=st.text(max_size=20),
       scalar=st.floats(allow_nan=False, width=32))
def test_round_trip_and_openpi_interop(arrays, prompt, scalar):
    message = {"obs": {f"k{i}": a for i, a in enumerate(arrays)}, "prompt": prompt, "n": 3,
               "scalar": np.float32(scalar), "list": [1.5, "x"]}
    ours = packb(message)
    for decoded in (unpackb(ours), openpi_codec.unpackb(ours), unpackb(openpi_codec.packb(message))):
        assert_same(message, decoded)


def test_decoded_arrays_are_views_of_the_message():
    data = packb({"a": np.arange(6, dtype=np.float32).reshape(2, 3)})
    a = unpackb(data)["a"]
    assert not a.flags.writeable and a.base is not None  # no copy on the way in


@pytest.mark.parametrize("bad, match", [
    (b"\xc1", "malformed message"),                                   # a byte msgpack never uses
    (packb({"a": 1}) + b"\x00", "malformed message"),                 # trailing data
    (packb({"a": 1})[:-1], "malformed message"),                      # truncated
    (msgpack.packb({b"__ndarray__": True, b"data": b"\x00" * 7, b"dtype": "<f4", b"shape": [2]}),
     "expected 8 data bytes, received 7"),
    (msgpack.packb({b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "|O", b"shape": [1]}),
     "expected a numeric, bool or string dtype"),
    (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "nonsense", b"shape": [0]}),
     "expected a dtype string"),
    (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}),
     "list of non-negative ints"),
])
def test_malformed_messages_raise_protocol_error(bad, match):
    with pytest.raises(ProtocolError, match=match):
        unpackb(bad)


def test_unsupported_values_are_refused_when_sending():
    with pytest.raises(TypeError, match="cannot send numpy dtype"):
        packb({"a": np.array([object()], dtype=object)})
    with pytest.raises(TypeError, match="cannot send an object of type set"):
        packb({"a": {1, 2}})


def test_action_reply_shape():
    reply = unpackb(packb(action_reply(np.ones((4, 2), np.float64), policy_ms=1.0, batch_size=3, server_ms=2.0,
                                       prev_total_ms=None)))
    assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (4, 2)
    assert reply["policy_timing"] == {"infer_ms": 1.0, "batch_size": 3}
    assert reply["server_timing"] == {"infer_ms": 2.0}
