"""The index against stolen tokens, greedy users and bad listings (issue 12, index side).

Live daemons with real TLS: a token a malicious serving peer captured, a bound token replayed
with another certificate or none, a session after ``bye`` (also across a restart), a running
peer renewing while its password is locked out, listings without a certificate, users over
their name, file and sync limits, a user trying to hide an honest peer from a search, and
advertised addresses that are no address. Every case ends by showing that a well-behaved
client is still served (PROTOCOL.md §4, §8).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_asyncio

from certs import load_cert
from indexd.app import IndexDaemon
from indexd.ratelimit import BackoffPolicy, BucketPolicy
from netproto.client import Connection
from netproto.errors import BadRequest, Forbidden, RateLimited, TokenInvalid
from netproto.operations import (
    KeywordRequest,
    SearchHit,
    SearchReply,
    SharedFile,
    split_sync,
)
from netproto.server import Operation, Server
from netproto.tokens import INDEX_AUDIENCE, PEER_AUDIENCE, TokenVerifier, certificate_thumbprint
from peerd.daemon import PeerDaemon
from tests.support.adversary import (
    HEALTH_FILE,
    HEALTH_KEYWORD,
    HOST,
    PASSWORD,
    Live,
    assert_index_serves,
    index_config,
    live_daemons,
    open_conn,
    peer_config,
    put,
    sha256,
)
from tests.support.leaves import client_ctx_for, leaf_files


async def _login(
    live: Live, user: str, cert: str | None = None, *, register: bool = True
) -> tuple[Connection, dict[str, Any]]:
    """A connection presenting ``cert`` (any name, or none) and the auth reply of ``user``."""
    ctx = client_ctx_for(live.pki, cert) if cert is not None else live.pki.client_ctx()
    conn = await open_conn(live.index_port, "indexd", ctx)
    if register:
        await conn.request("register", {"username": user, "password": PASSWORD})
    reply = await conn.request("auth", {"username": user, "password": PASSWORD})
    return conn, reply


def _files(keyword: str, count: int, prefix: str = "f", width: int = 20) -> list[SharedFile]:
    return [
        SharedFile(f"{prefix}{i:05d}".ljust(width, "x"), keyword, i, sha256(b"%d" % i))
        for i in range(count)
    ]


async def _sync(conn: Connection, token: str, name: str, files: list[SharedFile]) -> int:
    count = -1
    for part in split_sync(name, 7001, files):
        count = (await conn.request("sync", part.to_wire(), token))["files"]
    return count


async def _search(conn: Connection, token: str, keyword: str, cursor: Any = None) -> SearchReply:
    body: dict[str, Any] = {"keyword": keyword}
    if cursor is not None:
        body["cursor"] = cursor
    return SearchReply.from_wire(await conn.request("search", body, token))


# --- 1. tokens bound to the client certificate, one audience each ----------------------------


class CapturingPeer:
    """A serving peer (with peer1's certificate) that keeps every token a downloader shows it."""

    def __init__(self, pki: Any) -> None:
        self.pki = pki
        self.tokens: list[str] = []
        self.server: Server | None = None

    async def start(self) -> int:
        from peerd.server import peer_ssl_context

        verifier = TokenVerifier(load_cert(self.pki.cert("indexd")))

        def authenticate(token: str, cert: Any) -> Any:
            self.tokens.append(token)
            return verifier.verify(token)

        async def list_files(ctx: Any, req: Any) -> list[str]:
            return [HEALTH_FILE]

        ctx = peer_ssl_context(self.pki.cert("peer1"), self.pki.key("peer1"), self.pki.ca)
        ops = {"list": Operation(KeywordRequest.from_wire, list_files)}
        self.server = Server(ops, ctx, authenticate=authenticate, name="capturing")
        await self.server.start(HOST, 0)
        return self.server.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close(grace=0)


@pytest_asyncio.fixture(loop_scope="function")
async def live(pki: Any, tmp_path: Path) -> AsyncIterator[Live]:
    async with live_daemons(pki, tmp_path) as daemons:
        yield daemons


async def test_a_token_a_serving_peer_captured_from_a_download_is_useless_at_the_index(
    live: Live, tmp_path: Path
) -> None:
    share = tmp_path / "peer2-files"
    put(share, "emu/feathers.txt", b"emu feathers\n")
    config = peer_config(live.pki, "peer2", live.index_port, share)
    async with PeerDaemon(config) as downloader:
        hostile = CapturingPeer(live.pki)
        port = await hostile.start()
        try:
            async with await downloader.open_peer(SearchHit("peer1", port, HOST, ())) as peer:
                assert await peer.list(HEALTH_KEYWORD) == [HEALTH_FILE]
        finally:
            await hostile.stop()
        [stolen] = set(hostile.tokens)
        claims = jwt.decode(stolen, options={"verify_signature": False})
        assert claims["aud"] == PEER_AUDIENCE and "cnf" in claims
        # The thief tries to rewrite the downloader's listing, with its own certificate or
        # none: the token is for peers, and bound to peer2's certificate besides.
        body = {"domain_name": "peer2", "port_number": 6666, "address": "203.0.113.66", "files": []}
        for ctx in (live.pki.client_ctx(), live.pki.client_ctx("mallory")):
            thief = await open_conn(live.index_port, "indexd", ctx)
            for op, request in (("sync", body), ("ping", {"domain_name": "peer2"})):
                with pytest.raises(TokenInvalid):
                    await thief.request(op, request, stolen)
            with pytest.raises(TokenInvalid):
                await thief.request("search", {"keyword": "emu"}, stolen)
            await thief.close()
        # The downloader's listing is untouched and still found by a well-behaved client.
        conn, reply = await _login(live, "searcher")
        [hit] = (await _search(conn, reply["token"], "emu")).hits
        assert (hit.port_number, hit.address) == (downloader.port, "127.0.0.1")
        await conn.close()
    await assert_index_serves(live)


async def test_auth_binds_both_tokens_to_a_client_certificate_and_without_one_gives_an_index_token(
    live: Live,
) -> None:
    conn, bound = await _login(live, "alice", "peer3")
    await conn.close()
    thumbprint = certificate_thumbprint(load_cert(leaf_files(live.pki, "peer3")[0]))
    index = jwt.decode(bound["token"], options={"verify_signature": False})
    peer = jwt.decode(bound["peer_token"], options={"verify_signature": False})
    assert (index["aud"], peer["aud"]) == (INDEX_AUDIENCE, PEER_AUDIENCE)
    assert index["cnf"] == peer["cnf"] == {"x5t#S256": thumbprint}
    conn, unbound = await _login(live, "alice", register=False)
    assert "peer_token" not in unbound
    assert "cnf" not in jwt.decode(unbound["token"], options={"verify_signature": False})
    assert (await _search(conn, unbound["token"], HEALTH_KEYWORD)).hits
    await conn.close()


async def test_a_bound_index_token_replayed_without_or_with_another_certificate_is_token_invalid(
    live: Live,
) -> None:
    owner, reply = await _login(live, "alice", "peer3")
    token = reply["token"]
    assert await _sync(owner, token, "peer3", _files("emu", 3)) == 3
    for ctx in (live.pki.client_ctx(), live.pki.client_ctx("mallory")):
        thief = await open_conn(live.index_port, "indexd", ctx)
        with pytest.raises(TokenInvalid):
            await thief.request("search", {"keyword": "emu"}, token)
        with pytest.raises(TokenInvalid):
            await thief.request("ping", {"domain_name": "peer3"}, token)
        await thief.close()
    # The holder, with its certificate, is still served.
    assert [h.domain_name for h in (await _search(owner, token, "emu")).hits] == ["peer3"]
    assert await owner.request("ping", {"domain_name": "peer3"}, token)
    await owner.close()
    await assert_index_serves(live)


async def test_bye_ends_the_session_at_the_index_and_a_restart_keeps_it_ended(
    pki: Any, tmp_path: Path
) -> None:
    config = index_config(pki, tmp_path)
    ctx = pki.client_ctx("peer3")
    async with IndexDaemon(config) as index:
        conn = await open_conn(index.port, "indexd", ctx)
        await conn.request("register", {"username": "alice", "password": PASSWORD})
        token = (await conn.request("auth", {"username": "alice", "password": PASSWORD}))["token"]
        body = {"domain_name": "peer3", "port_number": 7001, "files": []}
        await conn.request("sync", body, token)
        await conn.request("bye", {"domain_name": "peer3"}, token)
        for op, request in (("search", {"keyword": "k"}), ("sync", body), ("renew", {})):
            with pytest.raises(TokenInvalid, match="ended"):
                await conn.request(op, request, token)
        await conn.close()
    async with IndexDaemon(dataclasses.replace(config, port=0)) as index:
        conn = await open_conn(index.port, "indexd", ctx)
        with pytest.raises(TokenInvalid, match="ended"):
            await conn.request("sync", body, token)
        # A new session is served.
        fresh = (await conn.request("auth", {"username": "alice", "password": PASSWORD}))["token"]
        assert (await conn.request("sync", body, fresh))["files"] == 0
        await conn.close()


async def test_a_running_peer_renews_with_its_token_while_its_password_is_locked_out(
    pki: Any, tmp_path: Path
) -> None:
    locked = BackoffPolicy(free=1, base_delay=300.0, decay=1e9)
    overrides = {"token_ttl": 4.0, "login_backoff": locked, "user_backoff": locked}
    async with live_daemons(pki, tmp_path, index_overrides=overrides) as live:
        # peerd logs in while the ceiling is not reached; a stranger then locks the user out.
        share = tmp_path / "peer2-files"
        put(share, "emu/feathers.txt", b"emu feathers\n")
        config = peer_config(pki, "peer2", live.index_port, share, reauth_fraction=0.25)
        async with PeerDaemon(config) as peer2:
            first = peer2.session.token
            stranger = await open_conn(
                live.index_port, "indexd", pki.client_ctx(), local_addr=("127.0.0.8", 0)
            )
            for _ in range(2):
                with pytest.raises((RateLimited, Exception)):
                    await stranger.request("auth", {"username": "peer2", "password": "guess!!!"})
            with pytest.raises(RateLimited):  # locked out from everywhere: the password is useless
                await stranger.request("auth", {"username": "peer2", "password": PASSWORD})
            await stranger.close()
            # Past the first token's expiry, peer2 is still logged in and listed.
            await asyncio.sleep(4.0 + 2.0)
            assert peer2.session.token != first
            expires_at = peer2.status().token_expires_at
            assert expires_at is not None and expires_at > time.time()
            hits = await peer2.search("emu")
            assert [h.domain_name for h in hits] == ["peer2"]
        await assert_index_serves(live)


# --- 2. listings: the certificate, per-user limits, the sync rate ------------------------------


@pytest.mark.parametrize("op", ["sync", "ping", "bye"])
async def test_sync_ping_and_bye_without_a_client_certificate_are_forbidden(
    live: Live, op: str
) -> None:
    conn = await open_conn(live.index_port, "indexd", live.pki.client_ctx())
    token = (await conn.request("auth", {"username": "peer1", "password": PASSWORD}))["token"]
    body: dict[str, Any] = {"domain_name": "peer1"}
    if op == "sync":
        body.update(port_number=6666, address="203.0.113.66", files=[])
    with pytest.raises(Forbidden, match="client certificate"):
        await conn.request(op, body, token)
    await conn.close()
    await assert_index_serves(live)  # peer1's own listing, as peer1 synced it


async def test_a_user_cannot_own_more_domain_names_than_allowed(pki: Any, tmp_path: Path) -> None:
    async with live_daemons(pki, tmp_path, index_overrides={"max_domains_per_user": 2}) as live:
        token = ""
        for name in ("fake1", "fake2", "fake3"):
            conn, reply = await _login(live, "greedy", name, register=name == "fake1")
            token = reply["token"]
            if name == "fake3":
                with pytest.raises(Forbidden, match="at most 2 domain names"):
                    await _sync(conn, token, name, _files("emu", 1))
            else:
                assert await _sync(conn, token, name, _files("emu", 1)) == 1
            await conn.close()
        conn, reply = await _login(live, "honest", "fake3")  # another user may take the name
        assert await _sync(conn, reply["token"], "fake3", _files("emu", 1)) == 1
        await conn.close()
        await assert_index_serves(live)


async def test_a_user_cannot_list_more_files_than_allowed_counting_staged_parts(
    pki: Any, tmp_path: Path
) -> None:
    async with live_daemons(pki, tmp_path, index_overrides={"max_files_per_user": 3000}) as live:
        conn, reply = await _login(live, "greedy", "fake1")
        token = reply["token"]
        assert await _sync(conn, token, "fake1", _files("emu", 2000)) == 2000
        other, other_reply = await _login(live, "greedy", "fake2", register=False)
        other_token = other_reply["token"]
        parts = split_sync("fake2", 7001, _files("emu", 1500), max_files_per_part=500)
        await other.request("sync", parts[0].to_wire(), other_token)
        await other.request("sync", parts[1].to_wire(), other_token)  # 2000 listed, 1000 staged
        with pytest.raises(Forbidden, match="at most 3000 files"):
            await other.request("sync", parts[2].to_wire(), other_token)
        with pytest.raises(Forbidden, match="at most 3000 files"):
            await _sync(conn, token, "fake1", _files("emu", 3001))
        [hit] = (await _search(conn, token, "emu")).hits
        assert (hit.domain_name, hit.total) == ("fake1", 2000)  # the listing stayed as it was
        await conn.close()
        await other.close()
        await assert_index_serves(live)


async def test_syncs_are_rate_limited_per_user(pki: Any, tmp_path: Path) -> None:
    rate = BucketPolicy(burst=3, interval=60.0)
    async with live_daemons(pki, tmp_path, index_overrides={"sync_rate": rate}) as live:
        conn, reply = await _login(live, "eager", "fake1")
        for i in range(3):
            await _sync(conn, reply["token"], "fake1", _files("emu", i + 1))
        with pytest.raises(RateLimited) as limited:
            await _sync(conn, reply["token"], "fake1", _files("emu", 9))
        assert 50 < limited.value.retry_after <= 60
        await conn.close()
        calm, calm_reply = await _login(live, "calm", "fake2")  # another user syncs as usual
        assert await _sync(calm, calm_reply["token"], "fake2", _files("emu", 1)) == 1
        await calm.close()
        await assert_index_serves(live)


# --- 3. search fairness ------------------------------------------------------------------------


async def test_users_with_many_peers_of_many_files_cannot_hide_an_honest_peer_from_search(
    pki: Any, tmp_path: Path
) -> None:
    async with live_daemons(pki, tmp_path) as live:
        # Nine users with four peers each, every peer 4,000 files of long names under koala:
        # more hits than one reply can hold (the issue's attack, nine times over).
        fakes: list[str] = []
        for u in range(9):
            for d in range(4):
                name = f"fake{u}-{d}"
                conn, reply = await _login(live, f"sybil{u}", name, register=d == 0)
                files = _files(HEALTH_KEYWORD, 4000, prefix=f"{name}-", width=240)
                assert await _sync(conn, reply["token"], name, files) == 4000
                await conn.close()
                fakes.append(name)
        conn, reply = await _login(live, "searcher")
        token = reply["token"]
        firsts = set()
        for _ in range(10):
            page = await _search(conn, token, HEALTH_KEYWORD)
            names = [h.domain_name for h in page.hits]
            assert "peer1" in names  # on the first page, whoever's peers come first
            assert page.more > 0 and page.cursor is not None  # the rest counted, not dropped
            assert len(names) + page.more == len(fakes) + 1
            firsts.add(names[0])
            for hit in page.hits:  # a bounded number of files per hit, all counted
                assert len(hit.files) <= 100
                assert hit.total == (1 if hit.domain_name == "peer1" else 4000)
        assert len(firsts) > 1  # no name comes first in every reply
        # Following the cursor reaches every hit exactly once.
        seen: list[str] = []
        cursor = None
        while True:
            page = await _search(conn, token, HEALTH_KEYWORD, cursor)
            seen += [h.domain_name for h in page.hits]
            if page.cursor is None:
                break
            cursor = page.cursor
        assert sorted(seen) == sorted([*fakes, "peer1"])
        await conn.close()
        # The peer's own client follows the pages too, and finds the honest file.
        found = {h.domain_name: h for h in await live.peer.search(HEALTH_KEYWORD)}
        assert sorted(found) == sorted([*fakes, "peer1"])
        assert [f.filename for f in found["peer1"].files] == [HEALTH_FILE]


async def test_a_hit_of_many_files_lists_the_first_and_the_rest_are_reachable(
    live: Live,
) -> None:
    conn, reply = await _login(live, "big", "fake1")
    token = reply["token"]
    files = _files("emu", 4000)
    await _sync(conn, token, "fake1", files)
    [hit] = (await _search(conn, token, "emu")).hits
    assert (len(hit.files), hit.total) == (100, 4000)
    names = [f.filename for f in hit.files]
    while len(names) < 4000:
        body = {"domain_name": "fake1", "keyword": "emu", "offset": len(names)}
        page = await conn.request("listing", body, token)
        assert page["total"] == 4000 and page["files"]
        names += [f["filename"] for f in page["files"]]
    assert names == sorted(f.filename for f in files)
    await conn.close()
    # The peer's own client completes a hit to its first 1,000 files.
    [found] = await live.peer.search("emu")
    assert (len(found.files), found.total) == (1000, 4000)
    await assert_index_serves(live)


# --- 4. advertised addresses and ports -----------------------------------------------------------

BAD_LISTINGS = {
    "address with a space": ({"address": "peer3 .example"}, "address"),
    "address with an escape": ({"address": "\x1b[2Jpeer3"}, "address"),
    "address with a newline": ({"address": "peer3\nFAKE"}, "address"),
    "address with a bidi override": ({"address": "\u202epeer3.example"}, "address"),
    "address of 254 bytes": (
        {"address": "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 62},
        "address",
    ),
    "address with an IPv6 zone": ({"address": "fe80::1%eth0"}, "address"),
    "address that is a URL": ({"address": "https://peer3.example/"}, "address"),
    "port 0": ({"port_number": 0}, "port_number"),
    "port 65536": ({"port_number": 65536}, "port_number"),
}


@pytest.mark.parametrize("change,field", BAD_LISTINGS.values(), ids=BAD_LISTINGS.keys())
async def test_a_sync_with_an_address_or_port_that_is_none_is_bad_request(
    live: Live, change: dict[str, Any], field: str
) -> None:
    conn, reply = await _login(live, "alice", "peer3")
    token = reply["token"]
    body = {"domain_name": "peer3", "port_number": 7003, "files": [], **change}
    with pytest.raises(BadRequest, match=f"^{field}: "):
        await conn.request("sync", body, token)
    good = {**body, "port_number": 7003, "address": "Peer3.Example.org."}
    await conn.request("sync", {**good, "files": [_files("emu", 1)[0].to_wire()]}, token)
    [hit] = (await _search(conn, token, "emu")).hits
    assert (hit.address, hit.port_number) == ("peer3.example.org", 7003)
    await conn.close()
    await assert_index_serves(live)
