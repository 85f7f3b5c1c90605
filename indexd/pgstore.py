"""The index's database on PostgreSQL (``indexd --db postgresql://…``), for several index
servers sharing one database (PROTOCOL.md §11; README "Database").

:class:`PostgresIndexStore` implements :class:`indexd.store.IndexDatabase` with the same
semantics and refusals as :class:`indexd.store.SqliteIndexStore`, on psycopg 3's blocking API
(the store's methods block and run on the daemon's worker threads; README "Database" has the
measurement behind the choice). Each thread that calls it gets a connection of its own, in
autocommit mode: a read of one statement is sent alone (one round trip, no BEGIN and COMMIT
around it), and every other method is one explicit transaction, committed before it returns
(``synchronous_commit`` on: the commit is on the server's disk). Writes that two index servers
may make at once take their locks in one order — the user's row, then the domain name's
advisory lock, then the peer's row — so the same user or the same name synced through two
servers at once is serialized, not interleaved; a deadlock or serialization failure is retried.
Every committed listing change, ended session and enrolled name is announced with ``NOTIFY`` on
:data:`indexd.store.NOTIFY_CHANNEL`.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from indexd.store import (
    NOTIFY_CHANNEL,
    STATS,
    AttemptCharge,
    AttemptState,
    DatabaseUnavailable,
    IssuedCertificate,
    Listing,
    ListingChange,
    PeerOwned,
    PeerRecord,
    SchemaTooNew,
    StaleListing,
    StoredHit,
    StoreError,
    UnknownUser,
    UserDisabled,
    file_row,
    group_hits,
    keyword_key,
    peer_from_row,
    shared_from_row,
)
from netproto.operations import ListedFile, SharedFile

log = logging.getLogger(__name__)

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]

CONNECT_TIMEOUT = 10  # seconds to reach the server
RETRIES = 5  # a transaction that deadlocked or failed to serialize is run again this often
#: Taken (per transaction) around the schema check and migrations, so two index servers
#: starting on one new database do not both create it.
MIGRATION_LOCK = 0x7032_7073_6861_7265  # "p2pshare"
LISTEN_POLL = 0.5  # how often the listener's thread looks whether it should stop
#: Seconds between the listener's ``SELECT 1`` on its idle connection; with the TCP keepalives
#: below, a connection that went half-open is noticed within about 15 s.
LISTEN_CHECK = 5.0
RECONNECT_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0)  # the listener's waits between reconnections
APPLICATION_NAME = "p2pshare-indexd"


def describe(url: str) -> str:
    """The URL without its password (or any query parameter), to name it in messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = (f"{parts.username}@" if parts.username else "") + host
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:
        return "postgresql://(unparsable URL)"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _secrets(url: str) -> set[str]:
    """What of ``url`` must never be shown: the URL itself, and its passwords (in the
    user-info part or a ``password=`` query parameter), as written and percent-decoded."""
    found = {url}
    userinfo = url.partition("://")[2].split("/", 1)[0].split("?", 1)[0].rpartition("@")[0]
    if ":" in userinfo:
        found.add(userinfo.partition(":")[2])
    query = url.partition("?")[2]
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if urllib.parse.unquote(name) == "password":
            found.add(value)
    found |= {urllib.parse.unquote(s, errors="replace") for s in found}
    return {s for s in found if s}


def safe_reason(exc: BaseException, url: str) -> str:
    """The first line of a failure to open ``url``, with the URL and its password removed;
    ``malformed URL`` when libpq could not parse it (its message quotes the bad part)."""
    if isinstance(exc, psycopg.ProgrammingError):
        return "malformed URL"
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    for secret in sorted(_secrets(url), key=len, reverse=True):
        reason = reason.replace(secret, "***")
    return reason


def open_postgres(url: str) -> PostgresIndexStore:
    """:class:`PostgresIndexStore` on ``url``; :class:`indexd.store.SchemaTooNew`, or
    :class:`indexd.store.DatabaseUnavailable` naming the database without its password."""
    try:
        return PostgresIndexStore(url)
    except SchemaTooNew:
        raise
    except (StoreError, psycopg.Error) as exc:
        reason = safe_reason(exc, url)
        raise DatabaseUnavailable(f"cannot open database {describe(url)}: {reason}") from None


# --- schema ---------------------------------------------------------------------------------


