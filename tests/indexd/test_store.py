"""indexd.store: the IndexStore interface, one suite over both stores (SQLite and
PostgreSQL, ``store`` fixture), plus what is particular to each and the coordination
primitives several index servers on one PostgreSQL database rely on (PROTOCOL.md §11)."""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import psycopg
import pytest

from indexd.pgstore import PostgresIndexStore
from indexd.ratelimit import AttemptLimiter, BackoffPolicy
from indexd.store import (
    SCHEMA_VERSION,
    IndexDatabase,
    IndexStore,
    IssuedCertificate,
    Listing,
    ListingChange,
    PeerOwned,
    SchemaTooNew,
    SharedDatabase,
    SqliteIndexStore,
    StaleListing,
    StoreError,
    UnknownUser,
)
from netproto.errors import P2PError
from netproto.operations import FileKey, SharedFile

WAIT = 15.0  # seconds a test waits for another thread's result before failing


def _file(keyword: str, name: str, size: int = 1) -> SharedFile:
    return SharedFile(name, keyword, size, hashlib.sha256(name.encode()).digest())


def _listing(owner: str, domain: str, files: list[SharedFile], seen: float = 1000.0) -> Listing:
    return Listing(owner, domain, 7001, "10.0.0.1", tuple(files), seen)


Opener = Callable[[], IndexDatabase]


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Open store objects on one database (another open is another index server's, for
    PostgreSQL; a reopen, for SQLite); all closed after the test."""
    opened: list[IndexDatabase] = []
    if request.param == "sqlite":
        path = tmp_path / "index.db"

        def make() -> IndexDatabase:
            return SqliteIndexStore(path)
    else:
        url = request.getfixturevalue("postgres_url")

        def make() -> IndexDatabase:
            return PostgresIndexStore(url)

    def open_store() -> IndexDatabase:
        opened.append(make())
        return opened[-1]

    yield open_store
    for s in opened:
        s.close()


@pytest.fixture
def store(opener: Opener) -> IndexDatabase:
    """A store (of either kind) with users alice and bob."""
    s = opener()
    s.add_user("alice", b"hash-a", 1.0)
    s.add_user("bob", b"hash-b", 1.0)
    return s


@pytest.fixture
def servers(postgres_url: str) -> Iterator[tuple[PostgresIndexStore, PostgresIndexStore]]:
    """Two PostgreSQL stores on one database, as two index servers hold them; alice and bob."""
    one, two = PostgresIndexStore(postgres_url), PostgresIndexStore(postgres_url)
    one.add_user("alice", b"hash-a", 1.0)
    one.add_user("bob", b"hash-b", 1.0)
    yield one, two
    one.close()
    two.close()


def test_both_stores_satisfy_the_index_database_interface(store: IndexDatabase) -> None:
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


def test_reopening_keeps_users_and_listings(opener: Opener) -> None:
    store = opener()
    store.add_user("alice", b"h", 1.0)
    store.replace_listing(_listing("alice", "peer1", [_file("music", "a.mp3")]))
    store.close()
    store = opener()
    assert store.password_hash("alice") == b"h"
    [(record, files)] = list(store.iter_listings())
    assert (record.domain_name, record.owner, files) == (
        "peer1",
        "alice",
        [_file("music", "a.mp3")],
    )


def test_database_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaTooNew, match="schema version"):
        SqliteIndexStore(path)


def test_add_user_refuses_a_taken_name(store: IndexDatabase) -> None:
    assert store.add_user("carol", b"h", 1.0) is True
    assert store.add_user("carol", b"other", 2.0) is False
    assert store.password_hash("carol") == b"h"


def test_password_hash_of_unknown_user_is_none(store: IndexDatabase) -> None:
    assert store.password_hash("nobody") is None


def test_replace_listing_replaces_the_whole_listing(store: IndexDatabase) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("music", "a"), _file("docs", "b")]))
    assert store.replace_listing(_listing("alice", "peer1", [_file("video", "c")])) == 1
    [(_, files)] = list(store.iter_listings())
    assert files == [_file("video", "c")]
    assert store.search("music", 10) == []


def test_replace_listing_counts_duplicate_entries_once(store: IndexDatabase) -> None:
    files = [_file("music", "a", 1), _file("music", "a", 2), _file("Music", "a", 3)]
    assert store.replace_listing(_listing("alice", "peer1", files)) == 2


def test_failed_replace_leaves_the_previous_listing_whole(store: IndexDatabase) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("music", "old")]))
    broken = SharedFile("new2", "music", 1, None)  # type: ignore[arg-type]
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.NotNullViolation)):
        store.replace_listing(_listing("alice", "peer1", [_file("music", "new1"), broken]))
    [(_, files)] = list(store.iter_listings())
    assert files == [_file("music", "old")]


def test_replace_listing_of_another_users_domain_raises_peer_owned(
    store: IndexDatabase,
) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("music", "a")]))
    with pytest.raises(PeerOwned):
        store.replace_listing(_listing("bob", "peer1", []))
    assert store.peer("peer1").owner == "alice"  # type: ignore[union-attr]


def test_replace_listing_for_unregistered_owner_raises_unknown_user(
    store: IndexDatabase,
) -> None:
    with pytest.raises(UnknownUser):
        store.replace_listing(_listing("mallory", "peer9", []))


def test_withdraw_drops_files_but_keeps_ownership(store: IndexDatabase) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("music", "a")]))
    assert store.withdraw("peer1", "alice") is True
    assert list(store.iter_listings()) == []
    assert store.peer("peer1").withdrawn  # type: ignore[union-attr]
    with pytest.raises(PeerOwned):
        store.replace_listing(_listing("bob", "peer1", []))


def test_withdraw_of_another_users_peer_raises_and_of_unknown_is_false(
    store: IndexDatabase,
) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("music", "a")]))
    with pytest.raises(PeerOwned):
        store.withdraw("peer1", "bob")
    assert store.withdraw("peer9", "alice") is False


def test_store_search_is_case_insensitive_and_grouped_by_peer(store: IndexDatabase) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("Music", "b"), _file("MUSIC", "a")]))
    store.replace_listing(_listing("bob", "peer2", [_file("music", "c"), _file("docs", "d")]))
    hits = store.search("mUsIc", 10)
    assert [(h.peer.domain_name, [f.filename for f in h.files]) for h in hits] == [
        ("peer1", ["a", "b"]),
        ("peer2", ["c"]),
    ]


def test_store_search_uses_the_keyword_index(tmp_path: Path) -> None:
    store = SqliteIndexStore(tmp_path / "index.db")
    plan = store._read.execute(
        "EXPLAIN QUERY PLAN SELECT peer_id FROM files WHERE kw = ?", ("music",)
    ).fetchall()
    store.close()
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


def test_revoked_sessions_survive_a_reopen_until_they_expire(opener: Opener) -> None:
    store = opener()
    store.revoke_session("s-1", 2000.0)
    store.revoke_session("s-2", 1500.0)
    store.revoke_session("s-1", 1800.0)  # an earlier expiry never shortens an entry
    store.close()
    store = opener()
    assert store.revoked_sessions(1000.0) == {"s-1": 2000.0, "s-2": 1500.0}
    assert store.revoked_sessions(1600.0) == {"s-1": 2000.0}
    assert store.prune_revoked(1600.0) == 1
    assert store.revoked_sessions(0.0) == {"s-1": 2000.0}


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
    store: IndexDatabase,
) -> None:
    files = [_file("Koala", f"f{i:03d}") for i in range(30)] + [_file("other", "x")]
    store.replace_listing(_listing("alice", "peer1", files[::-1]))
    total, page = store.listing_page("peer1", "KOALA", 10, 5)
    assert total == 30
    assert [f.filename for f in page] == [f"f{i:03d}" for i in range(10, 15)]
    assert page[0].sha256 == hashlib.sha256(b"f010").digest()
    assert store.listing_page("peer1", "koala", 40, 5) == (30, [])
    assert store.listing_page("peer9", "koala", 0, 5) == (0, [])


# --- incremental changes and enrollment records, on both stores ------------------------------


def test_update_listing_applies_removals_then_puts_and_returns_touched_keywords(
    store: IndexDatabase,
) -> None:
    store.replace_listing(
        _listing("alice", "peer1", [_file("koala", "a"), _file("koala", "b"), _file("wombat", "c")])
    )
    change = ListingChange(
        "alice",
        "peer1",
        (_file("Koala", "d"), _file("koala", "b", 5), _file("koala", "b", 99)),
        (FileKey("wombat", "c"), FileKey("koala", "zzz")),
        2000.0,
    )
    count, touched = store.update_listing(change)
    assert count == 3
    assert [(f.filename, f.keyword, f.size) for f in touched["koala"]] == [
        ("a", "koala", 1),
        ("b", "koala", 99),  # the later entry for the same file wins
        ("d", "Koala", 1),
    ]
    assert touched["wombat"] == []
    assert store.peer("peer1").last_seen == 2000.0  # type: ignore[union-attr]


def test_update_listing_of_a_withdrawn_or_unknown_peer_is_stale_and_of_another_user_owned(
    store: IndexDatabase,
) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("koala", "a")]))
    with pytest.raises(PeerOwned):
        store.update_listing(ListingChange("bob", "peer1", (), (FileKey("koala", "a"),), 2.0))
    with pytest.raises(StaleListing):
        store.update_listing(ListingChange("alice", "peer9", (), (), 2.0))
    store.withdraw("peer1", "alice")
    with pytest.raises(StaleListing):
        store.update_listing(ListingChange("alice", "peer1", (_file("k", "x"),), (), 2.0))


def test_certificates_give_names_to_their_users_and_revocations_list_them(
    store: IndexDatabase,
) -> None:
    store.record_certificate(IssuedCertificate("a1", "alice", "laptop", 1.0, 100.0))
    store.record_certificate(IssuedCertificate("a2", "alice", "laptop", 2.0, 100.0))
    with pytest.raises(PeerOwned):
        store.record_certificate(IssuedCertificate("b1", "bob", "laptop", 3.0, 100.0))
    with pytest.raises(PeerOwned):  # a name enrolled by alice is not bob's to sync either
        store.replace_listing(_listing("bob", "laptop", []))
    with pytest.raises(UnknownUser):
        store.record_certificate(IssuedCertificate("c1", "carol", "desk", 1.0, 100.0))
    assert store.enrolled_names() == {"laptop": "alice"}
    assert [c.serial for c in store.certificates()] == ["a1", "a2"]
    assert store.revoke_certificates(10.0, serial="a1") == 1
    assert store.set_user_disabled("bob", True) and not store.set_user_disabled("carol", True)
    assert store.revocations(10.0) == (frozenset({"bob"}), frozenset({"a1"}))
    assert store.password_hash("bob") is None


def test_holders_gives_one_file_per_live_peer(store: IndexDatabase) -> None:
    same = SharedFile("x", "k", 1, b"\x01" * 32)
    store.replace_listing(_listing("alice", "peer1", [same, SharedFile("a", "k", 1, b"\x01" * 32)]))
    store.replace_listing(_listing("bob", "peer2", [same]))
    store.replace_listing(_listing("bob", "peer3", [same]))
    store.withdraw("peer3", "bob")
    rows = store.holders(b"\x01" * 32)
    assert [(r.domain_name, f.filename) for r, f in rows] == [("peer1", "a"), ("peer2", "x")]


# --- the primitives of several index servers (PROTOCOL.md §11), on both stores ----------------


def test_listing_of_gives_one_live_peer_whole_or_none(store: IndexDatabase) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("b", "2"), _file("a", "1")]))
    found = store.listing_of("peer1")
    assert found is not None
    record, files = found
    assert (record.owner, files) == ("alice", [_file("a", "1"), _file("b", "2")])
    assert store.listing_of("peer9") is None
    store.withdraw("peer1", "alice")
    assert store.listing_of("peer1") is None


def test_record_seen_moves_last_seen_forward_only_and_seen_since_reads_it(
    store: IndexDatabase,
) -> None:
    store.replace_listing(_listing("alice", "peer1", [], seen=100.0))
    store.replace_listing(_listing("bob", "peer2", [], seen=100.0))
    store.record_seen({"peer1": 500.0, "peer2": 50.0, "peer9": 900.0})
    assert store.seen_since(0.0) == {"peer1": 500.0, "peer2": 100.0}
    assert store.seen_since(200.0) == {"peer1": 500.0}
    store.record_seen({})


def test_only_the_postgresql_store_is_shared_by_several_index_servers(
    store: IndexDatabase,
) -> None:
    assert isinstance(store, SharedDatabase) == isinstance(store, PostgresIndexStore)


def test_attempts_charge_backs_off_like_the_in_memory_limiter(
    servers: tuple[PostgresIndexStore, PostgresIndexStore],
) -> None:
    store = servers[0]
    policy = BackoffPolicy(free=2, base_delay=10.0, max_delay=300.0, decay=60.0)
    limiter = AttemptLimiter(policy)
    charges = [("alice 127.0.0.1", policy), ("alice", policy)]
    assert store.attempts_charge(charges, 1000.0) == 0.0
    assert store.attempts_charge(charges, 1000.0) == 0.0
    limiter.charge("alice", 1000.0)
    limiter.charge("alice", 1000.0)
    assert store.attempts_charge(charges, 1000.0) == limiter.retry_after("alice", 1000.0) == 10.0
    assert store.attempts_charge(charges, 1010.0) == 0.0
    limiter.charge("alice", 1010.0)
    assert store.attempts_charge(charges, 1010.0) == limiter.retry_after("alice", 1010.0) == 20.0
    state = store.attempts_get(["alice", "nobody"])
    assert list(state) == ["alice"]  # the refused attempt charged nothing:
    assert state["alice"].count == pytest.approx(3 - 10 / 60)
    store.attempts_refund(charges, 1010.0)
    assert store.attempts_get(["alice"])["alice"].count == pytest.approx(2 - 10 / 60)
    store.attempts_reset(["alice 127.0.0.1"])
    assert set(store.attempts_get(["alice", "alice 127.0.0.1"])) == {"alice"}
    assert store.attempts_prune(1100.0) == 0
    assert store.attempts_prune(1200.0) == 1
    assert store.attempts_get(["alice"]) == {}


def test_stats_count_what_the_database_holds(store: IndexDatabase) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("a", "1"), _file("A", "2")], seen=90.0))
    store.replace_listing(_listing("bob", "peer2", [_file("b", "3")], seen=10.0))
    store.revoke_session("s", 200.0)
    store.record_certificate(IssuedCertificate("a1", "alice", "peer1", 1.0, 100.0))
    assert store.stats(100.0, 30.0) == {
        "users": 2,
        "peers": 2,
        "live_peers": 1,
        "files": 3,
        "keywords": 2,
        "revoked_sessions": 1,
        "certificates": 1,
    }


def test_sqlite_listen_is_a_no_op(tmp_path: Path) -> None:
    store = SqliteIndexStore(tmp_path / "index.db")
    heard: list[str | None] = []
    store.listen(heard.append).close()
    store.add_user("alice", b"h", 1.0)
    store.replace_listing(_listing("alice", "peer1", []))
    store.close()
    assert heard == []


# --- PostgreSQL: schema, and two index servers on one database -------------------------------


def test_postgres_schema_is_made_once_when_several_servers_open_a_new_database(
    postgres_url: str,
) -> None:
    barrier = threading.Barrier(4)
    opened: list[PostgresIndexStore] = []
    failures: list[BaseException] = []

    def open_one() -> None:
        barrier.wait(WAIT)
        try:
            opened.append(PostgresIndexStore(postgres_url))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    try:
        assert failures == [] and len(opened) == 4
        assert {s.schema_version for s in opened} == {1}
    finally:
        for s in opened:
            s.close()


def test_postgres_database_from_a_newer_schema_is_refused(postgres_url: str) -> None:
    PostgresIndexStore(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE p2pshare_schema SET version = 99")
    with pytest.raises(SchemaTooNew, match="schema version 99"):
        PostgresIndexStore(postgres_url)


def test_postgres_write_is_committed_before_it_returns(
    servers: tuple[PostgresIndexStore, PostgresIndexStore],
) -> None:
    one, two = servers
    one.replace_listing(_listing("alice", "peer1", [_file("music", "a")]))
    assert [h.peer.domain_name for h in two.search("music", 10)] == ["peer1"]
    with psycopg.connect(one.url) as conn:
        [(state,)] = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'p2pshare-indexd'"
            " AND state LIKE 'idle in transaction%'"
        ).fetchall()
    assert state == 0  # no store connection is left inside a transaction


def _run_together(*jobs: Callable[[], object]) -> list[object]:
    """Run the jobs in threads released at once; their results or exceptions, in order."""
    barrier = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)

    def run(i: int, job: Callable[[], object]) -> None:
        barrier.wait(WAIT)
        try:
            results[i] = job()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    return results


def test_two_servers_syncing_one_users_domains_at_once_keep_every_listing_whole(
    servers: tuple[PostgresIndexStore, PostgresIndexStore],
) -> None:
    one, two = servers
    names = [f"peer{i}" for i in range(6)]

    def sync_all(store: PostgresIndexStore, tag: str) -> int:
        for _ in range(5):
            for name in names:
                files = [_file("music", f"{tag}{i}") for i in range(20)]
                store.replace_listing(_listing("alice", name, files))
        return 0

    assert _run_together(lambda: sync_all(one, "x"), lambda: sync_all(two, "y")) == [0, 0]
    listings = dict((r.domain_name, (r.owner, files)) for r, files in one.iter_listings())
    assert sorted(listings) == names
    for owner, files in listings.values():
        tags = {f.filename[0] for f in files}
        assert owner == "alice" and len(files) == 20 and len(tags) == 1


def test_two_users_racing_for_one_name_exactly_one_wins(
    servers: tuple[PostgresIndexStore, PostgresIndexStore],
) -> None:
    one, two = servers
    for i in range(10):
        name = f"contested{i}"
        results = _run_together(
            partial(one.replace_listing, _listing("alice", name, [_file("k", "a")])),
            partial(two.replace_listing, _listing("bob", name, [_file("k", "b")])),
        )
        assert sorted(type(r).__name__ for r in results) == ["PeerOwned", "int"]
        winner = "alice" if results[0] == 1 else "bob"
        assert one.peer(name).owner == winner  # type: ignore[union-attr]


def test_a_sync_racing_an_enrollment_for_one_name_leaves_one_owner(
    servers: tuple[PostgresIndexStore, PostgresIndexStore],
) -> None:
    one, two = servers
    for i in range(10):
        name = f"desk{i}"
        results = _run_together(
            partial(one.replace_listing, _listing("alice", name, [])),
            partial(two.record_certificate, IssuedCertificate(f"s{i}", "bob", name, 1.0, 9.0)),
        )
        assert sum(isinstance(r, PeerOwned) for r in results) == 1
    owners = {r.domain_name: r.owner for r in one.peers()}
    for name, user in one.enrolled_names().items():
        assert owners.get(name, user) == user


def test_a_search_racing_a_sync_sees_the_old_or_the_new_listing_whole(
    servers: tuple[PostgresIndexStore, PostgresIndexStore],
) -> None:
    one, two = servers
    old = [_file("music", f"old{i:02d}") for i in range(40)]
    new = [_file("music", f"new{i:02d}") for i in range(40)]
    one.replace_listing(_listing("alice", "peer1", old))
    seen: list[set[str]] = []

    def flip() -> None:
        for i in range(30):
            one.replace_listing(_listing("alice", "peer1", new if i % 2 == 0 else old))

    def search() -> None:
        for _ in range(60):
            [hit] = two.search("music", 100)
            seen.append({f.filename[:3] for f in hit.files} | {str(len(hit.files))})

    assert _run_together(flip, search) == [None, None]
    assert all(s in ({"old", "40"}, {"new", "40"}) for s in seen), seen


def test_committed_changes_reach_the_other_servers_listener_and_failed_ones_do_not(
    servers: tuple[PostgresIndexStore, PostgresIndexStore],
) -> None:
    one, two = servers
    heard: queue.Queue[str | None] = queue.Queue()
    listener = two.listen(heard.put)
    one.replace_listing(_listing("bob", "peer1", []))
    one.replace_listing(_listing("alice", "peer2", [_file("k", "a")]))
    with pytest.raises(PeerOwned):
        one.replace_listing(_listing("bob", "peer2", []))  # rolled back: nothing announced
    one.update_listing(ListingChange("alice", "peer2", (), (FileKey("k", "a"),), 5.0))
    one.withdraw("peer2", "alice")
    one.revoke_session("sess-1", 10.0)
    one.record_certificate(IssuedCertificate("s1", "alice", "peer3", 1.0, 9.0))
    one.withdraw_and_revoke("peer1", "bob", "sess-2", 11.25)
    got = [heard.get(timeout=WAIT) for _ in range(8)]
    listener.close()
    assert got == [
        "listing peer1",
        "listing peer2",
        "listing peer2",
        "listing peer2",
        "revoked sess-1 10.0",
        "owner peer3 alice",
        "listing peer1",
        "revoked sess-2 11.25",
    ]
    assert heard.empty()


def test_withdraw_and_revoke_commits_both_or_neither(store: IndexDatabase) -> None:
    store.replace_listing(_listing("alice", "peer1", [_file("k", "a")]))
    with pytest.raises(PeerOwned):
        store.withdraw_and_revoke("peer1", "bob", "sess-b", 50.0)
    assert store.revoked_sessions(0.0) == {}  # rolled back with the refused withdrawal
    assert store.listing_of("peer1") is not None
    assert store.withdraw_and_revoke("peer1", "alice", "sess-a", 50.0) is True
    assert store.listing_of("peer1") is None
    assert store.revoked_sessions(0.0) == {"sess-a": 50.0}
    # An unknown peer: nothing to withdraw, the session still ends.
    assert store.withdraw_and_revoke("nobody", "alice", "sess-c", 60.0) is False
    assert store.revoked_sessions(0.0) == {"sess-a": 50.0, "sess-c": 60.0}


def test_a_listener_passes_over_its_own_servers_changes_and_hears_the_others(
    servers: tuple[PostgresIndexStore, PostgresIndexStore],
) -> None:
    one, two = servers
    heard: queue.Queue[str | None] = queue.Queue()
    listener = two.listen(heard.put)
    try:
        two.replace_listing(_listing("alice", "peer1", []))  # its own: memory has it already
        two.revoke_session("sess-own", 10.0)
        one.replace_listing(_listing("alice", "peer2", []))  # committed after: heard after
        assert heard.get(timeout=WAIT) == "listing peer2"
        assert heard.empty()
    finally:
        listener.close()


def test_a_listener_whose_connection_is_killed_reconnects_and_says_reload(
    servers: tuple[PostgresIndexStore, PostgresIndexStore],
) -> None:
    one, two = servers
    heard: queue.Queue[str | None] = queue.Queue()
    listener = two.listen(heard.put)
    try:
        with psycopg.connect(one.url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (listener.pid,))
        assert heard.get(timeout=WAIT) is None
        one.replace_listing(_listing("alice", "peer1", []))
        assert heard.get(timeout=WAIT) == "listing peer1"
    finally:
        listener.close()


def test_attempts_charged_through_two_servers_at_once_are_all_counted(
    servers: tuple[PostgresIndexStore, PostgresIndexStore],
) -> None:
    policy = BackoffPolicy(free=10_000)
    charges = [("shared", policy), ("alice", policy)]

    def charge(store: PostgresIndexStore) -> float:
        return max(store.attempts_charge(charges, 1000.0) for _ in range(25))

    one, two = servers
    assert _run_together(lambda: charge(one), lambda: charge(two), lambda: charge(one)) == [
        0.0,
        0.0,
        0.0,
    ]
    assert one.attempts_get(["shared"])["shared"].count == 75.0


def test_record_seen_batches_from_two_servers_in_opposite_orders_never_deadlock(
    servers: tuple[PostgresIndexStore, PostgresIndexStore], caplog: pytest.LogCaptureFixture
) -> None:
    one, two = servers
    names = [f"peer{i:02d}" for i in range(50)]
    for name in reversed(names):  # row ids in the opposite order of the names
        one.replace_listing(_listing("alice", name, [], seen=1.0))

    def seen(store: PostgresIndexStore, base: float, order: list[str]) -> None:
        for step in range(10):
            store.record_seen({n: base + step for n in order})

    caplog.set_level(logging.INFO, logger="indexd.pgstore")
    assert _run_together(lambda: seen(one, 100.0, names), lambda: seen(two, 0.0, names[::-1])) == [
        None,
        None,
    ]
    assert set(two.seen_since(0.0).values()) == {109.0}
    # The batches, given in opposite orders, lock their rows in one order: no deadlock
    # was detected and retried.
    assert "retried after a conflict" not in caplog.text


def test_sqlite_record_seen_is_one_transaction(tmp_path: Path) -> None:
    store = SqliteIndexStore(tmp_path / "index.db")
    store.add_user("alice", b"hash", 1.0)
    names = [f"peer{i:02d}" for i in range(50)]
    for name in names:
        store.replace_listing(_listing("alice", name, [], seen=1.0))
    wal = tmp_path / "index.db-wal"
    before = wal.stat().st_size
    store.record_seen({name: 5.0 for name in names})
    grown = wal.stat().st_size - before
    page = int(store._write.execute("PRAGMA page_size").fetchone()[0])
    store.close()
    assert grown < 5 * (page + 24)  # one commit's frames, not one commit per peer


def test_sqlite_listing_of_reads_beside_a_write_in_progress(tmp_path: Path) -> None:
    store = SqliteIndexStore(tmp_path / "index.db")
    try:
        store.add_user("alice", b"hash", 1.0)
        store.replace_listing(_listing("alice", "peer1", [_file("k", "a")]))
        store._write.execute("BEGIN IMMEDIATE")  # the write thread, inside a transaction
        store._write.execute("DELETE FROM files")
        found = store.listing_of("peer1")
        store._write.execute("ROLLBACK")
    finally:
        store.close()
    assert found is not None and found[1] == [_file("k", "a")]


def _store_connections(url: str) -> int:
    with psycopg.connect(url) as conn:
        [(count,)] = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'p2pshare-indexd'"
            " AND datname = current_database()"
        ).fetchall()
    return int(count)


def test_postgres_open_keeps_no_connection_on_the_opening_thread(postgres_url: str) -> None:
    store = PostgresIndexStore(postgres_url)
    try:
        assert _store_connections(postgres_url) == 0
        store.add_user("alice", b"hash", 1.0)
        assert _store_connections(postgres_url) == 1
    finally:
        store.close()


def test_postgres_store_reconnects_once_after_its_connection_was_terminated(
    servers: tuple[PostgresIndexStore, PostgresIndexStore],
) -> None:
    one, two = servers
    one.replace_listing(_listing("alice", "peer1", [_file("k", "a")]))
    with psycopg.connect(one.url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'p2pshare-indexd' AND datname = current_database()"
        )
    assert [h.peer.domain_name for h in one.search("k", 10)] == ["peer1"]  # a read
    assert two.add_user("carol", b"hash-c", 1.0)  # a write
    assert one.password_hash("carol") == b"hash-c"


def test_postgres_iter_listings_abandoned_midway_leaves_the_thread_connection_usable(
    servers: tuple[PostgresIndexStore, PostgresIndexStore],
) -> None:
    one, two = servers
    one.replace_listing(_listing("alice", "peer1", [_file("k", "a")]))
    one.replace_listing(_listing("alice", "peer2", [_file("k", "b")]))
    listings = one.iter_listings()
    assert next(listings)[0].domain_name == "peer1"  # and never resumed nor closed
    one.replace_listing(_listing("alice", "peer3", [_file("k", "c")]))  # committed at once
    assert [h.peer.domain_name for h in two.search("k", 10)] == ["peer1", "peer2", "peer3"]
    close = getattr(listings, "close", None)  # a generator's, to end the snapshot
    if close is not None:
        close()


def _wait_for_lock_wait(url: str) -> None:
    """Until a store connection waits for a row lock (or fail after WAIT seconds)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(int(WAIT / 0.02)):
            [(waiting,)] = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                " 'p2pshare-indexd' AND wait_event_type = 'Lock'"
            ).fetchall()
            if waiting:
                return
            threading.Event().wait(0.02)
    raise AssertionError("the charge never waited for the row lock")


