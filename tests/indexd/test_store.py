"""indexd.store: the SQLite store behind the IndexStore interface."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexd.store import (
    SCHEMA_VERSION,
    IndexStore,
    Listing,
    PeerOwned,
    SchemaTooNew,
    SqliteIndexStore,
    StoreError,
    UnknownUser,
)
from netproto.errors import P2PError
from netproto.operations import SharedFile


def _file(keyword: str, name: str, size: int = 1) -> SharedFile:
    return SharedFile(name, keyword, size, hashlib.sha256(name.encode()).digest())


def _listing(owner: str, domain: str, files: list[SharedFile], seen: float = 1000.0) -> Listing:
    return Listing(owner, domain, 7001, "10.0.0.1", tuple(files), seen)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteIndexStore]:
    s = SqliteIndexStore(tmp_path / "index.db")
    s.add_user("alice", b"hash-a", 1.0)
    s.add_user("bob", b"hash-b", 1.0)
    yield s
    s.close()


def test_sqlite_store_satisfies_the_index_store_interface(store: SqliteIndexStore) -> None:
    typed: IndexStore = store
    assert typed.password_hash("alice") == b"hash-a"


def test_new_database_is_wal_with_full_sync_at_current_schema(tmp_path: Path) -> None:
    store = SqliteIndexStore(tmp_path / "index.db")
    try:
        db = store._write
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store.schema_version == SCHEMA_VERSION == 4
    finally:
        store.close()


def test_reopening_keeps_users_and_listings(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    store = SqliteIndexStore(path)
    store.add_user("alice", b"h", 1.0)
    store.replace_listing(_listing("alice", "peer1", [_file("music", "a.mp3")]))
    store.close()
    store = SqliteIndexStore(path)
    try:
        assert store.password_hash("alice") == b"h"
        [(record, files)] = list(store.iter_listings())
        assert (record.domain_name, record.owner, files) == (
            "peer1",
            "alice",
            [_file("music", "a.mp3")],
        )
    finally:
        store.close()


def test_database_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaTooNew, match="schema version"):
        SqliteIndexStore(path)


def test_add_user_refuses_a_taken_name(store: SqliteIndexStore) -> None:
    assert store.add_user("carol", b"h", 1.0) is True
    assert store.add_user("carol", b"other", 2.0) is False
    assert store.password_hash("carol") == b"h"


def test_password_hash_of_unknown_user_is_none(store: SqliteIndexStore) -> None:
    assert store.password_hash("nobody") is None


def test_replace_listing_replaces_the_whole_listing(store: SqliteIndexStore) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("music", "a"), _file("docs", "b")]))
    assert store.replace_listing(_listing("alice", "peer1", [_file("video", "c")])) == 1
    [(_, files)] = list(store.iter_listings())
    assert files == [_file("video", "c")]
    assert store.search("music", 10) == []


def test_replace_listing_counts_duplicate_entries_once(store: SqliteIndexStore) -> None:
    files = [_file("music", "a", 1), _file("music", "a", 2), _file("Music", "a", 3)]
    assert store.replace_listing(_listing("alice", "peer1", files)) == 2


def test_failed_replace_leaves_the_previous_listing_whole(store: SqliteIndexStore) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("music", "old")]))
    broken = SharedFile("new2", "music", 1, None)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        store.replace_listing(_listing("alice", "peer1", [_file("music", "new1"), broken]))
    [(_, files)] = list(store.iter_listings())
    assert files == [_file("music", "old")]


def test_replace_listing_of_another_users_domain_raises_peer_owned(
    store: SqliteIndexStore,
) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("music", "a")]))
    with pytest.raises(PeerOwned):
        store.replace_listing(_listing("bob", "peer1", []))
    assert store.peer("peer1").owner == "alice"  # type: ignore[union-attr]


def test_replace_listing_for_unregistered_owner_raises_unknown_user(
    store: SqliteIndexStore,
) -> None:
    with pytest.raises(UnknownUser):
        store.replace_listing(_listing("mallory", "peer9", []))


def test_withdraw_drops_files_but_keeps_ownership(store: SqliteIndexStore) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("music", "a")]))
    assert store.withdraw("peer1", "alice") is True
    assert list(store.iter_listings()) == []
    assert store.peer("peer1").withdrawn  # type: ignore[union-attr]
    with pytest.raises(PeerOwned):
        store.replace_listing(_listing("bob", "peer1", []))


def test_withdraw_of_another_users_peer_raises_and_of_unknown_is_false(
    store: SqliteIndexStore,
) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("music", "a")]))
    with pytest.raises(PeerOwned):
        store.withdraw("peer1", "bob")
    assert store.withdraw("peer9", "alice") is False


def test_store_search_is_case_insensitive_and_grouped_by_peer(store: SqliteIndexStore) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("Music", "b"), _file("MUSIC", "a")]))
    store.replace_listing(_listing("bob", "peer2", [_file("music", "c"), _file("docs", "d")]))
    hits = store.search("mUsIc", 10)
    assert [(h.peer.domain_name, [f.filename for f in h.files]) for h in hits] == [
        ("peer1", ["a", "b"]),
        ("peer2", ["c"]),
    ]


def test_store_search_uses_the_keyword_index(store: SqliteIndexStore) -> None:
    plan = store._read.execute(
        "EXPLAIN QUERY PLAN SELECT peer_id FROM files WHERE kw = ?", ("music",)
    ).fetchall()
    assert any("files_by_kw" in str(row) for row in plan)


def test_unwritable_database_path_fails_to_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(sqlite3.OperationalError):
        SqliteIndexStore(blocker / "index.db")


def test_database_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    old = os.umask(0o022)
    try:
        SqliteIndexStore(path).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("cls", [PeerOwned, UnknownUser, SchemaTooNew])
def test_store_refusals_are_store_errors_in_the_project_error_tree(
    cls: type[StoreError],
) -> None:
    assert issubclass(cls, StoreError) and issubclass(StoreError, P2PError)


# --- the deny-list of ended sessions, and listing pages --------------------------------------


def test_revoked_sessions_survive_a_reopen_until_they_expire(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    store = SqliteIndexStore(path)
    store.revoke_session("s-1", 2000.0)
    store.revoke_session("s-2", 1500.0)
    store.revoke_session("s-1", 1800.0)  # an earlier expiry never shortens an entry
    store.close()
    store = SqliteIndexStore(path)
    try:
        assert store.revoked_sessions(1000.0) == {"s-1": 2000.0, "s-2": 1500.0}
        assert store.revoked_sessions(1600.0) == {"s-1": 2000.0}
        assert store.prune_revoked(1600.0) == 1
        assert store.revoked_sessions(0.0) == {"s-1": 2000.0}
    finally:
        store.close()


def test_a_schema_1_database_is_migrated_with_its_listings_kept(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    store = SqliteIndexStore(path)
    store.add_user("alice", b"h", 1.0)
    store.replace_listing(_listing("alice", "peer1", [_file("k", "a")]))
    store._write.execute("DROP TABLE revoked_sessions")
    store._write.execute("DROP TABLE certificates")
    store._write.execute("ALTER TABLE users DROP COLUMN disabled")
    store._write.execute("DROP INDEX files_by_sha256")
    store._write.execute("ALTER TABLE files DROP COLUMN manifest")
    store._write.execute("ALTER TABLE files DROP COLUMN signature")
    store._write.execute("PRAGMA user_version = 1")
    store.close()
    store = SqliteIndexStore(path)
    try:
        assert store.schema_version == SCHEMA_VERSION
        assert [r.domain_name for r, _ in store.iter_listings()] == ["peer1"]
        store.revoke_session("s", 10.0)
        assert store.revoked_sessions(0.0) == {"s": 10.0}
    finally:
        store.close()


def test_listing_page_gives_the_total_and_files_in_name_order_from_an_offset(
    store: SqliteIndexStore,
) -> None:
    files = [_file("Koala", f"f{i:03d}") for i in range(30)] + [_file("other", "x")]
    store.replace_listing(_listing("alice", "peer1", files[::-1]))
    total, page = store.listing_page("peer1", "KOALA", 10, 5)
    assert total == 30
    assert [f.filename for f in page] == [f"f{i:03d}" for i in range(10, 15)]
    assert page[0].sha256 == hashlib.sha256(b"f010").digest()
    assert store.listing_page("peer1", "koala", 40, 5) == (30, [])
    assert store.listing_page("peer9", "koala", 0, 5) == (0, [])
