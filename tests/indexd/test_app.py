"""indexd over real TLS: an in-process daemon on 127.0.0.1, driven by a netproto client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from certs import load_cert, load_key
from indexd.store import SqliteIndexStore
from netproto.errors import (
    AuthFailed,
    AuthRequired,
    BadRequest,
    Forbidden,
    InvalidPath,
    NotFound,
    PasswordTooLong,
    PasswordTooShort,
    RateLimited,
    TokenExpired,
    TokenInvalid,
    UserExists,
)
from netproto.operations import SharedFile
from netproto.tokens import INDEX_AUDIENCE, TokenIssuer

PASSWORD = "correct horse"


def _file(keyword: str, name: str, size: int = 1) -> SharedFile:
    return SharedFile(name, keyword, size, hashlib.sha256(name.encode()).digest())


async def _user(client: Any, name: str = "alice", password: str = PASSWORD) -> None:
    await client.register(name, password)
    await client.login(name, password)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(sub: str = "alice") -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": "indexd",
        "aud": INDEX_AUDIENCE,
        "sub": sub,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "forged",
    }


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


# --- register and auth -------------------------------------------------------------------


async def test_register_and_auth_issue_an_eddsa_token_for_the_lowercased_name(
    index_config: Callable[..., Any], running_index: Any, index_client: Any, pki: Any
) -> None:
    async with running_index(index_config()) as daemon, index_client(daemon.port) as client:
        assert await client.register("Alice", PASSWORD) == {"username": "alice"}
        reply = await client.login("ALICE", PASSWORD)
    assert jwt.get_unverified_header(reply["token"]) == {"alg": "EdDSA", "typ": "JWT"}
    public = load_cert(pki.cert("indexd")).public_key()
    assert isinstance(public, Ed25519PublicKey)
    claims = jwt.decode(reply["token"], public, algorithms=["EdDSA"], audience=INDEX_AUDIENCE)
    assert (claims["sub"], claims["iss"], claims["exp"]) == ("alice", "indexd", reply["expires_at"])
    assert claims["exp"] - claims["iat"] == 900


async def test_register_refuses_a_taken_username_in_any_case(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    async with running_index(index_config()) as daemon, index_client(daemon.port) as client:
        await client.register("alice", PASSWORD)
        with pytest.raises(UserExists):
            await client.register("Alice", "another password")


@pytest.mark.parametrize(
    ("password", "error"), [("x" * 7, PasswordTooShort), ("x" * 73, PasswordTooLong)]
)
async def test_register_refuses_7_and_73_byte_passwords(
    index_config: Callable[..., Any],
    running_index: Any,
    index_client: Any,
    password: str,
    error: type[Exception],
) -> None:
    async with running_index(index_config()) as daemon, index_client(daemon.port) as client:
        with pytest.raises(error):
            await client.register("alice", password)


async def test_a_72_byte_password_is_accepted(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    password = "p" * 72
    async with running_index(index_config()) as daemon, index_client(daemon.port) as client:
        await client.register("alice", password)
        assert (await client.login("alice", password))["token"]


async def test_wrong_password_and_unknown_user_give_the_identical_error(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    async with running_index(index_config()) as daemon, index_client(daemon.port) as client:
        await client.register("alice", PASSWORD)
        with pytest.raises(AuthFailed) as wrong:
            await client.login("alice", "wrong password")
        with pytest.raises(AuthFailed) as unknown:
            await client.login("nobody", PASSWORD)
    assert (wrong.value.code, wrong.value.message) == (unknown.value.code, unknown.value.message)


async def test_repeated_failures_are_rate_limited_and_recover_after_retry_after(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    from indexd.ratelimit import BackoffPolicy

    config = index_config(login_backoff=BackoffPolicy(free=2, base_delay=1.0))
    async with running_index(config) as daemon, index_client(daemon.port) as client:
        await client.register("alice", PASSWORD)
        for _ in range(2):
            with pytest.raises(AuthFailed):
                await client.login("alice", "wrong password")
        with pytest.raises(RateLimited) as limited:
            await client.login("alice", PASSWORD)
        assert 0 < limited.value.retry_after <= 1.0
        await asyncio.sleep(limited.value.retry_after)
        assert (await client.login("alice", PASSWORD))["token"]


async def test_failures_from_one_address_are_rate_limited_across_usernames(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    from indexd.ratelimit import BackoffPolicy

    config = index_config(address_backoff=BackoffPolicy(free=3, base_delay=30.0))
    async with running_index(config) as daemon, index_client(daemon.port) as client:
        for name in ("a", "b", "c"):
            with pytest.raises(AuthFailed):
                await client.login(name, PASSWORD)
        with pytest.raises(RateLimited) as limited:
            await client.login("d", PASSWORD)
    assert 0 < limited.value.retry_after <= 30


# --- tokens ------------------------------------------------------------------------------


async def test_sync_without_a_token_is_auth_required(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    async with running_index(index_config()) as daemon, index_client(daemon.port) as client:
        with pytest.raises(AuthRequired):
            await client.call("search", {"keyword": "music"})


def _forge_none(real: str, pki: Any) -> str:
    return _unsigned({"alg": "none", "typ": "JWT"}, _claims()) + "."


def _forge_hs256_with_public_key(real: str, pki: Any) -> str:
    public_pem = (
        load_cert(pki.cert("indexd"))
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT"}, _claims())
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _forge_other_ed25519_key(real: str, pki: Any) -> str:
    key = load_key(pki.key("mallory"))
    return jwt.encode(_claims(), key, algorithm="EdDSA", headers={"typ": "JWT"})


def _forge_edited_payload(real: str, pki: Any) -> str:
    header, payload, signature = real.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "bob"
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


@pytest.mark.parametrize(
    "forge",
    [_forge_none, _forge_hs256_with_public_key, _forge_other_ed25519_key, _forge_edited_payload],
    ids=["alg-none", "hs256-public-key", "other-ed25519-key", "edited-payload"],
)
async def test_forged_tokens_are_token_invalid(
    index_config: Callable[..., Any],
    running_index: Any,
    index_client: Any,
    pki: Any,
    forge: Callable[[str, Any], str],
) -> None:
    async with running_index(index_config()) as daemon, index_client(daemon.port) as client:
        await _user(client)
        await client.register("bob", PASSWORD)
        forged = forge(client.token, pki)
        with pytest.raises(TokenInvalid):
            await client.call(
                "sync", {"domain_name": "peer1", "port_number": 1, "files": []}, forged
            )


async def test_an_expired_token_is_token_expired(
    index_config: Callable[..., Any], running_index: Any, index_client: Any, pki: Any
) -> None:
    issuer = TokenIssuer(load_key(pki.key("indexd")), "indexd", ttl=60)
    expired, _ = issuer.issue("alice", now=time.time() - 3600, audience=INDEX_AUDIENCE)
    async with running_index(index_config()) as daemon, index_client(daemon.port) as client:
        await client.register("alice", PASSWORD)
        with pytest.raises(TokenExpired):
            await client.call("search", {"keyword": "music"}, expired)


# --- sync, search, ping, bye -------------------------------------------------------------


async def test_sync_then_search_matches_the_keyword_case_insensitively(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    async with (
        running_index(index_config()) as daemon,
        index_client(daemon.port, "peer1") as client,
    ):
        await _user(client)
        assert await client.sync("peer1", [_file("Music", "a.mp3", 3), _file("docs", "b")]) == 2
        [hit] = await client.search("mUSIC")
        assert await client.search("nothing") == []
    assert (hit.domain_name, hit.port_number, hit.address) == ("peer1", 7001, "127.0.0.1")
    assert [(f.filename, f.size, f.sha256) for f in hit.files] == [
        ("a.mp3", 3, hashlib.sha256(b"a.mp3").digest())
    ]


async def test_search_reports_the_advertised_address_over_the_seen_one(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    async with (
        running_index(index_config()) as daemon,
        index_client(daemon.port, "peer1") as client,
        index_client(daemon.port, "peer2") as other,
    ):
        await _user(client)
        await other.login("alice", PASSWORD)
        await client.sync("peer1", [_file("k", "a")], address="peer1.example.org")
        await other.sync("peer2", [_file("k", "b")])
        hits = await client.search("k")
    assert sorted((h.domain_name, h.address) for h in hits) == [
        ("peer1", "peer1.example.org"),
        ("peer2", "127.0.0.1"),
    ]


async def test_sync_bodies_are_validated(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    async with (
        running_index(index_config()) as daemon,
        index_client(daemon.port, "peer1") as client,
    ):
        await _user(client)
        with pytest.raises(BadRequest, match="port_number"):
            await client.call(
                "sync", {"domain_name": "peer1", "port_number": "7001", "files": []}, client.token
            )
        with pytest.raises(InvalidPath):
            await client.search("../etc")


# A keyword or filename that is missing or not a string is a malformed body: BAD_REQUEST naming
# the field, on a connection that stays open (PROTOCOL.md §4.7); None stands for "left out".
NOT_STRINGS = {"missing": None, "int": 7, "bin": b"koala", "array": ["koala"]}


def _present(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize("value", NOT_STRINGS.values(), ids=NOT_STRINGS.keys())
async def test_a_search_keyword_that_is_not_a_string_is_bad_request_naming_it(
    index_config: Callable[..., Any], running_index: Any, index_client: Any, value: Any
) -> None:
    async with (
        running_index(index_config()) as daemon,
        index_client(daemon.port, "peer1") as client,
    ):
        await _user(client)
        await client.sync("peer1", [_file("koala", "joey.txt")])
        with pytest.raises(BadRequest, match=r"^keyword: expected a string$"):
            await client.call("search", _present({"keyword": value}), client.token)
        assert [h.domain_name for h in await client.search("koala")] == ["peer1"]


@pytest.mark.parametrize("field", ["filename", "keyword"])
@pytest.mark.parametrize("value", NOT_STRINGS.values(), ids=NOT_STRINGS.keys())
async def test_a_sync_entry_name_that_is_not_a_string_is_bad_request_naming_it(
    index_config: Callable[..., Any],
    running_index: Any,
    index_client: Any,
    field: str,
    value: Any,
) -> None:
    good = _file("koala", "joey.txt").to_wire()
    bad = _present({**good, field: value})
    body = {"domain_name": "peer1", "port_number": 7001, "files": [good, bad]}
    async with (
        running_index(index_config()) as daemon,
        index_client(daemon.port, "peer1") as client,
    ):
        await _user(client)
        with pytest.raises(BadRequest, match=rf"^{field}: expected a string$"):
            await client.call("sync", body, client.token)
        assert await client.search("koala") == []  # the whole sync was refused
        with pytest.raises(InvalidPath):  # a string that is no safe segment stays INVALID_PATH
            await client.call("sync", {**body, "files": [{**good, field: "../x"}]}, client.token)


async def test_a_one_shot_sync_replaces_the_previous_listing_atomically(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    old = [_file("k", f"old{i:04d}") for i in range(2000)]
    new = [_file("k", f"new{i:04d}") for i in range(1500)]
    seen: list[tuple[str, ...]] = []
    syncing = True
    searched = asyncio.Event()

    async def keep_searching() -> None:
        while syncing:
            hits = await reader.search("k")
            seen.append(tuple(f.filename for f in hits[0].files))
            searched.set()

    async with (
        running_index(index_config()) as daemon,
        index_client(daemon.port, "peer1") as writer,
        index_client(daemon.port) as reader,
    ):
        await _user(writer)
        await reader.login("alice", PASSWORD)
        await writer.sync("peer1", old)
        searching = asyncio.ensure_future(keep_searching())
        await asyncio.wait_for(searched.wait(), 10)
        assert await writer.sync("peer1", new) == 1500
        syncing = False
        await searching
        final = await reader.search("k")
    shown_old = tuple(sorted(f.filename for f in old))[:100]
    shown_new = tuple(sorted(f.filename for f in new))[:100]
    # Every search saw one whole listing, never a mix or a partial one.
    assert set(seen) <= {shown_old, shown_new}
    assert seen[0] == shown_old
    assert tuple(f.filename for f in final[0].files) == shown_new


async def test_a_100000_file_share_syncs_in_parts_and_is_searchable(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    from netproto.operations import split_sync

    files = [_file(f"kw{i % 100:02d}", f"file-{i:06d}.dat", i) for i in range(100_000)]
    parts = split_sync("peer1", 7001, files)
    assert len(parts) > 1
    async with (
        running_index(index_config()) as daemon,
        index_client(daemon.port, "peer1") as client,
    ):
        await _user(client)
        counts = [
            (await client.call("sync", part.to_wire(), client.token))["files"] for part in parts
        ]
        [hit] = await client.search("KW42")
        rest = await client.call(
            "listing", {"domain_name": "peer1", "keyword": "kw42", "offset": 100}, client.token
        )
    assert counts[-1] == 100_000
    assert counts[:-1] == sorted(counts[:-1]) and counts[-2] < 100_000
    assert (len(hit.files), hit.total) == (100, 1000)
    names = [f.filename for f in hit.files] + [f["filename"] for f in rest["files"]]
    assert names == [f"file-{i:06d}.dat" for i in range(42, 100_000, 100)]


async def test_syncing_another_users_domain_name_is_forbidden(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    async with (
        running_index(index_config()) as daemon,
        index_client(daemon.port, "peer1") as alice,
        index_client(daemon.port, "peer1") as bob,
    ):
        await _user(alice, "alice")
        await _user(bob, "bob")
        await alice.sync("peer1", [_file("k", "a")])
        with pytest.raises(Forbidden, match="another user"):
            await bob.sync("peer1", [_file("k", "evil")])
        [hit] = await bob.search("k")
    assert [f.filename for f in hit.files] == ["a"]


async def test_a_client_certificate_naming_another_host_is_forbidden(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    async with (
        running_index(index_config()) as daemon,
        index_client(daemon.port, "peer2") as client,
    ):
        await _user(client)
        with pytest.raises(Forbidden, match="certificate"):
            await client.sync("peer1", [_file("k", "a")])
        assert await client.sync("peer2", [_file("k", "a")]) == 1


async def test_a_stale_peer_drops_out_of_search_and_ping_brings_it_back(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    async with (
        running_index(index_config(peer_ttl=1.0)) as daemon,
        index_client(daemon.port, "peer1") as client,
    ):
        await _user(client)
        await client.sync("peer1", [_file("k", "a")])
        assert len(await client.search("k")) == 1
        await asyncio.sleep(1.3)
        assert await client.search("k") == []
        assert await client.ping("peer1") == {"domain_name": "peer1", "ttl": 1.0}
        assert len(await client.search("k")) == 1


async def test_ping_and_bye_of_unknown_or_foreign_peers_are_refused(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    async with (
        running_index(index_config()) as daemon,
        index_client(daemon.port, "peer1") as alice,
        index_client(daemon.port, "peer3") as alice3,
        index_client(daemon.port, "peer1") as bob,
    ):
        await _user(alice, "alice")
        await alice3.login("alice", PASSWORD)
        await _user(bob, "bob")
        await alice.sync("peer1", [])
        with pytest.raises(NotFound):
            await alice3.ping("peer3")
        with pytest.raises(NotFound):
            await alice3.bye("peer3")
        with pytest.raises(Forbidden, match="another user"):
            await bob.ping("peer1")
        with pytest.raises(Forbidden, match="another user"):
            await bob.bye("peer1")
        assert await alice.ping("peer1") == {"domain_name": "peer1", "ttl": 120.0}


async def test_bye_withdraws_the_peer_from_search_and_ends_the_session(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    async with (
        running_index(index_config()) as daemon,
        index_client(daemon.port, "peer1") as client,
    ):
        await _user(client)
        await client.sync("peer1", [_file("k", "a")])
        assert await client.bye("peer1") == {"domain_name": "peer1"}
        with pytest.raises(TokenInvalid, match="ended"):
            await client.search("k")
        await client.login("alice", PASSWORD)  # a new session
        assert await client.search("k") == []
        with pytest.raises(NotFound):
            await client.ping("peer1")
        await client.sync("peer1", [_file("k", "a")])
        assert len(await client.search("k")) == 1


async def test_search_answers_while_a_burst_of_50_logins_is_still_hashing(
    index_config: Callable[..., Any], running_index: Any, index_client: Any, tmp_path: Path
) -> None:
    config = index_config(bcrypt_cost=10)
    store = SqliteIndexStore(config.db)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10))
    for i in range(51):
        store.add_user(f"user{i}", hashed, 0.0)
    store.close()
    async with running_index(config) as daemon, index_client(daemon.port, "peer1") as searcher:
        await searcher.login("user50", PASSWORD)
        await searcher.sync("peer1", [_file("k", "a")])
        clients = [index_client(daemon.port) for _ in range(10)]
        for c in clients:
            await c.__aenter__()
        try:
            logins = [
                asyncio.ensure_future(
                    clients[i % 10].call("auth", {"username": f"user{i}", "password": PASSWORD})
                )
                for i in range(50)
            ]
            await asyncio.wait(logins, return_when=asyncio.FIRST_COMPLETED, timeout=30)
            hits = await searcher.search("k")
            outstanding = sum(not login.done() for login in logins)
            replies = await asyncio.gather(*logins)
        finally:
            for c in clients:
                await c.__aexit__(None, None, None)
    assert len(hits) == 1
    assert outstanding > 0  # the search was answered before the burst of logins finished
    assert all(reply["token"] for reply in replies)


async def test_logs_never_contain_passwords_or_tokens(
    index_config: Callable[..., Any],
    running_index: Any,
    index_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    async with (
        running_index(index_config()) as daemon,
        index_client(daemon.port, "peer1") as client,
    ):
        await _user(client)
        with pytest.raises(AuthFailed):
            await client.login("alice", "wrong password")
        await client.sync("peer1", [_file("k", "a")])
        await client.search("k")
    text = caplog.text
    assert "alice" in text  # the log does talk about the login...
    assert PASSWORD not in text and "wrong password" not in text  # ...but not its secrets
    assert client.token not in text and client.token.split(".")[2] not in text


async def test_broken_multi_part_uploads_are_refused_and_leave_the_listing(
    index_config: Callable[..., Any], running_index: Any, index_client: Any
) -> None:
    def part(seq: int, final: bool = False, upload: bytes = b"u" * 16) -> dict[str, Any]:
        files = [_file("k", f"new{seq}").to_wire()]
        body = {"domain_name": "peer1", "port_number": 7001, "files": files}
        return {**body, "part": {"upload": upload, "seq": seq, "final": final}}

    async with (
        running_index(index_config()) as daemon,
        index_client(daemon.port, "peer1") as client,
    ):
        await _user(client)
        await client.sync("peer1", [_file("k", "old")])
        assert await client.call("sync", part(0), client.token) == {"files": 1}
        with pytest.raises(BadRequest, match="expected 1"):
            await client.call("sync", part(2, final=True), client.token)
        with pytest.raises(NotFound):
            await client.call("sync", part(1, upload=b"v" * 16), client.token)
        assert [f.filename for f in (await client.search("k"))[0].files] == ["old"]
        assert (await client.call("sync", part(1, final=True), client.token))["files"] == 2
        assert [f.filename for f in (await client.search("k"))[0].files] == ["new0", "new1"]
