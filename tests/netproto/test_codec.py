"""netproto.codec: strict msgpack, one map per frame (PROTOCOL.md §2)."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netproto.codec import MAX_CONTAINER, MAX_DEPTH, pack, unpack_map
from netproto.errors import BadFrame

Parse = Any


def nested(depth: int) -> dict[str, Any]:
    """A map ``depth`` levels deep, counting the outermost map as level 1."""
    node: dict[str, Any] = {}
    for _ in range(depth - 1):
        node = {"a": node}
    return node


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"id": 1, "ok": True, "body": None},
        {"s": "héllo ☃", "b": b"\x00\xff", "f": 1.5, "neg": -(2**63), "big": 2**64 - 1},
        {"list": [1, [2, [3]], {"k": "v"}], "empty": []},
    ],
)
def test_map_round_trips(value: dict[str, Any]) -> None:
    assert unpack_map(pack(value)) == value


def test_bytes_travel_as_bin_and_str_as_str() -> None:
    assert pack(b"ab") == b"\xc4\x02ab"
    assert pack("ab") == b"\xa2ab"
    decoded = unpack_map(pack({"b": b"ab", "s": "ab"}))
    assert type(decoded["b"]) is bytes
    assert type(decoded["s"]) is str


def test_nesting_of_max_depth_is_accepted() -> None:
    assert unpack_map(pack(nested(MAX_DEPTH))) == nested(MAX_DEPTH)


def test_nesting_deeper_than_max_depth_is_bad_frame() -> None:
    with pytest.raises(BadFrame, match="nesting"):
        unpack_map(pack(nested(MAX_DEPTH + 1)))


def test_nesting_deeper_than_msgpacks_own_stack_is_bad_frame() -> None:
    with pytest.raises(BadFrame):
        unpack_map(b"\x81\xa1a" + b"\x91" * 5000 + b"\xc0")


@pytest.mark.parametrize(
    "data",
    [
        pack([1, 2]),
        pack("a map?"),
        pack(1),
        pack(None),
        pack(b"bin"),
    ],
    ids=["array", "str", "int", "nil", "bin"],
)
def test_value_that_is_not_a_map_is_bad_frame(data: bytes) -> None:
    with pytest.raises(BadFrame, match="not a msgpack map"):
        unpack_map(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x82\xa1a", b"\x81\xa1a\xa3ab", b"\xdf\x00\x00"],
    ids=["empty", "never-used byte", "missing values", "short str", "short map32 header"],
)
def test_invalid_msgpack_is_bad_frame(data: bytes) -> None:
    with pytest.raises(BadFrame):
        unpack_map(data)


def test_trailing_bytes_are_bad_frame() -> None:
    with pytest.raises(BadFrame, match="trailing"):
        unpack_map(pack({"a": 1}) + b"\x00")


def test_ext_type_is_bad_frame() -> None:
    with pytest.raises(BadFrame):
        unpack_map(msgpack.packb({"x": msgpack.ExtType(1, b"data")}))


@pytest.mark.parametrize(
    "stamp",
    [msgpack.Timestamp(0, 0), msgpack.Timestamp(2**34, 5), msgpack.Timestamp(-1, 0)],
    ids=["32-bit", "96-bit nanoseconds", "negative"],
)
def test_msgpack_timestamp_is_bad_frame(stamp: msgpack.Timestamp) -> None:
    with pytest.raises(BadFrame):
        unpack_map(msgpack.packb({"when": [stamp]}))


@pytest.mark.parametrize(
    "value",
    [{1: "int key"}, {b"bin": "bin key"}, {"ok": {2.5: "float key"}}, {"ok": [{None: 1}]}],
    ids=["int", "bin", "nested float", "nested nil"],
)
def test_non_string_map_key_is_bad_frame(value: dict[Any, Any]) -> None:
    with pytest.raises(BadFrame):
        unpack_map(msgpack.packb(value, use_bin_type=True))


def test_invalid_utf8_in_a_str_is_bad_frame() -> None:
    with pytest.raises(BadFrame):
        unpack_map(b"\x81\xa1s\xa2\xc3\x28")


@pytest.mark.parametrize(
    "header",
    [
        b"\xdd" + struct.pack(">I", 2**31),  # array32
        b"\xdf" + struct.pack(">I", 2**31),  # map32
        b"\xdb" + struct.pack(">I", 2**31),  # str32
        b"\xc6" + struct.pack(">I", 2**31),  # bin32
        b"\xdc\xff\xff",  # array16 claiming more than the frame holds
    ],
    ids=["array32", "map32", "str32", "bin32", "array16"],
)
def test_container_header_claiming_more_than_the_frame_holds_is_bad_frame(header: bytes) -> None:
    with pytest.raises(BadFrame):
        unpack_map(b"\x81\xa1k" + header)


def test_array_longer_than_the_container_limit_is_bad_frame() -> None:
    data = pack({"a": [0] * (MAX_CONTAINER + 1)})
    with pytest.raises(BadFrame):
        unpack_map(data)


def test_container_limit_applies_even_under_a_larger_frame_limit() -> None:
    # Nested headers each claiming the frame limit must fail on the first one, not allocate.
    # (Refused by the structural pre-check, check_structure, before msgpack sees a header.)
    data = b"\x81\xa1k" + (b"\xdd" + struct.pack(">I", 100_000)) * 1000
    with pytest.raises(BadFrame, match="claim more entries than the frame holds"):
        unpack_map(data, max_len=1 << 20)


_plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.text(max_size=6), _plain, max_size=5))
def test_any_shallow_plain_map_round_trips(value: dict[str, Any]) -> None:
    try:
        assert unpack_map(pack(value)) == value
    except BadFrame as exc:
        assert "nesting" in str(exc)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=500))
def test_arbitrary_bytes_decode_to_a_map_or_raise_bad_frame(data: bytes) -> None:
    with contextlib.suppress(BadFrame):
        assert isinstance(unpack_map(data), dict)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(st.text(max_size=6), _plain, min_size=1, max_size=5),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_corrupted_encodings_decode_or_raise_bad_frame(
    value: dict[str, Any], corruptions: list[tuple[int, int]]
) -> None:
    data = bytearray(pack(value))
    for position, byte in corruptions:
        data[position % len(data)] = byte
    with contextlib.suppress(BadFrame):
        assert isinstance(unpack_map(bytes(data)), dict)
