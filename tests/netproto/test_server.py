"""netproto.server over real TLS on loopback: bad frames, handlers, deadlines, caps, shutdown.

Raw frames are written over ``asyncio.open_connection`` so a test can send what no well-behaved
client would; the same server must then still answer a healthy :class:`Connection`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack
import pytest
import pytest_asyncio
from cryptography import x509

from netproto.client import Connection
from netproto.codec import pack, unpack_map
from netproto.errors import (
    AuthRequired,
    ConnectionClosed,
    Internal,
    NotFound,
    RateLimited,
    RequestError,
    TokenInvalid,
)
from netproto.framing import encode_frame
from netproto.operations import KeywordRequest
from netproto.server import (
    Operation,
    RequestContext,
    Server,
    ServerLimits,
    StreamReply,
)
from netproto.service import Authenticator
from netproto.tokens import Principal
from tests.support.adversary import nested_map, raw_map

TIMEOUT = 10.0
HOST = "127.0.0.1"


# --- a test server -------------------------------------------------------------------------


def _body(body: dict[str, Any]) -> dict[str, Any]:
    return body


async def _echo(ctx: RequestContext, body: dict[str, Any]) -> Any:
    return body


async def _fail(ctx: RequestContext, body: dict[str, Any]) -> Any:
    if body.get("code") == "RATE_LIMITED":
        raise RateLimited("slow down", retry_after=7)
    raise NotFound("no such keyword")


async def _crash(ctx: RequestContext, body: dict[str, Any]) -> Any:
    raise RuntimeError("secret internal detail")


async def _sleep(ctx: RequestContext, body: dict[str, Any]) -> Any:
    await asyncio.sleep(body["seconds"])
    return body


async def _whoami(ctx: RequestContext, body: dict[str, Any]) -> Any:
    return ctx.subject


async def _keyword(ctx: RequestContext, req: KeywordRequest) -> Any:
    return req  # a dataclass: the server sends its to_wire()


async def _big(ctx: RequestContext, body: dict[str, Any]) -> Any:
    return "x" * body["size"]


def _inline_echo(ctx: RequestContext, body: dict[str, Any]) -> Any:
    return body


def _inline_crash(ctx: RequestContext, body: dict[str, Any]) -> Any:
    raise RuntimeError("secret internal detail")


OPERATIONS: dict[str, Operation[Any]] = {
    "echo": Operation(_body, _echo, needs_token=False),
    "inline_echo": Operation(_body, _inline_echo, needs_token=False, inline=True),
    "inline_crash": Operation(_body, _inline_crash, needs_token=False, inline=True),
    "fail": Operation(_body, _fail, needs_token=False),
    "crash": Operation(_body, _crash, needs_token=False),
    "sleep": Operation(_body, _sleep, needs_token=False),
    "whoami": Operation(_body, _whoami),
    "keyword": Operation(KeywordRequest.from_wire, _keyword, needs_token=False),
    "big": Operation(_body, _big, needs_token=False),
}


class CountingAuthenticator:
    """Accepts ``good-<name>`` tokens and counts how often it is asked."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, token: str, cert: x509.Certificate | None) -> Principal:
        self.calls += 1
        if not token.startswith("good-"):
            raise TokenInvalid("bad test token")
        return Principal(token.removeprefix("good-"), 4_102_444_800.0, "jti")


StartServer = Callable[..., Awaitable[Server]]


@pytest_asyncio.fixture(loop_scope="function")
async def start_server(pki: Any) -> AsyncIterator[StartServer]:
    """Start servers of the test operations on 127.0.0.1:0; all are closed after the test."""
    servers: list[Server] = []

    async def start(
        limits: ServerLimits | None = None,
        *,
        operations: dict[str, Operation[Any]] | None = None,
        authenticate: Authenticator | None = None,
    ) -> Server:
        server = Server(
            operations if operations is not None else OPERATIONS,
            pki.server_ctx("indexd"),
            authenticate=authenticate if authenticate is not None else CountingAuthenticator(),
            limits=limits,
            name="test",
        )
        await asyncio.wait_for(server.start(HOST, 0), TIMEOUT)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await asyncio.wait_for(server.close(grace=0.5), TIMEOUT)


