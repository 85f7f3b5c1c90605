"""indexd.handlers: every operation against an injected store, with no daemon and no socket."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certs import load_cert, load_key
from indexd.handlers import IndexService, IndexSettings, wire_error
from indexd.passwords import PasswordHasher
from indexd.ratelimit import BackoffPolicy, BucketPolicy
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
    BadRequest,
    Busy,
    Forbidden,
    Internal,
    NotFound,
    PasswordTooLong,
    PasswordTooShort,
    RateLimited,
    TokenInvalid,
    UserExists,
)
from netproto.operations import (
    Credentials,
    ListingRequest,
    PeerRequest,
    SearchHit,
    SearchRequest,
    SharedFile,
    SyncDeltaRequest,
    SyncPart,
    SyncRequest,
    search_reply_from_wire,
)
from netproto.server import RequestContext
from netproto.tokens import (
    INDEX_AUDIENCE,
    PEER_AUDIENCE,
    Principal,
    TokenIssuer,
    TokenVerifier,
    certificate_thumbprint,
)

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


_PKI: Any = None
_JTI = itertools.count()


@pytest.fixture(autouse=True)
def _remember_pki(pki: Any) -> None:
    global _PKI
    _PKI = pki


@functools.lru_cache
def _cert(name: str) -> x509.Certificate:
    return load_cert(_PKI.cert(name))


def ctx(
    user: str | None = None,
    address: str = "10.0.0.1",
    cert: Any = None,
    *,
    peer: str | None = None,
    principal: Principal | None = None,
) -> RequestContext:
    """A request's context: ``user``'s unbound token, and ``peer``'s client certificate."""
    if principal is None and user is not None:
        principal = Principal(user, 2e9, f"jti-{next(_JTI)}")  # a session of its own
    return RequestContext(address, 40000, _cert(peer) if peer else cert, principal)


def _file(keyword: str, name: str) -> SharedFile:
    return SharedFile(name, keyword, 1, hashlib.sha256(name.encode()).digest())


def _sync(domain: str, files: list[SharedFile], **kw: Any) -> SyncRequest:
    return SyncRequest(domain, kw.pop("port_number", 7001), tuple(files), **kw)


async def _search(service: IndexService, keyword: str) -> list[SearchHit]:
    reply = service.handle_search(ctx("alice"), SearchRequest(keyword))
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
    verifier = TokenVerifier(load_cert(pki.cert("indexd")), audience=INDEX_AUDIENCE)
    principal = verifier.verify(reply.token)
    assert principal.subject == "alice"
    assert reply.expires_at == int(principal.expires_at)
    assert (principal.thumbprint, reply.peer_token) == (None, None)  # no client certificate


