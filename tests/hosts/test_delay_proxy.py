"""The delay proxy of the test bed (tests/support/hosts.py), on loopback: no namespace needed."""

from __future__ import annotations

import asyncio
import os
import time

from tests.support.hosts import DelayProxy

DELAY = 0.05


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send back everything received, then close."""
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_a_round_trip_through_the_proxy_takes_its_delay_each_way() -> None:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[:2]
    async with server, DelayProxy(target, DELAY) as proxy, asyncio.timeout(10):
        host, port = await proxy.start()
        reader, writer = await asyncio.open_connection(host, port)
        start = time.monotonic()
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        elapsed = time.monotonic() - start
        writer.close()
    assert 2 * DELAY <= elapsed < 2 * DELAY + 0.5


async def test_the_proxy_passes_bytes_unchanged_in_order_and_forwards_the_end() -> None:
    payload = os.urandom(3 << 20)
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[:2]
    async with server, DelayProxy(target, 0.001) as proxy, asyncio.timeout(20):
        host, port = await proxy.start()
        reader, writer = await asyncio.open_connection(host, port)

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sending = asyncio.create_task(send())
        received = await reader.read()  # to the end: the echo closes after our EOF arrives
        await sending
        writer.close()
    assert received == payload
