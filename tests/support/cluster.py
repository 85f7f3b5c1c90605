"""Helpers of the tests of several index servers over one PostgreSQL database (PROTOCOL.md §11):
the password, a file to list, polling until something is true, two daemons on one
configuration, and alice logged in at both."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from indexd.app import IndexConfig, IndexDaemon
from netproto.operations import SharedFile
from tests.conftest import INDEX_TIMEOUT, IndexClient

PASSWORD = "correct horse battery"


def shared_file(keyword: str, name: str, size: int = 1) -> SharedFile:
    """A file to list (its content is never fetched)."""
    return SharedFile(name, keyword, size, bytes(32))


async def eventually(
    probe: Callable[[], Awaitable[bool]], within: float, *, tolerate: bool = False
) -> bool:
    """True once ``probe()`` is, asked again and again for at most ``within`` seconds;
    ``tolerate``: a probe that raises counts as not yet (a search refused during failover)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            if await probe():
                return True
        except Exception:
            if not tolerate:
                raise
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)


async def _stop(daemon: IndexDaemon) -> None:
    await asyncio.wait_for(daemon.stop(), INDEX_TIMEOUT)


@contextlib.asynccontextmanager
async def two_indexes(
    config: IndexConfig, clock: Callable[[], float] | None = None
) -> AsyncIterator[tuple[IndexDaemon, IndexDaemon]]:
    """Two daemons with one configuration (one database, one certificate and key)."""
    async with contextlib.AsyncExitStack() as stack:
        daemons = []
        for _ in range(2):
            daemon = IndexDaemon(config) if clock is None else IndexDaemon(config, clock=clock)
            await asyncio.wait_for(daemon.start(), INDEX_TIMEOUT)
            stack.push_async_callback(_stop, daemon)
            daemons.append(daemon)
        yield daemons[0], daemons[1]


@contextlib.asynccontextmanager
async def alice_at_both(
    config: IndexConfig,
    index_client: Callable[..., IndexClient],
    clock: Callable[[], float] | None = None,
    *,
    cert_a: str | None = None,
    cert_b: str | None = None,
    one_session: bool = False,
) -> AsyncIterator[tuple[IndexDaemon, IndexDaemon, IndexClient, IndexClient]]:
    """:func:`two_indexes` A and B, a client at each (with those client certificates), alice
    registered and logged in at A; at B logged in too, or with ``one_session`` presenting the
    token A issued (one session at both)."""
    async with (
        two_indexes(config, clock) as (a, b),
        index_client(a.port, cert=cert_a) as at_a,
        index_client(b.port, cert=cert_b) as at_b,
    ):
        await at_a.register("alice", PASSWORD)
        await at_a.login("alice", PASSWORD)
        if one_session:
            at_b.token = at_a.token
        else:
            await at_b.login("alice", PASSWORD)
        yield a, b, at_a, at_b
