"""Sans-I/O protocol endpoints: bytes in, typed messages out, frames to send out.

:class:`ServerProtocol` and :class:`ClientProtocol` hold no sockets and read no clocks; the
asyncio layer (:mod:`netproto.server`, :mod:`netproto.client`) feeds them bytes and writes
what they encode.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import msgpack

from netproto.codec import pack, unpack_map
from netproto.errors import BadFrame, RequestError
from netproto.framing import DEFAULT_MAX_FRAME, FrameDecoder, frame_header
from netproto.messages import (
    MAX_ID,
    Request,
    ServerMessage,
    error_map,
    parse_request,
    parse_server_message,
    reply_map,
    request_id,
    stream_end_map,
    stream_start_map,
)


def encode_message(msg: dict[str, Any]) -> bytes:
    """One frame holding ``msg``."""
    body = pack(msg)
    return frame_header(len(body)) + body


def encode_chunk(rid: int, data: bytes | memoryview) -> bytes:
    """One stream chunk frame, built with a single copy of ``data``."""
    # The map {"id": rid, "chunk": <bin>} written out by hand so the payload is copied once.
    prefix = b"\x82\xa2id" + pack(rid) + b"\xa5chunk\xc6" + len(data).to_bytes(4, "big")
    return b"".join((frame_header(len(prefix) + len(data)), prefix, data))


@dataclass(frozen=True, slots=True)
class Unreadable:
    """The stream cannot be read past this point: answer with id 0, then close."""

    error: RequestError


@dataclass(frozen=True, slots=True)
class Rejected:
    """A well-framed request the server answers with an error without dispatching it."""

    id: int
    error: RequestError


class ServerProtocol:
    """The server side of one connection: decodes requests, encodes answers."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._decoder = FrameDecoder(max_frame)
        self.max_frame = max_frame

    @property
    def in_frame(self) -> bool:
        """True while a frame has started arriving but is not complete."""
        return self._decoder.in_frame

    def receive_data(self, data: bytes) -> list[Request | Rejected | Unreadable]:
        """Feed received bytes; return the requests (or rejections) they completed.

        When the stream cannot be read any further (:class:`BadFrame`,
        :class:`FrameTooLarge`) the last event is :class:`Unreadable`: the requests before it
        are still answered, then the caller answers with id 0 and closes the connection.
        """
        self._decoder.receive_data(data)
        events: list[Request | Rejected | Unreadable] = []
        try:
            for frame in self._decoder.frames():
                msg = unpack_map(frame, self.max_frame)
                try:
                    events.append(parse_request(msg))
                except RequestError as exc:
                    if exc.closes_connection:
                        raise
                    events.append(Rejected(request_id(msg), exc))
        except RequestError as exc:
            events.append(Unreadable(exc))
        return events

    @staticmethod
    def reply(rid: int, body: Any) -> bytes:
        """Encode a success reply."""
        return encode_message(reply_map(rid, body))

    @staticmethod
    def reply_packed(rid: int, packed_body: bytes) -> bytes:
        """Encode a success reply whose body is already msgpack-encoded (one copy, no re-pack)."""
        # The map {"id": rid, "ok": true, "body": <packed_body>} written out by hand.
        prefix = b"\x83\xa2id" + pack(rid) + b"\xa2ok\xc3\xa4body"
        return b"".join((frame_header(len(prefix) + len(packed_body)), prefix, packed_body))

    @staticmethod
    def error(rid: int, error: RequestError) -> bytes:
        """Encode an error reply."""
        return encode_message(error_map(rid, error))

    @staticmethod
    def stream_start(rid: int, header: Any) -> bytes:
        """Encode the header frame of a stream."""
        return encode_message(stream_start_map(rid, header))

    @staticmethod
    def stream_end(rid: int, trailer: Any) -> bytes:
        """Encode the trailer frame of a stream."""
        return encode_message(stream_end_map(rid, trailer))


class ClientProtocol:
    """The client side of one connection: numbers requests, decodes answers."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._decoder = FrameDecoder(max_frame)
        self._ids = itertools.cycle(range(1, MAX_ID + 1))
        self.max_frame = max_frame

    def next_id(self) -> int:
        """A fresh request id (wraps after 2^32-1; ids in flight are the caller's to skip)."""
        return next(self._ids)

    def request(self, request: Request) -> bytes:
        """Encode a request; raise :class:`BadFrame` if it would exceed ``max_frame``."""
        try:
            data = encode_message(request.to_wire())
        except (TypeError, ValueError, OverflowError, msgpack.PackException) as exc:
            raise BadFrame(f"request cannot be encoded: {exc}") from exc
        if len(data) - 4 > self.max_frame:
            raise BadFrame(f"request of {len(data) - 4} bytes exceeds the frame limit")
        return data

    def receive_data(self, data: bytes) -> list[ServerMessage]:
        """Feed received bytes; return the server messages they completed."""
        self._decoder.receive_data(data)
        return [parse_server_message(unpack_map(f, self.max_frame)) for f in self._decoder.frames()]
