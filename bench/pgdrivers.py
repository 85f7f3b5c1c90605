"""``python -m bench.pgdrivers``: psycopg 3 against asyncpg on the index's hot queries.

Starts its own throwaway PostgreSQL (tests/support/postgres.py), makes the index's schema with
:class:`indexd.pgstore.PostgresIndexStore`, fills it (users, peers, files), then times, on the
same server and data, with each driver on one connection:

- ``password hash``: the login's point SELECT by user name;
- ``search``: the store's search SELECT (one keyword, ~1 % of the files);
- ``last_seen x1000``: one batched UPDATE of 1,000 peers' ``last_seen`` (``unnest`` arrays);
- ``listing 10k (copy)`` / ``(executemany)``: replace a 10,000-file listing in one
  transaction, by COPY (psycopg ``cursor.copy``, asyncpg ``copy_records_to_table``) and by
  ``executemany``;
- ``password hash, from a thread``: the point SELECT issued from a worker thread, as the
  store's callers do — psycopg directly, asyncpg through ``run_coroutine_threadsafe`` to a loop
  in another thread (what the blocking store interface would need around asyncpg).

Prints operations per second for both (README "Database" has a run and the choice it made).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import psycopg

from indexd.pgstore import PostgresIndexStore
from tests.support.postgres import start_postgres

USERS = 2_000
PEERS = 1_000
FILES_PER_PEER = 20
KEYWORDS = 100  # so one keyword matches about 1 % of the files
LISTING = 10_000

PASSWORD_SQL = "SELECT password_hash FROM users WHERE username = %s AND NOT disabled"
SEARCH_SQL = (
    "SELECT p.domain_name, p.owner, p.port_number, p.address, p.last_seen, p.withdrawn,"
    " f.filename, f.keyword, f.size, f.sha256, f.manifest, f.signature FROM files f"
    " JOIN peers p ON p.id = f.peer_id WHERE f.kw = %s ORDER BY p.domain_name, f.filename,"
    " f.keyword"
)
SEEN_SQL = (
    "UPDATE peers SET last_seen = greatest(peers.last_seen, v.t)"
    " FROM unnest(%s::text[], %s::float8[]) AS v(name, t) WHERE peers.domain_name = v.name"
)
INSERT_SQL = (
    "INSERT INTO files (peer_id, kw, filename, keyword, size, sha256, manifest, signature)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
COLUMNS = ("peer_id", "kw", "filename", "keyword", "size", "sha256", "manifest", "signature")


def _dollar(sql: str) -> str:
    """The same statement with asyncpg's ``$n`` placeholders."""
    parts = sql.split("%s")
    return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _fill(url: str) -> int:
    """Users, peers and files; the id of the peer the listing benchmarks rewrite."""
    PostgresIndexStore(url).close()  # the schema, as the index makes it
    with psycopg.connect(url) as conn:
        with conn.cursor().copy("COPY users (username, password_hash, created_at) FROM STDIN") as c:
            for i in range(USERS):
                c.write_row((f"user{i}", b"$2b$12$" + bytes(53), 1.0))
        with conn.cursor().copy(
            "COPY peers (domain_name, owner, port_number, address, last_seen) FROM STDIN"
        ) as c:
            for i in range(PEERS):
                c.write_row((f"peer{i}.example", f"user{i}", 7001, "10.0.0.1", 1.0))
        ids = [row[0] for row in conn.execute("SELECT id FROM peers ORDER BY id")]
        with conn.cursor().copy(f"COPY files ({', '.join(COLUMNS)}) FROM STDIN") as c:
            for n, peer_id in enumerate(ids):
                for j in range(FILES_PER_PEER):
                    kw = f"kw{(n * FILES_PER_PEER + j) % KEYWORDS}"
                    name = f"file{n}-{j}.bin"
                    c.write_row((peer_id, kw, name, kw, 1000, _digest(name), None, None))
        conn.execute("ANALYZE")
        return int(ids[0])


def _listing_rows(peer_id: int) -> list[tuple[Any, ...]]:
    return [
        (peer_id, f"big{i % 50}", f"n{i:05d}.dat", f"big{i % 50}", i, _digest(str(i)), None, None)
        for i in range(LISTING)
    ]


def _rate(count: int, fn: Callable[[int], object]) -> float:
    """Operations per second of ``fn(i)`` for i in range(count), after one warm-up call."""
    fn(0)
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    return count / (time.perf_counter() - start)


async def _arate(count: int, fn: Callable[[int], Awaitable[object]]) -> float:
    await fn(0)
    start = time.perf_counter()
    for i in range(count):
        await fn(i)
    return count / (time.perf_counter() - start)