def _migrate_to_1(conn: Conn) -> None:
    # Text is compared byte-wise (COLLATE "C"), like SQLite's: the same order of file names
    # and keywords on both stores, and indexes usable for it whatever the server's locale.
    conn.execute(
        """CREATE TABLE users (
            username text COLLATE "C" PRIMARY KEY,
            password_hash bytea NOT NULL,
            created_at double precision NOT NULL,
            disabled boolean NOT NULL DEFAULT false
        )"""
    )
    conn.execute(
        """CREATE TABLE peers (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            domain_name text COLLATE "C" NOT NULL UNIQUE,
            owner text COLLATE "C" NOT NULL REFERENCES users(username),
            port_number integer NOT NULL,
            address text NOT NULL,
            last_seen double precision NOT NULL,
            withdrawn boolean NOT NULL DEFAULT false
        )"""
    )
    conn.execute("CREATE INDEX peers_by_owner ON peers(owner)")
    conn.execute("CREATE INDEX peers_by_last_seen ON peers(last_seen)")
    conn.execute(
        """CREATE TABLE files (
            peer_id bigint NOT NULL REFERENCES peers(id) ON DELETE CASCADE,
            kw text COLLATE "C" NOT NULL,
            filename text COLLATE "C" NOT NULL,
            keyword text COLLATE "C" NOT NULL,
            size bigint NOT NULL,
            sha256 bytea NOT NULL,
            manifest bytea,
            signature bytea,
            PRIMARY KEY (peer_id, kw, filename, keyword)
        )"""
    )
    conn.execute("CREATE INDEX files_by_kw ON files(kw, peer_id)")
    conn.execute("CREATE INDEX files_by_sha256 ON files(sha256, peer_id, kw, filename, keyword)")
    conn.execute(
        """CREATE TABLE revoked_sessions (
            session text COLLATE "C" PRIMARY KEY,
            expires_at double precision NOT NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE certificates (
            serial text COLLATE "C" PRIMARY KEY,
            username text COLLATE "C" NOT NULL REFERENCES users(username),
            domain_name text COLLATE "C" NOT NULL,
            issued_at double precision NOT NULL,
            not_after double precision NOT NULL,
            revoked_at double precision
        )"""
    )
    conn.execute("CREATE INDEX certificates_by_domain ON certificates(domain_name)")
    conn.execute("CREATE INDEX certificates_by_user ON certificates(username)")
    # Login attempt counters shared by every index server (AttemptState); expires_at: when
    # an entry no longer counts, so pruning is one indexed delete.
    conn.execute(
        """CREATE TABLE attempts (
            key text COLLATE "C" PRIMARY KEY,
            count double precision NOT NULL,
            updated double precision NOT NULL,
            blocked_until double precision NOT NULL,
            expires_at double precision NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX attempts_by_expiry ON attempts(expires_at)")


_MIGRATIONS: tuple[Callable[[Conn], None], ...] = (_migrate_to_1,)
SCHEMA_VERSION = len(_MIGRATIONS)


class PostgresIndexStore:
    """An :class:`indexd.store.IndexDatabase` on PostgreSQL; one connection per thread."""

    #: What its methods raise when the database fails (not a refusal): see
    #: :attr:`indexd.store.IndexDatabase.failures`.
    failures: tuple[type[Exception], ...] = (psycopg.Error, OSError)

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = describe(url)
        #: Tags this store's notifications: ``listen`` hears only other writers' changes.
        self.origin = secrets.token_hex(8)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[Conn] = []
        self._listeners: list[_Listener] = []
        self._closed = False
        # A connection of its own, closed here: the thread that opens the store (any
        # executor's) keeps no connection open for the process's lifetime.
        with self._connect() as conn:
            [(encoding,)] = conn.execute("SHOW server_encoding").fetchall()
            conn.rollback()
            if encoding != "UTF8":
                raise StoreError(f"{self.name} is encoded {encoding}; indexd needs UTF8")
            self._migrate(conn)

    # -- connections and transactions ----------------------------------------------------

    def _connect(self) -> Conn:
        # Autocommit: _transaction sends BEGIN itself; a one-statement read needs none.
        return psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=APPLICATION_NAME,
        )

    def _conn(self) -> Conn:
        """This thread's connection, (re)opened if it has none or lost it."""
        conn: Conn | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if self._closed:
            raise StoreError(f"the store of {self.name} is closed")
        if conn is not None:
            self._forget(conn)
        conn = self._connect()
        with self._lock:
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    def _forget(self, conn: Conn) -> None:
        with contextlib.suppress(psycopg.Error):
            conn.close()
        with self._lock, contextlib.suppress(ValueError):
            self._connections.remove(conn)

    def _transaction(self, work: Callable[[Conn], T], *, snapshot: bool = False) -> T:
        """Run ``work`` in one transaction, committed on return; run again (a few times) if
        it deadlocked or could not be serialized, and once on a new connection if the
        connection was lost before COMMIT was sent (a server restart: nothing of the
        transaction was committed). A connection lost during the COMMIT is not retried: the
        write may or may not have been committed. ``snapshot``: every statement sees the
        database as of the first (REPEATABLE READ, read only)."""
        conflicts = 0
        reconnected = False
        while True:
            conn = self._conn()
            committing = False
            try:
                with conn.transaction():
                    if snapshot:
                        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    result = work(conn)
                    committing = True
                return result
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                if conflicts == RETRIES:
                    raise
                conflicts += 1
                log.info("database transaction retried after a conflict")
            except psycopg.OperationalError:
                if committing or reconnected or not conn.broken:
                    raise
                reconnected = True
                log.warning("lost the connection to %s; retrying on a new one", self.name)

    def _rows(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """One read-only statement, alone: one snapshot, one round trip (no BEGIN/COMMIT —
        the renew benchmark's one database read, BENCHMARKS.md). Sent once more on a new
        connection if the connection was lost: a read may be repeated."""
        conn = self._conn()
        try:
            return conn.execute(sql, args).fetchall()
        except psycopg.OperationalError:
            if not conn.broken:
                raise
            log.warning("lost the connection to %s; retrying on a new one", self.name)
            return self._conn().execute(sql, args).fetchall()

    @property
    def schema_version(self) -> int:
        """The version recorded in ``p2pshare_schema``."""
        [(version,)] = self._rows("SELECT version FROM p2pshare_schema")
        return int(version)

    def _migrate(self, conn: Conn) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS p2pshare_schema ("
                " id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL)"
            )
            row = conn.execute("SELECT version FROM p2pshare_schema").fetchone()
            version = 0 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.name} has schema version {version}; this indexd knows up to "
                    f"{SCHEMA_VERSION}"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                _MIGRATIONS[target - 1](conn)
                log.info("database %s migrated to schema version %d", self.name, target)
            if version < SCHEMA_VERSION:
                conn.execute(
                    "INSERT INTO p2pshare_schema (id, version) VALUES (1, %s)"
                    " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                    (SCHEMA_VERSION,),
                )

    def close(self) -> None:
        """Stop the listeners and close every connection."""
        self._closed = True
        for listener in list(self._listeners):
            listener.close()
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    # -- locks and announcements ---------------------------------------------------------

    @staticmethod
    def _lock_user(conn: Conn, username: str) -> tuple[Any, ...] | None:
        """Lock the user's row (every change of one user's names goes through it)."""
        return conn.execute(
            "SELECT disabled FROM users WHERE username = %s FOR NO KEY UPDATE", (username,)
        ).fetchone()

    @staticmethod
    def _lock_name(conn: Conn, domain_name: str) -> None:
        """Serialize everything that may give ``domain_name`` an owner (sync, enrollment)."""
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("name " + domain_name,)
        )

    def _notify(self, conn: Conn, payload: str) -> None:
        # Delivered to every listener when (and only if) the transaction commits; tagged
        # with this store's origin, so its own listeners pass over it (PROTOCOL.md §11).
        conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, f"{payload} {self.origin}"))

    # -- writes ----------------------------------------------------------------------------

    def add_user(self, username: str, password_hash: bytes, now: float) -> bool:
        """Add a user; False if the name is taken. Durable on return."""
        return self._transaction(
            lambda conn: (
                conn.execute(
                    "INSERT INTO users (username, password_hash, created_at) VALUES (%s, %s, %s)"
                    " ON CONFLICT (username) DO NOTHING",
                    (username, password_hash, now),
                ).rowcount
                == 1
            )
        )

    def replace_listing(self, listing: Listing) -> int:
        """Replace the peer's listing in one transaction; durable on return."""
        files = listing.unique_files()

        def work(conn: Conn) -> int:
            if self._lock_user(conn, listing.owner) is None:
                raise UnknownUser(listing.owner)
            self._lock_name(conn, listing.domain_name)
            if conn.execute(
                "SELECT 1 FROM certificates WHERE domain_name = %s AND username <> %s LIMIT 1",
                (listing.domain_name, listing.owner),
            ).fetchone():
                raise PeerOwned(listing.domain_name)  # enrolled by another user (§10)
            row = conn.execute(
                "INSERT INTO peers (domain_name, owner, port_number, address, last_seen)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (domain_name) DO UPDATE SET"
                " port_number = excluded.port_number, address = excluded.address,"
                " last_seen = excluded.last_seen, withdrawn = false"
                " WHERE peers.owner = excluded.owner RETURNING id",
                (
                    listing.domain_name,
                    listing.owner,
                    listing.port_number,
                    listing.address,
                    listing.seen_at,
                ),
            ).fetchone()
            if row is None:  # the name is there, and another user's
                raise PeerOwned(listing.domain_name)
            peer_id = row[0]
            conn.execute("DELETE FROM files WHERE peer_id = %s", (peer_id,))
            with conn.cursor().copy(
                "COPY files (peer_id, kw, filename, keyword, size, sha256, manifest, signature)"
                " FROM STDIN"
            ) as copy:
                for f in files:
                    copy.write_row(file_row(peer_id, f))
            self._notify(conn, f"listing {listing.domain_name}")
            return len(files)

        return self._transaction(work)

    def update_listing(self, change: ListingChange) -> tuple[int, dict[str, list[SharedFile]]]:
        """Change the peer's listing in one transaction; durable on return."""
        # A later entry for the same file wins (one statement may not touch a row twice).
        puts = {(keyword_key(f.keyword), f.filename, f.keyword): f for f in change.files}
        removed = [(keyword_key(k.keyword), k.filename, k.keyword) for k in change.removed]

        def work(conn: Conn) -> tuple[int, dict[str, list[SharedFile]]]:
            self._lock_user(conn, change.owner)
            row = conn.execute(
                "SELECT id, owner, withdrawn FROM peers WHERE domain_name = %s FOR UPDATE",
                (change.domain_name,),
            ).fetchone()
            if row is None or row[2]:
                raise StaleListing(change.domain_name)
            if row[1] != change.owner:
                raise PeerOwned(change.domain_name)
            peer_id = row[0]
            conn.execute("UPDATE peers SET last_seen = %s WHERE id = %s", (change.seen_at, peer_id))
            if removed:
                conn.execute(
                    "DELETE FROM files WHERE peer_id = %s AND (kw, filename, keyword) IN"
                    " (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]))",
                    (peer_id, *(list(column) for column in zip(*removed, strict=True))),
                )
            if puts:
                rows = [file_row(peer_id, f)[1:] for f in puts.values()]
                columns = [list(column) for column in zip(*rows, strict=True)]
                conn.execute(
                    "INSERT INTO files (peer_id, kw, filename, keyword, size, sha256, manifest,"
                    " signature) SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::text[],"
                    " %s::bigint[], %s::bytea[], %s::bytea[], %s::bytea[])"
                    " ON CONFLICT (peer_id, kw, filename, keyword) DO UPDATE SET"
                    " size = excluded.size, sha256 = excluded.sha256,"
                    " manifest = excluded.manifest, signature = excluded.signature",
                    (peer_id, *columns),
                )
            [(count,)] = conn.execute(
                "SELECT count(*) FROM files WHERE peer_id = %s", (peer_id,)
            ).fetchall()
            keywords = sorted(change.keywords())
            touched: dict[str, list[SharedFile]] = {kw: [] for kw in keywords}
            for r in conn.execute(
                "SELECT kw, filename, keyword, size, sha256, manifest, signature FROM files"
                " WHERE peer_id = %s AND kw = ANY(%s) ORDER BY kw, filename, keyword",
                (peer_id, keywords),
            ):
                touched[r[0]].append(shared_from_row(r[1:]))
            self._notify(conn, f"listing {change.domain_name}")
            return int(count), touched

        return self._transaction(work)

    def _withdraw(self, conn: Conn, domain_name: str, owner: str) -> bool:
        self._lock_user(conn, owner)
        row = conn.execute(
            "SELECT id, owner FROM peers WHERE domain_name = %s FOR UPDATE", (domain_name,)
        ).fetchone()
        if row is None:
            return False
        if row[1] != owner:
            raise PeerOwned(domain_name)
        conn.execute("DELETE FROM files WHERE peer_id = %s", (row[0],))
        conn.execute("UPDATE peers SET withdrawn = true WHERE id = %s", (row[0],))
        self._notify(conn, f"listing {domain_name}")
        return True

    def _revoke(self, conn: Conn, session: str, expires_at: float) -> None:
        conn.execute(
            "INSERT INTO revoked_sessions (session, expires_at) VALUES (%s, %s)"
            " ON CONFLICT (session) DO UPDATE SET"
            " expires_at = greatest(revoked_sessions.expires_at, excluded.expires_at)",
            (session, expires_at),
        )
        # The expiry travels with it (repr: exact), so every server forgets it when this
        # one does (PROTOCOL.md §11).
        self._notify(conn, f"revoked {session} {expires_at!r}")

    def withdraw(self, domain_name: str, owner: str) -> bool:
        """Drop the peer's files and mark it withdrawn; durable on return."""
        return self._transaction(lambda conn: self._withdraw(conn, domain_name, owner))

    def revoke_session(self, session: str, expires_at: float) -> None:
        """Deny-list a session until ``expires_at``; durable on return."""
        self._transaction(lambda conn: self._revoke(conn, session, expires_at))

    def withdraw_and_revoke(
        self, domain_name: str, owner: str, session: str, expires_at: float
    ) -> bool:
        """:meth:`withdraw` and :meth:`revoke_session` in one transaction (``bye``)."""

        def work(conn: Conn) -> bool:
            withdrawn = self._withdraw(conn, domain_name, owner)
            self._revoke(conn, session, expires_at)
            return withdrawn

        return self._transaction(work)

    def prune_revoked(self, now: float) -> int:
        """Drop expired deny-list entries."""
        return self._transaction(
            lambda conn: (
                conn.execute("DELETE FROM revoked_sessions WHERE expires_at <= %s", (now,)).rowcount
            )
        )

    # -- reads -----------------------------------------------------------------------------

    def password_hash(self, username: str) -> bytes | None:
        """The user's bcrypt hash, or None (a disabled user has none that works)."""
        rows = self._rows(
            "SELECT password_hash FROM users WHERE username = %s AND NOT disabled", (username,)
        )
        return bytes(rows[0][0]) if rows else None

    def user_active(self, username: str) -> bool:
        """Registered and not disabled: one statement, no transaction around it."""
        return bool(
            self._rows("SELECT 1 FROM users WHERE username = %s AND NOT disabled", (username,))
        )

    def peer(self, domain_name: str) -> PeerRecord | None:
        """One peer's record, or None."""
        rows = self._rows(
            "SELECT p.domain_name, p.owner, p.port_number, p.address, p.last_seen,"
            " p.withdrawn FROM peers p WHERE p.domain_name = %s",
            (domain_name,),
        )
        return peer_from_row(rows[0]) if rows else None

    def peers(self) -> list[PeerRecord]:
        """Every peer ever synced."""
        rows = self._rows(
            "SELECT p.domain_name, p.owner, p.port_number, p.address, p.last_seen,"
            " p.withdrawn FROM peers p ORDER BY p.domain_name"
        )
        return [peer_from_row(row) for row in rows]

    def iter_listings(self) -> Iterator[tuple[PeerRecord, list[SharedFile]]]:
        """Every live peer with its files, streamed from one snapshot (start-up only), on a
        connection of its own, closed when the iteration ends or is abandoned: the thread's
        connection is never left inside the snapshot's transaction."""
        conn = self._connect()
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                with conn.cursor(name="iter_listings") as cursor:
                    cursor.itersize = 5000
                    cursor.execute(
                        "SELECT p.domain_name, p.owner, p.port_number, p.address, p.last_seen,"
                        " p.withdrawn, f.filename, f.keyword, f.size, f.sha256, f.manifest,"
                        " f.signature FROM peers p"
                        " LEFT JOIN files f ON f.peer_id = p.id WHERE NOT p.withdrawn"
                        " ORDER BY p.domain_name, f.kw, f.filename, f.keyword"
                    )
                    record: PeerRecord | None = None
                    files: list[SharedFile] = []
                    for row in cursor:
                        if record is None or record.domain_name != row[0]:
                            if record is not None:
                                yield record, files
                            record, files = peer_from_row(row[:6]), []
                        if row[6] is not None:
                            files.append(shared_from_row(row[6:]))
                    if record is not None:
                        yield record, files
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def listing_of(self, domain_name: str) -> tuple[PeerRecord, list[SharedFile]] | None:
        """One live peer with its files, from one snapshot; or None."""

        def work(conn: Conn) -> tuple[PeerRecord, list[SharedFile]] | None:
            row = conn.execute(
                "SELECT p.domain_name, p.owner, p.port_number, p.address, p.last_seen,"
                " p.withdrawn, p.id FROM peers p"
                " WHERE p.domain_name = %s AND NOT p.withdrawn",
                (domain_name,),
            ).fetchone()
            if row is None:
                return None
            rows = conn.execute(
                "SELECT f.filename, f.keyword, f.size, f.sha256, f.manifest, f.signature"
                " FROM files f WHERE f.peer_id = %s"
                " ORDER BY f.kw, f.filename, f.keyword",
                (row[6],),
            ).fetchall()
            return peer_from_row(row[:6]), [shared_from_row(r) for r in rows]

        return self._transaction(work, snapshot=True)

    def revoked_sessions(self, now: float) -> dict[str, float]:
        """The sessions still deny-listed."""
        rows = self._rows(
            "SELECT session, expires_at FROM revoked_sessions WHERE expires_at > %s", (now,)
        )
        return {str(session): float(expires_at) for session, expires_at in rows}

    def listing_page(
        self, domain_name: str, keyword: str, offset: int, limit: int
    ) -> tuple[int, list[ListedFile]]:
        """A page of the peer's files under ``keyword``, and their total, from one snapshot."""
        kw = keyword_key(keyword)
        where = (
            " FROM files f JOIN peers p ON p.id = f.peer_id WHERE p.domain_name = %s AND f.kw = %s"
        )

        def work(conn: Conn) -> tuple[int, list[ListedFile]]:
            [(total,)] = conn.execute("SELECT count(*)" + where, (domain_name, kw)).fetchall()
            rows = conn.execute(
                "SELECT f.filename, f.keyword, f.size, f.sha256, f.manifest, f.signature"
                + where
                + " ORDER BY f.filename, f.keyword LIMIT %s OFFSET %s",
                (domain_name, kw, limit, offset),
            ).fetchall()
            return int(total), [shared_from_row(row).listed() for row in rows]

        return self._transaction(work, snapshot=True)

    def search(self, keyword: str, max_files_per_peer: int) -> list[StoredHit]:
        """Peers with files under ``keyword`` (case-insensitive), in domain-name order; one
        statement, so one snapshot: a listing replaced meanwhile is seen old or new, whole."""
        rows = self._rows(
            "SELECT p.domain_name, p.owner, p.port_number, p.address, p.last_seen,"
            " p.withdrawn, f.filename, f.keyword, f.size, f.sha256, f.manifest, f.signature"
            " FROM files f"
            " JOIN peers p ON p.id = f.peer_id"
            " WHERE f.kw = %s ORDER BY p.domain_name, f.filename, f.keyword",
            (keyword_key(keyword),),
        )
        return group_hits(rows, max_files_per_peer)

    def holders(self, sha256: bytes) -> list[tuple[PeerRecord, SharedFile]]:
        """One file with this content per peer not withdrawn, its first in keyword then
        file-name order (PROTOCOL.md §4.9), in peer order."""
        rows = self._rows(
            "SELECT DISTINCT ON (f.peer_id) p.domain_name, p.owner, p.port_number, p.address,"
            " p.last_seen, p.withdrawn, f.filename, f.keyword, f.size, f.sha256, f.manifest,"
            " f.signature FROM files f"
            " JOIN peers p ON p.id = f.peer_id WHERE f.sha256 = %s AND NOT p.withdrawn"
            " ORDER BY f.peer_id, f.kw, f.filename, f.keyword",
            (sha256,),
        )
        return [(peer_from_row(row[:6]), shared_from_row(row[6:])) for row in rows]

    # -- enrollment (PROTOCOL.md §10) ----------------------------------------------------

    def record_certificate(self, cert: IssuedCertificate) -> None:
        """Record an issued certificate; its name becomes (or stays) the user's. Durable.

        Raises :class:`UnknownUser`, :class:`UserDisabled`, or :class:`PeerOwned` if another
        user owns the name (synced or enrolled).
        """

        def work(conn: Conn) -> None:
            row = self._lock_user(conn, cert.username)
            if row is None:
                raise UnknownUser(cert.username)
            if row[0]:
                raise UserDisabled(cert.username)
            self._lock_name(conn, cert.domain_name)
            owners = conn.execute(
                "SELECT owner FROM peers WHERE domain_name = %s"
                " UNION SELECT username FROM certificates WHERE domain_name = %s",
                (cert.domain_name, cert.domain_name),
            ).fetchall()
            if any(owner != cert.username for (owner,) in owners):
                raise PeerOwned(cert.domain_name)
            conn.execute(
                "INSERT INTO certificates (serial, username, domain_name, issued_at, not_after)"
                " VALUES (%s, %s, %s, %s, %s)",
                (cert.serial, cert.username, cert.domain_name, cert.issued_at, cert.not_after),
            )
            # The other servers count the name against the user's quota too (§11).
            self._notify(conn, f"owner {cert.domain_name} {cert.username}")

        self._transaction(work)

    def enrolled_names(self) -> dict[str, str]:
        """Every name a certificate was issued for, and its user."""
        rows = self._rows("SELECT DISTINCT domain_name, username FROM certificates")
        return {str(name): str(user) for name, user in rows}

    def certificates(self) -> list[IssuedCertificate]:
        """Every certificate recorded, in issue order."""
        rows = self._rows(
            "SELECT serial, username, domain_name, issued_at, not_after FROM certificates"
            " ORDER BY issued_at, serial"
        )
        return [IssuedCertificate(s, u, d, float(i), float(n)) for s, u, d, i, n in rows]

    def revocations(self, now: float) -> tuple[frozenset[str], frozenset[str]]:
        """The disabled users, and the serials revoked and not yet expired at ``now``."""

        def work(conn: Conn) -> tuple[frozenset[str], frozenset[str]]:
            users = conn.execute("SELECT username FROM users WHERE disabled").fetchall()
            serials = conn.execute(
                "SELECT serial FROM certificates WHERE revoked_at IS NOT NULL AND not_after > %s",
                (now,),
            ).fetchall()
            return frozenset(u for (u,) in users), frozenset(s for (s,) in serials)

        return self._transaction(work, snapshot=True)

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
        return self._transaction(
            lambda conn: (
                conn.execute(
                    "UPDATE certificates SET revoked_at = %(now)s WHERE revoked_at IS NULL"
                    " AND (%(serial)s::text IS NULL OR serial = %(serial)s)"
                    " AND (%(user)s::text IS NULL OR username = %(user)s)"
                    " AND (%(domain)s::text IS NULL OR domain_name = %(domain)s)",
                    {"now": now, "serial": serial, "user": username, "domain": domain_name},
                ).rowcount
            )
        )

    def set_user_disabled(self, username: str, disabled: bool) -> bool:
        """Disable (or enable again) a user; False if there is no such user."""
        return self._transaction(
            lambda conn: (
                conn.execute(
                    "UPDATE users SET disabled = %s WHERE username = %s", (disabled, username)
                ).rowcount
                > 0
            )
        )

    # -- several index servers (PROTOCOL.md §11) -------------------------------------------

    def listen(self, callback: Callable[[str | None], None]) -> _Listener:
        """LISTEN on a connection and thread of its own; see :class:`_Listener`."""
        listener = _Listener(self, callback)
        with self._lock:
            self._listeners.append(listener)
        return listener

    def record_seen(self, seen: dict[str, float]) -> None:
        """Move peers' ``last_seen`` forward, in one statement (rows locked in id order, so
        two index servers' batches cannot deadlock each other)."""
        if not seen:
            return
        names, times = zip(*seen.items(), strict=True)
        self._transaction(
            lambda conn: conn.execute(
                "WITH v(name, t) AS (SELECT * FROM unnest(%s::text[], %s::float8[])),"
                " locked AS (SELECT p.id, v.t FROM peers p JOIN v ON p.domain_name = v.name"
                "  ORDER BY p.id FOR NO KEY UPDATE OF p)"
                " UPDATE peers SET last_seen = greatest(peers.last_seen, locked.t)"
                " FROM locked WHERE peers.id = locked.id",
                (list(names), list(times)),
            )
        )

    def seen_since(self, since: float) -> dict[str, float]:
        """The live peers seen at or after ``since``."""
        rows = self._rows(
            "SELECT domain_name, last_seen FROM peers WHERE last_seen >= %s AND NOT withdrawn",
            (since,),
        )
        return {str(name): float(t) for name, t in rows}

    def _locked_attempts(self, conn: Conn, keys: list[str], now: float) -> dict[str, AttemptState]:
        # Rows made (empty) or, if there, locked by the no-op update, in key order, in one
        # statement: every index server charging the same keys queues on the same rows in
        # the same order, and a prune cannot delete a row between finding and locking it.
        rows = conn.execute(
            "INSERT INTO attempts (key, count, updated, blocked_until, expires_at)"
            " SELECT k, 0, %s, 0, %s FROM unnest(%s::text[]) AS k ORDER BY k"
            " ON CONFLICT (key) DO UPDATE SET key = excluded.key"
            " RETURNING key, count, updated, blocked_until",
            (now, now, keys),
        ).fetchall()
        return {str(k): AttemptState(float(c), float(u), float(b)) for k, c, u, b in rows}

    @staticmethod
    def _store_attempts(conn: Conn, states: dict[str, tuple[AttemptState, float]]) -> None:
        keys = sorted(states)
        conn.execute(
            "UPDATE attempts SET count = v.c, updated = v.u, blocked_until = v.b,"
            " expires_at = v.e FROM unnest(%s::text[], %s::float8[], %s::float8[],"
            " %s::float8[], %s::float8[]) AS v(k, c, u, b, e) WHERE attempts.key = v.k",
            (
                keys,
                [states[k][0].count for k in keys],
                [states[k][0].updated for k in keys],
                [states[k][0].blocked_until for k in keys],
                [states[k][1] for k in keys],
            ),
        )

    def attempts_charge(self, charges: Sequence[AttemptCharge], now: float) -> float:
        """Charge every key or none, atomically across index servers."""
        if not charges:
            return 0.0

        def work(conn: Conn) -> float:
            stored = self._locked_attempts(conn, sorted({k for k, _ in charges}), now)
            current = {key: stored[key].at(now, policy) for key, policy in charges}
            wait = max(state.retry_after(now) for state in current.values())
            if wait > 0:
                return wait
            result: dict[str, tuple[AttemptState, float]] = {}
            for key, policy in charges:
                current[key] = state = current[key].charged(now, policy)
                result[key] = (state, state.expires_at(policy))
            self._store_attempts(conn, result)
            return 0.0

        return self._transaction(work)

    def attempts_refund(self, charges: Sequence[AttemptCharge], now: float) -> None:
        """Give back one attempt of each key."""
        if not charges:
            return

        def work(conn: Conn) -> None:
            stored = self._locked_attempts(conn, sorted({k for k, _ in charges}), now)
            result: dict[str, tuple[AttemptState, float]] = {}
            for key, policy in charges:
                stored[key] = state = stored[key].refunded(now, policy)
                result[key] = (state, state.expires_at(policy))
            self._store_attempts(conn, result)

        self._transaction(work)

    def attempts_reset(self, keys: Sequence[str]) -> None:
        """Forget the keys' counters."""
        self._transaction(
            lambda conn: conn.execute("DELETE FROM attempts WHERE key = ANY(%s)", (list(keys),))
        )

    def attempts_get(self, keys: Sequence[str]) -> dict[str, AttemptState]:
        """The counters of those keys that have one."""
        rows = self._rows(
            "SELECT key, count, updated, blocked_until FROM attempts WHERE key = ANY(%s)",
            (list(keys),),
        )
        return {str(k): AttemptState(float(c), float(u), float(b)) for k, c, u, b in rows}

    def attempts_prune(self, now: float) -> int:
        """Drop counters that no longer count."""
        return self._transaction(
            lambda conn: (
                conn.execute("DELETE FROM attempts WHERE expires_at <= %s", (now,)).rowcount
            )
        )

    def stats(self, now: float, peer_ttl: float) -> dict[str, int]:
        """Counts for ``indexd admin stats``, from one snapshot."""
        [row] = self._transaction(
            lambda conn: conn.execute(
                "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM peers),"
                " (SELECT count(*) FROM peers WHERE NOT withdrawn AND last_seen >= %s),"
                " (SELECT count(*) FROM files), (SELECT count(DISTINCT kw) FROM files),"
                " (SELECT count(*) FROM revoked_sessions WHERE expires_at > %s),"
                " (SELECT count(*) FROM certificates)",
                (now - peer_ttl, now),
            ).fetchall(),
            snapshot=True,
        )
        return dict(zip(STATS, (int(n) for n in row), strict=True))


