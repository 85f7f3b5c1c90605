"""The session with the index (peerd/index_session.py) against a fake index and a fake clock:
when the token is renewed and pings are sent, how a lost connection is recovered, and which
session error each refusal becomes — hours of upkeep without sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

import pytest
import pytest_asyncio

from certs import load_cert
from netproto.errors import (
    AuthFailed,
    BadRequest,
    ConnectionClosed,
    Forbidden,
    NotFound,
    RateLimited,
    Timeout,
    TokenExpired,
    UserExists,
)
from netproto.operations import SharedFile
from peerd.client import IndexAddress
from peerd.errors import (
    DomainRefused,
    IndexUnavailable,
    IndexUntrusted,
    LoginRefused,
    RegistrationRefused,
    SessionError,
    ShareTooLarge,
)
from peerd.index_session import (
    IndexCandidate,
    IndexLink,
    IndexServers,
    IndexSession,
    certificate_untrusted,
)
from tests.support.failover import NameTable
from tests.support.fake_clock import START, FakeClock
from tests.support.fake_index import FakeIndex

TIMEOUT = 5.0
FILES = [SharedFile("a.txt", "koala", 1, bytes(32))]


def make_session(
    index: FakeIndex, connect: IndexServers | None = None, **overrides: Any
) -> IndexSession:
    """A session with ``index`` at 127.0.0.1:7000, or with the index servers ``connect``."""
    settings: dict[str, Any] = {
        "where": "127.0.0.1:7000",
        "domain_name": "peer1",
        "username": "peer1",
        "password": "correct horse battery",
        "ping_interval": 30.0,
        "clock": index.clock,
        "jitter": lambda: 0.0,  # the back-offs exactly; jitter has its own test
        **overrides,
    }
    return IndexSession(connect or index.connect, **settings)


async def started(session: IndexSession) -> None:
    """What the daemon's start() does with the session: connect, log in, sync."""
    async with session.lock:
        link = await session.connect()
        await session.auth(link)
        await session.sync(link, FILES, 7001)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def index(pki: Any, clock: FakeClock) -> FakeIndex:
    return FakeIndex(clock, load_cert(pki.cert("indexd")))


@pytest_asyncio.fixture(loop_scope="function")
async def session(index: FakeIndex) -> IndexSession:
    """A session started at the fake clock's START: logged in at 0 s, synced at 0 s."""
    session = make_session(index)
    await started(session)
    return session


@contextlib.asynccontextmanager
async def upkeep(session: IndexSession) -> AsyncIterator[asyncio.Task[None]]:
    """The session's upkeep running for the ``async with`` block (time runs as it sleeps)."""

    async def rescan() -> Sequence[SharedFile]:
        return FILES

    task = asyncio.create_task(session.maintain(rescan, lambda: 7001))
    try:
        async with asyncio.timeout(TIMEOUT):
            yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def after_start(index: FakeIndex) -> list[tuple[str, float]]:
    """The calls made after the session started, with their time since the start."""
    return [(op, t - START) for op, t in index.calls[3:]]


# --- timing, on the fake clock ---------------------------------------------------------------


async def test_the_token_is_renewed_at_80_percent_of_its_life_and_pings_every_interval(
    index: FakeIndex, session: IndexSession
) -> None:
    began = time.monotonic()
    async with upkeep(session):
        await index.wait_for("ping", 8)
    assert index.times("auth", START)[:4] == [0, 80, 160, 240]  # tokens live 100 s
    assert index.times("ping", START)[:8] == [30, 60, 90, 120, 150, 180, 210, 240]
    assert time.monotonic() - began < 2  # four minutes of upkeep, without waiting for them


async def test_the_upkeep_sleeps_until_the_next_piece_of_work(
    index: FakeIndex, clock: FakeClock, session: IndexSession
) -> None:
    async with upkeep(session):
        await index.wait_for("auth", 2)
    assert clock.sleeps[:3] == [30, 30, 20]  # ping at 30, ping at 60, renew at 80


