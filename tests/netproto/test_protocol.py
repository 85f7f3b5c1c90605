"""netproto.protocol (sans-I/O endpoints), golden frames, the fetch signature, and PROTOCOL.md.

Golden frames in ``tests/golden/*.bin`` pin the wire bytes: a change to the encoder that
changes them is a change to the protocol.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netproto.codec import pack, unpack_map
from netproto.errors import (
    BadFrame,
    FrameTooLarge,
    LocalProtocolError,
    NotFound,
    RateLimited,
    UnsupportedVersion,
)
from netproto.framing import encode_frame, frame_header
from netproto.messages import (
    ErrorReply,
    Reply,
    Request,
    StreamChunk,
    StreamEnd,
    StreamStart,
)
from netproto.operations import FetchHeader, FetchTrailer, ListedFile, SearchHit
from netproto.protocol import (
    ClientProtocol,
    HeldFrames,
    Rejected,
    ServerProtocol,
    Unreadable,
    encode_chunk_head,
    encode_message,
)
from netproto.signing import (
    SIGNATURE_CONTEXT,
    fetch_signature_valid,
    fetch_signing_payload,
    sign_fetch,
)

GOLDEN = Path(__file__).parent / "golden"
PROTOCOL_MD = Path(__file__).resolve().parents[2] / "PROTOCOL.md"

Feed = Callable[[bytes], Iterator[bytes]]


def whole(data: bytes) -> Iterator[bytes]:
    yield data


def byte_by_byte(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


FEEDS = pytest.mark.parametrize("feed", [whole, byte_by_byte], ids=["whole", "byte by byte"])


def chunk_frame(rid: int, data: bytes | memoryview) -> bytes:
    """A whole stream chunk frame, as the server sends it in two parts."""
    return encode_chunk_head(rid, len(data)) + bytes(data)


def server_events(data: bytes, feed: Feed) -> list[Request | Rejected | Unreadable]:
    protocol = ServerProtocol()
    events: list[Request | Rejected | Unreadable] = []
    for piece in feed(data):
        events.extend(protocol.receive_data(piece))
        if events and isinstance(events[-1], Unreadable):
            break  # the server stops reading the connection here
    return events


def client_messages(data: bytes, feed: Feed) -> list[Any]:
    protocol = ClientProtocol()
    messages: list[Any] = []
    for piece in feed(data):
        messages.extend(protocol.receive_data(piece))
    return messages


# --- the server side -----------------------------------------------------------------------


@FEEDS
def test_server_decodes_pipelined_requests_in_order(feed: Feed) -> None:
    requests = [Request(i, "search", {"keyword": f"k{i}"}, "tok") for i in range(1, 6)]
    data = b"".join(encode_message(r.to_wire()) for r in requests)
    assert server_events(data, feed) == requests


@FEEDS
def test_server_rejects_a_bad_envelope_and_keeps_decoding(feed: Feed) -> None:
    data = encode_message({"v": 9, "id": 4, "op": "ping", "body": {}}) + encode_message(
        Request(5, "ping", {}).to_wire()
    )
    first, second = server_events(data, feed)
    assert isinstance(first, Rejected)
    assert first.id == 4
    assert isinstance(first.error, UnsupportedVersion)
    assert second == Request(5, "ping", {})


@FEEDS
def test_server_ends_with_bad_frame_for_an_unreadable_frame(feed: Feed) -> None:
    events = server_events(encode_frame(pack({"v": 1, "op": "ping", "body": {}})), feed)
    assert len(events) == 1
    assert isinstance(events[0], Unreadable)
    assert isinstance(events[0].error, BadFrame)


@FEEDS
def test_server_ends_with_frame_too_large_from_the_prefix(feed: Feed) -> None:
    events = server_events(frame_header((1 << 20) + 1), feed)
    assert len(events) == 1
    assert isinstance(events[0], Unreadable)
    assert isinstance(events[0].error, FrameTooLarge)


@FEEDS
def test_server_keeps_requests_read_before_an_unreadable_frame(feed: Feed) -> None:
    data = encode_message(Request(3, "ping", {}).to_wire()) + encode_frame(b"\xc1")
    events = server_events(data, feed)
    assert events[0] == Request(3, "ping", {})
    assert isinstance(events[1], Unreadable)
    assert isinstance(events[1].error, BadFrame)


def test_server_in_frame_follows_a_partial_frame() -> None:
    protocol = ServerProtocol()
    data = encode_message(Request(1, "ping", {}).to_wire())
    assert protocol.receive_data(data[:4]) == []
    assert protocol.in_frame
    assert protocol.receive_data(data[4:]) == [Request(1, "ping", {})]
    assert not protocol.in_frame


# --- the client side -----------------------------------------------------------------------


def test_client_numbers_requests_from_1() -> None:
    protocol = ClientProtocol()
    assert [protocol.next_id() for _ in range(3)] == [1, 2, 3]


def test_client_encodes_a_request_as_one_frame() -> None:
    request = Request(1, "search", {"keyword": "koala"})
    data = ClientProtocol().request(request)
    assert data[:4] == frame_header(len(data) - 4)
    assert unpack_map(data[4:]) == request.to_wire()


def test_client_refuses_to_encode_a_request_over_max_frame_as_its_own_fault() -> None:
    with pytest.raises(LocalProtocolError, match="exceeds"):
        ClientProtocol(max_frame=100).request(Request(1, "echo", {"pad": "x" * 100}))


def test_client_refuses_to_encode_an_unencodable_body_as_its_own_fault() -> None:
    with pytest.raises(LocalProtocolError, match="cannot be encoded"):
        ClientProtocol().request(Request(1, "echo", {"set": {1, 2}}))


@FEEDS
def test_client_decodes_every_kind_of_server_message(feed: Feed) -> None:
    data = b"".join(
        [
            ServerProtocol.reply(1, {"files": 3}),
            ServerProtocol.error(2, NotFound("nothing here")),
            ServerProtocol.stream_start(3, {"size": 4}),
            chunk_frame(3, b"data"),
            ServerProtocol.stream_end(3, {"sha256": b"x"}),
        ]
    )
    reply, error, start, chunk, end = client_messages(data, feed)
    assert reply == Reply(1, {"files": 3})
    assert isinstance(error, ErrorReply)
    assert (error.id, type(error.error), error.error.message) == (2, NotFound, "nothing here")
    assert start == StreamStart(3, {"size": 4})
    assert chunk == StreamChunk(3, b"data")
    assert end == StreamEnd(3, {"sha256": b"x"})


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 256 << 10])
def test_hand_built_chunk_frame_decodes_like_an_encoded_one(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = chunk_frame(7, memoryview(data))
    assert frame[:4] == frame_header(len(frame) - 4)
    assert unpack_map(frame[4:]) == {"id": 7, "chunk": data}


@pytest.mark.parametrize("rid", [1, 127, 128, 65536, 2**32 - 1])
def test_chunk_frame_carries_any_request_id(rid: int) -> None:
    assert client_messages(chunk_frame(rid, b"x"), whole) == [StreamChunk(rid, b"x")]


@pytest.mark.parametrize("body", [None, [1, 2], {"hits": [{"a": b"b"}]}, "text"])
def test_prepacked_reply_is_byte_identical_to_an_encoded_one(body: Any) -> None:
    assert ServerProtocol.reply_packed(9, pack(body)) == ServerProtocol.reply(9, body)


# --- golden frames -------------------------------------------------------------------------

CONTENT = b"hello koala"
DIGEST = hashlib.sha256(CONTENT).digest()
NONCE = bytes(range(32))
# A fixed key makes the Ed25519 signature in the golden trailer deterministic.
GOLDEN_KEY = Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
GOLDEN_PAYLOAD = fetch_signing_payload(
    signer="peer1",
    requester="alice",
    keyword="koala",
    file_name="koala.txt",
    size=len(CONTENT),
    sha256=DIGEST,
    nonce=NONCE,
)
GOLDEN_SIGNATURE = sign_fetch(GOLDEN_KEY, GOLDEN_PAYLOAD)

SEARCH_REQUEST = Request(1, "search", {"keyword": "koala"}, token="header.payload.signature")
SEARCH_HITS = [SearchHit("peer1", 7001, "127.0.0.1", (ListedFile("koala.txt", 11, DIGEST),))]
FETCH_HEADER = FetchHeader("koala", "koala.txt", len(CONTENT), 0)
FETCH_TRAILER = FetchTrailer(len(CONTENT), DIGEST, NONCE, GOLDEN_SIGNATURE, "peer1")

SERVER_GOLDEN: dict[str, tuple[bytes, Any]] = {
    "search_reply.bin": (
        ServerProtocol.reply(1, [hit.to_wire() for hit in SEARCH_HITS]),
        Reply(1, [hit.to_wire() for hit in SEARCH_HITS]),
    ),
    "error_rate_limited.bin": (
        ServerProtocol.error(2, RateLimited("too many attempts, retry later", retry_after=30)),
        None,  # compared field by field below: exceptions do not compare equal
    ),
    "error_bad_frame.bin": (ServerProtocol.error(0, BadFrame("frame is not valid msgpack")), None),
    "fetch_header.bin": (
        ServerProtocol.stream_start(3, FETCH_HEADER.to_wire()),
        StreamStart(3, FETCH_HEADER.to_wire()),
    ),
    "fetch_chunk.bin": (chunk_frame(3, CONTENT), StreamChunk(3, CONTENT)),
    "fetch_trailer.bin": (
        ServerProtocol.stream_end(3, FETCH_TRAILER.to_wire()),
        StreamEnd(3, FETCH_TRAILER.to_wire()),
    ),
}


def test_golden_search_request_matches_the_encoder_and_decodes_back() -> None:
    golden = (GOLDEN / "search_request.bin").read_bytes()
    assert ClientProtocol().request(SEARCH_REQUEST) == golden
    assert server_events(golden, whole) == [SEARCH_REQUEST]


@pytest.mark.parametrize("name", SERVER_GOLDEN)
def test_golden_server_frame_matches_the_encoder(name: str) -> None:
    encoded, _ = SERVER_GOLDEN[name]
    assert encoded == (GOLDEN / name).read_bytes()


@pytest.mark.parametrize("name", [n for n, (_, parsed) in SERVER_GOLDEN.items() if parsed])
def test_golden_server_frame_decodes_back(name: str) -> None:
    _, parsed = SERVER_GOLDEN[name]
    assert client_messages((GOLDEN / name).read_bytes(), byte_by_byte) == [parsed]


def test_golden_errors_decode_to_their_classes() -> None:
    [limited] = client_messages((GOLDEN / "error_rate_limited.bin").read_bytes(), whole)
    [bad] = client_messages((GOLDEN / "error_bad_frame.bin").read_bytes(), whole)
    assert isinstance(limited.error, RateLimited)
    assert (limited.id, limited.error.retry_after) == (2, 30)
    assert isinstance(bad.error, BadFrame)
    assert bad.id == 0


def test_golden_fetch_frames_validate_as_typed_bodies() -> None:
    [start] = client_messages((GOLDEN / "fetch_header.bin").read_bytes(), whole)
    [end] = client_messages((GOLDEN / "fetch_trailer.bin").read_bytes(), whole)
    assert FetchHeader.from_wire(start.body) == FETCH_HEADER
    assert FetchTrailer.from_wire(end.trailer) == FETCH_TRAILER


# --- the fetch signature (PROTOCOL.md §7) --------------------------------------------------


def test_signing_payload_is_the_context_then_the_msgpack_array_in_order() -> None:
    expected = b"p2pshare/1 fetch\n" + pack(
        ["peer1", "alice", "koala", "koala.txt", 11, DIGEST, NONCE]
    )
    assert SIGNATURE_CONTEXT == b"p2pshare/1 fetch\n"
    assert expected == GOLDEN_PAYLOAD


def test_golden_trailer_signature_verifies_under_the_signers_public_key() -> None:
    [end] = client_messages((GOLDEN / "fetch_trailer.bin").read_bytes(), whole)
    signature = end.trailer["digital_signature"]
    assert fetch_signature_valid(GOLDEN_KEY.public_key(), signature, GOLDEN_PAYLOAD)


@pytest.mark.parametrize(
    "field,value",
    [
        ("signer", "peer2"),
        ("requester", "mallory"),
        ("keyword", "koalas"),
        ("file_name", "koala.txt2"),
        ("size", 12),
        ("sha256", bytes(32)),
        ("nonce", bytes(32)),
    ],
)
def test_signature_does_not_verify_for_any_other_field_value(field: str, value: Any) -> None:
    fields: dict[str, Any] = {
        "signer": "peer1",
        "requester": "alice",
        "keyword": "koala",
        "file_name": "koala.txt",
        "size": 11,
        "sha256": DIGEST,
        "nonce": NONCE,
        field: value,
    }
    payload = fetch_signing_payload(**fields)
    assert not fetch_signature_valid(GOLDEN_KEY.public_key(), GOLDEN_SIGNATURE, payload)


def test_signature_does_not_verify_under_another_key() -> None:
    other = Ed25519PrivateKey.generate().public_key()
    assert not fetch_signature_valid(other, GOLDEN_SIGNATURE, GOLDEN_PAYLOAD)


# --- PROTOCOL.md ---------------------------------------------------------------------------


def _worked_example_hex() -> bytes:
    """The bytes of the ```hex block in PROTOCOL.md (annotations after '#' ignored)."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    match = re.search(r"^```hex\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert match is not None, "PROTOCOL.md has no ```hex block"
    tokens: list[str] = []
    for line in match.group(1).splitlines():
        tokens.extend(line.split("#", 1)[0].split())
    assert all(re.fullmatch(r"[0-9a-f]{2}", t) for t in tokens), tokens
    return bytes.fromhex("".join(tokens))


