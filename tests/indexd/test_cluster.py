"""Two index servers over one PostgreSQL database act as one index (PROTOCOL.md §11): a change
acknowledged by one is in the other's search within 1 s, ended sessions, liveness and login
attempts are shared, tokens are accepted by both, and a lost notification connection makes a
server reload everything. Real daemons in-process, real TLS, the suite's own PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest

from indexd.app import IndexConfig, IndexDaemon
from indexd.ratelimit import BackoffPolicy
from netproto.errors import AuthFailed, RateLimited, TokenInvalid
from netproto.operations import SearchHit, SharedFile, SyncDeltaRequest, SyncRequest
from tests.conftest import INDEX_TIMEOUT

PASSWORD = "correct horse battery"
#: The issue's bound: a change acknowledged by one index is in the other's replies by then.
VISIBLE_WITHIN = 1.0


def _file(keyword: str, name: str) -> SharedFile:
    return SharedFile(name, keyword, 1, bytes(32))


async def _eventually(probe: Callable[[], Awaitable[bool]], within: float = VISIBLE_WITHIN) -> bool:
    """True once ``probe()`` is, asked again and again for at most ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if await probe():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)


def _holders(hits: list[SearchHit]) -> set[str]:
    return {hit.domain_name for hit in hits}


def _last_seen(url: str, domain_name: str) -> float:
    with psycopg.connect(url) as conn:
        [(seen,)] = conn.execute(
            "SELECT last_seen FROM peers WHERE domain_name = %s", (domain_name,)
        ).fetchall()
        return float(seen)


