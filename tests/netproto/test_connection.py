"""The asyncio connection (netproto/connection.py) against a real server over real TLS: what
an idle connection keeps and costs, the receive buffer its thread's connections share,
close_notify either way, refused frame lengths and the TLS alert a refused client gets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from netproto import connection
from netproto.client import Connection
from netproto.protocol import ClientProtocol
from netproto.server import Operation, RequestContext, Server, ServerLimits
from netproto.tlsbio import TLSSession

TIMEOUT = 10.0
HOST = "127.0.0.1"


def _body(body: dict[str, Any]) -> dict[str, Any]:
    return body


async def _echo(ctx: RequestContext, body: dict[str, Any]) -> Any:
    return body


def _echo_now(ctx: RequestContext, body: dict[str, Any]) -> Any:
    return body


OPERATIONS: dict[str, Operation[Any]] = {"echo": Operation(_body, _echo, needs_token=False)}


@pytest_asyncio.fixture(loop_scope="function")
async def server(pki: Any) -> AsyncIterator[Server]:
    """A server of one echo operation on 127.0.0.1:0, closed after the test."""
    srv = Server(OPERATIONS, pki.server_ctx("indexd"), limits=ServerLimits(), name="conn-test")
    await asyncio.wait_for(srv.start(HOST, 0), TIMEOUT)
    yield srv
    await asyncio.wait_for(srv.close(grace=0.5), TIMEOUT)


async def _open(pki: Any, server: Server) -> Connection:
    return await Connection.open(HOST, server.port, pki.client_ctx(), server_hostname="indexd")


async def test_an_idle_connection_keeps_no_receive_buffer_on_either_side(
    pki: Any, server: Server
) -> None:
    async with asyncio.timeout(TIMEOUT):
        conn = await _open(pki, server)
        assert await conn.request("echo", {"data": b"x" * 100_000}) == {"data": b"x" * 100_000}
        assert await conn.request("echo", {"n": 1}) == {"n": 1}
        (served,) = server.admission.connections
        assert served.core.allocated == 0
        assert conn.protocol.allocated == 0
        await conn.close()


async def test_the_connections_of_a_thread_read_ciphertext_into_one_buffer(
    pki: Any, server: Server
) -> None:
    async with asyncio.timeout(TIMEOUT):
        first, second = await _open(pki, server), await _open(pki, server)
        assert first.get_buffer(-1).obj is second.get_buffer(-1).obj
        for served in server.admission.connections:
            assert served.get_buffer(-1).obj is first.get_buffer(-1).obj
        await first.close()
        await second.close()


class RawClient:
    """A client running :class:`TLSSession` by hand over a plain TCP stream, to send what the
    client library never would (close_notify with a request, a refused frame length)."""

    def __init__(self, pki: Any) -> None:
        self.tls = TLSSession(pki.client_ctx(), server_side=False, server_hostname="indexd")
        self.core = ClientProtocol()

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, port)  # plain TCP
        self.tls.handshake()
        while not self.tls.established:
            self.writer.writelines(self.tls.data_to_send())
            self.tls.receive_data(memoryview(await self.reader.read(65536)), self.core)
        self.writer.writelines(self.tls.data_to_send())

    def send(self, *parts: bytes, close: bool = False) -> None:
        """Encrypt ``parts`` (then close_notify) and write it all in one segment."""
        self.tls.send(parts)
        if close:
            self.tls.close()
        self.writer.write(b"".join(self.tls.data_to_send()))

    async def replies(self, *, until_eof: bool) -> list[Any]:
        """What the server sends: until one message arrives, or until it closes TCP."""
        got: list[Any] = []
        while until_eof or not got:
            if not (data := await self.reader.read(65536)):
                break
            got += self.tls.receive_data(memoryview(data), self.core)[0]
        return got


async def test_the_server_sends_close_notify_when_it_closes_a_connection(
    pki: Any, server: Server
) -> None:
    async with asyncio.timeout(TIMEOUT):
        client = RawClient(pki)
        await client.connect(server.port)
        client.send(client.core.encode_request(1, "echo", {"n": 1}, None))
        (reply,) = await client.replies(until_eof=False)
        assert reply.body == {"n": 1}
        (served,) = server.admission.connections
        await served.close()
        assert await client.replies(until_eof=True) == []
        assert client.tls.peer_closed
        client.writer.close()


async def test_a_request_sent_with_the_clients_close_notify_is_answered_before_ours(
    pki: Any,
) -> None:
    inline = {"echo": Operation(_body, _echo_now, needs_token=False, inline=True)}
    srv = Server(inline, pki.server_ctx("indexd"), limits=ServerLimits(), name="conn-test")
    async with asyncio.timeout(TIMEOUT):
        await srv.start(HOST, 0)
        client = RawClient(pki)
        await client.connect(srv.port)
        client.send(client.core.encode_request(1, "echo", {"n": 1}, None), close=True)
        replies = await client.replies(until_eof=True)
        assert [(r.id, r.body) for r in replies] == [(1, {"n": 1})]
        assert client.tls.peer_closed  # our close_notify was answered
        client.writer.close()
        await srv.close(grace=0.5)


@pytest.mark.parametrize("size", [4, 16 << 10], ids=["prefix", "a-record-of-it"])
async def test_a_zero_frame_length_is_answered_with_bad_frame_then_close_notify(
    pki: Any, server: Server, size: int
) -> None:
    async with asyncio.timeout(TIMEOUT):
        client = RawClient(pki)
        await client.connect(server.port)
        client.send(bytes(size))  # a zero length, then zeros (PROTOCOL.md §2)
        replies = await client.replies(until_eof=True)
        assert [(r.id, r.error.code) for r in replies] == [(0, "BAD_FRAME")]
        assert client.tls.peer_closed
        client.writer.close()


async def test_a_client_refused_for_want_of_a_certificate_learns_why(pki: Any) -> None:
    ctx = pki.server_ctx("indexd", require_client_cert=True)
    srv = Server(OPERATIONS, ctx, limits=ServerLimits(), name="conn-test")
    async with asyncio.timeout(TIMEOUT):
        await srv.start(HOST, 0)
        conn = await _open(pki, srv)  # TLS 1.3: the client's side completes first
        await conn.lost
        assert "certificate required" in str(conn.failure)
        await srv.close(grace=0.5)


#: Runs a server in its own process: prints its port, then its RSS (bytes) for each line read.
_RSS_SERVER = """
import asyncio, gc, os, sys
from pathlib import Path
from netproto.server import Operation, Server, ServerLimits
from netproto.tls import server_context
cert, key, ca = map(Path, sys.argv[1:4])
async def echo(ctx, body):
    return body
