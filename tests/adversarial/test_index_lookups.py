"""The index's on-demand store reads against a live daemon: ``holders`` answers one entry per
live peer, fairly, under a per-user rate, and logins never wait behind other reads
(PROTOCOL.md §4.9, §6)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import Callable

import pytest

from indexd.app import IndexConfig, IndexDaemon
from indexd.ratelimit import BucketPolicy
from netproto.errors import RateLimited
from netproto.operations import HoldersReply, SharedFile
from tests.conftest import PKI, IndexClient

CONTENT = hashlib.sha256(b"joey").digest()
PASSWORD = "correct horse battery"

IndexRunner = Callable[[IndexConfig], contextlib.AbstractAsyncContextManager[IndexDaemon]]


async def _user(client: IndexClient, name: str) -> None:
    await client.register(name, PASSWORD)
    await client.login(name, PASSWORD)


async def _holders(client: IndexClient) -> list[str]:
    reply = HoldersReply.from_wire(await client.call("holders", {"sha256": CONTENT}, client.token))
    return [h.domain_name for h in reply.holders]


async def test_many_copies_under_a_low_sorting_name_do_not_crowd_other_holders_out(
    pki: PKI,
    index_config: Callable[..., IndexConfig],
    running_index: IndexRunner,
    index_client: Callable[..., IndexClient],
) -> None:
    copies = [SharedFile(f"copy{i:05d}.bin", "k", 4, CONTENT) for i in range(2_000)]
    async with running_index(index_config()) as index:
        async with index_client(index.port, "mallory") as mallory:
            await _user(mallory, "mallory")
            await mallory.sync("mallory", copies)
        async with index_client(index.port, "peer2") as bob:
            await _user(bob, "bob")
            await bob.sync("peer2", [SharedFile("joey.txt", "koala", 4, CONTENT)])
            assert sorted(await _holders(bob)) == ["mallory", "peer2"]


async def test_holders_and_listing_are_rate_limited_per_user(
    pki: PKI,
    index_config: Callable[..., IndexConfig],
    running_index: IndexRunner,
    index_client: Callable[..., IndexClient],
) -> None:
    config = index_config(lookup_rate=BucketPolicy(burst=3, interval=60.0))
    async with (
        running_index(config) as index,
        index_client(index.port) as mallory,
        index_client(index.port) as bob,
    ):
        await _user(mallory, "mallory")
        await _user(bob, "bob")
        calls = [mallory.call("holders", {"sha256": CONTENT}, mallory.token) for _ in range(6)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert sum(isinstance(r, RateLimited) for r in results) == 3
        with pytest.raises(RateLimited):
            body = {"domain_name": "peer1", "keyword": "k"}
            await mallory.call("listing", body, mallory.token)
        assert await _holders(bob) == []  # another user's bucket is untouched


async def test_a_login_does_not_wait_behind_a_busy_store_reader(
    pki: PKI,
    index_config: Callable[..., IndexConfig],
    running_index: IndexRunner,
    index_client: Callable[..., IndexClient],
) -> None:
    async with running_index(index_config()) as index, index_client(index.port) as alice:
        await alice.register("alice", PASSWORD)
        release = threading.Event()
        # Occupy the read thread as a flood of holders/listing reads would.
        assert index.service is not None
        busy = index.service._reads.submit(release.wait, 30)
        try:
            await asyncio.wait_for(alice.login("alice", PASSWORD), 5)
            assert not busy.done()
        finally:
            release.set()
