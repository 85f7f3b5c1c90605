"""Sans-I/O protocol endpoints: bytes in, typed messages out, frames to send out.

:class:`ServerProtocol` and :class:`ClientProtocol` hold no sockets and read no clocks; the
asyncio layer (:mod:`netproto.connection`) hands out their buffers to the transport, and
writes what they encode.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from netproto.codec import pack, unpack_map
from netproto.errors import LocalProtocolError, RequestError
from netproto.framing import DEFAULT_MAX_FRAME, FrameBuffer, frame_header
from netproto.messages import (
    MAX_ID,
    PROTOCOL_VERSION,
    Request,
    ServerMessage,
    StreamChunk,
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


def encode_chunk_head(rid: int, size: int) -> bytes:
    """The start of a stream chunk frame whose ``size`` payload bytes follow as they are.

    The map ``{"id": rid, "chunk": <bin 32>}`` written out by hand, so that a writer can send
    the payload straight from where it lies, without copying it into one frame first.
    """
    prefix = b"\x82\xa2id" + pack(rid) + b"\xa5chunk\xc6" + size.to_bytes(4, "big")
    return frame_header(len(prefix) + size) + prefix


@dataclass(frozen=True, slots=True)
class Unreadable:
    """The stream cannot be read past this point: answer with id 0, then close."""

    error: RequestError


@dataclass(frozen=True, slots=True)
class Rejected:
    """A well-framed request the server answers with an error without dispatching it."""

    id: int
    error: RequestError


class HeldFrames:
    """Frames written in one event-loop turn, kept to be encrypted and sent together."""

    def __init__(self) -> None:
        self._frames: list[bytes] = []
        #: Bytes held now.
        self.nbytes = 0

    def hold(self, frame: bytes) -> int:
        """Keep ``frame``; return the bytes now held."""
        self._frames.append(frame)
        self.nbytes += len(frame)
        return self.nbytes

    def take(self) -> tuple[bytes, ...]:
        """What is held, joined (nothing: an empty tuple); nothing is held after."""
        frames = self._frames
        if not frames:
            return ()
        joined = frames[0] if len(frames) == 1 else b"".join(frames)
        self.discard()
        return (joined,)

    def discard(self) -> None:
        """Forget what is held."""
        self._frames = []
        self.nbytes = 0


class _Receiving:
    """What both endpoints share: the frame buffer bytes are received into."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._frames = FrameBuffer(max_frame)
        self.max_frame = max_frame
        self._stopped = False

    @property
    def in_frame(self) -> bool:
        """True while a frame has started arriving but is not complete."""
        return self._frames.in_frame

    @property
    def accepting(self) -> bool:
        """False once nothing more is read: after a refused frame length, or :meth:`stop`."""
        return not self._stopped and self._frames.error is None

    def stop(self) -> None:
        """Read nothing more (the connection stopped reading for good)."""
        self._stopped = True

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where to receive the next bytes into (see :class:`FrameBuffer`)."""
        return self._frames.get_buffer(sizehint)

    def release(self) -> None:
        """Drop the receive buffer between reads unless a frame is incomplete."""
        self._frames.release()

    @property
    def allocated(self) -> int:
        """Bytes of receive buffer held now (none while idle: PROTOCOL.md §6)."""
        return self._frames.allocated


class ServerProtocol(_Receiving):
    """The server side of one connection: decodes requests, encodes answers."""

    def buffer_updated(self, nbytes: int) -> list[Request | Rejected | Unreadable]:
        """``nbytes`` arrived in the last :meth:`get_buffer`; return the events completed.

        When the stream cannot be read any further (:class:`BadFrame`,
        :class:`FrameTooLarge`) the last event is :class:`Unreadable`: the requests before it
        are still answered, then the caller answers with id 0 and closes the connection.
        """
        try:
            return self._events(self._frames.buffer_updated(nbytes))
        except RequestError as exc:
            return [Unreadable(exc)]

    def receive_data(self, data: bytes) -> list[Request | Rejected | Unreadable]:
        """Feed bytes received elsewhere; return the events they completed (as above)."""
        try:
            return self._events(self._frames.receive_data(data))
        except RequestError as exc:
            return [Unreadable(exc)]

    def _events(
        self, frames: list[memoryview | bytearray] | list[bytes | bytearray]
    ) -> list[Request | Rejected | Unreadable]:
        events: list[Request | Rejected | Unreadable] = []
        try:
            for frame in frames:
                msg = unpack_map(frame, self.max_frame)  # type: ignore[arg-type]
                try:
                    events.append(parse_request(msg))
                except RequestError as exc:
                    if exc.closes_connection:
                        raise
                    events.append(Rejected(request_id(msg), exc))
        except RequestError as exc:
            events.append(Unreadable(exc))
            return events
        if self._frames.error is not None:
            events.append(Unreadable(self._frames.error))
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


class ClientProtocol(_Receiving):
    """The client side of one connection: numbers requests, decodes answers."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        super().__init__(max_frame)
        self._ids = itertools.cycle(range(1, MAX_ID + 1))

    def next_id(self, in_use: Callable[[int], bool] = lambda rid: False) -> int:
        """A fresh request id (wraps after 2^32-1), skipping those ``in_use`` says are."""
        rid = next(self._ids)
        while in_use(rid):
            rid = next(self._ids)
        return rid

    def request(self, request: Request) -> bytes:
        """Encode a request; raise :class:`LocalProtocolError` if it cannot be sent."""
        return self.encode_request(request.id, request.op, request.body, request.token)

    def encode_request(self, rid: int, op: str, body: dict[str, Any], token: str | None) -> bytes:
        """Encode the request envelope of PROTOCOL.md §3 (what :meth:`request` does, without
        building a :class:`Request` first); raise :class:`LocalProtocolError` if it cannot be
        encoded or exceeds ``max_frame`` (our fault: nothing is sent)."""
        msg: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": rid, "op": op, "body": body}
        if token is not None:
            msg["token"] = token
        try:
            data = encode_message(msg)
        except (TypeError, ValueError, OverflowError, msgpack.PackException) as exc:
            raise LocalProtocolError(f"request cannot be encoded: {exc}") from exc
        if len(data) - 4 > self.max_frame:
            raise LocalProtocolError(f"request of {len(data) - 4} bytes exceeds the frame limit")
        return data

    def receive_data(self, data: bytes) -> list[ServerMessage]:
        """Feed received bytes; return the server messages they completed."""
        return [self._message(f) for f in self._frames.receive_data(data)]

    def buffer_updated(self, nbytes: int) -> list[ServerMessage]:
        """``nbytes`` arrived in the last :meth:`get_buffer`; return the messages completed.

        A stream chunk that arrived in a buffer of its own is returned as a view of it, not
        copied (its ``data`` is then a :class:`memoryview`).
        """
        return [self._message(f) for f in self._frames.buffer_updated(nbytes)]

    def _message(self, frame: bytes | bytearray | memoryview) -> ServerMessage:
        if type(frame) is bytearray:  # a frame with a buffer of its own
            chunk = _chunk_frame(frame)
            if chunk is not None:
                return chunk
        return parse_server_message(unpack_map(frame, self.max_frame))  # type: ignore[arg-type]


_CHUNK_HEAD = b"\x82\xa2id"
_CHUNK_KEY = b"\xa5chunk\xc6"


def _chunk_frame(frame: bytearray | memoryview) -> StreamChunk | None:
    """A chunk frame laid out exactly as :func:`encode_chunk` writes it, read without copying
    its payload; None for anything else (which then goes through the strict codec)."""
    if len(frame) < 16 or bytes(frame[:4]) != _CHUNK_HEAD:
        return None
    lead = frame[4]
    if lead < 0x80:  # {"id": <uint>, ...} in any of msgpack's unsigned encodings
        rid, pos = lead, 5
    elif lead == 0xCC:
        rid, pos = frame[5], 6
    elif lead == 0xCD:
        rid, pos = int.from_bytes(frame[5:7], "big"), 7
    elif lead == 0xCE:
        rid, pos = int.from_bytes(frame[5:9], "big"), 9
    else:
        return None
    if bytes(frame[pos : pos + 7]) != _CHUNK_KEY:
        return None
    start = pos + 11
    if start + int.from_bytes(frame[pos + 7 : start], "big") != len(frame):
        return None
    return StreamChunk(rid, memoryview(frame)[start:])