async def main():
    limits = ServerLimits(max_connections=2000, max_connections_per_address=2000)
    ops = {"echo": Operation(lambda body: body, echo, needs_token=False)}
    srv = Server(ops, server_context(cert, key, ca, require_client_cert=False), limits=limits)
    await srv.start("127.0.0.1", 0)
    print(srv.port, flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        gc.collect()
        with open("/proc/self/statm") as f:
            print(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"), flush=True)
asyncio.run(main())
"""
IDLE = 300


async def test_an_idle_connection_costs_the_server_at_most_64_kib(pki: Any) -> None:
    # A memory bound, not a speed one (PROTOCOL.md §6, "Memory per connection"): generous.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _RSS_SERVER, str(pki.cert("indexd")), str(pki.key("indexd")),
        str(pki.ca), stdin=PIPE, stdout=PIPE, env=env, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    conns: list[Connection] = []

    async def rss() -> int:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"\n")
        return int(await proc.stdout.readline())

    try:
        async with asyncio.timeout(120):
            port = int(await proc.stdout.readline())
            for _ in range(2):  # the first connections make what all connections share
                conns.append(
                    await Connection.open(HOST, port, pki.client_ctx(), server_hostname="indexd")
                )
                assert await conns[-1].request("echo", {"n": 1}) == {"n": 1}
            before = await rss()
            for _ in range(IDLE):
                conn = await Connection.open(HOST, port, pki.client_ctx(), server_hostname="indexd")
                conns.append(conn)
                assert await conn.request("echo", {"n": 1}) == {"n": 1}
            per_connection = (await rss() - before) / IDLE
            assert per_connection <= 64 << 10, f"{per_connection / 1024:.1f} KiB per connection"
    finally:
        for conn in conns:
            conn.abort()
        proc.stdin.close()
        await proc.wait()


async def test_a_connection_dropped_at_admission_never_gets_a_tls_session(
    pki: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[TLSSession] = []

    def counting(*args: Any, **kwargs: Any) -> TLSSession:
        made.append(session := TLSSession(*args, **kwargs))
        return session

    monkeypatch.setattr(connection, "TLSSession", counting)  # our module, not asyncio's
    limits = ServerLimits(max_connections=1, max_connections_per_address=1)
    srv = Server(OPERATIONS, pki.server_ctx("indexd"), limits=limits, name="conn-test")
    async with asyncio.timeout(TIMEOUT):
        await srv.start(HOST, 0)
        served = RawClient(pki)
        await served.connect(srv.port)
        _, busy = await asyncio.open_connection(HOST, srv.port)  # past the cap: counted
        reader, writer = await asyncio.open_connection(HOST, srv.port)  # past twice the cap
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read(65536) == b""  # dropped before any TLS
        assert len(made) == 2  # the served connection's and the one answered BUSY
        for w in (served.writer, busy, writer):
            w.close()
        await srv.close(grace=0.5)
