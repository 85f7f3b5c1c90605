"""``bench/memory.py``: the index's memory per listed file and the large sync, at small sizes.

Small runs so the figures cannot rot; they assert the shape of the results, never a timing or
a memory figure (those depend on the machine and on what else runs on it).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from bench import fixtures
from bench.memory import (
    PEER_FILES,
    TARGET_MIB_PER_MILLION,
    index_memory,
    populate,
    sync_rate,
    vocabulary,
)
from indexd.store import SqliteIndexStore


def test_populate_lists_signed_files_with_names_of_10_to_40_characters(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    peers = populate(db, 8 * PEER_FILES + 7, fast_hash=fixtures.bcrypt_hash(4))
    store = SqliteIndexStore(db)
    try:
        listings = list(store.iter_listings())
    finally:
        store.close()
    assert peers == len(listings) == 9
    files = [f for _, fs in listings for f in fs]
    assert len(files) == 8 * PEER_FILES + 7
    assert {f.keyword for f in files} <= set(vocabulary(len(files)))
    assert all(f.manifest is not None and f.signature is not None for f in files)
    assert all(10 <= len(f.filename) <= 40 for f in files)
    # Owners have at most four peers each, like indexd's default --max-domains-per-user.
    assert len({record.owner for record, _ in listings}) == 3


def test_index_memory_is_measured_warm_after_searches_find_every_file(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    pki = fixtures.make_pki(tmp_path / "pki")
    figure = asyncio.run(
        asyncio.wait_for(index_memory(tmp_path, pki, files=2000, repeat=1, log=lines.append), 110)
    )
    assert figure.key == "index_memory"
    assert figure.limit == [TARGET_MIB_PER_MILLION] and figure.direction == "le"
    assert figure.extra["files"] == 2000 and figure.extra["peers"] == 20
    # Every listed file was found by searching every keyword of the vocabulary once.
    assert figure.extra["found"] == 2000
    assert any("2,000 files found" in line for line in lines)
    assert math.isfinite(figure.extra["cold_mib_per_million"])


def test_sync_rate_syncs_the_whole_share_and_times_the_store_insert_beside_it(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    pki = fixtures.make_pki(tmp_path / "pki")
    figure = asyncio.run(
        asyncio.wait_for(sync_rate(tmp_path, pki, files=5000, repeat=2, log=lines.append), 110)
    )
    assert figure.key == "sync_rate"
    assert len(figure.project) == len(figure.limit) == 2
    assert all(v > 0 and math.isfinite(v) for v in figure.project + figure.limit)
    assert sum("rep" in line for line in lines) == 2
