"""The envelope (PROTOCOL.md §3): requests, replies, errors and stream frames.

Parsing turns a decoded msgpack map into one of the frozen dataclasses below, or raises the
documented error. Encoding goes the other way. Operation bodies are typed in
:mod:`netproto.operations`; here a body is still a plain map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

from netproto.errors import BadFrame, BadRequest, RequestError, UnsupportedVersion

PROTOCOL_VERSION = 1
MAX_ID = 2**32 - 1
MAX_OP_LEN = 64


@dataclass(frozen=True, slots=True)
class Request:
    """A client's request: operation name, body map and optional token."""

    id: int
    op: str
    body: dict[str, Any]
    token: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The envelope map."""
        msg: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": self.id, "op": self.op}
        msg["body"] = self.body
        if self.token is not None:
            msg["token"] = self.token
        return msg


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful single reply."""

    id: int
    body: Any


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error answer; ``error`` is the typed exception rebuilt from the code."""

    id: int
    error: RequestError


@dataclass(frozen=True, slots=True)
class StreamStart:
    """First frame of a stream: the header."""

    id: int
    body: Any


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One chunk of stream data (a view into the receive buffer: no copy on the chunk path)."""

    id: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """Last frame of a stream: the trailer."""

    id: int
    trailer: Any


ServerMessage = Reply | ErrorReply | StreamStart | StreamChunk | StreamEnd


def _valid_id(value: Any) -> TypeGuard[int]:
    return type(value) is int and 1 <= value <= MAX_ID


def parse_request(msg: dict[str, Any]) -> Request:
    """Read a request envelope.

    Raises :class:`BadFrame` (answered with id 0, connection closed) when ``id`` or ``op`` is
    missing or malformed; otherwise errors carry the request's id via :func:`request_id`.
    """
    rid = msg.get("id")
    if not _valid_id(rid):
        raise BadFrame("missing or malformed request id")
    op = msg.get("op")
    if type(op) is not str or not 0 < len(op) <= MAX_OP_LEN:
        raise BadFrame("missing or malformed op")
    v = msg.get("v")
    if type(v) is not int:
        raise BadRequest("v: expected an integer protocol version")
    if v != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"protocol version {v} is not supported (this server speaks 1)")
    body = msg.get("body")
    if type(body) is not dict:
        raise BadRequest("body: expected a map")
    token = msg.get("token")
    if token is not None and type(token) is not str:
        raise BadRequest("token: expected a string")
    extra = msg.keys() - {"v", "id", "op", "body", "token"}
    if extra:
        raise BadRequest(f"unknown envelope field {sorted(extra)[0]!r}")
    return Request(rid, op, body, token)


def request_id(msg: dict[str, Any]) -> int:
    """The id to answer a request with: its own if well-formed, else 0."""
    rid = msg.get("id")
    return rid if _valid_id(rid) else 0


def reply_map(rid: int, body: Any) -> dict[str, Any]:
    """A success reply."""
    return {"id": rid, "ok": True, "body": body}


def error_map(rid: int, error: RequestError) -> dict[str, Any]:
    """An error reply."""
    return {"id": rid, "ok": False, "error": error.to_wire()}


def stream_start_map(rid: int, header: Any) -> dict[str, Any]:
    """The first frame of a stream."""
    return {"id": rid, "ok": True, "stream": True, "body": header}


def stream_end_map(rid: int, trailer: Any) -> dict[str, Any]:
    """The last frame of a stream."""
    return {"id": rid, "end": trailer}


def parse_server_message(msg: dict[str, Any]) -> ServerMessage:
    """Read a frame sent by a server, or raise :class:`BadFrame`."""
    rid = msg.get("id")
    if type(rid) is not int or not 0 <= rid <= MAX_ID:
        raise BadFrame("server frame without a valid id")
    if "chunk" in msg:
        data = msg["chunk"]
        if type(data) is not bytes:
            raise BadFrame("chunk must be bin")
        return StreamChunk(rid, data)
    if "end" in msg:
        return StreamEnd(rid, msg["end"])
    ok = msg.get("ok")
    if ok is True:
        if "body" not in msg:
            raise BadFrame("reply without a body")
        if msg.get("stream") is True:
            return StreamStart(rid, msg["body"])
        return Reply(rid, msg["body"])
    if ok is False:
        return ErrorReply(rid, RequestError.from_wire(msg.get("error")))
    raise BadFrame("server frame is neither a reply, an error nor a stream frame")