def test_protocol_md_worked_example_is_what_the_encoder_sends() -> None:
    request = Request(1, "search", {"keyword": "koala"})
    assert _worked_example_hex() == ClientProtocol().request(request)


# --- fast paths: whole requests at once, chunks received in place ----------------------------


def _request_frame(rid: int, keyword: str = "koala") -> bytes:
    return ClientProtocol().request(Request(rid, "search", {"keyword": keyword}, "t"))


def test_requests_before_an_unreadable_frame_come_out_before_it() -> None:
    data = _request_frame(1) + _request_frame(2, "horse") + frame_header(2 << 20)
    protocol = ServerProtocol()
    buf = protocol.get_buffer(-1)
    buf[: len(data)] = data
    *requests, last = protocol.buffer_updated(len(data))
    assert [cast(Request, r).id for r in requests] == [1, 2]
    assert isinstance(last, Unreadable) and isinstance(last.error, FrameTooLarge)


def test_a_bad_envelope_is_rejected_with_its_id_and_reading_goes_on() -> None:
    data = encode_frame(pack({"v": 9, "id": 5, "op": "search", "body": {}})) + _request_frame(6)
    rejected, request = ServerProtocol().receive_data(data)
    assert isinstance(rejected, Rejected) and rejected.id == 5
    assert isinstance(rejected.error, UnsupportedVersion)
    assert isinstance(request, Request) and request.id == 6


