"""The asyncio connection (netproto/connection.py) against a real server over real TLS: what
an idle connection keeps, the receive buffer its thread's connections share, close_notify."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

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


async def test_the_server_sends_close_notify_when_it_closes_a_connection(
    pki: Any, server: Server
) -> None:
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection(HOST, server.port)  # plain TCP
        tls = TLSSession(pki.client_ctx(), server_side=False, server_hostname="indexd")
        core = ClientProtocol()
        tls.handshake()
        while not tls.established:
            writer.writelines(tls.data_to_send())
            tls.receive_data(memoryview(await reader.read(65536)), core)
        writer.writelines(tls.data_to_send())
        tls.send((core.encode_request(1, "echo", {"n": 1}, None),))
        writer.writelines(tls.data_to_send())
        replies: list[Any] = []
        while not replies:
            replies += tls.receive_data(memoryview(await reader.read(65536)), core)
        assert replies[0].body == {"n": 1}
        (served,) = server.admission.connections
        await served.close()
        while data := await reader.read(65536):
            tls.receive_data(memoryview(data), core)
        assert tls.peer_closed
        writer.close()