class Clock:
    """A clock both daemons read, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


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


async def test_a_sync_acknowledged_by_one_index_is_in_the_others_search_within_a_second(
    postgres_url: str, index_config: Callable[..., IndexConfig], index_client: Any
) -> None:
    async with (
        two_indexes(index_config(db=postgres_url)) as (a, b),
        index_client(a.port, cert="peer1") as at_a,
        index_client(b.port) as at_b,
    ):
        await at_a.register("alice", PASSWORD)
        await at_a.login("alice", PASSWORD)
        await at_b.login("alice", PASSWORD)
        assert await at_b.search("wombat") == []
        assert await at_a.sync("peer1", [_file("wombat", "w.txt")]) == 1

        async def at_b_too() -> bool:
            return _holders(await at_b.search("wombat")) == {"peer1"}

        assert await _eventually(at_b_too)


async def test_a_sync_delta_at_one_index_is_in_the_others_search_within_a_second(
    postgres_url: str, index_config: Callable[..., IndexConfig], index_client: Any
) -> None:
    async with (
        two_indexes(index_config(db=postgres_url)) as (a, b),
        index_client(a.port, cert="peer1") as at_a,
        index_client(b.port, cert="peer2") as at_b,
    ):
        await at_a.register("alice", PASSWORD)
        await at_a.login("alice", PASSWORD)
        await at_b.login("alice", PASSWORD)
        whole = SyncRequest("peer1", 7001, (_file("wombat", "w.txt"),))
        version = (await at_a.call("sync", whole.to_wire(), at_a.token))["version"]
        # Notifications arrive in commit order: once A has heard B's later sync, it has
        # heard its own too — and passed over it, so its listing version still holds.
        assert await at_b.sync("peer2", [_file("numbat", "n.txt")]) == 1

        async def a_heard_b() -> bool:
            return _holders(await at_a.search("numbat")) == {"peer2"}

        assert await _eventually(a_heard_b)
        delta = SyncDeltaRequest("peer1", 7001, version, (_file("quokka", "q.txt"),))
        assert (await at_a.call("sync_delta", delta.to_wire(), at_a.token))["files"] == 2

        async def at_b_too() -> bool:
            return _holders(await at_b.search("quokka")) == {"peer1"}

        assert await _eventually(at_b_too)
        assert _holders(await at_b.search("wombat")) == {"peer1"}


async def test_bye_at_one_index_withdraws_the_peer_and_ends_its_session_at_the_other(
    postgres_url: str, index_config: Callable[..., IndexConfig], index_client: Any
) -> None:
    async with (
        two_indexes(index_config(db=postgres_url)) as (a, b),
        index_client(a.port, cert="peer1") as at_a,
        index_client(b.port, cert="peer1") as at_b,
        index_client(b.port) as searcher,
    ):
        await at_a.register("alice", PASSWORD)
        await at_a.login("alice", PASSWORD)
        await searcher.login("alice", PASSWORD)  # a session of its own: bye does not end it
        await at_a.sync("peer1", [_file("wombat", "w.txt")])

        async def listed_at_b() -> bool:
            return _holders(await searcher.search("wombat")) == {"peer1"}

        assert await _eventually(listed_at_b)
        at_b.token = at_a.token  # the session that will end, presented at B
        assert _holders(await at_b.search("wombat")) == {"peer1"}
        await at_a.bye("peer1")

        async def gone_at_b() -> bool:
            return not await searcher.search("wombat")

        async def refused_at_b() -> bool:
            try:
                await at_b.search("wombat")
            except TokenInvalid:
                return True
            return False

        assert await _eventually(gone_at_b)
        assert await _eventually(refused_at_b)


async def test_pinging_only_one_index_keeps_the_peer_live_at_the_other_past_the_ttl(
    postgres_url: str, index_config: Callable[..., IndexConfig], index_client: Any
) -> None:
    clock, ttl = Clock(), 60.0
    config = index_config(db=postgres_url, peer_ttl=ttl, liveness_interval=0.05)
    async with (
        two_indexes(config, clock) as (a, b),
        index_client(a.port, cert="peer1") as peer1,
        index_client(a.port, cert="peer2") as peer2,
        index_client(b.port) as at_b,
    ):
        await peer1.register("alice", PASSWORD)
        await peer1.login("alice", PASSWORD)
        await peer2.login("alice", PASSWORD)
        await at_b.login("alice", PASSWORD)
        await peer1.sync("peer1", [_file("wombat", "w.txt")])
        await peer2.sync("peer2", [_file("wombat", "v.txt")])

        async def both_at_b() -> bool:
            return _holders(await at_b.search("wombat")) == {"peer1", "peer2"}

        assert await _eventually(both_at_b)
        clock.now += ttl - 1
        await peer1.ping("peer1")  # peer2 pings nobody
        pinged_at = clock.now

        async def in_the_store() -> bool:  # A's batch is written (one interval, in real time)
            seen = await asyncio.to_thread(_last_seen, postgres_url, "peer1")
            return seen == pinged_at

        assert await _eventually(in_the_store, INDEX_TIMEOUT)
        clock.now += 10  # past the TTL of the sync, within that of the ping

        async def only_the_pinging_one() -> bool:
            return _holders(await at_b.search("wombat")) == {"peer1"}

        assert await _eventually(only_the_pinging_one, INDEX_TIMEOUT)


async def test_login_failures_at_both_indexes_together_reach_the_per_user_ceiling(
    postgres_url: str, index_config: Callable[..., IndexConfig], index_client: Any
) -> None:
    loose = BackoffPolicy(free=1000)
    config = index_config(
        db=postgres_url,
        login_backoff=loose,
        address_backoff=loose,
        user_backoff=BackoffPolicy(free=4, base_delay=30.0),
    )
    async with (
        two_indexes(config) as (a, b),
        index_client(a.port) as at_a,
        index_client(b.port) as at_b,
    ):
        await at_a.register("alice", PASSWORD)
        # Four failures, two at each: each index alone saw too few to hold the user back.
        for client in (at_a, at_b, at_a, at_b):
            with pytest.raises(AuthFailed):
                await client.login("alice", "wrong password")
        for client in (at_a, at_b):  # together they reached the ceiling: both hold it back
            with pytest.raises(RateLimited) as held:
                await client.login("alice", PASSWORD)
            assert 0 < held.value.retry_after <= 30.0


async def test_a_token_issued_by_one_index_is_accepted_by_the_other(
    postgres_url: str, index_config: Callable[..., IndexConfig], index_client: Any
) -> None:
    async with (
        two_indexes(index_config(db=postgres_url)) as (a, b),
        index_client(a.port, cert="peer1") as at_a,
        index_client(b.port, cert="peer1") as at_b,
    ):
        await at_a.register("alice", PASSWORD)
        await at_a.login("alice", PASSWORD)
        at_b.token = at_a.token
        assert await at_b.sync("peer1", [_file("wombat", "w.txt")]) == 1
        assert _holders(await at_b.search("wombat")) == {"peer1"}


async def test_an_index_that_lost_its_notifications_reloads_everything_and_sees_changes(
    postgres_url: str,
    index_config: Callable[..., IndexConfig],
    index_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="indexd.handlers")
    async with (
        two_indexes(index_config(db=postgres_url)) as (a, b),
        index_client(a.port, cert="peer1") as at_a,
        index_client(b.port) as at_b,
    ):
        await at_a.register("alice", PASSWORD)
        await at_a.login("alice", PASSWORD)
        await at_b.login("alice", PASSWORD)
        assert b.service is not None
        listener: Any = b.service._listener
        pid = listener.pid
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await at_a.sync("peer1", [_file("wombat", "w.txt")])

        async def reloaded_and_seen() -> bool:
            reloaded = any("index reloaded" in r.getMessage() for r in caplog.records)
            return reloaded and _holders(await at_b.search("wombat")) == {"peer1"}

        assert await _eventually(reloaded_and_seen, INDEX_TIMEOUT)
        assert listener.pid != pid  # listening again, on a new connection
