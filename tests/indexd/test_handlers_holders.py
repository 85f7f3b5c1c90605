"""The index keeps each file's manifest digest and publisher signature (PROTOCOL.md §4.8) and
answers the content lookup ``holders`` (§4.9)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from indexd.handlers import deal_fairly
from indexd.store import SqliteIndexStore
from netproto.operations import (
    MAX_HOLDERS,
    HoldersReply,
    HoldersRequest,
    Holding,
    ListingRequest,
    SharedFile,
    SyncDeltaRequest,
)
from tests.indexd.test_handlers import (  # noqa: F401 - the fixtures are used by name
    TTL,
    Clock,
    _remember_pki,
    _search,
    _sync,
    _users,
    ctx,
    opened,
)

CONTENT = hashlib.sha256(b"joey").digest()
MANIFEST = hashlib.sha256(b"manifest").digest()
SIGNATURE = bytes(range(64))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "index.db"


def _signed(keyword: str, name: str) -> SharedFile:
    return SharedFile(name, keyword, 4, CONTENT, MANIFEST, SIGNATURE)


async def test_search_and_listing_return_the_synced_manifest_digest_and_signature(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        plain = SharedFile("old.txt", "koala", 1, hashlib.sha256(b"o").digest())
        await service.handle_sync(
            ctx("alice", peer="peer1"), _sync("peer1", [_signed("koala", "joey.txt"), plain])
        )
        [hit] = await _search(service, "koala")
        joey, old = hit.files
        assert (joey.manifest, joey.signature) == (MANIFEST, SIGNATURE)
        assert (old.manifest, old.signature) == (None, None)  # an entry synced without them
        page = await service.handle_listing(ctx("alice"), ListingRequest("peer1", "koala"))
        assert page.files == hit.files


async def test_a_sync_delta_carries_manifest_digests_into_search(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice")
        me = ctx("alice", peer="peer1")
        reply = await service.handle_sync(me, _sync("peer1", []))
        delta = SyncDeltaRequest("peer1", 7001, reply.version or 0, (_signed("emu", "e.bin"),))
        await service.handle_sync_delta(me, delta)
        [hit] = await _search(service, "emu")
        assert hit.files[0].signature == SIGNATURE


async def test_holders_names_every_live_peer_with_the_content_whatever_its_name(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice", "bob")
        await service.handle_sync(
            ctx("alice", peer="peer1"), _sync("peer1", [_signed("koala", "joey.txt")])
        )
        clock.now += TTL / 2
        await service.handle_sync(
            ctx("bob", peer="peer2"), _sync("peer2", [_signed("marsupials", "baby.bin")])
        )
        reply = await service.handle_holders(ctx("alice"), HoldersRequest(CONTENT))
        found = [(h.domain_name, h.keyword, h.file.filename) for h in reply.holders]
        assert found == [("peer1", "koala", "joey.txt"), ("peer2", "marsupials", "baby.bin")]
        assert reply.holders[0].file.manifest == MANIFEST
        assert HoldersReply.from_wire(reply.to_wire()) == reply
        assert reply.holders[1].hit().files == (reply.holders[1].file,)
        clock.now += TTL / 2 + 1  # peer1 is stale now
        reply = await service.handle_holders(ctx("alice"), HoldersRequest(CONTENT))
        assert [h.domain_name for h in reply.holders] == ["peer2"]
        unknown = HoldersRequest(hashlib.sha256(b"nothing").digest())
        assert (await service.handle_holders(ctx("alice"), unknown)).holders == ()
        assert MAX_HOLDERS >= 2


def test_the_store_keeps_manifest_digests_across_a_reopen(tmp_path: Path) -> None:
    from tests.indexd.test_store import _listing

    path = tmp_path / "index.db"
    store = SqliteIndexStore(path)
    store.add_user("alice", b"h", 1.0)
    store.replace_listing(_listing("alice", "peer1", [_signed("k", "a")]))
    store.close()
    store = SqliteIndexStore(path)
    try:
        [(_record, files)] = list(store.iter_listings())
        assert files[0].manifest == MANIFEST and files[0].signature == SIGNATURE
        [(peer, f)] = store.holders(CONTENT)
        assert (peer.domain_name, f.filename) == ("peer1", "a")
    finally:
        store.close()


async def test_stale_peers_copies_take_no_place_and_live_owners_take_turns_first(
    pki: Any, db: Path, clock: Clock
) -> None:
    async with opened(pki, db, clock) as service:
        await _users(service, "alice", "bob", "carol")
        copies = [_signed("k", f"copy{i:05d}") for i in range(2_000)]
        await service.handle_sync(ctx("alice", peer="peer1"), _sync("peer1", copies))
        clock.now += TTL + 1  # peer1 and its 2,000 copies are stale now
        for user, peer in (("bob", "peer2"), ("carol", "peer3")):
            await service.handle_sync(ctx(user, peer=peer), _sync(peer, [_signed("k", "a")]))
        firsts = set()
        for _ in range(2):
            reply = await service.handle_holders(ctx("bob"), HoldersRequest(CONTENT))
            assert sorted(h.domain_name for h in reply.holders) == ["peer2", "peer3"]
            firsts.add(reply.holders[0].domain_name)
        assert firsts == {"peer2", "peer3"}  # the first place turns


def test_deal_fairly_gives_each_owner_a_place_before_anyone_a_second() -> None:
    def held(name: str) -> Holding:
        return Holding(name, 7001, "127.0.0.1", "k", _signed("k", "a").listed())

    by_owner = {"mallory": [held(f"a{i}") for i in range(4)], "bob": [held("zzz")]}
    assert [h.domain_name for h in deal_fairly(by_owner, 0, 2)] == ["a0", "zzz"]
    assert [h.domain_name for h in deal_fairly(by_owner, 1, 3)] == ["zzz", "a0", "a1"]
    assert deal_fairly({}, 5, 2) == ()
