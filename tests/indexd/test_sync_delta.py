"""Incremental sync against a real index (indexd/handlers.py ``sync_delta``, indexd/store.py
``update_listing``; PROTOCOL.md §4.3.1): a 100,000-file share that changes one file sends one
entry, search shows the change at once, and every disagreement about the version falls back
to the whole listing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio

from netproto.errors import VersionMismatch
from netproto.operations import FileKey, SharedFile, SyncDeltaRequest
from peerd.client import IndexClient
from peerd.index_session import IndexSession

TIMEOUT = 60.0
PASSWORD = "correct horse battery"
SHARE = [
    SharedFile(f"file-{i:06d}.dat", f"kw{i % 500:03d}", 1000 + i, i.to_bytes(32, "big"))
    for i in range(100_000)
]


class Wire:
    """What went to the index: each sync or sync_delta request and its number of entries."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, int]] = []

    def spy(self, request: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def recorded(op: str, body: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            if op in ("sync", "sync_delta"):
                entries = len(body.get("files", ())) + len(body.get("removed", ()))
                self.requests.append((op, entries))
            return await request(op, body, *args, **kwargs)

        return recorded


@pytest_asyncio.fixture(loop_scope="function")
async def session(
    index_config: Any, running_index: Any, pki: Any
) -> AsyncIterator[tuple[IndexSession, Any, Wire]]:
    """peer1's session with a real index, logged in, its link's requests recorded."""
    wire = Wire()
    async with running_index(index_config()) as index:

        async def connect() -> IndexClient:
            link = await IndexClient.connect(
                "127.0.0.1",
                index.port,
                pki.client_ctx("peer1"),
                server_hostname="indexd",
                request_timeout=TIMEOUT,
            )
            link.conn.request = wire.spy(link.conn.request)  # type: ignore[assignment]
            return link

        session = IndexSession(
            connect, where="index", domain_name="peer1", username="peer1", password=PASSWORD
        )
        link = await session.connect()
        await session.register(link)
        await session.auth(link)
        yield session, link, wire
        await session.close()


async def listed(session: IndexSession, keyword: str) -> list[tuple[str, int]]:
    hits = await session.search(keyword)
    return sorted((f.filename, f.size) for h in hits for f in h.files)


async def test_one_change_in_a_100000_file_share_sends_one_entry(
    session: tuple[IndexSession, Any, Wire],
) -> None:
    peer, link, wire = session
    first = await peer.update(link, SHARE, 7001)
    assert first.full and first.files == 100_000
    assert sum(n for _, n in wire.requests) == 100_000
    wire.requests.clear()

    changed = list(SHARE)
    old = changed[12_345]
    changed[12_345] = SharedFile(old.filename, old.keyword, 7, bytes([9]) * 32)
    started = time.perf_counter()
    report = await peer.update(link, changed, 7001)
    elapsed = time.perf_counter() - started
    assert wire.requests == [("sync_delta", 1)]
    assert (report.changed, report.sent, report.full, report.files) == (1, 1, False, 100_000)
    assert (old.filename, 7) in await listed(peer, old.keyword)
    print(f"one change in 100,000 files: 1 entry sent, {elapsed * 1000:.0f} ms")


async def test_added_and_removed_files_show_in_search_at_once(
    session: tuple[IndexSession, Any, Wire],
) -> None:
    peer, link, _ = session
    share = [SharedFile(f"{i}.txt", "koala", i, bytes(32)) for i in range(5)]
    await peer.update(link, share, 7001)
    new = SharedFile("joey.txt", "wombat", 13, bytes([1]) * 32)
    report = await peer.update(link, [*share[1:], new], 7001)
    assert (report.added, report.removed, report.sent, report.full) == (1, 1, 2, False)
    assert await listed(peer, "wombat") == [("joey.txt", 13)]
    assert ("0.txt", 0) not in await listed(peer, "koala")
    report = await peer.update(link, share[1:], 7001)  # the last file under wombat goes
    assert await listed(peer, "wombat") == []
    assert report.removed == 1 and not report.full


async def test_a_stale_base_is_version_mismatch_and_the_session_sends_it_whole(
    session: tuple[IndexSession, Any, Wire],
) -> None:
    peer, link, wire = session
    share = [SharedFile("a.txt", "koala", 1, bytes(32))]
    await peer.update(link, share, 7001)
    stale = SyncDeltaRequest("peer1", 7001, (peer.version or 0) ^ 1, (), (FileKey("koala", "a"),))
    try:
        await link.sync_delta(stale)
    except VersionMismatch:
        pass
    else:
        raise AssertionError("a delta against another version applied")
    peer.version = (peer.version or 0) ^ 1  # as if the index had restarted meanwhile
    wire.requests.clear()
    report = await peer.update(link, [*share, SharedFile("b.txt", "koala", 2, bytes(32))], 7001)
    assert [op for op, _ in wire.requests] == ["sync_delta", "sync"]
    assert report.full and await listed(peer, "koala") == [("a.txt", 1), ("b.txt", 2)]


async def test_a_delta_on_another_port_is_refused_so_the_whole_listing_goes(
    session: tuple[IndexSession, Any, Wire],
) -> None:
    peer, link, wire = session
    share = [SharedFile("a.txt", "koala", 1, bytes(32))]
    await peer.update(link, share, 7001)
    wire.requests.clear()
    report = await peer.update(link, [*share, SharedFile("b.txt", "k", 2, bytes(32))], 7002)
    assert [op for op, _ in wire.requests] == ["sync_delta", "sync"] and report.full
    hits = await peer.search("koala")
    assert [h.port_number for h in hits] == [7002]
