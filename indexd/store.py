"""Durable state of the index: users, the peers they own, each peer's listing, and the
sessions ended by ``bye`` (deny-listed until their tokens expire).

:class:`IndexStore` is the interface the handlers are written against; :class:`SqliteIndexStore`
is the default, on SQLite in WAL mode with ``synchronous=FULL``, so a write has reached the disk
(the WAL, fsynced) by the time a method returns — an acknowledged ``register`` or ``sync``
survives ``kill -9``. The methods block; the daemon runs them off the event loop (writes on one
thread, so they are serialized; reads on another, which WAL lets run beside a write).

:class:`IndexDatabase` is everything the daemon, enrollment and ``indexd admin`` need of a
database, including the primitives several index servers sharing one PostgreSQL database
coordinate with (PROTOCOL.md §11), which :class:`SqliteIndexStore` implements trivially for
its one process; :class:`indexd.pgstore.PostgresIndexStore` is the PostgreSQL one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from indexd.ratelimit import BackoffPolicy
from netproto.errors import P2PError
from netproto.operations import FileKey, ListedFile, SharedFile

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreError(P2PError):
    """Base of the store's own refusals; the handlers turn them into wire errors."""


class PeerOwned(StoreError):
    """The domain name belongs to another user."""


class UnknownUser(StoreError):
    """The user is not registered (e.g. a token that outlived its database)."""


class SchemaTooNew(StoreError):
    """The database was written by a newer indexd with a schema this one does not know."""


class StaleListing(StoreError):
    """The peer has no listing to change (never synced, or withdrawn): send it whole."""


class UserDisabled(StoreError):
    """The user was disabled by the operator (``indexd admin disable-user``)."""


class DatabaseUnavailable(StoreError):
    """The database cannot be opened; the message is one line naming it, never its password."""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate the index issued at enrollment (PROTOCOL.md §10), as recorded."""

    serial: str
    username: str
    domain_name: str
    issued_at: float
    not_after: float


def keyword_key(keyword: str) -> str:
    """The form keywords are matched in: case-folded (PROTOCOL.md §4, search)."""
    return keyword.casefold()


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """One peer as stored: who owns it, where it listens, when it was last seen."""

    domain_name: str
    owner: str
    port_number: int
    address: str
    last_seen: float
    withdrawn: bool = False


@dataclass(frozen=True, slots=True)
class Listing:
    """A peer's whole listing, as one ``sync`` (or the final part of an upload) sets it."""

    owner: str
    domain_name: str
    port_number: int
    address: str
    files: tuple[SharedFile, ...]
    seen_at: float

    def unique_files(self) -> list[SharedFile]:
        """The files with duplicate (keyword, filename) entries collapsed, the last one kept."""
        return list({(f.keyword, f.filename): f for f in self.files}.values())


@dataclass(frozen=True, slots=True)
class ListingChange:
    """Changes to a peer's listing, as one ``sync_delta`` makes them (PROTOCOL.md §4.3.1):
    entries added or replaced whole, and entries removed by (keyword, file name)."""

    owner: str
    domain_name: str
    files: tuple[SharedFile, ...]
    removed: tuple[FileKey, ...]
    seen_at: float

    def keywords(self) -> set[str]:
        """The folded keywords the change touches."""
        return {keyword_key(f.keyword) for f in self.files} | {
            keyword_key(k.keyword) for k in self.removed
        }


@dataclass(frozen=True, slots=True)
class StoredHit:
    """Files of one peer under one keyword, as the store's own search returns them."""

    peer: PeerRecord
    files: tuple[ListedFile, ...]


#: The PostgreSQL channel every committed listing change and ended session is announced on
#: (PROTOCOL.md §11); SQLite has one index process and announces nothing.
NOTIFY_CHANNEL = "p2pshare_index"


@dataclass(frozen=True, slots=True)
class AttemptState:
    """One key's login-attempt counter, as :class:`indexd.ratelimit.AttemptLimiter` keeps it:
    a count that decays by one every ``policy.decay`` seconds from ``updated``, and the time
    before which the key must wait."""

    count: float
    updated: float
    blocked_until: float

    def at(self, now: float, policy: BackoffPolicy) -> AttemptState:
        """The state decayed to ``now``."""
        elapsed = max(0.0, now - self.updated)
        return AttemptState(max(0.0, self.count - elapsed / policy.decay), now, self.blocked_until)

    def retry_after(self, now: float) -> float:
        """Seconds still to wait at ``now`` (0 if the key may try)."""
        return max(0.0, self.blocked_until - now)

    def charged(self, now: float, policy: BackoffPolicy) -> AttemptState:
        """One more attempt at ``now``: from ``policy.free`` attempts on, a longer wait each
        (the same arithmetic as ``AttemptLimiter.charge``)."""
        state = self.at(now, policy)
        count = state.count + 1
        blocked = state.blocked_until
        excess = math.ceil(count - 1e-9) - policy.free
        if excess >= 0:
            delay = policy.max_delay if excess > 60 else policy.base_delay * 2.0**excess
            blocked = max(blocked, now + min(policy.max_delay, delay))
        return AttemptState(count, now, blocked)

    def refunded(self, now: float, policy: BackoffPolicy) -> AttemptState:
        """One attempt's charge given back (the wait stays)."""
        state = self.at(now, policy)
        return AttemptState(max(0.0, state.count - 1), now, state.blocked_until)

    def expires_at(self, policy: BackoffPolicy) -> float:
        """When the state is no different from no state at all (decayed, not waiting)."""
        return max(self.blocked_until, self.updated + self.count * policy.decay)


