"""Two index servers over one PostgreSQL database act as one index (PROTOCOL.md §11): a change
acknowledged by one is in the other's search within 1 s, ended sessions, liveness and login
attempts are shared, tokens are accepted by both, and a lost notification connection makes a
server reload everything. Real daemons in-process, real TLS, the suite's own PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest

from indexd.app import IndexConfig, IndexDaemon
from indexd.pgstore import PostgresIndexStore
from indexd.ratelimit import BackoffPolicy
from indexd.store import IssuedCertificate
from netproto.errors import AuthFailed, Forbidden, RateLimited, TokenInvalid
from netproto.operations import SearchHit, SyncDeltaRequest, SyncRequest
from tests.conftest import INDEX_TIMEOUT
from tests.support.cluster import PASSWORD, alice_at_both, eventually, shared_file, two_indexes

#: The issue's bound: a change acknowledged by one index is in the other's replies by then.
VISIBLE_WITHIN = 1.0
_file = shared_file


async def _eventually(probe: Callable[[], Awaitable[bool]], within: float = VISIBLE_WITHIN) -> bool:
    return await eventually(probe, within)


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


async def test_a_sync_acknowledged_by_one_index_is_in_the_others_search_within_a_second(
    postgres_url: str, index_config: Callable[..., IndexConfig], index_client: Any
) -> None:
    config = index_config(db=postgres_url)
    both = alice_at_both(config, index_client, cert_a="peer1")
    async with both as (_, _, at_a, at_b):
        assert await at_b.search("wombat") == []
        assert await at_a.sync("peer1", [_file("wombat", "w.txt")]) == 1

        async def at_b_too() -> bool:
            return _holders(await at_b.search("wombat")) == {"peer1"}

        assert await _eventually(at_b_too)


async def test_a_sync_delta_at_one_index_is_in_the_others_search_within_a_second(
    postgres_url: str, index_config: Callable[..., IndexConfig], index_client: Any
) -> None:
    config = index_config(db=postgres_url)
    both = alice_at_both(config, index_client, cert_a="peer1", cert_b="peer2")
    async with both as (_, _, at_a, at_b):
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
    config = index_config(db=postgres_url)
    both = alice_at_both(config, index_client, cert_a="peer1", cert_b="peer1", one_session=True)
    async with both as (_, _, _, at_b):
        assert await at_b.sync("peer1", [_file("wombat", "w.txt")]) == 1
        assert _holders(await at_b.search("wombat")) == {"peer1"}


def _hold_reconnection(listener: Any, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make the listener wait for the returned event before it connects again."""
    gate = threading.Event()
    connect = listener._connect

    def held() -> Any:
        gate.wait(INDEX_TIMEOUT)
        return connect()

    monkeypatch.setattr(listener, "_connect", held)
    return gate


def _cut(url: str, pid: int) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_an_index_that_lost_its_notifications_reloads_everything_and_sees_changes(
    postgres_url: str,
    index_config: Callable[..., IndexConfig],
    index_client: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="indexd.handlers")
    config = index_config(db=postgres_url)
    both = alice_at_both(config, index_client, cert_a="peer1")
    async with both as (a, b, at_a, at_b):
        assert a.service is not None and b.service is not None
        listener: Any = b.service._listener
        pid = listener.pid
        gate = _hold_reconnection(listener, monkeypatch)
        _cut(postgres_url, pid)
        # Acknowledged while B hears nothing: only the whole reload can show them to B.
        await at_a.sync("peer1", [_file("wombat", "w.txt")])
        enrolled = IssuedCertificate("s-1", "alice", "peer7", 1.0, 2e9)
        await asyncio.to_thread(a.service.store.record_certificate, enrolled)
        gate.set()

        async def reloaded_and_seen() -> bool:
            reloaded = any("index reloaded" in r.getMessage() for r in caplog.records)
            return reloaded and _holders(await at_b.search("wombat")) == {"peer1"}

        assert await _eventually(reloaded_and_seen, INDEX_TIMEOUT)
        assert b.service.owners.get("peer7") == "alice"  # enrolled names are reloaded too
        assert listener.pid != pid  # listening again, on a new connection