def measure_psycopg(url: str, peer_id: int, scale: float) -> dict[str, float]:
    """Rates with psycopg 3's blocking API, as the store uses it."""
    names = [f"peer{i}.example" for i in range(PEERS)]
    rows = _listing_rows(peer_id)
    results: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        results["password hash"] = _rate(
            int(5000 * scale),
            lambda i: conn.execute(PASSWORD_SQL, (f"user{i % USERS}",), prepare=True).fetchall(),
        )
        results["search"] = _rate(
            int(300 * scale),
            lambda i: conn.execute(SEARCH_SQL, (f"kw{i % KEYWORDS}",), prepare=True).fetchall(),
        )
        results["last_seen x1000"] = _rate(
            int(40 * scale),
            lambda i: conn.execute(SEEN_SQL, (names, [float(i + 2)] * PEERS), prepare=True),
        )

        def copy(_: int) -> None:
            with conn.transaction():
                conn.execute("DELETE FROM files WHERE peer_id = %s", (peer_id,))
                with conn.cursor().copy(f"COPY files ({', '.join(COLUMNS)}) FROM STDIN") as c:
                    for row in rows:
                        c.write_row(row)

        def many(_: int) -> None:
            with conn.transaction():
                conn.execute("DELETE FROM files WHERE peer_id = %s", (peer_id,))
                conn.cursor().executemany(INSERT_SQL, rows)

        results["listing 10k (copy)"] = _rate(max(2, int(6 * scale)), copy)
        results["listing 10k (executemany)"] = _rate(max(2, int(6 * scale)), many)
    with (
        psycopg.connect(url, autocommit=True) as conn,
        ThreadPoolExecutor(1) as pool,
    ):
        results["password hash, from a thread"] = _rate(
            int(3000 * scale),
            lambda i: pool.submit(
                lambda: conn.execute(PASSWORD_SQL, (f"user{i % USERS}",), prepare=True).fetchall()
            ).result(),
        )
    return results


async def _asyncpg_direct(url: str, peer_id: int, scale: float) -> dict[str, float]:
    names = [f"peer{i}.example" for i in range(PEERS)]
    rows = _listing_rows(peer_id)
    results: dict[str, float] = {}
    conn = await asyncpg.connect(url)
    try:
        password = await conn.prepare(_dollar(PASSWORD_SQL))
        search = await conn.prepare(_dollar(SEARCH_SQL))
        seen = await conn.prepare(_dollar(SEEN_SQL))
        results["password hash"] = await _arate(
            int(5000 * scale), lambda i: password.fetch(f"user{i % USERS}")
        )
        results["search"] = await _arate(
            int(300 * scale), lambda i: search.fetch(f"kw{i % KEYWORDS}")
        )
        results["last_seen x1000"] = await _arate(
            int(40 * scale), lambda i: seen.fetch(names, [float(i + 2)] * PEERS)
        )

        async def copy(_: int) -> None:
            async with conn.transaction():
                await conn.execute("DELETE FROM files WHERE peer_id = $1", peer_id)
                await conn.copy_records_to_table("files", records=rows, columns=COLUMNS)

        async def many(_: int) -> None:
            async with conn.transaction():
                await conn.execute("DELETE FROM files WHERE peer_id = $1", peer_id)
                await conn.executemany(_dollar(INSERT_SQL), rows)

        results["listing 10k (copy)"] = await _arate(max(2, int(6 * scale)), copy)
        results["listing 10k (executemany)"] = await _arate(max(2, int(6 * scale)), many)
    finally:
        await conn.close()
    return results


def measure_asyncpg(url: str, peer_id: int, scale: float) -> dict[str, float]:
    """Rates with asyncpg: on its own loop, and bridged from a worker thread to a loop."""
    results = asyncio.run(_asyncpg_direct(url, peer_id, scale))
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        conn = asyncio.run_coroutine_threadsafe(asyncpg.connect(url), loop).result()
        statement = asyncio.run_coroutine_threadsafe(
            conn.prepare(_dollar(PASSWORD_SQL)), loop
        ).result()
        with ThreadPoolExecutor(1) as pool:
            results["password hash, from a thread"] = _rate(
                int(3000 * scale),
                lambda i: pool.submit(
                    lambda: asyncio.run_coroutine_threadsafe(
                        statement.fetch(f"user{i % USERS}"), loop
                    ).result()
                ).result(),
            )
        asyncio.run_coroutine_threadsafe(conn.close(), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        loop.close()
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print a table of operations per second."""
    parser = argparse.ArgumentParser(prog="python -m bench.pgdrivers", description=__doc__)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every repetition count (1.0)"
    )
    args = parser.parse_args(argv)
    server = start_postgres()
    try:
        url = server.new_database("pgdrivers")
        peer_id = _fill(url)
        # Alternate, so neither driver always meets a warmer (or more bloated) table.
        psy = measure_psycopg(url, peer_id, args.scale)
        apg = measure_asyncpg(url, peer_id, args.scale)
        psy2 = measure_psycopg(url, peer_id, args.scale)
        apg2 = measure_asyncpg(url, peer_id, args.scale)
    finally:
        server.stop()
    print(f"PostgreSQL store drivers: psycopg {psycopg.__version__}, asyncpg {asyncpg.__version__}")
    print(f"{'operation':32} {'psycopg ops/s':>14} {'asyncpg ops/s':>14} {'asyncpg/psycopg':>16}")
    for name in psy:
        p, a = max(psy[name], psy2[name]), max(apg[name], apg2[name])
        print(f"{name:32} {p:14,.1f} {a:14,.1f} {a / p:16.2f}")
    print("(best of two runs each; one connection, one operation at a time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