#: One charge of :meth:`IndexDatabase.attempts_charge`: a counter's key and its policy.
AttemptCharge = tuple[str, BackoffPolicy]


class Listener(Protocol):
    """A subscription made by :meth:`IndexDatabase.listen`; ``close()`` ends it."""

    def close(self) -> None:
        """Stop listening and release the connection (waits for the thread to end)."""
        ...


class IndexStore(Protocol):
    """What the index needs from its storage. Every method may block; writes are durable."""

    def add_user(self, username: str, password_hash: bytes, now: float) -> bool:
        """Add a user; False if the (lower-cased) name is taken."""
        ...

    def password_hash(self, username: str) -> bytes | None:
        """The user's bcrypt hash, or None for an unknown user.

        Called from a thread of its own (logins'), beside the other reads: an implementation
        gives it a connection of its own, so that no flood of other reads delays a login.
        """
        ...

    def user_active(self, username: str) -> bool:
        """Whether the user is registered and not disabled (``renew``): one cheap read, on
        the reads' thread — never on the logins' (PROTOCOL.md §8: a lockout cannot touch
        renew)."""
        ...

    def replace_listing(self, listing: Listing) -> int:
        """Replace the peer's whole listing atomically; return the number of files listed.

        Raises :class:`PeerOwned` if another user owns the domain name, :class:`UnknownUser`
        if the owner is not registered.
        """
        ...

    def withdraw(self, domain_name: str, owner: str) -> bool:
        """Drop the peer's listing (ownership stays); False if the peer is unknown.

        Raises :class:`PeerOwned` if another user owns the domain name.
        """
        ...

    def update_listing(self, change: ListingChange) -> tuple[int, dict[str, list[SharedFile]]]:
        """Apply ``change`` atomically: removals first, then the entries put (a later entry for
        the same file wins). Returns the files now listed and, for each folded keyword the
        change touched, the peer's files under it now (empty when none are left).

        Raises :class:`StaleListing` if the peer has no listing, :class:`PeerOwned` if another
        user owns the domain name.
        """
        ...

    def peer(self, domain_name: str) -> PeerRecord | None:
        """One peer's record, or None."""
        ...

    def peers(self) -> list[PeerRecord]:
        """Every peer ever synced, withdrawn ones included."""
        ...

    def iter_listings(self) -> Iterator[tuple[PeerRecord, list[SharedFile]]]:
        """Every live (not withdrawn) peer with its files, to build the in-memory index."""
        ...

    def search(self, keyword: str, max_files_per_peer: int) -> list[StoredHit]:
        """Peers with files under ``keyword`` (case-insensitive), from disk, via the index."""
        ...

    def listing_page(
        self, domain_name: str, keyword: str, offset: int, limit: int
    ) -> tuple[int, list[ListedFile]]:
        """How many files the peer lists under ``keyword``, and ``limit`` of them from
        ``offset`` on, in file-name order (the order of a search hit)."""
        ...

    def holders(self, sha256: bytes) -> list[tuple[PeerRecord, SharedFile]]:
        """One file with this content per peer not withdrawn (its first in keyword then
        file-name order): a peer listing many copies takes one row, like any other."""
        ...

    def revoke_session(self, session: str, expires_at: float) -> None:
        """Deny-list a session until ``expires_at`` (its last token's expiry). Durable."""
        ...

    def withdraw_and_revoke(
        self, domain_name: str, owner: str, session: str, expires_at: float
    ) -> bool:
        """:meth:`withdraw` and :meth:`revoke_session` atomically, in one transaction (``bye``:
        no crash can withdraw the peer and leave its session going); the withdrawal's bool."""
        ...

    def revoked_sessions(self, now: float) -> dict[str, float]:
        """The sessions still deny-listed at ``now``, with when each entry may go."""
        ...

    def prune_revoked(self, now: float) -> int:
        """Drop deny-list entries that expired by ``now``; how many were dropped."""
        ...

    def close(self) -> None:
        """Release the database."""
        ...


