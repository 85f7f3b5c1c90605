"""netproto.framing: the 4-byte length prefix and the incremental decoder (PROTOCOL.md §2)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netproto.codec import pack, unpack_map
from netproto.errors import BadFrame, FrameTooLarge
from netproto.framing import (
    DEFAULT_MAX_FRAME,
    OWN_BUFFER_AT,
    SCRATCH,
    FrameBuffer,
    encode_frame,
    frame_header,
)

Feed = Callable[[bytes], Iterator[bytes]]


def whole(data: bytes) -> Iterator[bytes]:
    yield data


def byte_by_byte(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


FEEDS = pytest.mark.parametrize("feed", [whole, byte_by_byte], ids=["whole", "byte by byte"])


def decode_all(decoder: FrameBuffer, data: bytes, feed: Feed) -> list[bytes | bytearray]:
    frames: list[bytes | bytearray] = []
    for piece in feed(data):
        frames.extend(decoder.receive_data(piece))
    return frames


def test_frame_header_is_four_bytes_big_endian() -> None:
    assert frame_header(0x01020304) == b"\x01\x02\x03\x04"
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_default_max_frame_is_one_mebibyte() -> None:
    assert DEFAULT_MAX_FRAME == 1 << 20
    assert FrameBuffer().max_frame == 1 << 20


@FEEDS
def test_frame_round_trips(feed: Feed) -> None:
    body = pack({"id": 1, "ok": True, "body": [1, 2, 3]})
    assert decode_all(FrameBuffer(), encode_frame(body), feed) == [body]


@FEEDS
def test_two_frames_in_one_read_are_both_returned_in_order(feed: Feed) -> None:
    data = encode_frame(b"first") + encode_frame(b"second")
    assert decode_all(FrameBuffer(), data, feed) == [b"first", b"second"]


def test_frame_split_across_reads_is_returned_once_complete() -> None:
    decoder = FrameBuffer()
    data = encode_frame(b"hello world")
    assert decoder.receive_data(data[:2]) == []
    assert decoder.receive_data(data[2:7]) == []
    assert decoder.receive_data(data[7:]) == [b"hello world"]


def test_tail_of_one_frame_and_head_of_the_next_in_one_read() -> None:
    decoder = FrameBuffer()
    data = encode_frame(b"one") + encode_frame(b"two")
    assert decoder.receive_data(data[:5]) == []
    assert decoder.receive_data(data[5:9]) == [b"one"]
    assert decoder.receive_data(data[9:]) == [b"two"]


def test_in_frame_is_true_only_while_a_frame_is_incomplete() -> None:
    decoder = FrameBuffer()
    assert not decoder.in_frame
    decoder.receive_data(b"\x00\x00")
    assert decoder.in_frame
    assert decoder.receive_data(b"\x00\x01") == []
    assert decoder.in_frame
    assert decoder.receive_data(b"x") == [b"x"]
    assert not decoder.in_frame


@FEEDS
def test_length_over_max_frame_is_refused_from_the_prefix_alone(feed: Feed) -> None:
    decoder = FrameBuffer(max_frame=100)
    with pytest.raises(FrameTooLarge):
        decode_all(decoder, frame_header(101), feed)


def test_length_over_max_frame_is_refused_before_the_body_is_buffered() -> None:
    decoder = FrameBuffer(max_frame=100)
    with pytest.raises(FrameTooLarge):
        decoder.receive_data(frame_header(2**32 - 1) + b"x" * 10)


@FEEDS
def test_frame_of_exactly_max_frame_bytes_is_accepted(feed: Feed) -> None:
    body = b"x" * 100
    assert decode_all(FrameBuffer(max_frame=100), encode_frame(body), feed) == [body]


@FEEDS
def test_zero_length_frame_is_refused(feed: Feed) -> None:
    with pytest.raises(BadFrame, match="empty"):
        decode_all(FrameBuffer(), frame_header(0), feed)


def test_many_small_frames_in_one_read() -> None:
    bodies = [str(i).encode() for i in range(10_000)]
    data = b"".join(encode_frame(b) for b in bodies)
    assert decode_all(FrameBuffer(), data, whole) == bodies


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.data())
def test_frames_survive_any_split_into_reads(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameBuffer(max_frame=300)
    frames: list[bytes | bytearray] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        frames.extend(decoder.receive_data(stream[start:end]))
    assert frames == bodies
    assert not decoder.in_frame


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.binary(max_size=2000)
    | st.lists(st.binary(max_size=200)).map(
        lambda bodies: b"".join(encode_frame(b) for b in bodies)
    )
)
def test_arbitrary_bytes_give_frames_or_only_the_documented_errors(data: bytes) -> None:
    decoder = FrameBuffer(max_frame=1024)
    try:
        for frame in decoder.receive_data(data):
            assert isinstance(unpack_map(bytes(frame), decoder.max_frame), dict)
    except (BadFrame, FrameTooLarge):
        pass


# --- FrameBuffer: receiving into handed-out buffers (asyncio.BufferedProtocol) -------------


def receive_into(fb: FrameBuffer, data: bytes, sizes: list[int]) -> list[bytes]:
    """Receive ``data`` as a transport would, at most ``sizes[i]`` bytes per buffer."""
    frames: list[bytes] = []
    pos, i = 0, 0
    while pos < len(data):
        buf = fb.get_buffer(-1)
        n = min(len(buf), sizes[i % len(sizes)], len(data) - pos)
        buf[:n] = data[pos : pos + n]
        pos += n
        i += 1
        frames.extend(bytes(f) for f in fb.buffer_updated(n))  # copied before the next read
    return frames


@pytest.mark.parametrize("sizes", [[1], [7, 3], [16384], [1 << 20]], ids=str)
def test_frame_buffer_returns_small_and_large_frames_whole_in_order(sizes: list[int]) -> None:
    bodies = [b"a", b"b" * 100, b"c" * OWN_BUFFER_AT, b"d" * 3000, b"e" * (256 << 10) + b"!"]
    data = b"".join(encode_frame(b) for b in bodies)
    fb = FrameBuffer()
    assert receive_into(fb, data, sizes) == bodies
    assert not fb.in_frame


def test_frame_buffer_gives_a_large_frame_its_own_buffer_filled_in_place() -> None:
    body = bytes(range(256)) * 1024  # 256 KiB
    data = encode_frame(body)
    fb = FrameBuffer()
    buf = fb.get_buffer(-1)
    buf[:1000] = data[:1000]
    assert fb.buffer_updated(1000) == []
    assert fb.in_frame
    rest = fb.get_buffer(-1)
    assert len(rest) == len(data) - 1000  # exactly the rest of the body, nothing beyond
    rest[:] = data[1000:]
    (frame,) = fb.buffer_updated(len(rest))
    assert type(frame) is bytearray and frame == body
    assert not fb.in_frame


def test_frame_buffer_refuses_a_length_over_max_frame_from_the_prefix_alone() -> None:
    fb = FrameBuffer(max_frame=100)
    buf = fb.get_buffer(-1)
    buf[:4] = frame_header(101)
    with pytest.raises(FrameTooLarge):
        fb.buffer_updated(4)


def test_frame_buffer_refuses_a_zero_length_frame_as_bad_frame() -> None:
    with pytest.raises(BadFrame, match="empty"):
        FrameBuffer().receive_data(frame_header(0))


@FEEDS
def test_frames_before_a_refused_prefix_are_returned_and_the_error_kept(feed: Feed) -> None:
    decoder = FrameBuffer(max_frame=100)
    data = encode_frame(b"one") + encode_frame(b"two") + frame_header(101)
    frames: list[bytes | bytearray] = []
    with pytest.raises(FrameTooLarge):
        for piece in feed(data):
            frames.extend(decoder.receive_data(piece))
        raise decoder.error or AssertionError("the refused prefix was not noticed")
    assert frames == [b"one", b"two"]
    assert isinstance(decoder.error, FrameTooLarge)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=300) | st.just(b"x" * (OWN_BUFFER_AT + 5)), max_size=6),
    st.lists(st.integers(1, 70_000), min_size=1, max_size=5),
)
def test_frame_buffer_survives_any_split_into_reads(bodies: list[bytes], sizes: list[int]) -> None:
    stream = b"".join(encode_frame(b) for b in bodies)
    fb = FrameBuffer()
    assert receive_into(fb, stream, sizes) == bodies
    assert not fb.in_frame


# --- FrameBuffer: memory follows the traffic (PROTOCOL.md §6) --------------------------------


def test_a_new_frame_buffer_holds_no_memory() -> None:
    assert FrameBuffer().allocated == 0


def test_release_drops_the_scratch_buffer_between_frames() -> None:
    fb = FrameBuffer()
    assert receive_into(fb, encode_frame(b"x" * 100), [1 << 20]) == [b"x" * 100]
    assert fb.allocated == SCRATCH
    fb.release()
    assert fb.allocated == 0
    assert receive_into(fb, encode_frame(b"again"), [1 << 20]) == [b"again"]


def test_release_keeps_an_incomplete_frame() -> None:
    fb = FrameBuffer()
    data = encode_frame(b"y" * 500)
    assert receive_into(fb, data[:100], [1 << 20]) == []
    fb.release()
    assert fb.allocated == SCRATCH and fb.in_frame
    assert receive_into(fb, data[100:], [1 << 20]) == [b"y" * 500]


@pytest.mark.parametrize("sizes", [[1], [5000], [1 << 20]], ids=str)
def test_the_scratch_buffer_grows_for_a_frame_under_own_buffer_at_then_shrinks_back(
    sizes: list[int],
) -> None:
    body = bytes(range(256)) * 160  # 40 KiB: over SCRATCH, under OWN_BUFFER_AT
    fb = FrameBuffer()
    assert receive_into(fb, encode_frame(body) + encode_frame(b"z"), sizes) == [body, b"z"]
    assert SCRATCH < fb.allocated <= OWN_BUFFER_AT + 4
    fb.release()
    assert fb.allocated == 0


def test_a_large_frame_holds_its_own_buffer_only_while_in_flight() -> None:
    fb = FrameBuffer()
    data = encode_frame(b"L" * (OWN_BUFFER_AT * 2))
    receive_into(fb, data[:1000], [1 << 20])
    fb.release()
    assert fb.allocated == OWN_BUFFER_AT * 2  # the scratch went; the frame's own stays
    assert receive_into(fb, data[1000:], [1 << 20]) == [b"L" * (OWN_BUFFER_AT * 2)]
    fb.release()
    assert fb.allocated == 0


@pytest.mark.parametrize("prefix", [bytes(4), (1 << 30).to_bytes(4, "big")], ids=["0", "1GiB"])
def test_after_a_refused_length_that_fills_the_buffer_get_buffer_is_never_empty(
    prefix: bytes,
) -> None:
    # An empty buffer would read as end of stream (TLS: the peer's close_notify), and the
    # error reply PROTOCOL.md §2 promises would never be sent.
    fb = FrameBuffer()
    buf = fb.get_buffer(-1)
    buf[:] = prefix + bytes(len(buf) - 4)
    with pytest.raises((BadFrame, FrameTooLarge)):
        fb.buffer_updated(len(buf))
    assert fb.error is not None
    assert len(fb.get_buffer(-1)) > 0
