"""Multi-source downloads (peerd/swarm.py) against in-memory holders: bad blocks charged to
their sender, holders that vanish, a partial resumed without fetching a verified block again,
and the manifest checks (PROTOCOL.md §7.1); then over real mutual TLS from two peer servers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import hashlib
import json
import os
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from netproto.errors import Busy, ConnectionClosed
from netproto.manifest import (
    MIN_BLOCK,
    Manifest,
    ManifestReply,
    RangeRequest,
    manifest_of,
    publish_signing_payload,
    sign_publication,
)
from peerd import swarm, writeback
from peerd.blockplan import BlockMap
from peerd.download import DownloadLimits
from peerd.errors import DownloadRefused, UnsafeLocalFile
from peerd.staging import Staging
from peerd.swarm import (
    BlockPart,
    Listing,
    LocalWriteFailed,
    PeerHolder,
    Source,
    SwarmIncomplete,
    SwarmProgress,
    swarm_download,
)

CONTENT = os.urandom(12 * MIN_BLOCK + 777)
MANIFEST = manifest_of(CONTENT)
TIMEOUT = 20


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class FakeHolder:
    """An in-memory holder signing its manifest with its own key; it can lie or vanish."""

    def __init__(
        self,
        name: str,
        content: bytes = CONTENT,
        *,
        bad_block: int | None = None,
        vanish_after: int | None = None,
        forge: bool = False,
        manifest: Manifest | None = None,
        delay: float = 0.0,
        keyword: str = "koala",
        file_name: str = "file.bin",
    ) -> None:
        self.name = name
        self.keyword = keyword
        self.file_name = file_name
        self.content = content
        self.key = Ed25519PrivateKey.generate()
        self.bad_block = bad_block
        self.vanish_after = vanish_after  # blocks served before the connection drops
        self.forge = forge
        self.served_manifest = manifest or manifest_of(content)
        self.delay = delay
        self.requests: list[tuple[int, int]] = []
        self.asked: list[tuple[str, str]] = []
        self.blocks_sent = 0

    def public_key(self) -> Ed25519PublicKey:
        return self.key.public_key()

    def signature(self, keyword: str, file_name: str, manifest: Manifest) -> bytes:
        payload = publish_signing_payload(
            publisher=self.name,
            keyword=keyword,
            file_name=file_name,
            size=manifest.size,
            sha256=manifest.sha256,
            manifest_digest=manifest.digest(),
        )
        key = Ed25519PrivateKey.generate() if self.forge else self.key
        return sign_publication(key, payload)

    async def manifest(self, keyword: str, file_name: str) -> ManifestReply:
        self.asked.append((keyword, file_name))
        m = self.served_manifest
        return ManifestReply(m, keyword, self.name, self.signature(keyword, file_name, m))

    async def blocks(self, request: RangeRequest) -> AsyncIterator[bytes]:
        assert (request.keyword, request.file_name) == (self.keyword, self.file_name)
        self.requests.append((request.offset, request.length))
        bs = MANIFEST.block_size
        for start in range(request.offset, request.offset + request.length, bs):
            if self.vanish_after is not None and self.blocks_sent >= self.vanish_after:
                raise ConnectionClosed("connection reset by peer")
            await asyncio.sleep(self.delay)
            block = self.content[start : min(start + bs, request.offset + request.length)]
            if start // bs == self.bad_block:
                block = bytes(len(block))
            self.blocks_sent += 1
            yield block

    def fetched_blocks(self) -> set[int]:
        bs = MANIFEST.block_size
        return {b for off, n in self.requests for b in range(off // bs, -(-(off + n) // bs))}


def listing(**overrides: Any) -> Listing:
    fields: dict[str, Any] = {
        "size": len(CONTENT),
        "sha256": sha(CONTENT),
        "manifest": MANIFEST.digest(),
    }
    fields.update(overrides)
    return Listing(**fields)


async def get(holders: list[FakeHolder], dest: Path, **kw: Any) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return await swarm_download(holders, "koala", "file.bin", dest, rng=random.Random(7), **kw)


async def test_three_honest_holders_each_serve_blocks_and_the_file_is_whole(
    tmp_path: Path,
) -> None:
    holders = [FakeHolder(f"peer{i}", delay=0.002) for i in (1, 2, 3)]
    seen: list[SwarmProgress] = []
    result = await get(holders, tmp_path, listing=listing(), on_progress=seen.append)
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT
    assert all(p.blocks > 0 for p in result.peers)
    assert result.dropped == {}
    assert seen[-1].done == seen[-1].total == len(CONTENT)
    assert [c.name for c in result.checks] == [
        "manifest",
        "publisher-signature",
        "index-manifest",
        "blocks",
        "sha256",
    ]


async def test_a_bad_block_is_charged_to_its_sender_who_is_dropped_and_named(
    tmp_path: Path,
) -> None:
    liar = FakeHolder("mallory", bad_block=None)
    liar.bad_block = 0  # every block it sends is bad: the first one gets it dropped
    liar.content = bytes(len(CONTENT))
    honest = FakeHolder("peer1", delay=0.001)
    result = await get([liar, honest], tmp_path, listing=listing())
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT
    assert list(result.dropped) == ["mallory"]
    assert "bad block" in result.dropped["mallory"]


async def test_a_holder_killed_mid_transfer_gives_its_blocks_to_the_others(
    tmp_path: Path,
) -> None:
    dying = FakeHolder("peer2", vanish_after=2)
    other = FakeHolder("peer1", delay=0.003)
    result = await get([dying, other], tmp_path, listing=listing())
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT
    assert "vanished" in result.dropped["peer2"]
    assert result.peers[0].blocks + result.peers[1].blocks == MANIFEST.count
    assert result.peers[1].blocks >= MANIFEST.count - 3  # the window's requests, at most


async def test_all_holders_gone_keeps_a_partial_that_a_later_download_completes(
    tmp_path: Path,
) -> None:
    first = [FakeHolder("peer1", vanish_after=3), FakeHolder("peer2", vanish_after=2)]
    with pytest.raises(SwarmIncomplete) as info:
        await get(first, tmp_path, listing=listing())
    assert info.value.partial_kept and info.value.check == "holders"
    assert "peer1" in str(info.value) and "peer2" in str(info.value)
    assert not (tmp_path / "koala" / "file.bin").exists()
    later = FakeHolder("peer3")
    result = await get([later], tmp_path, listing=listing())
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT
    assert result.resumed_blocks >= 2
    assert len(later.fetched_blocks()) == MANIFEST.count - result.resumed_blocks


async def test_a_resume_fetches_nothing_that_was_already_verified(tmp_path: Path) -> None:
    cut = FakeHolder("peer1", vanish_after=7)
    with pytest.raises(SwarmIncomplete):
        await get([cut], tmp_path, listing=listing())
    again = FakeHolder("peer1")
    result = await get([again], tmp_path, listing=listing())
    verified_before = set(range(MANIFEST.count)) - again.fetched_blocks()
    assert len(verified_before) == result.resumed_blocks >= 6
    assert verified_before <= cut.fetched_blocks()
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT


async def test_a_forged_publisher_signature_is_refused_and_named(tmp_path: Path) -> None:
    with pytest.raises(DownloadRefused) as info:
        await get([FakeHolder("peer1", forge=True)], tmp_path, listing=listing())
    assert info.value.check == "publisher-signature"
    assert not (tmp_path / "koala").exists()


async def test_an_index_listing_a_wrong_manifest_digest_is_refused_and_named(
    tmp_path: Path,
) -> None:
    with pytest.raises(DownloadRefused) as info:
        await get([FakeHolder("peer1")], tmp_path, listing=listing(manifest=bytes(32)))
    assert info.value.check == "index-manifest"


async def test_a_holder_serving_a_different_manifest_is_refused_and_named(tmp_path: Path) -> None:
    other = manifest_of(CONTENT[::-1])
    with pytest.raises(DownloadRefused) as info:
        await get([FakeHolder("peer2", manifest=other)], tmp_path, listing=listing())
    assert info.value.check == "index-digest"
    odd = FakeHolder("peer3", manifest=other)
    result = await get([FakeHolder("peer1"), odd], tmp_path)  # no listing: the first one's
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT
    assert "different manifest" in result.dropped["peer3"]
    assert "manifest-digest" in [c.name for c in result.checks if c.passed is False]
    assert odd.requests == []


async def test_holders_listing_the_content_under_other_names_are_asked_under_theirs(
    tmp_path: Path,
) -> None:
    holders = [
        FakeHolder("peer1", delay=0.001),
        FakeHolder("peer2", delay=0.001, keyword="wombat", file_name="copy.bin"),
    ]
    result = await get(holders, tmp_path, listing=listing())
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT
    assert [h.asked for h in holders] == [[("koala", "file.bin")], [("wombat", "copy.bin")]]
    assert result.dropped == {} and all(p.blocks > 0 for p in result.peers)


async def test_an_empty_file_downloads_with_no_blocks(tmp_path: Path) -> None:
    result = await get([FakeHolder("peer1", b"")], tmp_path)
    assert (tmp_path / "koala" / "file.bin").read_bytes() == b""
    assert result.blocks == 0


# --- over real mutual TLS ----------------------------------------------------------------------


async def test_two_real_peers_serve_one_download_with_signed_manifests(
    peer_rig: Any, tmp_path: Path
) -> None:
    content = os.urandom(5 * MIN_BLOCK + 99)
    for name in ("peer1", "peer3"):
        folder = tmp_path / name / "koala"
        folder.mkdir(parents=True)
        (folder / "file.bin").write_bytes(content)
    servers = [await peer_rig.serve(tmp_path / n, n) for n in ("peer1", "peer3")]
    async with asyncio.timeout(TIMEOUT):
        clients = [
            await peer_rig.connect(s.port, domain_name=n)
            for s, n in zip(servers, ("peer1", "peer3"), strict=True)
        ]
        holders = [PeerHolder(c, "koala", "file.bin") for c in clients]
        manifest = (await clients[0].manifest("koala", "file.bin")).manifest
        result = await swarm_download(
            holders,
            "koala",
            "file.bin",
            tmp_path / "mine",
            listing=Listing(len(content), sha(content), manifest.digest()),
        )
    assert (tmp_path / "mine" / "koala" / "file.bin").read_bytes() == content
    assert result.dropped == {}
    assert sum(p.blocks for p in result.peers) == manifest.count


async def test_a_range_left_early_is_cancelled_at_the_serving_peer_freeing_its_slot(
    peer_rig: Any, tmp_path: Path
) -> None:
    # One fetch slot in all: while the first range holds it, a second is BUSY. The range is
    # far longer than the server's output buffers, so unread it would hold the slot.
    content = os.urandom(64 << 20)
    (tmp_path / "koala").mkdir()
    (tmp_path / "koala" / "big.bin").write_bytes(content)
    server = await peer_rig.serve(tmp_path, "peer1", max_fetches=1)
    async with asyncio.timeout(TIMEOUT):
        client = await peer_rig.connect(server.port, domain_name="peer1")
        digest = (await client.manifest("koala", "big.bin")).manifest.digest()
        request = RangeRequest("koala", "big.bin", digest, 0, len(content))
        first = await client.fetch_range(request)
        async for _ in first.chunks():
            break
        with pytest.raises(Busy):
            await client.fetch_range(request)
        first.cancel()
        await asyncio.gather(*client.conn._cancelling)  # the cancel's reply: the stream is over
        second = await client.fetch_range(request)  # the slot is free again
        second.cancel()
        await asyncio.gather(*client.conn._cancelling)
        # The swarm's holder does the same when the download leaves a range early.
        blocks = PeerHolder(client, "koala", "big.bin").blocks(request)
        await anext(blocks)
        await blocks.aclose()
        await asyncio.gather(*client.conn._cancelling)
        third = await client.fetch_range(request)
        third.cancel()


class Trickler(FakeHolder):
    """A holder sending one byte every 29 s of an injected clock (each inside the frame
    timeout); it gives up after ``chunks`` of them."""

    def __init__(self, name: str, clock: list[float], chunks: int = 20) -> None:
        super().__init__(name)
        self.clock = clock
        self.chunks = chunks

    async def blocks(self, request: RangeRequest) -> AsyncIterator[bytes]:
        self.requests.append((request.offset, request.length))
        for i in range(self.chunks):
            await asyncio.sleep(0)
            self.clock[0] += 29.0
            yield self.content[request.offset + i : request.offset + i + 1]
        raise ConnectionClosed("the trickle ran dry")


async def test_a_sole_holder_trickling_under_the_rate_floor_is_dropped_as_too_slow(
    tmp_path: Path,
) -> None:
    now = [0.0]
    slow = Trickler("snail", now)
    with pytest.raises(SwarmIncomplete) as info:
        await get([slow], tmp_path, listing=listing(), clock=lambda: now[0])
    assert info.value.partial_kept
    assert "snail too slow" in str(info.value)


async def test_a_file_over_max_download_size_is_refused_before_a_holder_is_asked(
    tmp_path: Path,
) -> None:
    holder = FakeHolder("peer1")
    small = DownloadLimits(max_size=len(CONTENT) - 1)
    with pytest.raises(DownloadRefused) as info:
        await get([holder], tmp_path, listing=listing(), limits=small)
    assert info.value.check == "size"
    assert holder.asked == [] and not (tmp_path / "koala").exists()


async def test_a_manifest_over_max_download_size_is_refused_before_a_byte_lands(
    tmp_path: Path,
) -> None:
    holder = FakeHolder("peer1")
    small = DownloadLimits(max_size=len(CONTENT) - 1)
    with pytest.raises(DownloadRefused) as info:
        await get([holder], tmp_path, limits=small)
    assert info.value.check == "size"
    assert holder.requests == [] and not (tmp_path / "koala").exists()


async def test_a_local_disk_error_fails_the_download_without_dropping_the_holders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(self: BlockPart, blocks: object) -> list[int]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(BlockPart, "write_blocks", disk_full)
    holders = [FakeHolder("peer1"), FakeHolder("peer2")]
    with pytest.raises(LocalWriteFailed) as info:
        await get(holders, tmp_path, listing=listing())
    assert not isinstance(info.value, SwarmIncomplete)
    assert "No space left on device" in str(info.value)
    assert "vanished" not in str(info.value)
    assert sum(len(h.requests) for h in holders) <= 2 * 3  # one window each, no holder rotation


class BusyOnce(FakeHolder):
    """A holder that answers its first request ``BUSY`` with ``retry_after``."""

    async def blocks(self, request: RangeRequest) -> AsyncIterator[bytes]:
        if not self.requests:
            self.requests.append((request.offset, 0))
            raise Busy("all fetch slots taken", retry_after=0.05)
        async for block in super().blocks(request):
            yield block


async def test_a_busy_holder_is_asked_again_after_its_retry_after(tmp_path: Path) -> None:
    holder = BusyOnce("peer1")
    result = await get([holder], tmp_path, listing=listing())
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT
    assert result.dropped == {}


class AlwaysBusy(FakeHolder):
    """A holder that answers every request ``BUSY``."""

    async def blocks(self, request: RangeRequest) -> AsyncIterator[bytes]:
        self.requests.append((request.offset, 0))
        raise Busy("all fetch slots taken", retry_after=0.01)
        yield b""  # pragma: no cover - an async generator


async def test_a_holder_busy_too_often_is_dropped(tmp_path: Path) -> None:
    with pytest.raises(SwarmIncomplete) as info:
        await get([AlwaysBusy("peer1")], tmp_path, listing=listing())
    assert "server busy" in str(info.value) or "slots" in str(info.value)


async def test_each_holder_is_checked_against_its_own_listed_manifest(tmp_path: Path) -> None:
    garbage = bytes(len(CONTENT))
    # The listed SHA-256, and the chaining values of other bytes up to the last block.
    chain = (*manifest_of(garbage).blocks[:-1], sha(CONTENT))
    fake = Manifest(len(CONTENT), sha(CONTENT), MANIFEST.block_size, chain)
    mallory = FakeHolder("mallory", garbage, manifest=fake)
    honest = [FakeHolder("peer1"), FakeHolder("peer2")]

    def source(name: str, digest: bytes) -> Source:
        return Source(name, "127.0.0.1", 7000, "koala", "file.bin", manifest=digest)

    listed = listing(
        manifest=None,
        sources=(
            source("mallory", fake.digest()),
            source("peer1", MANIFEST.digest()),
            source("peer2", MANIFEST.digest()),
        ),
    )
    result = await get([mallory, *honest], tmp_path, listing=listed)
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT
    assert list(result.dropped) == ["mallory"]
    assert mallory.requests == []


class Stalling(FakeHolder):
    """A holder that sends nothing until its requests are given up; it records each one it
    saw cancelled (its stream closed unread by the downloader)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.cancelled = 0

    async def blocks(self, request: RangeRequest) -> AsyncIterator[bytes]:
        self.requests.append((request.offset, request.length))
        try:
            await asyncio.Event().wait()  # never set: only a cancel ends it
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        yield b""  # pragma: no cover - an async generator