async def test_a_whole_reload_that_failed_is_tried_again_until_it_works(
    postgres_url: str,
    index_config: Callable[..., IndexConfig],
    index_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = index_config(db=postgres_url)
    both = alice_at_both(config, index_client, cert_a="peer1")
    async with both as (_, b, at_a, at_b):
        assert b.service is not None
        store: Any = b.service.store
        listener: Any = b.service._listener
        gate = _hold_reconnection(listener, monkeypatch)
        failures = iter([psycopg.OperationalError("the database went away")])
        iter_listings = store.iter_listings

        def failing_once() -> Any:
            for failure in failures:
                raise failure
            return iter_listings()

        monkeypatch.setattr(store, "iter_listings", failing_once)
        _cut(postgres_url, listener.pid)
        await at_a.sync("peer1", [_file("wombat", "w.txt")])
        gate.set()

        async def seen() -> bool:
            return _holders(await at_b.search("wombat")) == {"peer1"}

        assert await _eventually(seen, INDEX_TIMEOUT)
        assert next(failures, None) is None  # the first reload did fail


async def test_a_failed_reload_of_one_peer_becomes_a_whole_reload(
    postgres_url: str,
    index_config: Callable[..., IndexConfig],
    index_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = index_config(db=postgres_url)
    both = alice_at_both(config, index_client, cert_a="peer1")
    async with both as (_, b, at_a, at_b):
        assert b.service is not None
        store: Any = b.service.store
        failures = iter([psycopg.OperationalError("the database went away")])
        listing_of = store.listing_of

        def failing_once(name: str) -> Any:
            for failure in failures:
                raise failure
            return listing_of(name)

        monkeypatch.setattr(store, "listing_of", failing_once)
        await at_a.sync("peer1", [_file("wombat", "w.txt")])

        async def seen() -> bool:
            return _holders(await at_b.search("wombat")) == {"peer1"}

        assert await _eventually(seen, INDEX_TIMEOUT)
        assert next(failures, None) is None  # the read of the peer did fail


async def test_a_reload_refused_for_an_older_number_reads_the_peer_again(
    postgres_url: str,
    index_config: Callable[..., IndexConfig],
    index_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = index_config(db=postgres_url)
    both = alice_at_both(config, index_client, cert_a="peer1", cert_b="peer1", one_session=True)
    async with both as (_, b, at_a, at_b):
        await at_b.sync("peer1", [_file("wombat", "w.txt")])  # B's own commit, numbered at B
        assert b.service is not None
        service: Any = b.service
        read_peer = service._read_peer
        numbered_early = iter([True])

        def read_numbered_before_the_commit(name: str) -> Any:
            generation, *rest = read_peer(name)
            # As if numbered before B's commit, while its snapshot holds A's later one.
            return (0 if next(numbered_early, False) else generation, *rest)

        monkeypatch.setattr(service, "_read_peer", read_numbered_before_the_commit)
        await at_a.sync("peer1", [_file("numbat", "n.txt")])

        async def a_change_seen_at_b() -> bool:
            return _holders(await at_b.search("numbat")) == {"peer1"}

        assert await _eventually(a_change_seen_at_b, INDEX_TIMEOUT)
        assert await at_b.search("wombat") == []


async def test_a_bye_whose_client_left_mid_write_still_ends_the_session_and_withdraws_there(
    postgres_url: str,
    index_config: Callable[..., IndexConfig],
    index_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with (
        two_indexes(index_config(db=postgres_url)) as (a, _b),
        index_client(a.port) as searcher,
        index_client(a.port, cert="peer1") as again,
    ):
        leaving = index_client(a.port, cert="peer1")
        await leaving.__aenter__()
        await leaving.register("alice", PASSWORD)
        await leaving.login("alice", PASSWORD)
        await searcher.login("alice", PASSWORD)  # a session of its own
        await leaving.sync("peer1", [_file("wombat", "w.txt")])
        assert a.service is not None
        store: Any = a.service.store
        entered, release = threading.Event(), threading.Event()
        withdraw_and_revoke = store.withdraw_and_revoke

        def slow(*args: Any) -> Any:
            entered.set()
            release.wait(INDEX_TIMEOUT)
            return withdraw_and_revoke(*args)

        monkeypatch.setattr(store, "withdraw_and_revoke", slow)
        bye = asyncio.create_task(leaving.bye("peer1"))
        assert await asyncio.to_thread(entered.wait, INDEX_TIMEOUT)
        await leaving.__aexit__(None, None, None)  # gone while the write runs
        await asyncio.gather(bye, return_exceptions=True)
        again.token = leaving.token
        with pytest.raises(TokenInvalid):  # refused at once, before the write commits
            await again.search("wombat")
        release.set()

        async def withdrawn_at_a() -> bool:
            return not await searcher.search("wombat")

        assert await _eventually(withdrawn_at_a, INDEX_TIMEOUT)
        with pytest.raises(TokenInvalid):
            await again.search("wombat")


async def test_an_ended_sessions_expiry_travels_with_it_to_the_other_index(
    postgres_url: str, index_config: Callable[..., IndexConfig], index_client: Any
) -> None:
    clock = Clock()
    async with (
        two_indexes(index_config(db=postgres_url), clock) as (a, b),
        index_client(a.port, cert="peer1") as at_a,
    ):
        await at_a.register("alice", PASSWORD)
        await at_a.login("alice", PASSWORD)
        await at_a.sync("peer1", [_file("wombat", "w.txt")])
        assert a.service is not None and b.service is not None
        b.service.clock = lambda: clock.now + 100  # B's clock is ahead: it keeps A's expiry
        await at_a.bye("peer1")
        [(session, until)] = a.service.revoked.items()

        async def heard_at_b() -> bool:
            return session in b.service.revoked  # type: ignore[union-attr]

        assert await _eventually(heard_at_b, INDEX_TIMEOUT)
        assert b.service.revoked[session] == until


async def test_a_name_enrolled_at_one_index_counts_against_the_users_quota_at_the_other(
    postgres_url: str, index_config: Callable[..., IndexConfig], index_client: Any
) -> None:
    async with (
        two_indexes(index_config(db=postgres_url, max_domains_per_user=1)) as (a, b),
        index_client(b.port, cert="peer2") as at_b,
    ):
        await at_b.register("alice", PASSWORD)
        await at_b.login("alice", PASSWORD)
        assert a.service is not None and b.service is not None
        enrolled = IssuedCertificate("s-1", "alice", "peer1", 1.0, 2e9)
        await asyncio.to_thread(a.service.store.record_certificate, enrolled)

        async def owned_at_b() -> bool:
            return b.service.owners.get("peer1") == "alice"  # type: ignore[union-attr]

        assert await _eventually(owned_at_b, INDEX_TIMEOUT)
        with pytest.raises(Forbidden, match="at most 1 domain names"):
            await at_b.sync("peer2", [_file("wombat", "w.txt")])


@contextlib.asynccontextmanager
async def _starting_held(
    config: IndexConfig, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[IndexDaemon, threading.Event, asyncio.Task[None]]]:
    """An index starting, held inside its load of the listings (its snapshot taken, one
    listing read) until the event is set; the task finishes its start."""
    entered, release = threading.Event(), threading.Event()
    iter_listings = PostgresIndexStore.iter_listings
    first_call = iter([True])

    def held(store: PostgresIndexStore) -> Iterator[Any]:
        listings = iter_listings(store)
        if next(first_call, False):
            first = next(listings)
            entered.set()
            release.wait(INDEX_TIMEOUT)
            yield first
        yield from listings

    monkeypatch.setattr(PostgresIndexStore, "iter_listings", held)
    daemon = IndexDaemon(config)
    starting = asyncio.create_task(daemon.start())
    try:
        assert await asyncio.to_thread(entered.wait, INDEX_TIMEOUT)
        yield daemon, release, starting
        await asyncio.wait_for(starting, INDEX_TIMEOUT)
    finally:
        release.set()
        await asyncio.gather(starting, return_exceptions=True)
        await asyncio.wait_for(daemon.stop(), INDEX_TIMEOUT)


async def test_a_session_ended_while_an_index_loads_stays_ended_there(
    postgres_url: str,
    index_config: Callable[..., IndexConfig],
    index_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = index_config(db=postgres_url)
    async with (
        two_indexes(config) as (a, _),
        index_client(a.port, cert="peer1") as at_a,
    ):
        await at_a.register("alice", PASSWORD)
        await at_a.login("alice", PASSWORD)
        await at_a.sync("peer1", [_file("wombat", "w.txt")])
        assert a.service is not None
        async with _starting_held(config, monkeypatch) as (b, release, starting):
            await at_a.bye("peer1")  # after B read the ended sessions, before its load ended
            [(session, until)] = a.service.revoked.items()

            async def heard_at_b() -> bool:
                return b.service is not None and session in b.service.revoked

            assert await _eventually(heard_at_b, INDEX_TIMEOUT)
            release.set()
            await asyncio.wait_for(starting, INDEX_TIMEOUT)
            assert b.service is not None
            assert b.service.revoked.get(session) == until


async def test_notifications_lost_while_an_index_loads_never_leave_it_an_older_listing(
    postgres_url: str,
    index_config: Callable[..., IndexConfig],
    index_client: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="indexd.handlers")
    config = index_config(db=postgres_url)
    async with (
        two_indexes(config) as (a, _),
        index_client(a.port, cert="peer1") as at_a,
    ):
        await at_a.register("alice", PASSWORD)
        await at_a.login("alice", PASSWORD)
        await at_a.sync("peer1", [_file("wombat", "w.txt")])
        async with _starting_held(config, monkeypatch) as (b, release, starting):
            assert b.service is not None
            service: Any = b.service
            await at_a.sync("peer1", [_file("numbat", "n.txt")])  # newer than B's snapshot
            _cut(postgres_url, service._listener.pid)

            async def lost_noticed() -> bool:  # a whole reload is due, or already done
                reloaded = any("index reloaded" in r.getMessage() for r in caplog.records)
                return reloaded or getattr(service, "_whole_wanted", False)

            assert await _eventually(lost_noticed, INDEX_TIMEOUT)
            release.set()
            await asyncio.wait_for(starting, INDEX_TIMEOUT)
            async with index_client(b.port) as at_b:
                await at_b.login("alice", PASSWORD)

                async def newest_at_b() -> bool:
                    return _holders(await at_b.search("numbat")) == {"peer1"}

                assert await _eventually(newest_at_b, INDEX_TIMEOUT)
                assert await at_b.search("wombat") == []


async def test_a_held_back_login_is_refused_from_memory_without_a_store_call(
    postgres_url: str,
    index_config: Callable[..., IndexConfig],
    index_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loose = BackoffPolicy(free=1000)
    config = index_config(
        db=postgres_url,
        login_backoff=loose,
        address_backoff=loose,
        user_backoff=BackoffPolicy(free=1, base_delay=30.0),
    )
    async with two_indexes(config) as (a, _), index_client(a.port) as at_a:
        await at_a.register("alice", PASSWORD)
        with pytest.raises(AuthFailed):
            await at_a.login("alice", "wrong password")
        with pytest.raises(RateLimited):  # the store's refusal: now known here
            await at_a.login("alice", "wrong password")
        assert a.service is not None
        store: Any = a.service.store
        charged: list[Any] = []
        attempts_charge = store.attempts_charge

        def counted(*args: Any) -> Any:
            charged.append(args)
            return attempts_charge(*args)

        monkeypatch.setattr(store, "attempts_charge", counted)
        for _ in range(5):
            with pytest.raises(RateLimited) as held:
                await at_a.login("alice", PASSWORD)
            assert 0 < held.value.retry_after <= 30.0
        assert charged == []


async def test_renew_at_an_index_reads_the_database_at_most_once_a_second_per_user(
    postgres_url: str,
    index_config: Callable[..., IndexConfig],
    index_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    async with (
        two_indexes(index_config(db=postgres_url), clock) as (a, _),
        index_client(a.port, cert="peer1") as at_a,
    ):
        await at_a.register("alice", PASSWORD)
        await at_a.login("alice", PASSWORD)
        assert a.service is not None
        store: Any = a.service.store
        reads: list[str] = []
        user_active = store.user_active

        def counted(user: str) -> bool:
            reads.append(user)
            return bool(user_active(user))

        monkeypatch.setattr(store, "user_active", counted)
        for _ in range(3):
            await at_a.call("renew", {}, at_a.token)
        assert reads == ["alice"]
        await asyncio.to_thread(store.set_user_disabled, "alice", True)
        clock.now += 1.5  # past what was remembered: read again, and refused
        with pytest.raises(Forbidden, match="not registered"):
            await at_a.call("renew", {}, at_a.token)
        assert reads == ["alice", "alice"]