class IndexDatabase(IndexStore, Protocol):
    """A whole index database: the handlers' :class:`IndexStore`, enrollment and ``indexd
    admin`` records (PROTOCOL.md §10), and the primitives several index servers sharing one
    PostgreSQL database coordinate with (PROTOCOL.md §11)."""

    #: What its methods raise when the database itself fails (unreachable, a lost
    #: connection), as opposed to a :class:`StoreError` refusal: a background task that
    #: meets one of these tries again later, anything else is a bug and is logged as one.
    failures: tuple[type[Exception], ...]

    def record_certificate(self, cert: IssuedCertificate) -> None:
        """Record an issued certificate; its name becomes (or stays) the user's."""
        ...

    def enrolled_names(self) -> dict[str, str]:
        """Every name a certificate was issued for, and its user."""
        ...

    def certificates(self) -> list[IssuedCertificate]:
        """Every certificate recorded, in issue order."""
        ...

    def revocations(self, now: float) -> tuple[frozenset[str], frozenset[str]]:
        """The disabled users, and the serials revoked and not yet expired at ``now``."""
        ...

    def revoke_certificates(
        self,
        now: float,
        *,
        serial: str | None = None,
        username: str | None = None,
        domain_name: str | None = None,
    ) -> int:
        """Revoke the unrevoked certificates matching every criterion given; how many."""
        ...

    def set_user_disabled(self, username: str, disabled: bool) -> bool:
        """Disable (or enable again) a user; False if there is no such user."""
        ...

    def listing_of(self, domain_name: str) -> tuple[PeerRecord, list[SharedFile]] | None:
        """One live (not withdrawn) peer with its files, read as of one moment; else None."""
        ...

    def listen(self, callback: Callable[[str | None], None]) -> Listener:
        """Call ``callback(payload)`` for each change another writer commits (PROTOCOL.md
        §11), and ``callback(None)`` after the subscription was lost and made again (anything
        may have changed meanwhile: reload everything). Runs on a thread of its own."""
        ...

    def record_seen(self, seen: dict[str, float]) -> None:
        """Move peers' ``last_seen`` forward (never back), all in one statement."""
        ...

    def seen_since(self, since: float) -> dict[str, float]:
        """The live peers seen at or after ``since``, with when."""
        ...

    def stats(self, now: float, peer_ttl: float) -> dict[str, int]:
        """Counts for the operator: users, peers, live peers (seen within ``peer_ttl`` of
        ``now`` and not withdrawn), files, keywords, revoked sessions, certificates."""
        ...


@runtime_checkable
class SharedDatabase(IndexDatabase, Protocol):
    """A database several index servers share (PostgreSQL, :mod:`indexd.pgstore`): also the
    login attempt counters they keep together (PROTOCOL.md §11). One index process on SQLite
    counts logins in its own memory (:class:`indexd.handlers.MemoryLoginLimits`)."""

    def attempts_charge(self, charges: Sequence[AttemptCharge], now: float) -> float:
        """Atomically: if any key must still wait at ``now``, charge nothing and return the
        longest wait (seconds, > 0); else charge one attempt to every key and return 0."""
        ...

    def attempts_refund(self, charges: Sequence[AttemptCharge], now: float) -> None:
        """Give back one attempt's charge of each key (its wait stays)."""
        ...

    def attempts_reset(self, keys: Sequence[str]) -> None:
        """Forget the keys' counters entirely."""
        ...

    def attempts_get(self, keys: Sequence[str]) -> dict[str, AttemptState]:
        """The stored counters of those keys that have one."""
        ...

    def attempts_prune(self, now: float) -> int:
        """Drop counters that have decayed away and are not waiting; how many."""
        ...


class _NoListener:
    """What :meth:`SqliteIndexStore.listen` returns: one process, nothing to hear."""

    def close(self) -> None:
        """Nothing to stop."""


# --- SQLite --------------------------------------------------------------------------------

_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...]