async def test_the_endgame_asks_a_second_holder_and_cancels_the_loser_uncharged(
    tmp_path: Path,
) -> None:
    stalling = Stalling("peer2")
    fast = FakeHolder("peer1", delay=0.001)
    result = await get([stalling, fast], tmp_path, listing=listing())
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT
    assert stalling.requests and stalling.cancelled == len(stalling.requests)
    assert result.dropped == {}  # the loser is not charged with anything
    assert result.peers[0].blocks == 0 and result.peers[1].blocks == MANIFEST.count


async def test_a_single_holder_is_asked_in_file_order_from_a_random_start(
    tmp_path: Path,
) -> None:
    # The start is drawn from the rng get() passes (seeded): the same draw here.
    start = random.Random(7).randrange(MANIFEST.count)
    assert start != 0  # the seed is one whose draw tells a random start from the first block
    holder = FakeHolder("peer1")
    await get([holder], tmp_path)
    assert holder.requests[0][0] == start * MANIFEST.block_size
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT


async def test_several_holders_are_asked_in_file_order_from_a_random_start(
    tmp_path: Path,
) -> None:
    # The start is drawn from the rng get() passes (seeded): the same draw here.
    start = random.Random(7).randrange(MANIFEST.count)
    assert start != 0  # the seed is one whose draw tells the two orders apart
    holders = [FakeHolder(f"peer{i}", delay=0.002) for i in (1, 2)]
    await get(holders, tmp_path)
    first = min(
        (offset for h in holders for offset, _ in h.requests[:1]),
        key=lambda offset: (offset - start * MANIFEST.block_size) % len(CONTENT),
    )
    assert first == start * MANIFEST.block_size