async def test_pings_come_at_a_third_of_the_index_peer_ttl_when_that_is_shorter(
    index: FakeIndex, session: IndexSession
) -> None:
    index.peer_ttl = 15.0  # the first ping's reply says so
    async with upkeep(session):
        await index.wait_for("ping", 4)
    assert index.times("ping", START)[:4] == [30, 35, 40, 45]


async def test_a_lost_connection_is_reconnected_with_backoff_and_synced_again(
    index: FakeIndex, clock: FakeClock, session: IndexSession
) -> None:
    index.errors["connect"] = [ConnectionClosed("refused"), ConnectionClosed("refused")]
    index.connections[0].drop()
    async with upkeep(session) as task:
        await index.wait_for("sync", 2)
        assert not task.done()
    assert after_start(index)[:5] == [
        ("connect", 30),  # refused: retried in 1 s
        ("connect", 31),  # refused: retried in 2 s
        ("connect", 33),
        ("auth", 33),
        ("sync", 33),  # the index may have lost us meanwhile
    ]
    assert session.connected


async def test_an_unreachable_index_never_stops_the_upkeep_and_backs_off_to_a_minute(
    index: FakeIndex, clock: FakeClock, session: IndexSession, caplog: pytest.LogCaptureFixture
) -> None:
    index.errors["connect"] = [ConnectionClosed("refused") for _ in range(10)]
    index.connections[0].drop()
    async with upkeep(session) as task:
        await index.wait_for("sync", 2)
        assert not task.done()
    backoffs = [s for s in clock.sleeps if s][1:11]
    assert backoffs == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert "cannot reach the index at 127.0.0.1:7000" in caplog.text


async def test_a_token_refused_by_the_index_is_renewed_a_second_later(
    index: FakeIndex, session: IndexSession
) -> None:
    index.errors["ping"] = [TokenExpired()]
    async with upkeep(session):
        await index.wait_for("auth", 2)
    assert after_start(index)[:2] == [("ping", 30), ("auth", 31)]


async def test_an_index_that_forgot_this_peer_gets_the_listing_again(
    index: FakeIndex, session: IndexSession
) -> None:
    index.errors["ping"] = [NotFound("no peer with this domain_name; sync first")]
    index.listing = []
    async with upkeep(session):
        await index.wait_for("sync", 2)
    assert after_start(index)[:2] == [("ping", 30), ("sync", 30)]
    assert index.listing == FILES


# --- session errors, each chained to its cause ----------------------------------------------


async def test_search_on_an_unreachable_index_is_index_unavailable_not_a_startup_error(
    index: FakeIndex,
) -> None:
    session = make_session(index)
    index.errors["connect"] = [ConnectionClosed("Connect call failed")]
    with pytest.raises(
        IndexUnavailable, match=r"cannot reach the index at 127\.0\.0\.1:7000"
    ) as info:
        await session.search("koala")
    assert isinstance(info.value.__cause__, ConnectionClosed)


async def test_an_index_certificate_that_fails_verification_is_index_untrusted(
    index: FakeIndex,
) -> None:
    session = make_session(index)
    refused = ConnectionClosed("TLS handshake failed")
    refused.__cause__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
    index.errors["connect"] = [refused]
    with pytest.raises(IndexUntrusted, match="a certificate we do not trust") as info:
        await session.search("koala")
    assert info.value.__cause__ is refused
    assert certificate_untrusted(info.value)


async def test_an_index_certificate_unusable_for_tokens_is_index_untrusted(
    pki: Any, index: FakeIndex
) -> None:
    index.certificate = load_cert(pki.ca)  # from our CA, but it names no DNS host
    with pytest.raises(IndexUntrusted, match="unusable certificate") as info:
        await make_session(index).connect()
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize(
    "error, message",
    [
        (AuthFailed(), "authentication failed for peer1: wrong username or password"),
        (RateLimited("slow down", retry_after=7), "too many login attempts; retry in 7 s"),
        (BadRequest("username: too long"), "the index refused the login: username: too long"),
    ],
)
async def test_a_refused_login_is_login_refused_chained_to_the_wire_error(
    index: FakeIndex, error: Exception, message: str
) -> None:
    session = make_session(index)
    index.errors["auth"] = [error]
    with pytest.raises(LoginRefused) as info:
        await session.search("koala")
    assert str(info.value) == message
    assert info.value.__cause__ is error