def _receive_into(protocol: ClientProtocol, data: bytes, step: int) -> list[Any]:
    messages: list[Any] = []
    pos = 0
    while pos < len(data):
        buf = protocol.get_buffer(-1)
        n = min(len(buf), step, len(data) - pos)
        buf[:n] = data[pos : pos + n]
        pos += n
        messages.extend(protocol.buffer_updated(n))
    return messages


@pytest.mark.parametrize("rid", [7, 200, 40_000, 2**32 - 1])
def test_a_large_chunk_received_in_place_is_a_view_of_its_own_buffer(rid: int) -> None:
    payload = bytes(range(256)) * 1024
    data = ServerProtocol.reply(1, "x") + chunk_frame(rid, payload) + chunk_frame(rid, b"tail")
    reply, chunk, tail = _receive_into(ClientProtocol(), data, 16384)
    assert reply == Reply(1, "x")
    assert isinstance(chunk.data, memoryview) and chunk == StreamChunk(rid, payload)
    assert tail == StreamChunk(rid, b"tail") and type(tail.data) is bytes


def test_a_chunk_frame_laid_out_otherwise_goes_through_the_strict_codec() -> None:
    payload = b"p" * (100 << 10)
    reordered = encode_frame(pack({"chunk": payload, "id": 3}))
    (chunk,) = _receive_into(ClientProtocol(), reordered, 1 << 20)
    assert chunk == StreamChunk(3, payload)
    trailing = encode_frame(chunk_frame(3, payload)[4:] + b"\x00")
    with pytest.raises(BadFrame):
        _receive_into(ClientProtocol(), trailing, 1 << 20)


def test_held_frames_leave_joined_once_and_then_nothing_is_held() -> None:
    held = HeldFrames()
    assert held.take() == ()
    assert held.hold(b"ab") == 2 and held.hold(b"cde") == 5
    assert held.take() == (b"abcde",)
    assert held.nbytes == 0 and held.take() == ()
    held.hold(b"x")
    held.discard()
    assert held.take() == () and held.nbytes == 0


def test_an_endpoint_stops_accepting_after_a_refused_length_or_stop() -> None:
    server, client = ServerProtocol(), ClientProtocol()
    assert server.accepting and client.accepting
    assert [type(e) for e in server.receive_data(bytes(4))] == [Unreadable]
    assert not server.accepting
    client.stop()
    assert not client.accepting