class _Listener:
    """LISTEN on :data:`indexd.store.NOTIFY_CHANNEL` on a dedicated autocommit connection,
    in a thread of its own: ``callback(payload)`` per notification; after the connection was
    lost, reconnect (with growing waits) and call ``callback(None)``. Listening has begun by
    the time the constructor returns."""

    def __init__(self, store: PostgresIndexStore, callback: Callable[[str | None], None]) -> None:
        self._store = store
        self._callback = callback
        self._stop = threading.Event()
        self._conn: psycopg.Connection[tuple[Any, ...]] = self._connect()
        self._thread = threading.Thread(target=self._run, name="indexd-store-listen", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        """The server process id of the listening connection (it changes on reconnection)."""
        return int(self._conn.info.backend_pid)

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        conn = psycopg.connect(
            self._store.url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=APPLICATION_NAME + "-listen",
            # libpq keepalives: first probe after 5 s idle, then every 2 s, dead after 3
            # unanswered (ignored on a unix socket, which cannot go half-open).
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
        )
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return conn

    def _deliver(self, payload: str | None) -> None:
        if payload is not None:
            payload, _, origin = payload.rpartition(" ")
            if origin == self._store.origin:  # this process's own change: memory has it
                return
        try:
            self._callback(payload)
        except Exception:  # a failing callback must not end the subscription
            log.exception("database change callback failed")

    def _run(self) -> None:
        checked = time.monotonic()
        while not self._stop.is_set():
            try:
                for notify in self._conn.notifies(timeout=LISTEN_POLL):
                    self._deliver(notify.payload)
                if time.monotonic() - checked >= LISTEN_CHECK:
                    # Traffic on an idle connection: a dead one fails here, not never.
                    self._conn.execute("SELECT 1")
                    checked = time.monotonic()
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return
                log.warning("lost the database's notifications (%s); reconnecting", exc)
                if self._reconnect():
                    self._deliver(None)

    def _reconnect(self) -> bool:
        with contextlib.suppress(psycopg.Error):
            self._conn.close()
        attempt = 0
        while not self._stop.is_set():
            try:
                self._conn = self._connect()
                log.info("listening to the database's notifications again")
                return True
            except psycopg.Error as exc:
                delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
                log.warning("cannot reconnect to %s: %s", self._store.name, exc)
                attempt += 1
                self._stop.wait(delay)
        return False

    def close(self) -> None:
        """Stop the thread (within :data:`LISTEN_POLL` seconds) and close the connection."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        with contextlib.suppress(psycopg.Error):
            self._conn.close()
        with self._store._lock, contextlib.suppress(ValueError):
            self._store._listeners.remove(self)