def test_attempts_charge_racing_a_prune_of_its_row_charges_a_fresh_counter(
    servers: tuple[PostgresIndexStore, PostgresIndexStore],
) -> None:
    one, _ = servers
    policy = BackoffPolicy(free=5, decay=1.0)
    assert one.attempts_charge([("k", policy)], 1000.0) == 0.0  # expired by 1002
    result: queue.Queue[object] = queue.Queue()
    with psycopg.connect(one.url) as pruner:  # another server's prune, caught midway
        pruner.execute("SELECT 1 FROM attempts WHERE key = 'k' FOR UPDATE")
        charger = threading.Thread(
            target=lambda: result.put(_call(one.attempts_charge, [("k", policy)], 1002.0))
        )
        charger.start()
        _wait_for_lock_wait(one.url)
        pruner.execute("DELETE FROM attempts WHERE expires_at <= 1002")
        pruner.commit()
        charger.join(WAIT)
    assert result.get(timeout=WAIT) == 0.0
    assert one.attempts_get(["k"])["k"].count == 1.0


def _call(fn: Callable[..., object], *args: object) -> object:
    try:
        return fn(*args)
    except Exception as exc:
        return exc


def test_user_active_is_true_only_for_a_registered_user_not_disabled(store: IndexDatabase) -> None:
    assert store.user_active("alice") is True
    assert store.user_active("nobody") is False
    store.set_user_disabled("alice", True)
    assert store.user_active("alice") is False