async def test_an_existing_user_is_fine_and_another_refusal_is_registration_refused(
    index: FakeIndex,
) -> None:
    session = make_session(index)
    link = await session.connect()
    index.errors["register"] = [UserExists(), Forbidden("registration is closed")]
    await session.register(link)
    with pytest.raises(RegistrationRefused, match="cannot register peer1") as info:
        await session.register(link)
    assert isinstance(info.value.__cause__, Forbidden)


async def test_a_domain_name_owned_by_another_user_is_domain_refused(index: FakeIndex) -> None:
    session = make_session(index)
    link = await session.connect()
    index.errors["sync"] = [Forbidden("this domain_name belongs to another user")]
    with pytest.raises(DomainRefused, match="refuses 'peer1' for peer1") as info:
        await session.sync(link, FILES, 7001)
    assert isinstance(info.value.__cause__, Forbidden)
    assert session.listed == [] and session.last_sync is None


async def test_a_share_too_large_to_describe_is_share_too_large(index: FakeIndex) -> None:
    session = make_session(index)
    link = await session.connect()
    index.errors["sync"] = [ValueError("share needs 9999 parts")]
    with pytest.raises(ShareTooLarge) as info:
        await session.sync(link, FILES, 7001)
    assert isinstance(info.value, SessionError)
    assert isinstance(info.value.__cause__, ValueError)


async def test_search_renews_a_token_due_for_renewal_first(
    index: FakeIndex, clock: FakeClock, session: IndexSession
) -> None:
    clock.advance(81)
    await session.search("koala")
    assert [op for op, _ in index.calls] == ["connect", "auth", "sync", "auth", "search"]


async def test_bye_is_said_only_when_logged_in_and_its_failure_only_logged(
    index: FakeIndex, caplog: pytest.LogCaptureFixture
) -> None:
    session = make_session(index)
    await session.bye(1.0)  # never connected: nothing to say
    await started(session)
    index.errors["bye"] = [ConnectionClosed("reset")]
    await session.bye(1.0)
    assert [op for op, _ in index.calls].count("bye") == 1
    assert "could not say bye to the index" in caplog.text


# --- several index servers (README.md, "Several index servers") ------------------------------


@pytest.fixture
def other(pki: Any, clock: FakeClock) -> FakeIndex:
    """A second index server of the same deployment (same certificate and clock)."""
    return FakeIndex(clock, load_cert(pki.cert("indexd")))


def servers_of(
    indexes: dict[str, FakeIndex], *given: str, resolve: NameTable | None = None
) -> IndexServers:
    """Index servers ``given`` (``host`` at port 7000), each address dialled in ``indexes``."""

    async def dial(candidate: IndexCandidate) -> IndexLink:
        return await indexes[candidate.address].connect()

    addresses = [IndexAddress(host, 7000) for host in given or indexes]
    return IndexServers(addresses, dial, resolve=resolve)


def ops(index: FakeIndex) -> list[str]:
    return [op for op, _ in index.calls]


async def test_a_session_uses_the_first_index_server_and_skips_one_that_refuses(
    index: FakeIndex, other: FakeIndex
) -> None:
    index.errors["connect"] = [ConnectionClosed("Connect call failed")]
    session = make_session(index, connect=servers_of({"a": index, "b": other}))
    await started(session)
    assert ops(index) == ["connect"]
    assert ops(other) == ["connect", "auth", "sync"]
    assert session.where == "b:7000"


async def test_a_search_lost_on_one_index_server_is_retried_once_on_the_next(
    index: FakeIndex, other: FakeIndex, caplog: pytest.LogCaptureFixture
) -> None:
    session = make_session(index, connect=servers_of({"a": index, "b": other}))
    await started(session)
    other.listing = FILES  # the deployment's store lists us there too
    index.errors["search"] = [ConnectionClosed("connection reset")]
    with caplog.at_level(logging.INFO, logger="peerd.index_session"):
        hits = await session.search("koala")
    assert [f.filename for hit in hits for f in hit.files] == ["a.txt"]
    assert ops(index)[-1] == "search"
    assert ops(other) == ["connect", "auth", "ping", "search"]
    assert session.where == "b:7000"
    assert "moved to the index server b:7000" in caplog.text


