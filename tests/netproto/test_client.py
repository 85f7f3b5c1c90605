"""netproto.client.Connection: pipelining, matching answers by id, streams, typed errors.

Most tests talk to a real :class:`netproto.server.Server` on loopback; a few use a scripted
TLS server that writes exactly the frames a test needs (out of order, id 0, garbage).
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from netproto.client import Connection, ResponseStream
from netproto.codec import pack, unpack_map
from netproto.errors import (
    BadRequest,
    Busy,
    ConnectionClosed,
    Internal,
    LocalProtocolError,
    NotFound,
    RemoteProtocolError,
    Timeout,
)
from netproto.framing import encode_frame
from netproto.server import Operation, RequestContext, Server, StreamReply

TIMEOUT = 10.0
HOST = "127.0.0.1"


def _body(body: dict[str, Any]) -> dict[str, Any]:
    return body


async def _echo(ctx: RequestContext, body: dict[str, Any]) -> Any:
    return body


async def _delay(ctx: RequestContext, body: dict[str, Any]) -> Any:
    await asyncio.sleep(body["seconds"])
    return body


class _StreamFailure(Exception):
    """Raised by a chunk generator to simulate a bug mid-stream."""


async def _chunks(
    count: int, size: int, fail_at: int | None, crash: bool, pause: float
) -> AsyncIterator[bytes]:
    for i in range(count):
        if i == fail_at:
            if crash:
                raise _StreamFailure("disk on fire")
            raise NotFound("file vanished mid-stream")
        yield bytes([65 + i % 26]) * size
        await asyncio.sleep(pause)


async def _stream(ctx: RequestContext, body: dict[str, Any]) -> Any:
    count, size = body["count"], body["size"]
    chunks = _chunks(
        count, size, body.get("fail_at"), body.get("crash", False), body.get("pause", 0)
    )
    return StreamReply({"name": "koala.txt"}, chunks, lambda: {"size": count * size})


#: Set by the endless stream's generator when it is closed (its finally ran).
ENDLESS_CLOSED: list[asyncio.Event] = []


async def _endless_chunks(closed: asyncio.Event) -> AsyncIterator[bytes]:
    try:
        while True:
            yield b"j" * 4096
            await asyncio.sleep(0.001)
    finally:
        closed.set()


async def _endless(ctx: RequestContext, body: dict[str, Any]) -> Any:
    closed = asyncio.Event()
    ENDLESS_CLOSED.append(closed)
    return StreamReply({"name": "endless"}, _endless_chunks(closed), dict)


async def _endless_slow(ctx: RequestContext, body: dict[str, Any]) -> Any:
    await asyncio.sleep(0.2)
    return await _endless(ctx, body)


OPERATIONS: dict[str, Operation[Any]] = {
    "echo": Operation(_body, _echo, needs_token=False),
    "delay": Operation(_body, _delay, needs_token=False),
    "stream": Operation(_body, _stream, needs_token=False),
    "endless": Operation(_body, _endless, needs_token=False),
    "endless_slow": Operation(_body, _endless_slow, needs_token=False),
}


@pytest_asyncio.fixture(loop_scope="function")
async def conn(pki: Any) -> AsyncIterator[Connection]:
    """A client connected to a fresh server of the operations above."""
    server = Server(OPERATIONS, pki.server_ctx("indexd"), name="test")
    await asyncio.wait_for(server.start(HOST, 0), TIMEOUT)
    connection = await Connection.open(
        HOST, server.port, pki.client_ctx(), server_hostname="indexd"
    )
    yield connection
    await asyncio.wait_for(connection.close(), TIMEOUT)
    await asyncio.wait_for(server.close(grace=0.5), TIMEOUT)


# --- pipelining ----------------------------------------------------------------------------


async def test_thousand_pipelined_requests_each_get_their_own_reply(conn: Connection) -> None:
    async with asyncio.timeout(TIMEOUT):
        replies = await asyncio.gather(*(conn.request("echo", {"i": i}) for i in range(1000)))
    assert replies == [{"i": i} for i in range(1000)]


async def test_replies_arriving_out_of_order_are_matched_by_id(conn: Connection) -> None:
    delays = [i * 0.01 for i in range(30)]
    random.Random(7).shuffle(delays)
    arrival: list[int] = []

    async def ask(i: int) -> Any:
        reply = await conn.request("delay", {"seconds": delays[i], "i": i})
        arrival.append(i)
        return reply

    async with asyncio.timeout(TIMEOUT):
        replies = await asyncio.gather(*(ask(i) for i in range(len(delays))))
    assert replies == [{"seconds": delays[i], "i": i} for i in range(len(delays))]
    assert arrival == sorted(range(len(delays)), key=delays.__getitem__)
    assert arrival != sorted(arrival)


# --- streams -------------------------------------------------------------------------------


async def test_stream_arrives_whole_with_header_and_trailer(conn: Connection) -> None:
    async with asyncio.timeout(TIMEOUT):
        stream = await conn.stream("stream", {"count": 5, "size": 1000})
        assert stream.header == {"name": "koala.txt"}
        received = [chunk async for chunk in stream.chunks()]
    assert received == [bytes([65 + i]) * 1000 for i in range(5)]
    assert stream.trailer == {"size": 5000}


async def test_stream_with_no_chunks_has_header_and_trailer(conn: Connection) -> None:
    async with asyncio.timeout(TIMEOUT):
        stream = await conn.stream("stream", {"count": 0, "size": 1})
        assert [chunk async for chunk in stream.chunks()] == []
    assert stream.trailer == {"size": 0}


async def test_error_mid_stream_is_raised_typed_and_the_connection_stays_usable(
    conn: Connection,
) -> None:
    async with asyncio.timeout(TIMEOUT):
        stream = await conn.stream("stream", {"count": 5, "size": 10, "fail_at": 2})
        received: list[bytes | memoryview] = []
        with pytest.raises(NotFound, match="vanished"):
            async for chunk in stream.chunks():
                received.append(chunk)
        assert received == [b"A" * 10, b"B" * 10]
        assert stream.trailer is None
        assert await conn.request("echo", {"after": "stream"}) == {"after": "stream"}


async def test_crash_mid_stream_ends_it_with_internal(conn: Connection) -> None:
    async with asyncio.timeout(TIMEOUT):
        stream = await conn.stream("stream", {"count": 5, "size": 10, "fail_at": 1, "crash": True})
        with pytest.raises(Internal) as caught:
            async for _ in stream.chunks():
                pass
        assert "fire" not in caught.value.message
        assert await conn.request("echo", {"still": "open"}) == {"still": "open"}


async def test_stream_frames_interleave_with_other_replies(conn: Connection) -> None:
    chunks_seen: list[int] = []
    seen_at_reply: list[int] = []

    async def consume(stream: ResponseStream) -> None:
        async for chunk in stream.chunks():
            chunks_seen.append(len(chunk))

    async def ask(i: int) -> Any:
        reply = await conn.request("echo", {"i": i})
        seen_at_reply.append(len(chunks_seen))
        return reply

    async with asyncio.timeout(TIMEOUT):
        stream = await conn.stream("stream", {"count": 100, "size": 100, "pause": 0.002})
        _, *replies = await asyncio.gather(consume(stream), *(ask(i) for i in range(20)))
    assert replies == [{"i": i} for i in range(20)]
    assert sum(chunks_seen) == 100 * 100 == stream.trailer["size"]
    # The replies came back while the stream was still running, not queued behind it.
    assert all(seen < 100 for seen in seen_at_reply)


# --- local failures ------------------------------------------------------------------------


async def test_request_without_answer_in_time_is_timeout_and_the_connection_stays_usable(
    conn: Connection,
) -> None:
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(Timeout):
            await conn.request("delay", {"seconds": 0.5}, timeout=0.05)
        assert await conn.request("echo", {"next": 1}) == {"next": 1}
        await asyncio.sleep(0.5)  # the late answer arrives and is dropped
        assert await conn.request("echo", {"next": 2}) == {"next": 2}


async def test_request_over_the_frame_limit_is_refused_locally(conn: Connection) -> None:
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(LocalProtocolError, match="exceeds"):
            await conn.request("echo", {"blob": b"x" * (1 << 20)})
        assert await conn.request("echo", {"small": True}) == {"small": True}


async def test_request_after_close_is_connection_closed(conn: Connection) -> None:
    async with asyncio.timeout(TIMEOUT):
        await conn.close()
        assert conn.closed
        with pytest.raises(ConnectionClosed):
            await conn.request("echo", {})


# --- a scripted server ---------------------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> dict[str, Any]:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return unpack_map(await reader.readexactly(length))


def _reply(rid: int, body: Any) -> bytes:
    return encode_frame(pack({"id": rid, "ok": True, "body": body}))


@pytest_asyncio.fixture(loop_scope="function")
async def scripted(pki: Any) -> AsyncIterator[Callable[[Script], Awaitable[Connection]]]:
    """Connect a client to a TLS server that runs a test's script on the connection."""
    servers: list[asyncio.Server] = []
    clients: list[Connection] = []

    async def connect(script: Script) -> Connection:
        server = await asyncio.start_server(script, HOST, 0, ssl=pki.server_ctx("indexd"))
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        client = await Connection.open(HOST, port, pki.client_ctx(), server_hostname="indexd")
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await asyncio.wait_for(client.close(), TIMEOUT)
    for server in servers:
        server.close()


