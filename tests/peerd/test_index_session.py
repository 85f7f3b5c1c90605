"""The session with the index (peerd/index_session.py) against a fake index and a fake clock:
when the token is renewed and pings are sent, how a lost connection is recovered, and which
session error each refusal becomes — hours of upkeep without sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Sequence
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
    TokenExpired,
    UserExists,
)
from netproto.operations import SharedFile
from peerd.errors import (
    DomainRefused,
    IndexUnavailable,
    IndexUntrusted,
    LoginRefused,
    RegistrationRefused,
    SessionError,
    ShareTooLarge,
)
from peerd.index_session import IndexSession, certificate_untrusted
from tests.support.fake_clock import START, FakeClock
from tests.support.fake_index import FakeIndex

TIMEOUT = 5.0
FILES = [SharedFile("a.txt", "koala", 1, bytes(32))]


def make_session(index: FakeIndex, **overrides: Any) -> IndexSession:
    settings: dict[str, Any] = {
        "where": "127.0.0.1:7000",
        "domain_name": "peer1",
        "username": "peer1",
        "password": "correct horse battery",
        "ping_interval": 30.0,
        "clock": index.clock,
        **overrides,
    }
    return IndexSession(index.connect, **settings)


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
