"""indexd.handlers: every operation against an injected store, with no daemon and no socket."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from certs import load_cert, load_key
from indexd.handlers import IndexService, IndexSettings, wire_error
from indexd.passwords import PasswordHasher
from indexd.ratelimit import BackoffPolicy
from indexd.store import (
    Listing,
    PeerOwned,
    SchemaTooNew,
    SqliteIndexStore,
    StoreError,
    UnknownUser,
)
from netproto.codec import unpack_map
from netproto.errors import (
    AuthFailed,
    Forbidden,
    Internal,
    NotFound,
    PasswordTooLong,
    PasswordTooShort,
    RateLimited,
    UserExists,
)
from netproto.operations import (
    Credentials,
    KeywordRequest,
    PeerRequest,
    SearchHit,
    SharedFile,
    SyncPart,
    SyncRequest,
    search_reply_from_wire,
)
from netproto.server import RequestContext
from netproto.tokens import Principal, TokenIssuer, TokenVerifier

PASSWORD = "correct horse"
TTL = 60.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def opened(
    pki: Any,
    db: Path,
    clock: Clock,
    store_class: type[SqliteIndexStore] = SqliteIndexStore,
    **settings: Any,
) -> AsyncIterator[IndexService]:
    store = store_class(db)
    issuer = TokenIssuer(load_key(pki.key("indexd")), "indexd", 900)
    settings.setdefault("peer_ttl", TTL)
    service = IndexService(
        store, issuer, PasswordHasher(4, concurrency=2), IndexSettings(**settings), clock=clock
    )
    await service.open()
    try:
        yield service
    finally:
        await service.close()
        store.close()


def ctx(user: str | None = None, address: str = "10.0.0.1", cert: Any = None) -> RequestContext:
    principal = Principal(user, 2e9, "jti") if user is not None else None
    return RequestContext(address, 40000, cert, principal)


def _file(keyword: str, name: str) -> SharedFile:
    return SharedFile(name, keyword, 1, hashlib.sha256(name.encode()).digest())


def _sync(domain: str, files: list[SharedFile], **kw: Any) -> SyncRequest:
    return SyncRequest(domain, kw.pop("port_number", 7001), tuple(files), **kw)


async def _search(service: IndexService, keyword: str) -> list[SearchHit]:
    reply = service.handle_search(ctx("alice"), KeywordRequest(keyword))
    return search_reply_from_wire(unpack_map(b"\x81\xa1b" + reply.body)["b"])


async def _users(service: IndexService, *names: str) -> None:
    for name in names:
        await service.handle_register(ctx(), Credentials(name, PASSWORD))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "index.db"


# --- register and auth -------------------------------------------------------------------


async def test_auth_issues_a_token_the_index_certificate_verifies(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        assert (await service.handle_register(ctx(), Credentials("alice", PASSWORD))).username
        reply = await service.handle_auth(ctx(), Credentials("alice", PASSWORD))
    principal = TokenVerifier(load_cert(pki.cert("indexd"))).verify(reply.token)
    assert principal.subject == "alice"
    assert reply.expires_at == int(principal.expires_at)


async def test_register_refuses_a_name_taken_in_another_case(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await service.handle_register(
            ctx(), Credentials.from_wire({"username": "alice", "password": PASSWORD})
        )
        with pytest.raises(UserExists):
            await service.handle_register(
                ctx(), Credentials.from_wire({"username": "ALICE", "password": PASSWORD})
            )


@pytest.mark.parametrize(
    ("password", "error"),
    [("x" * 7, PasswordTooShort), ("x" * 73, PasswordTooLong), ("é" * 36 + "x", PasswordTooLong)],
)
async def test_register_refuses_passwords_outside_8_to_72_bytes(
    pki: Any, db: Path, clock: Clock, password: str, error: type[Exception]
) -> None:
    async with opened(pki, db, clock) as service:
        with pytest.raises(error):
            await service.handle_register(ctx(), Credentials("alice", password))


async def test_a_72_byte_password_registers_and_logs_in(pki: Any, db: Path, clock: Clock) -> None:
    password = "é" * 36  # 72 UTF-8 bytes
    async with opened(pki, db, clock) as service:
        await service.handle_register(ctx(), Credentials("alice", password))
        await service.handle_auth(ctx(), Credentials("alice", password))
        with pytest.raises(AuthFailed):  # one byte less is another password, not a prefix
            await service.handle_auth(ctx(), Credentials("alice", "é" * 35 + "e"))


async def test_unknown_user_and_wrong_password_fail_alike(pki: Any, db: Path, clock: Clock) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        with pytest.raises(AuthFailed) as wrong:
            await service.handle_auth(ctx(), Credentials("alice", "wrong password"))
        with pytest.raises(AuthFailed) as unknown:
            await service.handle_auth(ctx(), Credentials("nobody", PASSWORD))
        with pytest.raises(AuthFailed) as too_long:
            await service.handle_auth(ctx(), Credentials("alice", "x" * 100))
    assert wrong.value.to_wire() == unknown.value.to_wire() == too_long.value.to_wire()


async def test_failures_back_off_per_user_and_success_resets(
    pki: Any, db: Path, clock: Clock
) -> None:
    policy = BackoffPolicy(free=2, base_delay=10.0, decay=1e9)
    async with opened(pki, db, clock, user_backoff=policy) as service:
        await _users(service, "alice")
        for _ in range(2):
            with pytest.raises(AuthFailed):
                await service.handle_auth(ctx(), Credentials("alice", "bad password"))
        with pytest.raises(RateLimited) as limited:
            await service.handle_auth(ctx(), Credentials("alice", PASSWORD))
        assert limited.value.retry_after == 10.0
        clock.now += 10.0
        await service.handle_auth(ctx(), Credentials("alice", PASSWORD))
        with pytest.raises(AuthFailed):  # the success reset the count: a failure is free again
            await service.handle_auth(ctx(), Credentials("alice", "bad password"))
        await service.handle_auth(ctx(), Credentials("alice", PASSWORD))


async def test_failures_back_off_per_client_address_across_usernames(
    pki: Any, db: Path, clock: Clock
) -> None:
    policy = BackoffPolicy(free=3, base_delay=5.0)
    async with opened(pki, db, clock, address_backoff=policy) as service:
        for name in ("a", "b", "c"):
            with pytest.raises(AuthFailed):
                await service.handle_auth(ctx(address="10.9.9.9"), Credentials(name, PASSWORD))
        with pytest.raises(RateLimited):
            await service.handle_auth(ctx(address="10.9.9.9"), Credentials("d", PASSWORD))
        with pytest.raises(AuthFailed):  # another address is not affected
            await service.handle_auth(ctx(address="10.1.1.1"), Credentials("d", PASSWORD))


# --- sync and search ---------------------------------------------------------------------


async def test_sync_lists_files_under_the_seen_address(pki: Any, db: Path, clock: Clock) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        reply = await service.handle_sync(
            ctx("alice", address="192.0.2.7"), _sync("peer1", [_file("music", "a.mp3")])
        )
        assert reply.files == 1
        [hit] = await _search(service, "music")
    assert (hit.domain_name, hit.port_number, hit.address) == ("peer1", 7001, "192.0.2.7")


async def test_sync_lists_an_advertised_address_instead(pki: Any, db: Path, clock: Clock) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        await service.handle_sync(
            ctx("alice", address="192.0.2.7"),
            _sync("peer1", [_file("music", "a.mp3")], address="peer1.example"),
        )
        [hit] = await _search(service, "music")
    assert hit.address == "peer1.example"


async def test_sync_of_a_domain_owned_by_another_user_is_forbidden(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice", "bob")
        await service.handle_sync(ctx("alice"), _sync("peer1", [_file("k", "a")]))
        with pytest.raises(Forbidden):
            await service.handle_sync(ctx("bob"), _sync("peer1", [_file("k", "evil")]))
        assert [f.filename for f in (await _search(service, "k"))[0].files] == ["a"]


async def test_sync_with_a_certificate_for_another_host_is_forbidden(
    pki: Any, db: Path, clock: Clock
) -> None:
    peer2 = load_cert(pki.cert("peer2"))
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        with pytest.raises(Forbidden, match="certificate"):
            await service.handle_sync(ctx("alice", cert=peer2), _sync("peer1", []))
        assert (await service.handle_sync(ctx("alice", cert=peer2), _sync("peer2", []))).files == 0


async def test_sync_by_an_unregistered_token_subject_is_forbidden(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        with pytest.raises(Forbidden):
            await service.handle_sync(ctx("ghost"), _sync("peer1", []))


async def test_multi_part_sync_lists_nothing_until_the_final_part(
    pki: Any, db: Path, clock: Clock
) -> None:
    up = b"\x01" * 16
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        await service.handle_sync(ctx("alice"), _sync("peer1", [_file("k", "old")]))
        parts = [[_file("k", "a"), _file("k", "b")], [_file("k", "c")], [_file("k", "d")]]
        replies = []
        for seq, files in enumerate(parts):
            req = _sync("peer1", files, part=SyncPart(up, seq, seq == 2))
            replies.append((await service.handle_sync(ctx("alice"), req)).files)
            listed = [f.filename for f in (await _search(service, "k"))[0].files]
            assert listed == (["old"] if seq < 2 else ["a", "b", "c", "d"])
    assert replies == [2, 3, 4]


async def test_search_leaves_out_stale_peers_and_ping_brings_them_back(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        await service.handle_sync(ctx("alice"), _sync("peer1", [_file("k", "a")]))
        clock.now += TTL + 1
        assert await _search(service, "k") == []
        reply = await service.handle_ping(ctx("alice"), PeerRequest("peer1"))
        assert reply.ttl == TTL
        assert len(await _search(service, "k")) == 1


async def test_ping_of_unknown_or_foreign_peer_is_refused(pki: Any, db: Path, clock: Clock) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice", "bob")
        await service.handle_sync(ctx("alice"), _sync("peer1", []))
        with pytest.raises(NotFound):
            await service.handle_ping(ctx("alice"), PeerRequest("peer9"))
        with pytest.raises(Forbidden):
            await service.handle_ping(ctx("bob"), PeerRequest("peer1"))
        with pytest.raises(Forbidden):
            await service.handle_bye(ctx("bob"), PeerRequest("peer1"))


async def test_bye_withdraws_the_peer_but_keeps_its_owner(pki: Any, db: Path, clock: Clock) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice", "bob")
        await service.handle_sync(ctx("alice"), _sync("peer1", [_file("k", "a")]))
        await service.handle_bye(ctx("alice"), PeerRequest("peer1"))
        assert await _search(service, "k") == []
        with pytest.raises(NotFound):
            await service.handle_ping(ctx("alice"), PeerRequest("peer1"))
        with pytest.raises(Forbidden):
            await service.handle_sync(ctx("bob"), _sync("peer1", []))


async def test_a_restarted_service_serves_what_was_committed(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice", "bob")
        await service.handle_sync(ctx("alice"), _sync("peer1", [_file("Music", "a")]))
        await service.handle_sync(ctx("alice"), _sync("peer2", [_file("music", "b")]))
        await service.handle_bye(ctx("alice"), PeerRequest("peer2"))
    async with opened(pki, db, clock) as service:
        assert [h.domain_name for h in await _search(service, "MUSIC")] == ["peer1"]
        await service.handle_auth(ctx(), Credentials("bob", PASSWORD))
        with pytest.raises(Forbidden):
            await service.handle_sync(ctx("bob"), _sync("peer2", []))


# --- store refusals become wire errors in one place --------------------------------------


class _ContestedStore(SqliteIndexStore):
    """A store where another index process has just taken every domain name (a race)."""

    def replace_listing(self, listing: Listing) -> int:
        raise PeerOwned(listing.domain_name)

    def withdraw(self, domain_name: str, owner: str) -> bool:
        raise PeerOwned(domain_name)


@pytest.mark.parametrize(
    ("refusal", "error", "message"),
    [
        (PeerOwned("peer1"), Forbidden, "this domain_name belongs to another user"),
        (UnknownUser("ghost"), Forbidden, "the token's user is not registered"),
        (SchemaTooNew("schema 99"), Internal, "internal error"),
        (StoreError("anything else"), Internal, "internal error"),
    ],
    ids=["peer owned", "unknown user", "schema too new", "other"],
)
def test_each_store_refusal_has_its_wire_error(
    refusal: StoreError, error: type[Exception], message: str
) -> None:
    translated = wire_error(refusal)
    assert type(translated) is error and translated.message == message


async def test_a_sync_by_a_user_the_store_does_not_know_is_forbidden(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        with pytest.raises(Forbidden, match="not registered") as caught:
            await service.handle_sync(ctx("ghost"), _sync("peer1", [_file("k", "a")]))
    assert isinstance(caught.value.__cause__, UnknownUser)


async def test_a_name_the_store_finds_owned_is_forbidden_for_sync_and_bye(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock, store_class=_ContestedStore) as service:
        await _users(service, "alice")
        with pytest.raises(Forbidden, match="belongs to another user") as caught:
            await service.handle_sync(ctx("alice"), _sync("peer1", []))
        assert isinstance(caught.value.__cause__, PeerOwned)
        service.owners["peer1"] = "alice"  # as if its sync had gone through
        with pytest.raises(Forbidden, match="belongs to another user"):
            await service.handle_bye(ctx("alice"), PeerRequest("peer1"))
