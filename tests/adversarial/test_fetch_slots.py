"""A live peer's fetch slots (issue 12, item 9): one user cannot hold them all, a requester that
reads too slowly loses its slot, and ``offset = size`` costs no reading of the file. After each
attack a well-behaved client fetches a whole file."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from netproto.errors import Busy, Timeout
from peerd.client import PeerClient
from peerd.pacing import PacePolicy
from peerd.share import OpenFile
from tests.support.adversary import (
    HOST,
    STEP,
    Live,
    assert_index_serves,
    assert_peer_serves,
    live_daemons,
    sha256,
    wait_until,
)

BIG = os.urandom(1 << 20) * 24  # 24 MiB: more than every buffer between the two ends holds


async def connect(live: Live, requester: str, cert: str = "peer2") -> PeerClient:
    """A connection to the live peer as ``requester`` (presenting ``cert``)."""
    token = live.peer_token(requester, cert)  # bound to ``cert``, as auth binds it
    return await PeerClient.connect(
        HOST, live.peer_port, "peer1", live.pki.client_ctx(cert),
        token=token, requester=requester, connect_timeout=STEP, request_timeout=STEP,
    )  # fmt: skip


async def fetch_whole(live: Live, requester: str = "peer2") -> None:
    """A well-behaved client fetches the big file whole, signed."""
    peer = await connect(live, requester)
    try:
        stream = await peer.fetch("bulk", "big.bin", os.urandom(32))
        received = 0
        async for chunk in stream.chunks():
            received += len(chunk)
        assert received == len(BIG) and stream.trailer().sha256 == sha256(BIG)
    finally:
        await peer.close()


def slots(live: Live) -> int:
    assert live.peer.service is not None
    return live.peer.service.active_fetches


@pytest_asyncio.fixture(loop_scope="function")
async def live(pki: Any, tmp_path: Path) -> AsyncIterator[Live]:
    overrides = {"max_fetches": 6, "max_fetches_per_requester": 2}
    async with live_daemons(
        pki, tmp_path, files={"bulk/big.bin": BIG}, peer_overrides=overrides
    ) as daemons:
        yield daemons


async def test_one_user_cannot_hold_every_fetch_slot(live: Live) -> None:
    # Each on its own connection: a stream left unread holds back its connection's reading.
    greedy = [await connect(live, "greedy") for _ in range(3)]
    try:
        held = [await g.fetch("bulk", "big.bin", os.urandom(32)) for g in greedy[:2]]  # unread
        with pytest.raises(Busy, match="2 transfers of yours"):  # per user, not per connection
            await greedy[2].fetch("bulk", "big.bin", os.urandom(32))
        assert slots(live) == 2
        await fetch_whole(live, "peer2")  # everyone else is served
        await fetch_whole(live, "peer3")
        for stream in held:
            stream.close()
    finally:
        for g in greedy:
            await g.close()
    await wait_until(lambda: slots(live) == 0, STEP)
    await fetch_whole(live, "greedy")  # and the greedy user again, once its slots are free
    await assert_peer_serves(live)
    await assert_index_serves(live)


async def test_manifest_takes_a_fetch_slot_of_the_requester(live: Live) -> None:
    greedy = [await connect(live, "greedy") for _ in range(3)]
    try:
        [await g.fetch("bulk", "big.bin", os.urandom(32)) for g in greedy[:2]]  # held, unread
        with pytest.raises(Busy, match="2 transfers of yours"):  # no hashing beyond the cap
            await greedy[2].manifest("bulk", "big.bin")
        other = await connect(live, "peer2")
        try:
            assert (await other.manifest("bulk", "big.bin")).manifest.sha256 == sha256(BIG)
        finally:
            await other.close()
        assert slots(live) == 2  # the manifest's slot is back once it is answered
    finally:
        for g in greedy:
            await g.close()
    await wait_until(lambda: slots(live) == 0, STEP)


async def test_a_requester_reading_under_the_floor_loses_its_slot(pki: Any, tmp_path: Path) -> None:
    floor = PacePolicy(min_rate=4 << 20, window=0.5)  # 4 MiB/s, over half a second
    async with live_daemons(
        pki, tmp_path, files={"bulk/big.bin": BIG}, peer_overrides={"serve_pace": floor}
    ) as live:
        peer = await connect(live, "slowpoke")
        failure: BaseException | None = None
        try:
            stream = await peer.fetch("bulk", "big.bin", os.urandom(32))
            started = time.monotonic()
            freed_at: float | None = None
            try:
                async with asyncio.timeout(STEP * 2):
                    async for _ in stream.chunks():  # 256 KiB every 0.25 s: 1 MiB/s
                        if freed_at is None and slots(live) == 0:
                            freed_at = time.monotonic()
                        await asyncio.sleep(0.25)
            except Timeout as exc:
                failure = exc
        finally:
            await peer.close()
        assert freed_at is not None and freed_at - started < STEP  # the slot came back early
        assert failure is not None and "read too slowly" in str(failure)
        await fetch_whole(live)  # a reader keeping the pace gets the whole file
        await assert_index_serves(live)


async def test_resuming_at_the_end_of_a_large_file_reads_none_of_it(
    pki: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    share = tmp_path / "peer1-files"
    path = share / "bulk" / "big.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(BIG)
    old = time.time() - 60  # hashed well after its last change: the digest cache trusts it
    os.utime(path, (old, old))
    read: list[int] = []
    real = OpenFile.read

    def counting(self: OpenFile, pos: int, length: int) -> bytes:
        read.append(length)
        return real(self, pos, length)

    monkeypatch.setattr(OpenFile, "read", counting)
    async with live_daemons(pki, tmp_path) as live:
        peer = await connect(live, "peer2")
        read.clear()  # what the peer read at start (its share's digests and manifests)
        try:
            for _ in range(50):
                stream = await peer.fetch("bulk", "big.bin", os.urandom(32), len(BIG))
                assert [c async for c in stream.chunks()] == []
                trailer = stream.trailer()
                assert (trailer.size, trailer.sha256) == (len(BIG), sha256(BIG))
        finally:
            await peer.close()
        assert read == []  # 50 × 24 MiB not read again, not even once
        await fetch_whole(live)