def _takes_o_direct(folder: Path) -> bool:
    probe = folder / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
    except OSError as exc:
        assert exc.errno in (errno.EINVAL, errno.EOPNOTSUPP)
        return False
    finally:
        probe.unlink()
    return True


async def test_blocks_go_to_disk_with_o_direct_where_the_file_system_takes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct_runs: list[int] = []
    original = writeback.DirectWriter.write

    def counted(self: writeback.DirectWriter, pieces: Any, offset: int) -> None:
        direct_runs.append(offset)
        original(self, pieces, offset)

    monkeypatch.setattr(writeback.DirectWriter, "write", counted)
    await get([FakeHolder("peer1")], tmp_path)
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT
    assert bool(direct_runs) == _takes_o_direct(tmp_path)


# --- the partial file's direct writes ------------------------------------------------------------


def _direct_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the file system has no ``O_DIRECT``, let the partial file's second descriptor be
    an ordinary one: the direct writer works the same over it."""
    real = writeback.open_direct

    def opened(dir_fd: int, name: str) -> int | None:
        fd = real(dir_fd, name)
        if fd is None:
            fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        return fd

    monkeypatch.setattr(swarm, "open_direct", opened)


def _staging(folder: Path) -> Staging:
    """The staging of ``file.bin`` in ``folder``, on a descriptor of its own (closed by
    the caller: ``staging.dir_fd``)."""
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return Staging(dir_fd, "file.bin", folder / "file.bin")


def _recorded_blocks(folder: Path, staging: Staging) -> BlockMap:
    """The verified blocks the bitmap beside the partial file names."""
    doc = json.loads((folder / staging.meta).read_bytes())
    return BlockMap(MANIFEST.count, bytes.fromhex(doc["bitmap"]))


def test_a_checkpoint_waits_for_the_direct_write_in_flight_before_recording_its_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _direct_anywhere(monkeypatch)
    staging = _staging(tmp_path)
    part = BlockPart.open(staging, "koala", "file.bin", MANIFEST.digest(), MANIFEST)
    assert part.direct is not None
    direct_fd = part.direct.fd
    held, release = threading.Event(), threading.Event()
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: memoryview, pos: int) -> int:
        if fd == direct_fd:  # the direct write waits until the test lets it go
            held.set()
            release.wait(TIMEOUT)
        return real_pwrite(fd, data, pos)

    monkeypatch.setattr(os, "pwrite", pwrite)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        part.checkpoint()  # a bitmap with no block yet
        before = (tmp_path / staging.meta).read_bytes()
        bs = MANIFEST.block_size
        assert part.write_blocks([(0, [CONTENT[:bs]]), (1, [CONTENT[bs : 2 * bs]])]) == []
        assert held.wait(TIMEOUT)  # handed over to the writer's thread, and held there
        part.have.add(0)
        part.have.add(1)
        checkpoint = pool.submit(part.checkpoint, part.have.to_bytes())
        concurrent.futures.wait([checkpoint], timeout=0.3)
        assert not checkpoint.done()
        assert (tmp_path / staging.meta).read_bytes() == before
        release.set()
        checkpoint.result(TIMEOUT)
        recorded = _recorded_blocks(tmp_path, staging)
        assert recorded.done == 2 and 0 in recorded and 1 in recorded
        assert os.pread(part.fd, 2 * bs, 0) == CONTENT[: 2 * bs]
    finally:
        release.set()
        pool.shutdown()
        part.stop_writing()
        os.close(direct_fd)
        os.close(part.fd)
        os.close(staging.dir_fd)


def test_a_partial_file_replaced_before_its_direct_open_is_refused_and_the_descriptor_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _direct_anywhere(monkeypatch)
    staging = _staging(tmp_path)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    fd = os.open(tmp_path / staging.part, flags, 0o600)
    try:
        (tmp_path / "elsewhere").write_bytes(b"")
        os.replace(tmp_path / "elsewhere", tmp_path / staging.part)  # after the first open
        before = sorted(os.listdir("/proc/self/fd"))
        with pytest.raises(UnsafeLocalFile) as info:
            swarm._open_direct_writer(staging, fd)
        assert sorted(os.listdir("/proc/self/fd")) == before
        assert f"the partial file of {staging.path} was replaced" in str(info.value)
    finally:
        os.close(fd)
        os.close(staging.dir_fd)


async def test_without_o_direct_every_block_goes_to_disk_with_ordinary_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts: list[BlockPart] = []
    ordinary: list[int] = []
    real_open = BlockPart.open

    def open_part(*args: Any) -> BlockPart:
        part = real_open(*args)
        parts.append(part)
        return part

    def pwrite_all(fd: int, pieces: Any, pos: int, **kwargs: Any) -> None:
        ordinary.append(sum(len(p) for p in pieces))
        writeback.pwrite_all(fd, pieces, pos, **kwargs)

    monkeypatch.setattr(swarm, "open_direct", lambda dir_fd, name: None)
    monkeypatch.setattr(BlockPart, "open", staticmethod(open_part))
    monkeypatch.setattr(swarm, "pwrite_all", pwrite_all)
    result = await get([FakeHolder("peer1")], tmp_path)
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT
    assert result.blocks == MANIFEST.count
    assert [part.direct for part in parts] == [None]
    assert sum(ordinary) == len(CONTENT)  # every block once, through pwritev


async def test_a_download_cancelled_while_its_partial_file_opens_leaves_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opening, release = threading.Event(), threading.Event()
    original = BlockPart.open

    def slow_open(*args: Any) -> BlockPart:
        opening.set()
        release.wait(TIMEOUT)
        return original(*args)

    monkeypatch.setattr(BlockPart, "open", slow_open)
    # The keyword folder exists already, so it is not removed (as one the download made would
    # be) from under the open that finishes after the cancel.
    (tmp_path / "koala").mkdir()
    before = set(os.listdir("/proc/self/fd"))
    task = asyncio.create_task(get([FakeHolder("peer1")], tmp_path))
    assert await asyncio.to_thread(opening.wait, TIMEOUT)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):  # the open finishes in its thread, then hands everything back
        if set(os.listdir("/proc/self/fd")) <= before:
            break
        await asyncio.sleep(0.01)
    assert set(os.listdir("/proc/self/fd")) <= before