async def test_auth_with_a_client_certificate_binds_both_tokens_to_it(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        reply = await service.handle_auth(ctx(peer="peer1"), Credentials("alice", PASSWORD))
    cert = load_cert(pki.cert("indexd"))
    assert reply.peer_token is not None
    index = TokenVerifier(cert, audience=INDEX_AUDIENCE).verify(reply.token)
    peer = TokenVerifier(cert, audience=PEER_AUDIENCE).verify(reply.peer_token)
    assert index.thumbprint == peer.thumbprint == certificate_thumbprint(_cert("peer1"))
    assert index.session_id == peer.session_id


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
    async with opened(pki, db, clock, login_backoff=policy) as service:
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


async def test_a_login_that_ends_in_an_error_gives_its_attempt_back(
    pki: Any, db: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = BackoffPolicy(free=2, base_delay=10.0, decay=1e9)
    async with opened(pki, db, clock, login_backoff=policy) as service:
        await _users(service, "alice")
        verify = service.hasher.verify

        async def failing(password: bytes, hashed: bytes | None) -> bool:
            raise OSError("the hasher's thread is gone")

        monkeypatch.setattr(service.hasher, "verify", failing)
        for _ in range(3):  # unrefunded, the second charge would hold the third back
            with pytest.raises(OSError):
                await service.handle_auth(ctx(), Credentials("alice", PASSWORD))
        monkeypatch.setattr(service.hasher, "verify", verify)
        assert (await service.handle_auth(ctx(), Credentials("alice", PASSWORD))).token


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
            ctx("alice", address="192.0.2.7", peer="peer1"),
            _sync("peer1", [_file("music", "a.mp3")]),
        )
        assert reply.files == 1
        [hit] = await _search(service, "music")
    assert (hit.domain_name, hit.port_number, hit.address) == ("peer1", 7001, "192.0.2.7")


async def test_sync_lists_an_advertised_address_instead(pki: Any, db: Path, clock: Clock) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        await service.handle_sync(
            ctx("alice", address="192.0.2.7", peer="peer1"),
            _sync("peer1", [_file("music", "a.mp3")], address="peer1.example"),
        )
        [hit] = await _search(service, "music")
    assert hit.address == "peer1.example"


async def test_sync_of_a_domain_owned_by_another_user_is_forbidden(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice", "bob")
        await service.handle_sync(ctx("alice", peer="peer1"), _sync("peer1", [_file("k", "a")]))
        with pytest.raises(Forbidden):
            await service.handle_sync(
                ctx("bob", peer="peer1"), _sync("peer1", [_file("k", "evil")])
            )
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
            await service.handle_sync(ctx("ghost", peer="peer1"), _sync("peer1", []))


async def test_multi_part_sync_lists_nothing_until_the_final_part(
    pki: Any, db: Path, clock: Clock
) -> None:
    up = b"\x01" * 16
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        await service.handle_sync(ctx("alice", peer="peer1"), _sync("peer1", [_file("k", "old")]))
        parts = [[_file("k", "a"), _file("k", "b")], [_file("k", "c")], [_file("k", "d")]]
        replies = []
        for seq, files in enumerate(parts):
            req = _sync("peer1", files, part=SyncPart(up, seq, seq == 2))
            replies.append((await service.handle_sync(ctx("alice", peer="peer1"), req)).files)
            listed = [f.filename for f in (await _search(service, "k"))[0].files]
            assert listed == (["old"] if seq < 2 else ["a", "b", "c", "d"])
    assert replies == [2, 3, 4]


async def test_search_leaves_out_stale_peers_and_ping_brings_them_back(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        await service.handle_sync(ctx("alice", peer="peer1"), _sync("peer1", [_file("k", "a")]))
        clock.now += TTL + 1
        assert await _search(service, "k") == []
        reply = await service.handle_ping(ctx("alice", peer="peer1"), PeerRequest("peer1"))
        assert reply.ttl == TTL
        assert len(await _search(service, "k")) == 1


async def test_ping_of_unknown_or_foreign_peer_is_refused(pki: Any, db: Path, clock: Clock) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice", "bob")
        await service.handle_sync(ctx("alice", peer="peer1"), _sync("peer1", []))
        with pytest.raises(NotFound):
            await service.handle_ping(ctx("alice", peer="peer3"), PeerRequest("peer3"))
        with pytest.raises(Forbidden):
            await service.handle_ping(ctx("bob", peer="peer1"), PeerRequest("peer1"))
        with pytest.raises(Forbidden):
            await service.handle_bye(ctx("bob", peer="peer1"), PeerRequest("peer1"))


async def test_bye_withdraws_the_peer_but_keeps_its_owner(pki: Any, db: Path, clock: Clock) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice", "bob")
        await service.handle_sync(ctx("alice", peer="peer1"), _sync("peer1", [_file("k", "a")]))
        await service.handle_bye(ctx("alice", peer="peer1"), PeerRequest("peer1"))
        assert await _search(service, "k") == []
        with pytest.raises(NotFound):
            await service.handle_ping(ctx("alice", peer="peer1"), PeerRequest("peer1"))
        with pytest.raises(Forbidden):
            await service.handle_sync(ctx("bob", peer="peer1"), _sync("peer1", []))


async def test_a_restarted_service_serves_what_was_committed(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice", "bob")
        await service.handle_sync(ctx("alice", peer="peer1"), _sync("peer1", [_file("Music", "a")]))
        await service.handle_sync(ctx("alice", peer="peer2"), _sync("peer2", [_file("music", "b")]))
        await service.handle_bye(ctx("alice", peer="peer2"), PeerRequest("peer2"))
    async with opened(pki, db, clock) as service:
        assert [h.domain_name for h in await _search(service, "MUSIC")] == ["peer1"]
        await service.handle_auth(ctx(), Credentials("bob", PASSWORD))
        with pytest.raises(Forbidden):
            await service.handle_sync(ctx("bob", peer="peer2"), _sync("peer2", []))


# --- store refusals become wire errors in one place --------------------------------------


class _ContestedStore(SqliteIndexStore):
    """A store where another index process has just taken every domain name (a race)."""

    def replace_listing(self, listing: Listing) -> int:
        raise PeerOwned(listing.domain_name)

    def withdraw_and_revoke(
        self, domain_name: str, owner: str, session: str, expires_at: float
    ) -> bool:
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
            await service.handle_sync(ctx("ghost", peer="peer1"), _sync("peer1", [_file("k", "a")]))
    assert isinstance(caught.value.__cause__, UnknownUser)


async def test_a_name_the_store_finds_owned_is_forbidden_for_sync_and_bye(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock, store_class=_ContestedStore) as service:
        await _users(service, "alice")
        with pytest.raises(Forbidden, match="belongs to another user") as caught:
            await service.handle_sync(ctx("alice", peer="peer1"), _sync("peer1", []))
        assert isinstance(caught.value.__cause__, PeerOwned)
        service.owners["peer1"] = "alice"  # as if its sync had gone through
        with pytest.raises(Forbidden, match="belongs to another user"):
            await service.handle_bye(ctx("alice", peer="peer1"), PeerRequest("peer1"))


# --- issue 12: bound tokens, ended sessions, renew -------------------------------------------


def _bound(service: IndexService, user: str, peer: str) -> Principal:
    """The index principal of a session ``auth`` would start for ``user`` presenting ``peer``."""
    tokens = service.issuer.issue_session(user, _cert(peer))
    verifier = TokenVerifier(load_cert(_PKI.cert("indexd")), audience=INDEX_AUDIENCE)
    return verifier.verify(tokens.token)


async def test_a_bound_token_with_another_or_no_certificate_is_token_invalid(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        principal = _bound(service, "alice", "peer1")
        with pytest.raises(TokenInvalid, match="another client certificate"):
            service.handle_search(ctx(principal=principal, peer="peer2"), SearchRequest("k"))
        with pytest.raises(TokenInvalid, match="none was presented"):
            service.handle_search(ctx(principal=principal), SearchRequest("k"))
        reply = await service.handle_sync(
            ctx(principal=principal, peer="peer1"), _sync("peer1", [_file("k", "a")])
        )
        assert reply.files == 1


async def test_bye_ends_the_session_and_a_restart_keeps_it_ended(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        principal = _bound(service, "alice", "peer1")
        as_peer1 = ctx(principal=principal, peer="peer1")
        await service.handle_sync(as_peer1, _sync("peer1", [_file("k", "a")]))
        await service.handle_bye(as_peer1, PeerRequest("peer1"))
        with pytest.raises(TokenInvalid, match="ended"):
            service.handle_search(as_peer1, SearchRequest("k"))
    async with opened(pki, db, clock) as service:
        with pytest.raises(TokenInvalid, match="ended"):
            await service.handle_sync(ctx(principal=principal, peer="peer1"), _sync("peer1", []))
        with pytest.raises(TokenInvalid, match="ended"):
            await service.handle_ping(ctx(principal=principal, peer="peer1"), PeerRequest("peer1"))
        with pytest.raises(TokenInvalid):
            await service.handle_renew(ctx(principal=principal, peer="peer1"), None)
        # A new session of the same user on the same peer is served.
        fresh = _bound(service, "alice", "peer1")
        assert (
            await service.handle_sync(ctx(principal=fresh, peer="peer1"), _sync("peer1", []))
        ).files == 0


async def test_ended_sessions_are_forgotten_once_their_tokens_have_expired(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        principal = _bound(service, "alice", "peer1")
        await service.handle_sync(ctx(principal=principal, peer="peer1"), _sync("peer1", []))
        await service.handle_bye(ctx(principal=principal, peer="peer1"), PeerRequest("peer1"))
        assert principal.session_id in service.revoked
        clock.now += service.issuer.ttl + 60
        service.sweep()
        assert service.revoked == {}
    async with opened(pki, db, clock) as service:
        assert service.revoked == {}


async def test_renew_gives_fresh_tokens_of_the_same_session_bound_to_the_same_certificate(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        principal = _bound(service, "alice", "peer1")
        reply = await service.handle_renew(ctx(principal=principal, peer="peer1"), None)
    cert = load_cert(pki.cert("indexd"))
    renewed = TokenVerifier(cert, audience=INDEX_AUDIENCE).verify(reply.token)
    assert reply.peer_token is not None
    peer = TokenVerifier(cert, audience=PEER_AUDIENCE).verify(reply.peer_token)
    assert renewed.session_id == peer.session_id == principal.session_id
    assert renewed.thumbprint == peer.thumbprint == principal.thumbprint
    assert renewed.token_id != principal.token_id


async def test_renew_with_an_unbound_token_is_forbidden(pki: Any, db: Path, clock: Clock) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        with pytest.raises(Forbidden, match="bound"):
            await service.handle_renew(ctx("alice", peer="peer1"), None)
        bound = _bound(service, "alice", "peer1")
        assert (await service.handle_renew(ctx(principal=bound, peer="peer1"), None)).token


async def test_renew_works_while_logins_of_the_user_are_locked_out(
    pki: Any, db: Path, clock: Clock
) -> None:
    policy = BackoffPolicy(free=1, base_delay=300.0, decay=1e9)
    async with opened(pki, db, clock, login_backoff=policy, user_backoff=policy) as service:
        await _users(service, "alice")
        principal = _bound(service, "alice", "peer1")
        with pytest.raises(AuthFailed):
            await service.handle_auth(ctx(address="10.6.6.6"), Credentials("alice", "guess one"))
        with pytest.raises(RateLimited):
            await service.handle_auth(ctx(address="10.0.0.1"), Credentials("alice", PASSWORD))
        assert (await service.handle_renew(ctx(principal=principal, peer="peer1"), None)).token


# --- issue 12: listings need the certificate; per-user limits; the sync rate ------------------


@pytest.mark.parametrize("op", ["sync", "ping", "bye"])
async def test_sync_ping_and_bye_without_a_client_certificate_are_forbidden(
    pki: Any, db: Path, clock: Clock, op: str
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        await service.handle_sync(ctx("alice", peer="peer1"), _sync("peer1", [_file("k", "a")]))

        async def call(context: RequestContext) -> object:
            if op == "sync":
                return await service.handle_sync(context, _sync("peer1", []))
            if op == "ping":
                return await service.handle_ping(context, PeerRequest("peer1"))
            return await service.handle_bye(context, PeerRequest("peer1"))

        with pytest.raises(Forbidden, match="need a client certificate"):
            await call(ctx("alice"))
        await call(ctx("alice", peer="peer1"))


async def test_a_user_owns_at_most_max_domains_per_user_names(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock, max_domains_per_user=2) as service:
        await _users(service, "alice", "bob")
        for name in ("peer1", "peer2"):
            await service.handle_sync(ctx("alice", peer=name), _sync(name, []))
        with pytest.raises(Forbidden, match="at most 2 domain names"):
            await service.handle_sync(ctx("alice", peer="peer3"), _sync("peer3", []))
        await service.handle_bye(ctx("alice", peer="peer2"), PeerRequest("peer2"))
        with pytest.raises(Forbidden, match="at most 2"):  # a withdrawn name is still owned
            await service.handle_sync(ctx("alice", peer="peer3"), _sync("peer3", []))
        await service.handle_sync(ctx("alice", peer="peer1"), _sync("peer1", [_file("k", "a")]))
        await service.handle_sync(ctx("bob", peer="peer3"), _sync("peer3", []))


async def test_concurrent_syncs_cannot_claim_more_names_than_allowed(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock, max_domains_per_user=1) as service:
        await _users(service, "alice")
        results = await asyncio.gather(
            *(service.handle_sync(ctx("alice", peer=n), _sync(n, [])) for n in ("peer1", "peer2")),
            return_exceptions=True,
        )
        assert sum(isinstance(r, Forbidden) for r in results) == 1
        assert len(service.domains["alice"]) == 1


async def test_a_user_lists_at_most_max_files_per_user_counting_other_names_and_staged_parts(
    pki: Any, db: Path, clock: Clock
) -> None:
    files = [_file("k", f"f{i}") for i in range(4)]
    async with opened(pki, db, clock, max_files_per_user=6) as service:
        await _users(service, "alice", "bob")
        await service.handle_sync(ctx("alice", peer="peer1"), _sync("peer1", files))
        with pytest.raises(Forbidden, match="at most 6 files"):
            await service.handle_sync(ctx("alice", peer="peer2"), _sync("peer2", files))
        # A new listing of the same name replaces its files: 5 in all is fine.
        assert (
            await service.handle_sync(
                ctx("alice", peer="peer1"), _sync("peer1", [*files, _file("k", "x")])
            )
        ).files == 5
        # Staged parts count too: 1 listed elsewhere... 5 + 1 staged, then one more is too many.
        up = b"\x02" * 16
        await service.handle_sync(
            ctx("alice", peer="peer2"), _sync("peer2", files[:1], part=SyncPart(up, 0, False))
        )
        with pytest.raises(Forbidden, match="at most 6 files"):
            await service.handle_sync(
                ctx("alice", peer="peer2"), _sync("peer2", files[1:2], part=SyncPart(up, 1, True))
            )
        assert service.staging.user_files("alice") == 0  # the refused upload was dropped
        await service.handle_sync(ctx("bob", peer="peer3"), _sync("peer3", files))


async def test_syncs_are_rate_limited_per_user_and_parts_after_the_first_are_free(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock, sync_rate=BucketPolicy(burst=2, interval=30.0)) as service:
        await _users(service, "alice", "bob")
        up = b"\x03" * 16
        await service.handle_sync(ctx("alice", peer="peer1"), _sync("peer1", []))
        for seq in range(3):  # one upload: only its first part is charged
            req = _sync("peer1", [_file("k", f"p{seq}")], part=SyncPart(up, seq, seq == 2))
            await service.handle_sync(ctx("alice", peer="peer1"), req)
        with pytest.raises(RateLimited) as limited:
            await service.handle_sync(ctx("alice", peer="peer1"), _sync("peer1", []))
        assert 0 < limited.value.retry_after <= 30.0
        await service.handle_sync(ctx("bob", peer="peer2"), _sync("peer2", []))
        clock.now += limited.value.retry_after
        await service.handle_sync(ctx("alice", peer="peer1"), _sync("peer1", []))


async def test_an_incremental_sync_counts_against_the_same_per_user_sync_rate(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock, sync_rate=BucketPolicy(burst=2, interval=30.0)) as service:
        await _users(service, "alice")
        me = ctx("alice", peer="peer1")
        reply = await service.handle_sync(me, _sync("peer1", [_file("k", "a")]))
        delta = SyncDeltaRequest("peer1", 7001, reply.version or 0, (_file("k", "b"),))
        reply = await service.handle_sync_delta(me, delta)
        with pytest.raises(RateLimited):
            again = SyncDeltaRequest("peer1", 7001, reply.version or 0, (_file("k", "c"),))
            await service.handle_sync_delta(me, again)
        clock.now += 30.0
        assert (await service.handle_sync_delta(me, again)).files == 3


# --- issue 12: listing pages ------------------------------------------------------------------


async def test_listing_pages_through_a_peers_files_under_a_keyword(
    pki: Any, db: Path, clock: Clock
) -> None:
    files = [_file("koala", f"f{i:04d}") for i in range(250)]
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        await service.handle_sync(ctx("alice", peer="peer1"), _sync("peer1", files))
        [hit] = await _search(service, "KOALA")
        assert (len(hit.files), hit.total) == (100, 250)
        page = await service.handle_listing(ctx("alice"), ListingRequest("peer1", "koala", 100))
        assert (page.total, page.offset) == (250, 100)
        assert [f.filename for f in page.files] == [f"f{i:04d}" for i in range(100, 250)]
        with pytest.raises(NotFound):
            await service.handle_listing(ctx("alice"), ListingRequest("peer1", "emu"))
        clock.now += TTL + 1
        with pytest.raises(NotFound):  # a stale peer is not served, as in search
            await service.handle_listing(ctx("alice"), ListingRequest("peer1", "koala"))


async def test_a_search_cursor_that_is_not_one_is_bad_request(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        with pytest.raises(BadRequest, match="cursor"):
            service.handle_search(ctx("alice"), SearchRequest("k", b"\x93\x01\x02\x03"))
        assert await _search(service, "k") == []


# --- issue 12: logins per (user, address), registrations apart --------------------------------


async def test_a_strangers_failures_do_not_lock_the_user_out_from_another_address(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        for _ in range(5):
            with pytest.raises(AuthFailed):
                await service.handle_auth(ctx(address="10.6.6.6"), Credentials("alice", "guess!!!"))
        with pytest.raises(RateLimited):
            await service.handle_auth(ctx(address="10.6.6.6"), Credentials("alice", PASSWORD))
        assert (
            await service.handle_auth(ctx(address="10.0.0.1"), Credentials("alice", PASSWORD))
        ).token


async def test_many_addresses_together_reach_the_per_user_ceiling(
    pki: Any, db: Path, clock: Clock
) -> None:
    ceiling = BackoffPolicy(free=10, base_delay=60.0, decay=1e9)
    async with opened(pki, db, clock, user_backoff=ceiling) as service:
        await _users(service, "alice")
        for i in range(10):  # two guesses from each of five addresses: none is limited alone
            with pytest.raises(AuthFailed):
                await service.handle_auth(
                    ctx(address=f"10.7.0.{i // 2}"), Credentials("alice", "guess!!!")
                )
        with pytest.raises(RateLimited):
            await service.handle_auth(ctx(address="10.7.1.1"), Credentials("alice", "guess!!!"))
        await _users(service, "bob")  # another user is served
        assert (
            await service.handle_auth(ctx(address="10.7.1.1"), Credentials("bob", PASSWORD))
        ).token


async def test_registrations_are_rate_limited_per_address(pki: Any, db: Path, clock: Clock) -> None:
    policy = BackoffPolicy(free=3, base_delay=60.0, decay=1e9)
    async with opened(pki, db, clock, register_backoff=policy) as service:
        for i in range(3):
            await service.handle_register(ctx(address="10.8.8.8"), Credentials(f"u{i}", PASSWORD))
        with pytest.raises(RateLimited):
            await service.handle_register(ctx(address="10.8.8.8"), Credentials("u3", PASSWORD))
        await service.handle_register(ctx(address="10.1.1.1"), Credentials("u3", PASSWORD))
        assert (
            await service.handle_auth(ctx(address="10.8.8.8"), Credentials("u0", PASSWORD))
        ).token


async def test_registrations_hash_on_their_own_pool_and_queue(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        assert service.register_hasher is not service.hasher
        assert service.register_hasher.concurrency == 1
        await _users(service, "alice")
        service.register_hasher._waiting = service.register_hasher.max_waiting + 1  # a flood
        with pytest.raises(Busy):
            await service.handle_register(ctx(), Credentials("bob", PASSWORD))
        # Logins hash apart: the saturated registration queue is not in their way.
        assert (await service.handle_auth(ctx(), Credentials("alice", PASSWORD))).token


async def test_a_name_claimed_by_two_users_at_once_counts_for_its_one_owner_only(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        service._own("peer1", "ursula")  # Ursula's sync claims it here...
        service._own("peer1", "victor")  # ...Victor's, through another server, won
        assert service.domains == {"victor": {"peer1"}}  # moved, not counted twice
        service._disown("peer1", "ursula")  # Ursula's store call refused
        assert service.owners == {"peer1": "victor"}
        assert service.domains == {"victor": {"peer1"}}