async def test_answers_sent_in_reverse_order_reach_their_requests(
    scripted: Callable[[Script], Awaitable[Connection]],
) -> None:
    async def reverse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests = [await _read_request(reader) for _ in range(3)]
        for req in reversed(requests):
            writer.write(_reply(req["id"], req["body"]))
        await writer.drain()
        await reader.read()

    async with asyncio.timeout(TIMEOUT):
        client = await scripted(reverse)
        replies = await asyncio.gather(*(client.request("echo", {"i": i}) for i in range(3)))
    assert replies == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_answer_to_an_unknown_id_is_ignored(
    scripted: Callable[[Script], Awaitable[Connection]],
) -> None:
    async def stray(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = await _read_request(reader)
        writer.write(_reply(req["id"] + 1000, "stray") + _reply(req["id"], "mine"))
        await writer.drain()
        await reader.read()

    async with asyncio.timeout(TIMEOUT):
        client = await scripted(stray)
        assert await client.request("echo", {}) == "mine"


async def test_id_0_error_fails_every_pending_request_with_its_type(
    scripted: Callable[[Script], Awaitable[Connection]],
) -> None:
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await _read_request(reader)
        error = {"code": "BUSY", "message": "too many connections"}
        writer.write(encode_frame(pack({"id": 0, "ok": False, "error": error})))
        await writer.drain()
        writer.close()

    async with asyncio.timeout(TIMEOUT):
        client = await scripted(busy)
        results = await asyncio.gather(
            client.request("echo", {}), client.request("echo", {}), return_exceptions=True
        )
    assert [type(r) for r in results] == [Busy, Busy]
    assert client.closed


async def test_server_closing_fails_pending_requests_with_connection_closed(
    scripted: Callable[[Script], Awaitable[Connection]],
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    async with asyncio.timeout(TIMEOUT):
        client = await scripted(hang_up)
        with pytest.raises(ConnectionClosed):
            await client.request("echo", {})
        with pytest.raises(ConnectionClosed):
            await client.request("echo", {})


async def test_unreadable_frame_from_the_server_is_its_fault_and_fails_the_connection(
    scripted: Callable[[Script], Awaitable[Connection]],
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(encode_frame(b"\xc1"))
        await writer.drain()
        await reader.read()

    async with asyncio.timeout(TIMEOUT):
        client = await scripted(garbage)
        with pytest.raises(RemoteProtocolError):
            await client.request("echo", {})
        assert client.closed


# --- cancel (PROTOCOL.md §3.1) -------------------------------------------------------------


async def test_a_cancelled_stream_stops_at_the_server_and_the_connection_goes_on(
    conn: Connection,
) -> None:
    ENDLESS_CLOSED.clear()
    async with asyncio.timeout(TIMEOUT):
        stream = await conn.stream("endless", {})
        async for _ in stream.chunks():
            break  # one chunk is enough
        stream.cancel()
        await ENDLESS_CLOSED[0].wait()  # the server closed the stream's generator
        assert stream.id not in conn.streams
        assert await conn.request("echo", {"after": True}) == {"after": True}


async def test_cancel_is_answered_once_nothing_more_of_the_stream_follows(
    conn: Connection,
) -> None:
    ENDLESS_CLOSED.clear()
    seen: list[tuple[int, str]] = []
    replied, cancel_ids = asyncio.Event(), list[int]()
    original = conn.received

    def spy(events: list[Any]) -> None:
        seen.extend((msg.id, type(msg).__name__) for msg in events)
        if any((msg.id, type(msg).__name__) == (*cancel_ids, "Reply") for msg in events):
            replied.set()
        original(events)

    conn.received = spy  # type: ignore[method-assign]
    async with asyncio.timeout(TIMEOUT):
        stream = await conn.stream("endless", {})
        async for _ in stream.chunks():
            break
        conn.streams.pop(stream.id)  # no longer routed, not cancelled yet
        cancel_id = conn._send("cancel", {"id": stream.id}, None)
        cancel_ids.append(cancel_id)
        await replied.wait()
        await asyncio.sleep(0.1)  # anything still coming would be here by now
        assert ENDLESS_CLOSED[0].is_set()
    after = seen[seen.index((cancel_id, "Reply")) + 1 :]
    assert not [frame for frame in after if frame[0] == stream.id]


async def test_cancel_of_an_id_with_nothing_running_is_answered_at_once(
    conn: Connection,
) -> None:
    async with asyncio.timeout(TIMEOUT):
        assert await conn.request("cancel", {"id": 4242}) == {}


@pytest.mark.parametrize("body", [{}, {"id": "7"}, {"id": 0}, {"id": 2**32}])
async def test_cancel_without_a_valid_id_is_bad_request_naming_it(
    conn: Connection, body: dict[str, Any]
) -> None:
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(BadRequest, match="id"):
            await conn.request("cancel", body)


async def test_cancel_does_not_stop_a_handler_and_is_answered_after_its_answer(
    conn: Connection,
) -> None:
    async with asyncio.timeout(TIMEOUT):
        waiting = asyncio.ensure_future(conn.request("delay", {"seconds": 0.3, "n": 7}))
        await asyncio.sleep(0.05)
        rid = next(iter(conn._pending._waiting))  # the delay's id
        assert await conn.request("cancel", {"id": rid}) == {}
        assert waiting.done()  # its answer came first: nothing of it follows the cancel's
        assert await waiting == {"seconds": 0.3, "n": 7}  # a handler runs to its end


async def test_a_stream_cancelled_before_its_handler_answered_stops_at_once(
    conn: Connection,
) -> None:
    ENDLESS_CLOSED.clear()
    async with asyncio.timeout(TIMEOUT):
        rid = conn._send("endless_slow", {}, None)  # its handler takes 0.2 s to answer
        assert await conn.request("cancel", {"id": rid}) == {}
        assert ENDLESS_CLOSED[0].is_set()  # the stream it answered with was stopped at once
        assert await conn.request("echo", {"n": 2}) == {"n": 2}


async def test_a_stream_that_ended_sends_no_cancel(conn: Connection) -> None:
    sent: list[str] = []
    original = conn._send

    def spy(op: str, body: dict[str, Any], token: str | None) -> int:
        sent.append(op)
        return original(op, body, token)

    conn._send = spy  # type: ignore[method-assign]
    async with asyncio.timeout(TIMEOUT):
        stream = await conn.stream("stream", {"count": 2, "size": 10})
        _ = [chunk async for chunk in stream.chunks()]
        stream.cancel()
        await asyncio.sleep(0.05)
    assert sent == ["stream"]