async def test_a_protocol_refusal_is_raised_and_not_tried_on_another_index_server(
    index: FakeIndex, other: FakeIndex
) -> None:
    session = make_session(index, connect=servers_of({"a": index, "b": other}))
    await started(session)
    index.errors["search"] = [Forbidden("not for you")]
    with pytest.raises(Forbidden):
        await session.search("koala")
    assert other.calls == []
    assert session.where == "a:7000"


async def test_two_requests_lost_on_the_same_connection_move_once(
    index: FakeIndex, other: FakeIndex
) -> None:
    session = make_session(index, connect=servers_of({"a": index, "b": other}))
    await started(session)
    lost = session.index
    assert lost is not None
    index.errors["connect"] = [ConnectionClosed("Connect call failed")]  # a is gone
    async with session.lock:  # the first request to notice moves ...
        moved = await session.move_from(lost)
    async with session.lock:  # ... the second one finds the session moved already
        again = await session.move_from(lost)
    assert again is moved and not moved.closed
    assert ops(index) == ["connect", "auth", "sync"]
    assert ops(other) == ["connect", "auth", "ping"]


async def test_a_sync_lost_on_one_index_server_is_sent_whole_once_on_the_next(
    index: FakeIndex, other: FakeIndex
) -> None:
    session = make_session(index, connect=servers_of({"a": index, "b": other}))
    await started(session)
    more = [*FILES, SharedFile("b.txt", "koala", 2, bytes(32))]
    index.errors["sync_delta"] = [Timeout("no answer")]
    report = await session.publish(more, 7001)
    assert ops(index)[-1] == "sync_delta"
    # no ping first: one that found b not listing us would send the listing a second time
    assert ops(other) == ["connect", "auth", "sync"]
    assert other.listing == more and report.full and report.sent == 2
    assert other.sent == [2]


async def test_the_upkeep_moves_to_the_next_index_server_when_a_ping_is_lost(
    index: FakeIndex, other: FakeIndex, clock: FakeClock
) -> None:
    session = make_session(index, connect=servers_of({"a": index, "b": other}))
    await started(session)
    index.errors["ping"] = [ConnectionClosed("connection reset")]
    async with upkeep(session):
        await other.wait_for("ping", 2)
    assert index.times("ping", START) == [30]
    # moved at once, no back-off: logged in and pinged at 30, then every 30 s
    assert [(op, t - START) for op, t in other.calls[:4]] == [
        ("connect", 30),
        ("auth", 30),
        ("ping", 30),
        ("ping", 60),
    ]


async def test_an_index_server_that_does_not_list_us_after_a_move_gets_the_listing(
    index: FakeIndex, other: FakeIndex
) -> None:
    session = make_session(index, connect=servers_of({"a": index, "b": other}))
    await started(session)
    index.errors["ping"] = [Timeout("no answer")]
    other.errors["ping"] = [NotFound("no peer with this domain_name; sync first")]
    async with upkeep(session):
        await other.wait_for("sync", 1)
    assert other.listing == FILES


async def test_when_every_index_server_is_down_the_error_names_them_all(
    index: FakeIndex, other: FakeIndex
) -> None:
    index.errors["connect"] = [ConnectionClosed("Connect call failed")]
    other.errors["connect"] = [ConnectionClosed("Connect call failed")]
    session = make_session(index, connect=servers_of({"a": index, "b": other}))
    with pytest.raises(IndexUnavailable) as info:
        await session.search("koala")
    assert str(info.value) == (
        "cannot reach any of the index servers a:7000, b:7000: Connect call failed"
    )


