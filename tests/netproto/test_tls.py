"""TLS on loopback with certificates made by ``certs`` (PROTOCOL.md §1).

TLS 1.3 only, the deployment's CA only, host names checked; client certificates optional at
the index (checked when presented) and required at peers; a silent client is dropped.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from netproto.client import Connection
from netproto.errors import ConnectionClosed
from netproto.server import Operation, RequestContext, Server, ServerLimits
from netproto.tls import certificate_dns_names, server_context

TIMEOUT = 10.0
HOST = "127.0.0.1"


def _body(body: dict[str, Any]) -> dict[str, Any]:
    return body


async def _client_names(ctx: RequestContext, body: dict[str, Any]) -> Any:
    """The DNS names of the client certificate the server saw, or None."""
    return None if ctx.peer_cert is None else certificate_dns_names(ctx.peer_cert)


OPERATIONS: dict[str, Operation[Any]] = {
    "client_names": Operation(_body, _client_names, needs_token=False),
}

StartServer = Callable[..., Awaitable[Server]]


@pytest_asyncio.fixture(loop_scope="function")
async def start_server() -> AsyncIterator[StartServer]:
    """Start servers with a given TLS context on 127.0.0.1:0; all closed after the test."""
    servers: list[Server] = []

    async def start(context: ssl.SSLContext, limits: ServerLimits | None = None) -> Server:
        server = Server(OPERATIONS, context, limits=limits, name="tls-test")
        await asyncio.wait_for(server.start(HOST, 0), TIMEOUT)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await asyncio.wait_for(server.close(grace=0.5), TIMEOUT)


async def until_no_connections(server: Server) -> None:
    """Return once the server has no connection left (callers bound it with a timeout)."""
    while server.connection_count:  # noqa: ASYNC110 - the server offers no event to wait on
        await asyncio.sleep(0.01)


async def open_conn(
    server: Server, context: ssl.SSLContext, hostname: str = "indexd"
) -> Connection:
    return await Connection.open(HOST, server.port, context, server_hostname=hostname)


async def assert_refused(server: Server, context: ssl.SSLContext, hostname: str = "indexd") -> None:
    """The connection fails, at the handshake or (TLS 1.3 client auth) at the first request."""
    with pytest.raises(ConnectionClosed):
        conn = await open_conn(server, context, hostname)
        try:
            await conn.request("client_names", {})
        finally:
            await conn.close()


# --- the server's identity -----------------------------------------------------------------


async def test_handshake_succeeds_and_peer_certificate_names_the_server(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(pki.server_ctx("indexd"))
        conn = await open_conn(server, pki.client_ctx())
        assert "indexd" in certificate_dns_names(conn.peer_certificate)
        assert await conn.request("client_names", {}) is None
        await conn.close()


async def test_connection_negotiates_tls_1_3(pki: Any, start_server: StartServer) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(pki.server_ctx("indexd"))
        _, writer = await asyncio.open_connection(
            HOST, server.port, ssl=pki.client_ctx(), server_hostname="indexd"
        )
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        writer.close()


def test_contexts_allow_only_tls_1_3(pki: Any) -> None:
    server = pki.server_ctx("indexd")
    client = pki.client_ctx()
    for ctx in (server, client):
        assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    assert client.check_hostname
    assert client.verify_mode == ssl.CERT_REQUIRED


def test_server_context_requires_client_certificates_only_when_asked(pki: Any) -> None:
    assert pki.server_ctx("peer1", require_client_cert=True).verify_mode == ssl.CERT_REQUIRED
    assert pki.server_ctx("indexd").verify_mode == ssl.CERT_OPTIONAL


async def test_server_certificate_from_another_ca_is_refused(
    pki: Any, start_server: StartServer
) -> None:
    foreign = server_context(
        pki.cert("indexd", other=True),
        pki.key("indexd", other=True),
        pki.ca,
        require_client_cert=False,
    )
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(foreign)
        with pytest.raises(ConnectionClosed):
            await open_conn(server, pki.client_ctx())


async def test_wrong_server_hostname_is_refused(pki: Any, start_server: StartServer) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(pki.server_ctx("indexd"))
        with pytest.raises(ConnectionClosed):
            await open_conn(server, pki.client_ctx(), hostname="peer1")


async def test_tls_1_2_only_client_is_refused(pki: Any, start_server: StartServer) -> None:
    legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    legacy.load_verify_locations(cafile=str(pki.ca))
    legacy.maximum_version = ssl.TLSVersion.TLSv1_2
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(pki.server_ctx("indexd"))
        await assert_refused(server, legacy)


async def test_client_refuses_a_tls_1_2_only_server(pki: Any, start_server: StartServer) -> None:
    legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    legacy.load_cert_chain(str(pki.cert("indexd")), str(pki.key("indexd")))
    legacy.maximum_version = ssl.TLSVersion.TLSv1_2
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(legacy)
        with pytest.raises(ConnectionClosed):
            await open_conn(server, pki.client_ctx())


# --- client certificates -------------------------------------------------------------------


async def test_peer_accepts_a_client_certificate_from_the_ca_and_hands_it_to_handlers(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(pki.server_ctx("peer1", require_client_cert=True))
        conn = await open_conn(server, pki.client_ctx("peer2"), hostname="peer1")
        assert "peer2" in await conn.request("client_names", {})
        await conn.close()


async def test_peer_refuses_a_client_without_a_certificate(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(pki.server_ctx("peer1", require_client_cert=True))
        await assert_refused(server, pki.client_ctx(), hostname="peer1")
        await asyncio.wait_for(until_no_connections(server), 2.0)


async def test_peer_refuses_a_client_certificate_from_another_ca(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(pki.server_ctx("peer1", require_client_cert=True))
        await assert_refused(server, pki.client_ctx("peer1", other=True), hostname="peer1")


async def test_index_accepts_a_client_without_a_certificate(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(pki.server_ctx("indexd"))
        conn = await open_conn(server, pki.client_ctx())
        assert await conn.request("client_names", {}) is None
        await conn.close()


async def test_index_checks_a_client_certificate_when_one_is_presented(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(pki.server_ctx("indexd"))
        conn = await open_conn(server, pki.client_ctx("peer3"))
        assert "peer3" in await conn.request("client_names", {})
        await conn.close()
        await assert_refused(server, pki.client_ctx("peer1", other=True))


# --- the handshake deadline ----------------------------------------------------------------


async def test_client_that_never_sends_a_client_hello_is_dropped_at_the_handshake_timeout(
    pki: Any, start_server: StartServer
) -> None:
    async with asyncio.timeout(TIMEOUT):
        server = await start_server(pki.server_ctx("indexd"), ServerLimits(handshake_timeout=0.5))
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await asyncio.open_connection(HOST, server.port)  # plain TCP
        await asyncio.sleep(0.1)
        assert server.connection_count == 1
        assert await reader.read() == b""  # EOF: the server closed it
        assert 0.4 <= loop.time() - started < 0.5 + 2.0
        await asyncio.wait_for(until_no_connections(server), 2.0)
        writer.close()
