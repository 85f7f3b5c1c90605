"""What the benchmark runs against: a throwaway PKI, index databases, files to fetch.

Everything is made at run time under a temporary folder and removed afterwards; nothing here
is ever committed. Index databases are filled through the store API
(:class:`indexd.store.SqliteIndexStore`), which is what a ``sync`` commits, without a million
files crossing the wire first.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from certs import init_pki
from indexd.store import Listing, SqliteIndexStore
from netproto.operations import SharedFile

MiB = 1 << 20

#: Leaf certificates: the index, the serving peers (peer2-4 hold copies in the multi-source
#: figures, bench/swarm.py), and the benchmark's own client.
PKI_NAMES = ("indexd", "peer1", "peer2", "peer3", "peer4", "bench")
#: The user the benchmark searches and fetches as, and the serving peer's user.
BENCH_USER = "bench"
PEER_USER = "peer1"
PASSWORD = "bench-password-1"  # a throwaway account in a throwaway database
#: Keywords whose search replies are measured: each held by PROBE_PEERS peers with
#: PROBE_FILES files, in every index whatever its size, so replies weigh the same.
PROBE_KEYWORDS = tuple(f"probe{i:02d}" for i in range(20))
PROBE_PEERS = 3
PROBE_FILES = 2
#: The rest of an index: peers of FILLER_PER_PEER files, spread over FILLER_KEYWORDS_PER_PEER
#: keywords drawn from a vocabulary of about one keyword per FILES_PER_KEYWORD files.
FILLER_PER_PEER = 1000
FILLER_KEYWORDS_PER_PEER = 50
FILES_PER_KEYWORD = 200


def make_pki(directory: Path) -> Path:
    """A CA and the leaves of :data:`PKI_NAMES` (what ``python -m certs init`` makes)."""
    init_pki(directory, PKI_NAMES, overwrite=True)
    return directory


@dataclass(frozen=True)
class IndexShape:
    """What a generated index holds."""

    files: int
    peers: int
    keywords: int


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("/".join(map(str, parts)).encode()).digest()


def populate_index(
    db: Path, total_files: int, *, fast_hash: bytes, login_hash: bytes, login_users: int
) -> IndexShape:
    """Fill a fresh index database with ``total_files`` listed files.

    The probe keywords are listed the same way in every index; the rest (filler) grows with
    ``total_files``. Users: :data:`BENCH_USER` and :data:`PEER_USER` (``fast_hash``, for quick
    logins) and ``login_users`` users ``loginNN`` whose hash is ``login_hash`` (the cost under
    test).
    """
    store = SqliteIndexStore(db)
    # Filling a throwaway database: no need to fsync each of its thousand transactions.
    store._write.execute("PRAGMA synchronous = OFF")
    now = time.time()
    try:
        store.add_user(BENCH_USER, fast_hash, now)
        store.add_user(PEER_USER, fast_hash, now)
        for i in range(login_users):
            store.add_user(f"login{i:02d}", login_hash, now)
        listed = 0
        for p in range(PROBE_PEERS):
            name = f"probe-peer{p}.example"
            files = tuple(
                SharedFile(f"{kw}-file{f}.dat", kw, 1000 + f, _digest(name, kw, f))
                for kw in PROBE_KEYWORDS
                for f in range(PROBE_FILES)
            )
            store.replace_listing(Listing(BENCH_USER, name, 7000 + p, "127.0.0.1", files, now))
            listed += len(files)
        filler = max(0, total_files - listed)
        vocabulary = max(FILLER_KEYWORDS_PER_PEER, total_files // FILES_PER_KEYWORD)
        rng = random.Random(total_files)
        peers = PROBE_PEERS
        while filler > 0:
            count = min(FILLER_PER_PEER, filler)
            name = f"peer{peers:07d}.example"
            keywords = [
                f"kw{k:06d}" for k in rng.sample(range(vocabulary), FILLER_KEYWORDS_PER_PEER)
            ]
            files = tuple(
                SharedFile(f"file{f:05d}.bin", keywords[f % len(keywords)], f, _digest(name, f))
                for f in range(count)
            )
            store.replace_listing(
                Listing(BENCH_USER, name, 7000 + peers % 1000, "127.0.0.1", files, now)
            )
            filler -= count
            listed += count
            peers += 1
        return IndexShape(listed, peers, len(PROBE_KEYWORDS) + vocabulary)
    finally:
        store.close()


def bcrypt_hash(cost: int) -> bytes:
    """A bcrypt hash of :data:`PASSWORD` at ``cost``."""
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(cost))


def make_file(path: Path, size: int) -> None:
    """A file of ``size`` pseudo-random bytes (incompressible, fast to make)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = bytearray(os.urandom(MiB))
    with path.open("wb") as f:
        written = 0
        n = 0
        while written < size:
            block[:8] = n.to_bytes(8, "big")  # no two blocks alike
            piece = memoryview(block)[: min(MiB, size - written)]
            f.write(piece)
            written += len(piece)
            n += 1
