"""The figures of issue 15: the index's memory per listed file, and the rate of a large sync.

- ``index_memory``: the resident memory of ``python -m indexd`` started on a database of
  ``files`` listed files and warm — every keyword searched once, so its cache of rankings
  (``indexd.keywords.MAX_CACHED_BYTES``) is as full as searches make it — minus the same
  daemon's started on a database with the same users and no files, scaled to 10^6 files,
  against the fixed target of 200 MiB per 10^6 files; the cold figure (before the searches)
  goes to ``extra``.
  The listings are what peers send (PROTOCOL.md §4.8: each entry with its manifest digest and
  publisher signature): :data:`PEER_FILES` files per peer with names of 10 to 40 characters,
  spread over 1 to :data:`MAX_PEER_KEYWORDS` of the peer's keywords drawn from a vocabulary of
  one keyword per :data:`FILES_PER_KEYWORD` files; written through the store API
  (:class:`indexd.store.SqliteIndexStore`), which is what a ``sync`` commits.
- ``sync_rate``: one peer syncing a ``sync_files``-file listing through the real protocol —
  :meth:`peerd.client.IndexClient.sync`, a multi-part upload (PROTOCOL.md §4.3), from the
  first part sent to the final reply — in files/s, against
  :meth:`indexd.store.SqliteIndexStore.replace_listing` of the same listing into a database
  of its own, in this process, timed in the same repetition: the durable write the sync ends
  in, with nothing of the wire, the checks, the staging or the search index around it. Both
  replace a listing of the same files (one written untimed first), never insert afresh. The
  target is a third of it: besides that insert, a sync decodes and checks every entry
  (PROTOCOL.md §4.7 name rules), stages the parts and prepares the entries for search,
  two more passes over the files of about the insert's cost each.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import string
import time
from collections.abc import Callable
from pathlib import Path

from bench import fixtures
from bench.harness import Figure, _status_kib, now, rss_bytes, spawn
from indexd.store import Listing, SqliteIndexStore
from netproto.operations import SharedFile
from netproto.tls import client_context
from peerd.client import IndexClient

MiB = 1 << 20
#: The fixed target (issue 15): the index holds 10^6 listed files in at most this much memory.
TARGET_MIB_PER_MILLION = 200.0
PEER_FILES = 100
MAX_PEER_KEYWORDS = 30
FILES_PER_KEYWORD = 200
PEERS_PER_OWNER = 4  # indexd's default --max-domains-per-user
#: The sync's rate against the store's insert alone (see the module docstring).
SYNC_TARGET = 1 / 3
#: The syncing peer: its certificate (bench.fixtures.PKI_NAMES) names this domain name.
SYNC_PEER = "peer1"
_NAME_CHARS = string.ascii_lowercase + string.digits + "-_"


def listed_files(rng: random.Random, count: int, keywords: list[str]) -> tuple[SharedFile, ...]:
    """``count`` signed entries as a peer syncs them, under ``keywords``."""
    return tuple(
        SharedFile(
            "".join(rng.choices(_NAME_CHARS, k=rng.randint(6, 36))) + ".dat",
            rng.choice(keywords),
            int(2 ** rng.uniform(10, 32)),  # 1 KiB to 4 GiB, as many of each magnitude
            rng.randbytes(32),
            rng.randbytes(32),
            rng.randbytes(64),
        )
        for _ in range(count)
    )


def populate(db: Path, files: int, *, fast_hash: bytes, seed: int = 15) -> int:
    """Fill a fresh index database with ``files`` listed files (:data:`PEER_FILES` a peer);
    the users are :data:`bench.fixtures.PEER_USER` and the peers' owners. Returns the number
    of peers."""
    store = SqliteIndexStore(db)
    # A throwaway database: no need to fsync each of its thousands of transactions.
    store._write.execute("PRAGMA synchronous = OFF")
    rng = random.Random(seed)
    vocabulary = max(MAX_PEER_KEYWORDS, files // FILES_PER_KEYWORD)
    peers = -(-files // PEER_FILES)
    t = time.time()
    try:
        store.add_user(fixtures.PEER_USER, fast_hash, t)
        for o in range(-(-peers // PEERS_PER_OWNER)):
            store.add_user(f"owner{o:05d}", fast_hash, t)
        for p in range(peers):
            count = min(PEER_FILES, files - p * PEER_FILES)
            keywords = [
                f"kw{k:06d}"
                for k in rng.sample(range(vocabulary), rng.randint(1, MAX_PEER_KEYWORDS))
            ]
            listing = Listing(
                f"owner{p // PEERS_PER_OWNER:05d}",
                f"peer{p:06d}.example",
                7000 + p % 1000,
                "127.0.0.1",
                listed_files(rng, count, keywords),
                t,
            )
            store.replace_listing(listing)
        return peers
    finally:
        store.close()


def _indexd_args(pki: Path, db: Path) -> list[str]:
    return [
        "-m", "indexd", "--host", "127.0.0.1", "--port", "0", "--db", str(db),
        "--cert", str(pki / "indexd.crt"), "--key", str(pki / "indexd.key"),
        "--ca", str(pki / "ca.crt"), "--peer-ttl", "86400", "--bcrypt-cost", "4",
    ]  # fmt: skip


def vocabulary(files: int) -> list[str]:
    """The keywords :func:`populate` draws each peer's from, for ``files`` files."""
    return [f"kw{k:06d}" for k in range(max(MAX_PEER_KEYWORDS, files // FILES_PER_KEYWORD))]


async def _search_all(pki: Path, port: int, keywords: list[str]) -> int:
    """Search every keyword once (first pages); the files the hits say their peers list."""
    ctx = client_context(pki / "ca.crt", pki / f"{SYNC_PEER}.crt", pki / f"{SYNC_PEER}.key")
    client = await IndexClient.connect("127.0.0.1", port, ctx, server_hostname="indexd")
    try:
        await client.auth(fixtures.PEER_USER, fixtures.PASSWORD)
        found = 0
        for keyword in keywords:
            hits = await client.search(keyword, max_pages=1)
            found += sum(hit.total or len(hit.files) for hit in hits)
        return found
    finally:
        await client.close()


async def _started_rss(
    pki: Path, db: Path, keywords: list[str]
) -> tuple[int, int, int, float, int]:
    """RSS of an indexd once it serves ``db``, cold and once every keyword was searched, its
    peak RSS, how long it took to start and how many files the searches found."""
    t = now()
    async with spawn(_indexd_args(pki, db), "indexd listening on", timeout=900) as indexd:
        started = now() - t
        await asyncio.sleep(0.5)  # let start-up garbage go before reading
        cold = rss_bytes(indexd.pid)
        found = await _search_all(pki, indexd.port, keywords)
        await asyncio.sleep(0.5)
        warm = rss_bytes(indexd.pid)
        return cold, warm, _status_kib(indexd.pid, "VmHWM") * 1024, started, found


async def index_memory(
    tmp: Path, pki: Path, *, files: int, repeat: int, log: Callable[[str], None]
) -> Figure:
    """The ``index_memory`` figure (see the module docstring)."""
    fast = await asyncio.to_thread(fixtures.bcrypt_hash, 4)
    empty, loaded = tmp / "memory-empty.db", tmp / "memory-loaded.db"
    t = now()
    await asyncio.to_thread(populate, empty, 0, fast_hash=fast)
    peers = await asyncio.to_thread(populate, loaded, files, fast_hash=fast)
    log(f"  {files:,} signed files of {peers:,} peers written in {now() - t:.1f} s")
    scale = 10**6 / files
    keywords = vocabulary(files)
    per_million: list[float] = []
    colds: list[float] = []
    empties: list[float] = []
    peaks: list[float] = []
    starts: list[float] = []
    for r in range(repeat):
        _, base, _, _, _ = await _started_rss(pki, empty, keywords)
        cold, rss, peak, started, found = await _started_rss(pki, loaded, keywords)
        if found != files:
            raise RuntimeError(f"searching every keyword found {found:,} files, not {files:,}")
        per_million.append((rss - base) / MiB * scale)
        colds.append((cold - base) / MiB * scale)
        empties.append(base / MiB)
        peaks.append((peak - base) / MiB * scale)
        starts.append(started)
        log(
            f"  rep {r + 1}: indexd {rss / MiB:.1f} MiB with {files:,} files, {base / MiB:.1f}"
            f" MiB empty: {per_million[-1]:.1f} MiB per 10^6 files warm ({colds[-1]:.1f}"
            f" cold, {found:,} files found); start {started:.1f} s"
        )
    # Fewer files scale the fixed costs too (e.g. SQLite's 2 MiB page cache): an overestimate.
    scaled = "" if files == 10**6 else f"; {files:,} files, scaled (fixed costs too)"
    return Figure(
        "index_memory",
        "indexd RSS per 10^6 listed files",
        "MiB",
        per_million,
        [TARGET_MIB_PER_MILLION],
        1.0,
        direction="le",
        summary="max",
        limit_name=f"{TARGET_MIB_PER_MILLION:.0f} MiB target (issue 15)",
        notes=f"RSS once every keyword was searched, over the empty daemon's (cold: max"
        f" {max(colds):.1f}); signed entries, {PEER_FILES} a peer{scaled}",
        extra={
            "files": files,
            "found": files,
            "cold_mib_per_million": max(colds),
            "peers": peers,
            "empty_rss_mib": statistics.median(empties),
            "peak_over_empty_mib_per_million": max(peaks),
            "start_seconds": statistics.median(starts),
        },
    )


def _insert(db: Path, listing: Listing) -> float:
    """Seconds :meth:`SqliteIndexStore.replace_listing` takes for ``listing`` in ``db``."""
    store = SqliteIndexStore(db)
    try:
        t = now()
        store.replace_listing(listing)
        return now() - t
    finally:
        store.close()


async def sync_rate(
    tmp: Path, pki: Path, *, files: int, repeat: int, log: Callable[[str], None]
) -> Figure:
    """The ``sync_rate`` figure (see the module docstring), on an indexd of its own."""
    rng = random.Random(files)
    keywords = [f"sync{k:04d}" for k in range(max(1, files // FILES_PER_KEYWORD))]
    share = listed_files(rng, files, keywords)
    unique = len({(f.keyword, f.filename) for f in share})
    fast = await asyncio.to_thread(fixtures.bcrypt_hash, 4)
    db = tmp / "sync-index.db"
    await asyncio.to_thread(populate, db, 0, fast_hash=fast)
    ctx = client_context(pki / "ca.crt", pki / f"{SYNC_PEER}.crt", pki / f"{SYNC_PEER}.key")
    project: list[float] = []
    limit: list[float] = []
    limit_db = tmp / "sync-limit.db"
    await asyncio.to_thread(populate, limit_db, 0, fast_hash=fast)
    listing = Listing(fixtures.PEER_USER, SYNC_PEER, 7001, "127.0.0.1", share, time.time())
    await asyncio.to_thread(_insert, limit_db, listing)  # untimed: the timed ones replace it
    async with spawn(_indexd_args(pki, db), "indexd listening on") as indexd:
        client = await IndexClient.connect(
            "127.0.0.1", indexd.port, ctx, server_hostname="indexd", request_timeout=300
        )
        try:
            await client.auth(fixtures.PEER_USER, fixtures.PASSWORD)
            # Untimed: the timed syncs replace this listing, like the timed inserts.
            await client.sync(SYNC_PEER, 7001, share, "127.0.0.1")
            for r in range(repeat):
                for side in ("project", "limit") if r % 2 == 0 else ("limit", "project"):
                    if side == "project":
                        t = now()
                        listed = await client.sync(SYNC_PEER, 7001, share, "127.0.0.1")
                        project.append(files / (now() - t))
                        if listed != unique:
                            raise RuntimeError(f"the sync listed {listed} files, not {unique}")
                    else:
                        limit.append(files / await asyncio.to_thread(_insert, limit_db, listing))
                log(
                    f"  rep {r + 1}: sync {project[-1]:,.0f} vs insert alone"
                    f" {limit[-1]:,.0f} files/s"
                )
        finally:
            await client.close()
    return Figure(
        "sync_rate",
        f"sync of a {files:,}-file listing (multi-part upload)",
        "/s",
        project,
        limit,
        SYNC_TARGET,
        limit_name="SqliteIndexStore.replace_listing of the same files alone",
        notes="files/s, first part sent to final reply; signed entries, one peer",
    )