async def test_every_address_a_name_resolves_to_is_a_candidate_in_order(
    index: FakeIndex, other: FakeIndex
) -> None:
    names = NameTable({"indexd": ["a", "b"]})
    servers = servers_of({"a": index, "b": other}, "indexd", resolve=names)
    index.errors["connect"] = [ConnectionClosed("Connect call failed")]
    session = make_session(index, connect=servers)
    await started(session)
    assert names.lookups == [("indexd", 7000)]
    assert str(servers.current) == "indexd:7000 (b)"
    assert session.where == "indexd:7000"
    assert ops(other) == ["connect", "auth", "sync"]


async def test_a_name_that_does_not_resolve_is_passed_over_for_the_next(
    index: FakeIndex, other: FakeIndex
) -> None:
    names = NameTable({"b": ["b"]})
    session = make_session(
        index, connect=servers_of({"a": index, "b": other}, "gone", "b", resolve=names)
    )
    await started(session)
    assert session.where == "b:7000"


async def test_a_move_starts_after_the_failed_address_when_the_name_resolves_in_another_order(
    index: FakeIndex, other: FakeIndex
) -> None:
    names = NameTable({"indexd": ["a", "b"]})
    servers = servers_of({"a": index, "b": other}, "indexd", resolve=names)
    session = make_session(index, connect=servers)
    await started(session)
    other.listing = FILES
    names.table["indexd"] = ["b", "a"]  # the resolver's next answer, in another order
    index.errors["search"] = [ConnectionClosed("connection reset")]
    await session.search("koala")
    assert ops(index) == ["connect", "auth", "sync", "search"]  # a is not dialled again
    assert str(servers.current) == "indexd:7000 (b)"


async def test_a_move_from_an_address_the_name_no_longer_gives_goes_to_its_other_addresses(
    index: FakeIndex, other: FakeIndex, pki: Any, clock: FakeClock
) -> None:
    third = FakeIndex(clock, load_cert(pki.cert("indexd")))
    names = NameTable({"indexd": ["a"], "later": ["c"]})
    servers = servers_of({"a": index, "b": other, "c": third}, "indexd", "later", resolve=names)
    session = make_session(index, connect=servers)
    await started(session)
    names.table["indexd"] = ["b"]  # a is gone from the name's answer
    index.errors["search"] = [ConnectionClosed("connection reset")]
    await session.search("koala")
    assert ops(other)[0] == "connect" and third.calls == []
    assert str(servers.current) == "indexd:7000 (b)"


async def first_of(*waits: Coroutine[Any, Any, None]) -> None:
    """Wait until one of ``waits`` is done (the others are cancelled)."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


@pytest.mark.parametrize(
    "planned",
    [
        {
            "ping": [NotFound("no peer with this domain_name; sync first")],
            "sync": [Forbidden("this domain_name belongs to another user")],
        },
        {"auth": [RateLimited("slow down", retry_after=1)]},
    ],
    ids=["forbidden-sync", "rate-limited-login"],
)
async def test_a_refusal_in_the_upkeep_reconnects_to_the_same_index_server_not_the_next(
    index: FakeIndex, other: FakeIndex, planned: dict[str, list[BaseException]]
) -> None:
    session = make_session(index, connect=servers_of({"a": index, "b": other}))
    await started(session)
    index.errors.update(planned)
    # the refused round closes the connection; the next one reconnects and lists us again
    relisted = len(index.times("sync")) + len(planned.get("sync", [])) + 1
    async with upkeep(session):
        await first_of(index.wait_for("sync", relisted), other.wait_for("sync", 1))
    assert ops(index).count("connect") == 2
    assert other.calls == []
    assert session.where == "a:7000" and index.listing == FILES


async def test_each_back_off_is_shortened_at_random_by_up_to_a_fifth(
    index: FakeIndex, clock: FakeClock
) -> None:
    session = make_session(index, jitter=lambda: 0.5)
    await started(session)
    index.errors["connect"] = [ConnectionClosed("refused") for _ in range(8)]
    index.connections[0].drop()
    async with upkeep(session):
        await index.wait_for("sync", 2)
    backoffs = [s for s in clock.sleeps if s][1:9]
    assert backoffs == pytest.approx([0.9, 1.8, 3.6, 7.2, 14.4, 28.8, 54, 54])