def _migrate_to_1(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE users (
            username TEXT PRIMARY KEY,
            password_hash BLOB NOT NULL,
            created_at REAL NOT NULL
        ) WITHOUT ROWID"""
    )
    db.execute(
        """CREATE TABLE peers (
            id INTEGER PRIMARY KEY,
            domain_name TEXT NOT NULL UNIQUE,
            owner TEXT NOT NULL REFERENCES users(username),
            port_number INTEGER NOT NULL,
            address TEXT NOT NULL,
            last_seen REAL NOT NULL,
            withdrawn INTEGER NOT NULL DEFAULT 0
        )"""
    )
    db.execute("CREATE INDEX peers_by_owner ON peers(owner)")
    # The primary key clusters a peer's files by folded keyword then name: a peer's listing is
    # deleted as one range, and the start-up load reads it in the order the index wants.
    db.execute(
        """CREATE TABLE files (
            peer_id INTEGER NOT NULL REFERENCES peers(id) ON DELETE CASCADE,
            kw TEXT NOT NULL,
            filename TEXT NOT NULL,
            keyword TEXT NOT NULL,
            size INTEGER NOT NULL,
            sha256 BLOB NOT NULL,
            PRIMARY KEY (peer_id, kw, filename, keyword)
        ) WITHOUT ROWID"""
    )
    # Search by keyword without a scan, however many files are listed.
    db.execute("CREATE INDEX files_by_kw ON files(kw, peer_id)")


def _migrate_to_2(db: sqlite3.Connection) -> None:
    # Sessions ended by bye (PROTOCOL.md §8): their tokens are refused until they expire, also
    # after a restart.
    db.execute(
        """CREATE TABLE revoked_sessions (
            session TEXT PRIMARY KEY,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID"""
    )


def _migrate_to_3(db: sqlite3.Connection) -> None:
    # Enrollment (PROTOCOL.md §10): the certificates the index issued, with whom and which
    # name each is for (the name is the user's from then on), revoked ones marked; and users
    # the operator disabled (indexd admin).
    db.execute("ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0")
    db.execute(
        """CREATE TABLE certificates (
            serial TEXT PRIMARY KEY,
            username TEXT NOT NULL REFERENCES users(username),
            domain_name TEXT NOT NULL,
            issued_at REAL NOT NULL,
            not_after REAL NOT NULL,
            revoked_at REAL
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX certificates_by_domain ON certificates(domain_name)")
    db.execute("CREATE INDEX certificates_by_user ON certificates(username)")


def _migrate_to_4(db: sqlite3.Connection) -> None:
    # Each file's manifest digest and publisher signature (PROTOCOL.md §4.8), NULL for entries
    # synced without them; and the content lookup (holders, §4.9) by digest without a scan.
    db.execute("ALTER TABLE files ADD COLUMN manifest BLOB")
    db.execute("ALTER TABLE files ADD COLUMN signature BLOB")
    db.execute("CREATE INDEX files_by_sha256 ON files(sha256)")


_MIGRATIONS = (_migrate_to_1, _migrate_to_2, _migrate_to_3, _migrate_to_4)
SCHEMA_VERSION = len(_MIGRATIONS)


def _connect(path: str) -> sqlite3.Connection:
    if str(path) != ":memory:":
        # The database holds password hashes: owner-only from the first byte. SQLite gives
        # its -wal and -shm files the database file's mode.
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as exc:  # reported like any other failure to open the database
            raise sqlite3.OperationalError(f"unable to open database file: {exc.strerror}") from exc
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA busy_timeout = 30000")
    return db


class SqliteIndexStore:
    """The default :class:`IndexStore`: one SQLite file, WAL, ``synchronous=FULL``.

    It holds two connections: one for writes and one for reads. Each must only ever be used
    by one thread at a time (the daemon gives each its own single-thread executor).
    """

    failures: tuple[type[Exception], ...] = (sqlite3.Error, OSError)

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._write = _connect(self.path)
        try:
            mode = self._write.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal" and self.path != ":memory:":
                raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL mode")
            # FULL: each commit fsyncs the WAL, so a commit that returned is on disk.
            self._write.execute("PRAGMA synchronous = FULL")
            self._migrate()
            memory = self.path == ":memory:"
            self._read = self._write if memory else _connect(self.path)
            # Logins read password hashes on a connection (and thread) of their own.
            self._login = self._write if memory else _connect(self.path)
        except BaseException:
            self._write.close()
            raise
        self._read_lock = threading.Lock() if self._read is self._write else None

    @property
    def schema_version(self) -> int:
        """The database's ``PRAGMA user_version``."""
        return int(self._write.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        db = self._write
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self.path} has schema version {version}; this indexd knows up to "
                f"{SCHEMA_VERSION}"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                _MIGRATIONS[target - 1](db)
                db.execute(f"PRAGMA user_version = {target:d}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            log.info("database %s migrated to schema version %d", self.path, target)

    def close(self) -> None:
        """Close both connections (checkpointing the WAL)."""
        if self._read is not self._write:
            self._read.close()
        if self._login is not self._write:
            self._login.close()
        self._write.close()

    # -- writes ---------------------------------------------------------------------------

    def add_user(self, username: str, password_hash: bytes, now: float) -> bool:
        """Add a user; False if the name is taken. Durable on return."""
        try:
            self._write.execute(
                "INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?)",
                (username, password_hash, now),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def replace_listing(self, listing: Listing) -> int:
        """Replace the peer's listing in one transaction; durable on return."""
        db = self._write
        files = listing.unique_files()
        db.execute("BEGIN IMMEDIATE")
        try:
            if not db.execute(
                "SELECT 1 FROM users WHERE username = ?", (listing.owner,)
            ).fetchone():
                raise UnknownUser(listing.owner)
            row = db.execute(
                "SELECT id, owner FROM peers WHERE domain_name = ?", (listing.domain_name,)
            ).fetchone()
            if row is not None and row[1] != listing.owner:
                raise PeerOwned(listing.domain_name)
            if (
                row is None
                and db.execute(
                    "SELECT 1 FROM certificates WHERE domain_name = ? AND username != ? LIMIT 1",
                    (listing.domain_name, listing.owner),
                ).fetchone()
            ):
                raise PeerOwned(listing.domain_name)  # enrolled by another user (§10)
            if row is None:
                peer_id = db.execute(
                    "INSERT INTO peers (domain_name, owner, port_number, address, last_seen)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        listing.domain_name,
                        listing.owner,
                        listing.port_number,
                        listing.address,
                        listing.seen_at,
                    ),
                ).lastrowid
            else:
                peer_id = row[0]
                db.execute(
                    "UPDATE peers SET port_number = ?, address = ?, last_seen = ?, withdrawn = 0"
                    " WHERE id = ?",
                    (listing.port_number, listing.address, listing.seen_at, peer_id),
                )
                db.execute("DELETE FROM files WHERE peer_id = ?", (peer_id,))
            db.executemany(
                "INSERT INTO files (peer_id, kw, filename, keyword, size, sha256, manifest,"
                " signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (file_row(peer_id, f) for f in files),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(files)

    def update_listing(self, change: ListingChange) -> tuple[int, dict[str, list[SharedFile]]]:
        """Change the peer's listing in one transaction; durable on return."""
        db = self._write
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT id, owner, withdrawn FROM peers WHERE domain_name = ?",
                (change.domain_name,),
            ).fetchone()
            if row is None or row[2]:
                raise StaleListing(change.domain_name)
            if row[1] != change.owner:
                raise PeerOwned(change.domain_name)
            peer_id = row[0]
            db.execute("UPDATE peers SET last_seen = ? WHERE id = ?", (change.seen_at, peer_id))
            db.executemany(
                "DELETE FROM files WHERE peer_id = ? AND kw = ? AND filename = ? AND keyword = ?",
                ((peer_id, keyword_key(k.keyword), k.filename, k.keyword) for k in change.removed),
            )
            db.executemany(
                "INSERT OR REPLACE INTO files (peer_id, kw, filename, keyword, size, sha256,"
                " manifest, signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (file_row(peer_id, f) for f in change.files),
            )
            [(count,)] = db.execute(
                "SELECT count(*) FROM files WHERE peer_id = ?", (peer_id,)
            ).fetchall()
            touched: dict[str, list[SharedFile]] = {}
            for kw in sorted(change.keywords()):
                rows = db.execute(
                    "SELECT filename, keyword, size, sha256, manifest, signature FROM files"
                    " WHERE peer_id = ? AND kw = ? ORDER BY filename, keyword",
                    (peer_id, kw),
                ).fetchall()
                touched[kw] = [shared_from_row(row) for row in rows]
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(count), touched

    def withdraw(self, domain_name: str, owner: str) -> bool:
        """Drop the peer's files and mark it withdrawn; durable on return."""
        db = self._write
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT id, owner FROM peers WHERE domain_name = ?", (domain_name,)
            ).fetchone()
            if row is None:
                db.execute("ROLLBACK")
                return False
            if row[1] != owner:
                raise PeerOwned(domain_name)
            db.execute("DELETE FROM files WHERE peer_id = ?", (row[0],))
            db.execute("UPDATE peers SET withdrawn = 1 WHERE id = ?", (row[0],))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True

    _REVOKE = (
        "INSERT INTO revoked_sessions (session, expires_at) VALUES (?, ?)"
        " ON CONFLICT (session) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)"
    )

    def revoke_session(self, session: str, expires_at: float) -> None:
        """Deny-list a session until ``expires_at``; durable on return."""
        self._write.execute(self._REVOKE, (session, expires_at))

    def withdraw_and_revoke(
        self, domain_name: str, owner: str, session: str, expires_at: float
    ) -> bool:
        """:meth:`withdraw` and :meth:`revoke_session` in one transaction; durable on return."""
        db = self._write
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT id, owner FROM peers WHERE domain_name = ?", (domain_name,)
            ).fetchone()
            if row is not None:
                if row[1] != owner:
                    raise PeerOwned(domain_name)
                db.execute("DELETE FROM files WHERE peer_id = ?", (row[0],))
                db.execute("UPDATE peers SET withdrawn = 1 WHERE id = ?", (row[0],))
            db.execute(self._REVOKE, (session, expires_at))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return row is not None

    def prune_revoked(self, now: float) -> int:
        """Drop expired deny-list entries."""
        cursor = self._write.execute("DELETE FROM revoked_sessions WHERE expires_at <= ?", (now,))
        return cursor.rowcount

    # -- reads ----------------------------------------------------------------------------

    def _query(self, sql: str, args: Iterable[object] = ()) -> list[tuple[Any, ...]]:
        if self._read_lock is None:
            return self._read.execute(sql, tuple(args)).fetchall()
        with self._read_lock:
            return self._read.execute(sql, tuple(args)).fetchall()

    def _read_snapshot(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` in one read transaction on the read connection (WAL: one snapshot)."""
        with self._read_lock or contextlib.nullcontext():
            db = self._read
            db.execute("BEGIN")
            try:
                return work(db)
            finally:
                db.execute("COMMIT")

    def password_hash(self, username: str) -> bytes | None:
        """The user's bcrypt hash, or None (on the logins' own connection)."""
        # A disabled user has no password that works: auth fails like an unknown user's.
        sql = "SELECT password_hash FROM users WHERE username = ? AND NOT disabled"
        if self._read_lock is None:
            rows = self._login.execute(sql, (username,)).fetchall()
        else:
            with self._read_lock:
                rows = self._login.execute(sql, (username,)).fetchall()
        return bytes(rows[0][0]) if rows else None

    def user_active(self, username: str) -> bool:
        """Registered and not disabled (on the read connection)."""
        return bool(
            self._query("SELECT 1 FROM users WHERE username = ? AND NOT disabled", (username,))
        )

    def peer(self, domain_name: str) -> PeerRecord | None:
        """One peer's record, or None."""
        rows = self._query(
            "SELECT domain_name, owner, port_number, address, last_seen, withdrawn"
            " FROM peers WHERE domain_name = ?",
            (domain_name,),
        )
        return peer_from_row(rows[0]) if rows else None

    def peers(self) -> list[PeerRecord]:
        """Every peer ever synced."""
        rows = self._query(
            "SELECT domain_name, owner, port_number, address, last_seen, withdrawn FROM peers"
            " ORDER BY domain_name"
        )
        return [peer_from_row(row) for row in rows]

    def iter_listings(self) -> Iterator[tuple[PeerRecord, list[SharedFile]]]:
        """Every live peer with its files, read peer by peer (start-up only)."""
        for record in self.peers():
            if record.withdrawn:
                continue
            rows = self._query(
                "SELECT f.filename, f.keyword, f.size, f.sha256, f.manifest, f.signature"
                " FROM files f JOIN peers p ON p.id = f.peer_id WHERE p.domain_name = ?"
                " ORDER BY f.kw, f.filename, f.keyword",
                (record.domain_name,),
            )
            yield record, [shared_from_row(row) for row in rows]

    def revoked_sessions(self, now: float) -> dict[str, float]:
        """The sessions still deny-listed."""
        rows = self._query(
            "SELECT session, expires_at FROM revoked_sessions WHERE expires_at > ?", (now,)
        )
        return {str(session): float(expires_at) for session, expires_at in rows}

    def listing_page(
        self, domain_name: str, keyword: str, offset: int, limit: int
    ) -> tuple[int, list[ListedFile]]:
        """A page of the peer's files under ``keyword``, in (file name, keyword) order."""
        kw = keyword_key(keyword)
        where = (
            " FROM files f JOIN peers p ON p.id = f.peer_id WHERE p.domain_name = ? AND f.kw = ?"
        )
        [(total,)] = self._query("SELECT count(*)" + where, (domain_name, kw))
        rows = self._query(
            "SELECT f.filename, f.keyword, f.size, f.sha256, f.manifest, f.signature"
            + where
            + " ORDER BY f.filename, f.keyword LIMIT ? OFFSET ?",
            (domain_name, kw, limit, offset),
        )
        return int(total), [shared_from_row(row).listed() for row in rows]

    def search(self, keyword: str, max_files_per_peer: int) -> list[StoredHit]:
        """Peers with files under ``keyword`` (case-insensitive), in domain-name order."""
        rows = self._query(
            "SELECT p.domain_name, p.owner, p.port_number, p.address, p.last_seen, p.withdrawn,"
            " f.filename, f.keyword, f.size, f.sha256, f.manifest, f.signature FROM files f"
            " JOIN peers p ON p.id = f.peer_id"
            " WHERE f.kw = ? ORDER BY p.domain_name, f.filename, f.keyword",
            (keyword_key(keyword),),
        )
        return group_hits(rows, max_files_per_peer)

    def holders(self, sha256: bytes) -> list[tuple[PeerRecord, SharedFile]]:
        """One file with this content per peer not withdrawn, its first in keyword then
        file-name order (PROTOCOL.md §4.9).

        ``files_by_sha256`` holds the primary key after the digest, so the peers are found by
        seeking from one peer to the next (a recursive skip-scan), and each peer's first file
        by one more seek: the cost grows with the peers, not with the copies one peer lists.
        """
        rows = self._query(
            "WITH RECURSIVE ids(pid) AS ("
            " SELECT (SELECT min(peer_id) FROM files WHERE sha256 = ?1)"
            " UNION ALL SELECT (SELECT min(peer_id) FROM files WHERE sha256 = ?1 AND peer_id > pid)"
            " FROM ids WHERE pid IS NOT NULL)"
            " SELECT p.domain_name, p.owner, p.port_number, p.address, p.last_seen, p.withdrawn,"
            " f.filename, f.keyword, f.size, f.sha256, f.manifest, f.signature"
            " FROM ids JOIN peers p ON p.id = ids.pid"
            " JOIN files f ON f.peer_id = ids.pid AND (f.kw, f.filename, f.keyword) = ("
            "  SELECT kw, filename, keyword FROM files WHERE sha256 = ?1 AND peer_id = ids.pid"
            "  ORDER BY kw, filename, keyword LIMIT 1)"
            " WHERE p.withdrawn = 0",
            (sha256,),
        )
        return [(peer_from_row(row[:6]), shared_from_row(row[6:])) for row in rows]

    # -- enrollment (PROTOCOL.md §10) ----------------------------------------------------

    def record_certificate(self, cert: IssuedCertificate) -> None:
        """Record an issued certificate; its name becomes (or stays) the user's. Durable.

        Raises :class:`UnknownUser`, :class:`UserDisabled`, or :class:`PeerOwned` if another
        user owns the name (synced or enrolled).
        """
        db = self._write
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT disabled FROM users WHERE username = ?", (cert.username,)
            ).fetchone()
            if row is None:
                raise UnknownUser(cert.username)
            if row[0]:
                raise UserDisabled(cert.username)
            owners = db.execute(
                "SELECT owner FROM peers WHERE domain_name = ?"
                " UNION SELECT username FROM certificates WHERE domain_name = ?",
                (cert.domain_name, cert.domain_name),
            ).fetchall()
            if any(owner != cert.username for (owner,) in owners):
                raise PeerOwned(cert.domain_name)
            db.execute(
                "INSERT INTO certificates (serial, username, domain_name, issued_at, not_after)"
                " VALUES (?, ?, ?, ?, ?)",
                (cert.serial, cert.username, cert.domain_name, cert.issued_at, cert.not_after),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def enrolled_names(self) -> dict[str, str]:
        """Every name a certificate was issued for, and its user."""
        rows = self._query("SELECT DISTINCT domain_name, username FROM certificates")
        return {str(name): str(user) for name, user in rows}

    def certificates(self) -> list[IssuedCertificate]:
        """Every certificate recorded, in issue order."""
        rows = self._query(
            "SELECT serial, username, domain_name, issued_at, not_after FROM certificates"
            " ORDER BY issued_at, serial"
        )
        return [IssuedCertificate(s, u, d, float(i), float(n)) for s, u, d, i, n in rows]

    def revocations(self, now: float) -> tuple[frozenset[str], frozenset[str]]:
        """The disabled users, and the serials revoked and not yet expired at ``now``."""
        users = self._query("SELECT username FROM users WHERE disabled")
        serials = self._query(
            "SELECT serial FROM certificates WHERE revoked_at IS NOT NULL AND not_after > ?",
            (now,),
        )
        return frozenset(u for (u,) in users), frozenset(s for (s,) in serials)

    def revoke_certificates(
        self,
        now: float,
        *,
        serial: str | None = None,
        username: str | None = None,
        domain_name: str | None = None,
    ) -> int:
        """Revoke the unrevoked certificates matching every criterion given; how many."""
        if serial is None and username is None and domain_name is None:
            raise ValueError("revoke what? a serial, a user or a domain name")
        cursor = self._write.execute(
            "UPDATE certificates SET revoked_at = :now WHERE revoked_at IS NULL"
            " AND (:serial IS NULL OR serial = :serial)"
            " AND (:user IS NULL OR username = :user)"
            " AND (:domain IS NULL OR domain_name = :domain)",
            {"now": now, "serial": serial, "user": username, "domain": domain_name},
        )
        return cursor.rowcount

    def set_user_disabled(self, username: str, disabled: bool) -> bool:
        """Disable (or enable again) a user; False if there is no such user."""
        cursor = self._write.execute(
            "UPDATE users SET disabled = ? WHERE username = ?", (int(disabled), username)
        )
        return cursor.rowcount > 0

    # -- several index servers (PROTOCOL.md §11): trivial for one process ------------------

    def listing_of(self, domain_name: str) -> tuple[PeerRecord, list[SharedFile]] | None:
        """One live peer with its files, or None (one read transaction: one moment)."""

        def work(db: sqlite3.Connection) -> tuple[PeerRecord, list[SharedFile]] | None:
            row = db.execute(
                "SELECT domain_name, owner, port_number, address, last_seen, withdrawn, id"
                " FROM peers WHERE domain_name = ? AND NOT withdrawn",
                (domain_name,),
            ).fetchone()
            if row is None:
                return None
            rows = db.execute(
                "SELECT filename, keyword, size, sha256, manifest, signature FROM files"
                " WHERE peer_id = ? ORDER BY kw, filename, keyword",
                (row[6],),
            ).fetchall()
            return peer_from_row(row[:6]), [shared_from_row(r) for r in rows]

        return self._read_snapshot(work)

    def listen(self, callback: Callable[[str | None], None]) -> Listener:
        """Nothing to listen to: this process is the only writer."""
        return _NoListener()

    def record_seen(self, seen: dict[str, float]) -> None:
        """Move peers' ``last_seen`` forward, in one transaction (one fsync for the batch)."""
        if not seen:
            return
        db = self._write
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "UPDATE peers SET last_seen = max(last_seen, ?) WHERE domain_name = ?",
                [(t, name) for name, t in seen.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def seen_since(self, since: float) -> dict[str, float]:
        """The live peers seen at or after ``since``."""
        rows = self._query(
            "SELECT domain_name, last_seen FROM peers WHERE last_seen >= ? AND NOT withdrawn",
            (since,),
        )
        return {str(name): float(t) for name, t in rows}

    def stats(self, now: float, peer_ttl: float) -> dict[str, int]:
        """Counts for ``indexd admin stats``."""
        [row] = self._query(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM peers),"
            " (SELECT count(*) FROM peers WHERE NOT withdrawn AND last_seen >= ?),"
            " (SELECT count(*) FROM files), (SELECT count(DISTINCT kw) FROM files),"
            " (SELECT count(*) FROM revoked_sessions WHERE expires_at > ?),"
            " (SELECT count(*) FROM certificates)",
            (now - peer_ttl, now),
        )
        return dict(zip(STATS, (int(n) for n in row), strict=True))


# --- choosing and opening the database (``--db FILE|URL``) ----------------------------------


def is_postgres_url(database: object) -> bool:
    """Whether ``--db`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(database, str) and database.lower().startswith(
        ("postgresql://", "postgres://")
    )


def open_database(database: Path | str) -> IndexDatabase:
    """Open (creating or migrating) the index's database: a SQLite file, or PostgreSQL for a
    ``postgresql://`` URL (:mod:`indexd.pgstore` and psycopg are imported only then).

    Raises :class:`SchemaTooNew`, or :class:`DatabaseUnavailable` with one line naming the
    database, never its password (README "Database").
    """
    if is_postgres_url(database):
        from indexd.pgstore import open_postgres

        return open_postgres(str(database))
    path = Path(database)
    try:
        return SqliteIndexStore(path)
    except (sqlite3.Error, OSError) as exc:
        raise DatabaseUnavailable(f"cannot open database {path}: {exc}") from None


#: The counts :meth:`IndexDatabase.stats` returns, in the order ``indexd admin stats`` prints.
STATS = (
    "users",
    "peers",
    "live_peers",
    "files",
    "keywords",
    "revoked_sessions",
    "certificates",
)


def file_row(peer_id: object, f: SharedFile) -> tuple[object, ...]:
    """The files table's row of ``f``: ``(peer_id, kw, filename, keyword, size, sha256,
    manifest, signature)``, on both stores."""
    return (
        peer_id,
        keyword_key(f.keyword),
        f.filename,
        f.keyword,
        f.size,
        f.sha256,
        f.manifest,
        f.signature,
    )


def shared_from_row(row: Sequence[Any]) -> SharedFile:
    """A file from ``(filename, keyword, size, sha256, manifest, signature)``."""
    name, keyword, size, sha, manifest, signature = row
    return SharedFile(
        name,
        keyword,
        int(size),
        bytes(sha),
        None if manifest is None else bytes(manifest),
        None if signature is None else bytes(signature),
    )


def peer_from_row(row: Sequence[Any]) -> PeerRecord:
    """A peer from ``(domain_name, owner, port_number, address, last_seen, withdrawn)``."""
    name, owner, port, address, last_seen, withdrawn = row
    return PeerRecord(name, owner, int(port), address, float(last_seen), bool(withdrawn))


def group_hits(rows: Iterable[Sequence[Any]], max_files_per_peer: int) -> list[StoredHit]:
    """A store's search result from rows of a peer's then a file's columns (as
    :func:`peer_from_row` and :func:`shared_from_row` read them) in peer order: one hit per
    peer, with at most ``max_files_per_peer`` files."""
    hits: list[StoredHit] = []
    current: PeerRecord | None = None
    files: list[ListedFile] = []
    for row in rows:
        if current is None or current.domain_name != row[0]:
            if current is not None:
                hits.append(StoredHit(current, tuple(files)))
            current, files = peer_from_row(row[:6]), []
        if len(files) < max_files_per_peer:
            files.append(shared_from_row(row[6:]).listed())
    if current is not None:
        hits.append(StoredHit(current, tuple(files)))
    return hits
