"""indexd.store ``update_listing``: the incremental sync's storage (PROTOCOL.md §4.3.1)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexd.store import Listing, ListingChange, PeerOwned, SqliteIndexStore, StaleListing
from netproto.operations import FileKey, SharedFile


def _file(keyword: str, name: str, size: int = 1) -> SharedFile:
    return SharedFile(name, keyword, size, hashlib.sha256(name.encode()).digest())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteIndexStore]:
    s = SqliteIndexStore(tmp_path / "index.db")
    s.add_user("alice", b"hash-a", 1.0)
    s.add_user("bob", b"hash-b", 1.0)
    files = (_file("koala", "a"), _file("koala", "b"), _file("wombat", "c"))
    s.replace_listing(Listing("alice", "peer1", 7001, "10.0.0.1", files, 1000.0))
    yield s
    s.close()


def _change(files: list[SharedFile], removed: list[FileKey], owner: str = "alice") -> ListingChange:
    return ListingChange(owner, "peer1", tuple(files), tuple(removed), 2000.0)


def test_puts_and_removals_apply_and_the_touched_keywords_come_back_whole(
    store: SqliteIndexStore,
) -> None:
    count, touched = store.update_listing(
        _change([_file("Koala", "d"), _file("koala", "b", 99)], [FileKey("wombat", "c")])
    )
    assert count == 3
    assert set(touched) == {"koala", "wombat"}
    assert [(f.filename, f.keyword, f.size) for f in touched["koala"]] == [
        ("a", "koala", 1),
        ("b", "koala", 99),
        ("d", "Koala", 1),
    ]
    assert touched["wombat"] == []
    [(record, files)] = list(store.iter_listings())
    assert record.last_seen == 2000.0 and len(files) == 3


def test_removing_a_file_that_is_not_listed_changes_nothing(store: SqliteIndexStore) -> None:
    count, _ = store.update_listing(_change([], [FileKey("koala", "zzz")]))
    assert count == 3


def test_a_peer_without_a_listing_is_stale(store: SqliteIndexStore) -> None:
    store.withdraw("peer1", "alice")
    with pytest.raises(StaleListing):
        store.update_listing(_change([_file("koala", "x")], []))
    with pytest.raises(StaleListing):
        store.update_listing(ListingChange("alice", "peer9", (), (), 1.0))


def test_another_users_peer_is_refused_and_left_alone(store: SqliteIndexStore) -> None:
    with pytest.raises(PeerOwned):
        store.update_listing(_change([], [FileKey("koala", "a")], owner="bob"))
    [(_, files)] = list(store.iter_listings())
    assert len(files) == 3
