"""``kill -9`` of one of two index servers over one PostgreSQL database while peers are
connected (PROTOCOL.md §11, README.md "Two index servers over PostgreSQL"): no write it
acknowledged is lost, and the peers search through the other one within 10 s. Real processes:
two ``python -m indexd --db postgresql://…`` with one certificate and key, and two
``python -m peerd -index_server_name a,b``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from indexd.pgstore import PostgresIndexStore
from netproto.operations import SharedFile
from peerd.control import ControlClient
from tests.conftest import INDEX_TIMEOUT
from tests.support.cluster import PASSWORD, eventually, shared_file
from tests.support.failover import index_list, indexd_processes, peerd_with_indexes

#: The issue's bound: after the kill, the peers search through the other index by then.
FAILOVER_WITHIN = 10.0


def _share(root: Path, keyword: str, name: str) -> Path:
    (root / keyword).mkdir(parents=True)
    (root / keyword / name).write_bytes(b"eucalyptus " + name.encode())
    return root


def _file(n: int) -> SharedFile:
    return shared_file("wombat", f"f{n}.txt", n + 1)


async def _eventually(probe: Callable[[], Awaitable[bool]], within: float) -> bool:
    return await eventually(probe, within, tolerate=True)


def _stored(url: str) -> tuple[bool, int]:
    """Whether carol is registered, and how many files peer3 lists, read from the database."""
    store = PostgresIndexStore(url)
    try:
        listing = store.listing_of("peer3")
        return store.password_hash("carol") is not None, 0 if listing is None else len(listing[1])
    finally:
        store.close()


async def test_kill_9_of_one_index_loses_no_acknowledged_write_and_peers_search_via_the_other(
    pki: Any, postgres_url: str, tmp_path: Path, index_client: Any
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        a, b = await stack.enter_async_context(
            indexd_processes(pki, tmp_path, 2, "--db", postgres_url)
        )
        servers = index_list([a.port, b.port])  # every peer starts at A
        states = {}
        for name, keyword in (("peer1", "koala"), ("peer2", "platypus")):
            share = _share(tmp_path / f"{name}-files", keyword, f"{name}.txt")
            states[name] = tmp_path / f"{name}-state"
            await stack.enter_async_context(
                peerd_with_indexes(pki, name, servers, share, "--state-dir", str(states[name]))
            )
        at_b = await stack.enter_async_context(index_client(b.port))
        writer = await stack.enter_async_context(index_client(a.port, cert="peer3"))
        await at_b.register("observer", PASSWORD)
        await at_b.login("observer", PASSWORD)

        async def both_peers_listed_at_b() -> bool:
            hits = [await at_b.search(kw) for kw in ("koala", "platypus")]
            return [{h.domain_name for h in found} for found in hits] == [{"peer1"}, {"peer2"}]

        assert await _eventually(both_peers_listed_at_b, INDEX_TIMEOUT)

        # Writes acknowledged by A one after another, A killed while they go on.
        await writer.register("carol", PASSWORD)
        await writer.login("carol", PASSWORD)
        acknowledged = 0
        enough = asyncio.Event()  # a few acknowledged: time to kill

        async def keep_syncing() -> None:
            nonlocal acknowledged
            for n in range(1, 10_000):
                await writer.sync("peer3", [_file(i) for i in range(n)])
                acknowledged = n
                if n == 5:
                    enough.set()

        syncing = asyncio.create_task(keep_syncing())
        await asyncio.wait_for(enough.wait(), INDEX_TIMEOUT)
        a.proc.kill()  # kill -9
        killed_at = asyncio.get_running_loop().time()
        await asyncio.wait_for(a.proc.wait(), INDEX_TIMEOUT)
        results = await asyncio.gather(syncing, return_exceptions=True)
        assert isinstance(results[0], Exception)  # the stream ended with A, not before
        assert acknowledged >= 5

        # Every peer searches through B within 10 s of the kill.
        async def searches_through_b(state: Path, keyword: str, holder: str) -> bool:
            hits = await ControlClient(state, timeout=FAILOVER_WITHIN).search(keyword)
            return {hit.domain_name for hit in hits} == {holder}

        for state, keyword, holder in (
            (states["peer1"], "platypus", "peer2"),
            (states["peer2"], "koala", "peer1"),
        ):
            left = FAILOVER_WITHIN - (asyncio.get_running_loop().time() - killed_at)
            probe = functools.partial(searches_through_b, state, keyword, holder)
            assert await _eventually(probe, left), f"{holder} not found through B"

        # Nothing A acknowledged is lost: in the database, and in B's replies.
        registered, files = await asyncio.to_thread(_stored, postgres_url)
        assert registered
        # The last acknowledged listing is there (or the next one, committed but unanswered).
        assert files in (acknowledged, acknowledged + 1)
        carol = await stack.enter_async_context(index_client(b.port))
        await carol.login("carol", PASSWORD)

        async def peer3_listed_at_b() -> bool:  # with every file the database holds
            hits = await carol.search("wombat")
            counts = [hit.total if hit.total is not None else len(hit.files) for hit in hits]
            return [hit.domain_name for hit in hits] == ["peer3"] and counts == [files]

        assert await _eventually(peer3_listed_at_b, INDEX_TIMEOUT)