async def connect(pki: Any, server: Server, **kwargs: Any) -> Connection:
    """A healthy client connection."""
    return await Connection.open(
        HOST, server.port, pki.client_ctx(), server_hostname="indexd", **kwargs
    )


async def open_raw(
    pki: Any, server: Server, limit: int = 1 << 16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection on which the test writes raw bytes."""
    return await asyncio.open_connection(
        HOST, server.port, ssl=pki.client_ctx(), server_hostname="indexd", limit=limit
    )


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any]:
    """Read one frame and decode its map."""
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return unpack_map(await reader.readexactly(length))


async def assert_closed(reader: asyncio.StreamReader) -> None:
    """The server closed the connection: EOF (or a reset) and no further frames."""
    try:
        rest = await reader.read()
    except (ConnectionResetError, ssl.SSLError):
        return
    assert rest == b""


def request(rid: int, op: str = "echo", body: Any = None, **extra: Any) -> bytes:
    """A raw request frame."""
    msg = {"v": 1, "id": rid, "op": op, "body": {"n": rid} if body is None else body, **extra}
    return encode_frame(pack(msg))


async def assert_serves_healthy_client(pki: Any, server: Server) -> None:
    """A fresh, well-behaved client still gets answers."""
    conn = await connect(pki, server)
    try:
        assert await conn.request("echo", {"ping": 1}) == {"ping": 1}
    finally:
        await conn.close()


async def wait_until(predicate: Callable[[], bool], seconds: float) -> None:
    """Poll ``predicate`` until true; fail after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 - the server offers no event to wait on
            await asyncio.sleep(0.01)


# --- frames that cannot be read: error with id 0, then the connection closes ----------------


_ENVELOPE = {"v": 1, "id": 5, "op": "echo"}

UNREADABLE_FRAMES = {
    "zero length": (b"\x00\x00\x00\x00", "BAD_FRAME"),
    "not msgpack": (encode_frame(b"\xc1"), "BAD_FRAME"),
    "truncated msgpack": (encode_frame(b"\x84\xa1v\x01\xa2id"), "BAD_FRAME"),
    "not a map": (encode_frame(pack([1, "id", 2])), "BAD_FRAME"),
    "trailing bytes": (encode_frame(pack({**_ENVELOPE, "body": {}}) + b"\xc0"), "BAD_FRAME"),
    "ext type": (
        encode_frame(msgpack.packb({**_ENVELOPE, "body": {"x": msgpack.ExtType(5, b"abc")}})),
        "BAD_FRAME",
    ),
    "msgpack timestamp": (
        encode_frame(msgpack.packb({**_ENVELOPE, "body": {"t": msgpack.Timestamp(1, 0)}})),
        "BAD_FRAME",
    ),
    "array32 claiming 2^31 entries": (
        encode_frame(raw_map(b"\xa4body", b"\xdd\x80\x00\x00\x00")),
        "BAD_FRAME",
    ),
    "map32 claiming 2^31 entries": (
        encode_frame(raw_map(b"\xa4body", b"\xdf\x80\x00\x00\x00")),
        "BAD_FRAME",
    ),
    "str32 claiming 2^31 bytes": (
        encode_frame(raw_map(b"\xa2op", b"\xdb\x80\x00\x00\x00")),
        "BAD_FRAME",
    ),
    "nesting deeper than the codec allows": (
        encode_frame(pack({**_ENVELOPE, "body": nested_map(20)})),
        "BAD_FRAME",
    ),
    "nesting deeper than msgpack's own stack": (
        encode_frame(b"\x81\xa4body" + b"\x91" * 5000 + b"\xc0"),
        "BAD_FRAME",
    ),
    "integer map key": (encode_frame(msgpack.packb({1: 2})), "BAD_FRAME"),
    "bin map key": (encode_frame(msgpack.packb({b"id": 1}, use_bin_type=True)), "BAD_FRAME"),
    "invalid UTF-8 in a str": (encode_frame(raw_map(b"\xa2op", b"\xa1\xff")), "BAD_FRAME"),
    "missing id": (encode_frame(pack({"v": 1, "op": "echo", "body": {}})), "BAD_FRAME"),
    "id 0": (request(0), "BAD_FRAME"),
    "negative id": (request(-1), "BAD_FRAME"),
    "id 2^32": (request(2**32), "BAD_FRAME"),
    "id as a string": (encode_frame(pack({**_ENVELOPE, "id": "5", "body": {}})), "BAD_FRAME"),
    "id as a bool": (encode_frame(pack({**_ENVELOPE, "id": True, "body": {}})), "BAD_FRAME"),
    "id as a float": (encode_frame(pack({**_ENVELOPE, "id": 5.0, "body": {}})), "BAD_FRAME"),
    "missing op": (encode_frame(pack({"v": 1, "id": 5, "body": {}})), "BAD_FRAME"),
    "op not a string": (encode_frame(pack({**_ENVELOPE, "op": 3, "body": {}})), "BAD_FRAME"),
    "empty op": (encode_frame(pack({**_ENVELOPE, "op": "", "body": {}})), "BAD_FRAME"),
    "op longer than 64": (
        encode_frame(pack({**_ENVELOPE, "op": "x" * 65, "body": {}})),
        "BAD_FRAME",
    ),
}


@pytest.mark.parametrize("frame,code", UNREADABLE_FRAMES.values(), ids=UNREADABLE_FRAMES.keys())
async def test_unreadable_frame_gets_id_0_error_and_the_connection_closes(
    pki: Any, start_server: StartServer, frame: bytes, code: str
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server()
        reader, writer = await open_raw(pki, server)
        writer.write(frame)
        answer = await read_message(reader)
        assert answer["id"] == 0
        assert answer["ok"] is False
        assert answer["error"]["code"] == code
        await assert_closed(reader)
        writer.close()
        await assert_serves_healthy_client(pki, server)


async def test_oversized_length_is_refused_before_any_body_byte_is_sent(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server()
        reader, writer = await open_raw(pki, server)
        writer.write(struct.pack(">I", (1 << 20) + 1))  # the prefix alone, no body follows
        answer = await read_message(reader)
        assert (answer["id"], answer["error"]["code"]) == (0, "FRAME_TOO_LARGE")
        await assert_closed(reader)
        writer.close()
        await assert_serves_healthy_client(pki, server)


async def test_frame_of_exactly_max_frame_bytes_is_accepted(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(ServerLimits(max_frame=4096))
        empty = len(pack({"v": 1, "id": 1, "op": "echo", "body": {"pad": ""}}))
        pad = "p" * (4096 - empty - 2)  # str8 header grows the encoding by 2 bytes
        frame = request(1, body={"pad": pad})
        assert len(frame) == 4 + 4096
        reader, writer = await open_raw(pki, server)
        writer.write(frame)
        assert (await read_message(reader))["body"] == {"pad": pad}
        writer.write(request(2, body={"pad": pad + "p"}))
        answer = await read_message(reader)
        assert (answer["id"], answer["error"]["code"]) == (0, "FRAME_TOO_LARGE")
        writer.close()


# --- well-framed but wrong envelopes: an error with the request's id, connection stays open ---

ENVELOPE_ERRORS = {
    "body not a map": ({"body": [1, 2]}, "BAD_REQUEST", "body"),
    "body missing": ({"body": None}, "BAD_REQUEST", "body"),
    "token not a string": ({"token": 12345}, "BAD_REQUEST", "token"),
    "v missing": ({"v": None}, "BAD_REQUEST", "v"),
    "v not an integer": ({"v": "1"}, "BAD_REQUEST", "v"),
    "unknown v": ({"v": 2}, "UNSUPPORTED_VERSION", "version"),
    "unknown envelope field": ({"extra": 1}, "BAD_REQUEST", "extra"),
    "unknown op": ({"op": "teleport"}, "UNKNOWN_OP", "teleport"),
}


@pytest.mark.parametrize("change,code,named", ENVELOPE_ERRORS.values(), ids=ENVELOPE_ERRORS.keys())
async def test_bad_envelope_gets_error_with_its_id_and_the_connection_stays_open(
    pki: Any, start_server: StartServer, change: dict[str, Any], code: str, named: str
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server()
        msg: dict[str, Any] = {"v": 1, "id": 41, "op": "echo", "body": {}}
        msg.update(change)
        msg = {k: v for k, v in msg.items() if v is not None}
        reader, writer = await open_raw(pki, server)
        writer.write(encode_frame(pack(msg)))
        answer = await read_message(reader)
        assert (answer["id"], answer["ok"], answer["error"]["code"]) == (41, False, code)
        assert named in answer["error"]["message"]
        writer.write(request(42))
        assert await read_message(reader) == {"id": 42, "ok": True, "body": {"n": 42}}
        writer.close()
        await assert_serves_healthy_client(pki, server)


async def test_body_failing_its_operation_validation_gets_the_typed_error(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server()
        conn = await connect(pki, server)
        with pytest.raises(RequestError) as caught:
            await conn.request("keyword", {"keyword": "../etc"})
        assert caught.value.code == "INVALID_PATH"
        with pytest.raises(RequestError) as caught:
            await conn.request("keyword", {})
        assert caught.value.code == "BAD_REQUEST"
        assert "keyword" in caught.value.message
        assert await conn.request("keyword", {"keyword": "koala"}) == {"keyword": "koala"}
        await conn.close()


# --- handlers ------------------------------------------------------------------------------


async def test_handler_request_error_reaches_the_client_as_the_same_class(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server()
        conn = await connect(pki, server)
        with pytest.raises(NotFound, match="no such keyword"):
            await conn.request("fail", {})
        await conn.close()


async def test_handler_error_extra_keys_travel_with_it(pki: Any, start_server: StartServer) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server()
        conn = await connect(pki, server)
        with pytest.raises(RateLimited) as caught:
            await conn.request("fail", {"code": "RATE_LIMITED"})
        assert caught.value.retry_after == 7
        await conn.close()


async def test_handler_crash_is_internal_without_detail_and_logged_with_traceback(
    pki: Any, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="netproto.server")
    async with asyncio.timeout(TIMEOUT):
        server = await start_server()
        conn = await connect(pki, server)
        with pytest.raises(Internal) as caught:
            await conn.request("crash", {})
        assert "secret" not in caught.value.message
        assert caught.value.extra == {}
        logged = [r for r in caplog.records if r.exc_info is not None]
        assert len(logged) == 1
        assert "secret internal detail" in str(logged[0].exc_info[1])  # type: ignore[index]
        # The same connection and the server keep serving.
        assert await conn.request("echo", {"after": "crash"}) == {"after": "crash"}
        await conn.close()
        await assert_serves_healthy_client(pki, server)


async def test_reply_over_the_frame_limit_is_internal_and_the_connection_stays_usable(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(ServerLimits(max_frame=4096))
        conn = await connect(pki, server)
        with pytest.raises(Internal):
            await conn.request("big", {"size": 5000})
        assert await conn.request("big", {"size": 10}) == "x" * 10
        await conn.close()


async def test_op_needing_a_token_without_one_is_auth_required(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server()
        conn = await connect(pki, server)
        with pytest.raises(AuthRequired):
            await conn.request("whoami", {})
        assert await conn.request("whoami", {}, token="good-alice") == "alice"
        await conn.close()


async def test_rejected_token_is_the_authenticators_error(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server()
        conn = await connect(pki, server)
        with pytest.raises(TokenInvalid):
            await conn.request("whoami", {}, token="forged")
        await conn.close()


async def test_token_is_authenticated_once_per_connection_across_many_requests(
    pki: Any, start_server: StartServer
) -> None:
    authenticator = CountingAuthenticator()
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(authenticate=authenticator)
        first = await connect(pki, server)
        replies = await asyncio.gather(
            *(first.request("whoami", {}, token="good-bob") for _ in range(50))
        )
        assert replies == ["bob"] * 50
        for _ in range(10):
            await first.request("whoami", {}, token="good-bob")
        assert authenticator.calls == 1
        second = await connect(pki, server)
        await second.request("whoami", {}, token="good-bob")
        await second.request("whoami", {}, token="good-bob")
        assert authenticator.calls == 2
        await first.close()
        await second.close()


# --- deadlines and caps --------------------------------------------------------------------


async def test_frame_not_finished_within_frame_timeout_gets_timeout_and_is_closed(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(ServerLimits(frame_timeout=0.3))
        reader, writer = await open_raw(pki, server)
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(request(1)[:10])  # the prefix promises more than ever arrives
        answer = await read_message(reader)
        assert (answer["id"], answer["error"]["code"]) == (0, "TIMEOUT")
        assert loop.time() - started >= 0.25
        await assert_closed(reader)
        writer.close()


async def test_length_prefix_alone_gets_timeout_after_frame_timeout_not_idle_timeout(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(ServerLimits(frame_timeout=0.3, idle_timeout=60))
        reader, writer = await open_raw(pki, server)
        writer.write(request(1)[:4])  # a whole prefix, then no body byte
        answer = await read_message(reader)
        assert (answer["id"], answer["error"]["code"]) == (0, "TIMEOUT")
        await assert_closed(reader)
        writer.close()


async def test_idle_connection_is_closed_after_idle_timeout(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(ServerLimits(idle_timeout=0.3))
        reader, writer = await open_raw(pki, server)
        writer.write(request(1))
        assert (await read_message(reader))["id"] == 1
        await assert_closed(reader)
        await wait_until(lambda: server.connection_count == 0, 2.0)
        writer.close()


async def test_connection_with_a_request_in_flight_is_not_idle(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(ServerLimits(idle_timeout=0.2))
        conn = await connect(pki, server)
        assert await conn.request("sleep", {"seconds": 0.6}) == {"seconds": 0.6}
        await conn.close()


async def test_connection_past_the_per_address_cap_gets_busy(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(ServerLimits(max_connections_per_address=2))
        held = [await connect(pki, server) for _ in range(2)]
        reader, writer = await open_raw(pki, server)
        answer = await read_message(reader)
        assert (answer["id"], answer["error"]["code"]) == (0, "BUSY")
        await assert_closed(reader)
        writer.close()
        for conn in held:
            assert await conn.request("echo", {"still": "served"}) == {"still": "served"}
            await conn.close()
        await wait_until(lambda: server.connection_count == 0, 2.0)
        await assert_serves_healthy_client(pki, server)


async def test_connection_past_the_total_cap_gets_busy(pki: Any, start_server: StartServer) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(ServerLimits(max_connections=1))
        held = await connect(pki, server)
        reader, writer = await open_raw(pki, server)
        answer = await read_message(reader)
        assert (answer["id"], answer["error"]["code"]) == (0, "BUSY")
        writer.close()
        await held.close()


async def test_slow_reader_is_cut_off_while_another_client_is_served(
    pki: Any, start_server: StartServer
) -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"\x00" * (64 << 10)
        finally:
            closed.set()

    async def flood(ctx: RequestContext, body: dict[str, Any]) -> Any:
        return StreamReply({}, endless(), dict)

    operations = {**OPERATIONS, "flood": Operation(_body, flood, needs_token=False)}
    limits = ServerLimits(write_high_water=64 << 10, slow_reader_timeout=0.5)
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(limits, operations=operations)
        _reader, writer = await open_raw(pki, server, limit=1024)  # and never read
        writer.write(request(1, "flood"))
        healthy = await connect(pki, server)
        assert await healthy.request("echo", {"during": "flood"}) == {"during": "flood"}
        await asyncio.wait_for(closed.wait(), 5.0)
        await wait_until(lambda: server.connection_count == 1, 2.0)
        assert await healthy.request("echo", {"after": "flood"}) == {"after": "flood"}
        await healthy.close()
        writer.transport.abort()


# --- shutdown ------------------------------------------------------------------------------


async def test_close_answers_a_short_request_and_returns_within_the_grace_period(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server()
        idle = [await connect(pki, server) for _ in range(2)]
        busy = await connect(pki, server)
        answer = asyncio.create_task(busy.request("sleep", {"seconds": 0.3}))
        await asyncio.sleep(0.05)  # the request is in flight
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.close(grace=2.0)
        assert loop.time() - started < 2.0  # done once the busy request is answered
        assert await answer == {"seconds": 0.3}
        assert server.connection_count == 0
        for conn in [*idle, busy]:
            with pytest.raises(ConnectionClosed):
                await conn.request("echo", {})
            await conn.close()


async def test_close_cuts_off_a_handler_running_past_the_grace_period(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server()
        conn = await connect(pki, server)
        answer = asyncio.create_task(conn.request("sleep", {"seconds": 60}))
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.close(grace=0.5)
        assert loop.time() - started < 0.5 + 2.0
        with pytest.raises(ConnectionClosed):
            await answer
        await conn.close()


async def test_closed_server_accepts_no_new_connections(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server()
        port = server.port
        await server.close(grace=0.5)
        with pytest.raises(ConnectionClosed):
            await Connection.open(HOST, port, pki.client_ctx(), server_hostname="indexd")


# --- inline operations ---------------------------------------------------------------------


async def test_inline_operation_answers_each_pipelined_request(
    pki: Any, start_server: StartServer
) -> None:
    server = await start_server()
    async with asyncio.timeout(TIMEOUT):
        conn = await connect(pki, server)
        replies = await asyncio.gather(*(conn.request("inline_echo", {"i": i}) for i in range(500)))
        await conn.close()
    assert [r["i"] for r in replies] == list(range(500))


async def test_inline_answers_interleave_with_a_slow_request_on_the_same_connection(
    pki: Any, start_server: StartServer
) -> None:
    server = await start_server()
    async with asyncio.timeout(TIMEOUT):
        conn = await connect(pki, server)
        slow = asyncio.ensure_future(conn.request("sleep", {"seconds": 0.3}))
        fast = await conn.request("inline_echo", {"n": 1})
        assert not slow.done()  # the inline answer did not wait behind the slow handler
        assert (await slow)["seconds"] == 0.3
        await conn.close()
    assert fast == {"n": 1}


async def test_inline_operation_that_crashes_answers_internal(
    pki: Any, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server()
    async with asyncio.timeout(TIMEOUT):
        conn = await connect(pki, server)
        with caplog.at_level(logging.ERROR), pytest.raises(Internal) as info:
            await conn.request("inline_crash", {})
        assert await conn.request("inline_echo", {"after": True}) == {"after": True}
        await conn.close()
    assert "secret" not in str(info.value)


async def test_requests_before_an_unreadable_frame_are_answered(
    pki: Any, start_server: StartServer
) -> None:
    server = await start_server()
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection(
            HOST, server.port, ssl=pki.client_ctx(), server_hostname="indexd"
        )
        good = pack({"v": 1, "id": 9, "op": "echo", "body": {"k": 1}})
        writer.write(encode_frame(good) + encode_frame(b"\xc1"))
        answers: list[dict[str, Any]] = []
        while len(answers) < 2:
            (n,) = struct.unpack(">I", await reader.readexactly(4))
            answers.append(unpack_map(await reader.readexactly(n)))
        writer.close()
    assert {a["id"] for a in answers} == {9, 0}
    assert next(a for a in answers if a["id"] == 9)["body"] == {"k": 1}
    assert next(a for a in answers if a["id"] == 0)["error"]["code"] == "BAD_FRAME"


async def test_frame_deadline_applies_to_each_frame_not_to_a_burst(
    pki: Any, start_server: StartServer
) -> None:
    """Frames trickled so that reads end mid-frame, each well within the deadline, all pass."""
    server = await start_server(ServerLimits(frame_timeout=1.0))
    frames = b"".join(
        encode_frame(pack({"v": 1, "id": i, "op": "echo", "body": {"i": i}})) for i in range(1, 9)
    )
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection(
            HOST, server.port, ssl=pki.client_ctx(), server_hostname="indexd"
        )
        for start in range(0, len(frames), 7):  # ~0.4 s per frame, ~3 s in all
            writer.write(frames[start : start + 7])
            await writer.drain()
            await asyncio.sleep(0.1)
        answers: list[dict[str, Any]] = []
        while len(answers) < 8:
            (n,) = struct.unpack(">I", await reader.readexactly(4))
            answers.append(unpack_map(await reader.readexactly(n)))
        writer.close()
    assert sorted(a["id"] for a in answers) == list(range(1, 9))
    assert all(a["ok"] for a in answers)
