"""netproto.cbuffer: the address and length of any contiguous buffer, held for the ``with``."""

from __future__ import annotations

import ctypes

import pytest

from netproto.cbuffer import c_buffer

DATA = bytes(range(256)) * 3


def _buffers() -> list[tuple[str, bytes | bytearray | memoryview]]:
    return [
        ("bytes", DATA),
        ("bytearray", bytearray(DATA)),
        ("read-only memoryview", memoryview(DATA)),
        ("read-only memoryview slice", memoryview(DATA)[17:300]),
        ("writable memoryview slice", memoryview(bytearray(DATA))[255:700]),
        ("empty bytes", b""),
        ("empty bytearray", bytearray()),
        ("empty memoryview slice", memoryview(DATA)[40:40]),
    ]


@pytest.mark.parametrize(("kind", "obj"), _buffers(), ids=[k for k, _ in _buffers()])
def test_the_address_and_length_given_are_the_buffers_own_bytes(
    kind: str, obj: bytes | bytearray | memoryview
) -> None:
    with c_buffer(obj) as (address, length):
        assert length == len(obj)
        assert ctypes.string_at(address, length) == bytes(obj)


def test_a_slice_is_given_in_place_not_copied() -> None:
    # A block cut from a received chunk is hashed where it lies: its address is the chunk's
    # plus the offset, and a write into the chunk shows through it.
    chunk = bytearray(DATA)
    with c_buffer(chunk) as (base, _), c_buffer(memoryview(chunk)[100:200]) as (address, length):
        assert (address - base, length) == (100, 100)
        chunk[100] = 0xEE
        assert ctypes.string_at(address, 1) == b"\xee"


def test_a_non_contiguous_memoryview_is_a_buffer_error() -> None:
    with pytest.raises(BufferError, match="not C-contiguous"), c_buffer(memoryview(DATA)[::2]):
        pytest.fail("a strided view has no single address")


def test_an_object_without_the_buffer_protocol_is_a_type_error() -> None:
    with pytest.raises(TypeError), c_buffer("text"):  # type: ignore[arg-type]
        pytest.fail("a str has no buffer")


def test_the_buffer_is_exported_inside_the_with_and_released_after_it() -> None:
    data = bytearray(b"resizable")
    with c_buffer(data), pytest.raises(BufferError):
        data.extend(b"!")  # held: CPython refuses to move it
    data.extend(b"!")
    assert data == b"resizable!"


def test_the_buffer_is_released_when_the_with_body_raises() -> None:
    data = bytearray(b"resizable")
    with pytest.raises(RuntimeError), c_buffer(data):
        raise RuntimeError("the C call failed")
    data.extend(b"!")
    assert data == b"resizable!"


def test_a_memoryview_given_can_be_released_after_the_with() -> None:
    view = memoryview(bytearray(DATA))[1:10]
    with c_buffer(view), pytest.raises(BufferError):
        view.release()  # an export of it is held
    view.release()
    with pytest.raises(ValueError):
        len(view)
