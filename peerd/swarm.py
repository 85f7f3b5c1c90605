"""Multi-source, block-verified downloads (PROTOCOL.md §7.1, docs/design.md §5).

Every holder of the same content is asked for its signed manifest (PROTOCOL.md §4.8); a holder
whose signature does not verify under the certificate it presented, or whose manifest is not
the one the index listed (or, without a listing, the first one that checked out), is dropped
and named. The blocks are then fetched from every remaining holder at once with
``fetch_range``: each holder has a window of requests sized to its measured rate, blocks go
out in file order from a random start, and once none is left unassigned the last ones are
asked of a second holder too (the endgame): the loser's stream is cancelled at both ends
(PROTOCOL.md §3.1), uncharged.
Every block is checked against the manifest before it is written at its offset; a bad block is
charged to its sender, which is dropped for this file and named; a holder that vanishes gives
its blocks back to the others. Verified blocks are recorded in a
bitmap beside the partial file, so a download cut off resumes without fetching or hashing them
again. A block's check carries SHA-256 on from the chaining value the manifest lists for the
block before it, and the last block's check finishes it: once every block passed, the whole
file's SHA-256 is the signed one, each byte hashed once, in any order (PROTOCOL.md §4.8).

The way to disk overlaps the transfer: the event loop only cuts the stream into blocks (no
copy: the pieces are the received chunks) and hands them in batches to one worker thread per
download, which checks each block and writes consecutive good ones at once: with ``O_DIRECT``
from an aligned buffer, by a thread of its own while the next blocks are checked, or where the
file system has no direct I/O, with one ``pwritev`` and writeback started early
(:mod:`peerd.writeback`). The bitmap is synced in the background; at the end only the last
direct write and ``fdatasync`` are left.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import random
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from netproto.cbuffer import Buffer
from netproto.errors import Busy, ConnectionClosed, P2PError, RequestError
from netproto.manifest import (
    Manifest,
    ManifestReply,
    RangeRequest,
    publication_valid,
    publish_signing_payload,
)
from peerd.blockplan import BlockMap, BlockPlan
from peerd.client import PeerClient
from peerd.download import DownloadLimits
from peerd.errors import DownloadError, DownloadRefused, UnsafeLocalFile
from peerd.install import install
from peerd.pacing import PaceMeter, PacePolicy
from peerd.share import check_private
from peerd.staging import (
    PART_MODE,
    Staging,
    check_room,
    open_keyword_folder,
    open_share_root,
    part_names,
    remove_empty_folder,
    unlink_quietly,
)
from peerd.threadjob import LOCAL, DiskWork, ThreadJob
from peerd.verify import CheckOutcome, check_size_limit
from peerd.writeback import (
    DirectWriter,
    open_direct,
    pwrite_all,
    start_writeback,
)

log = logging.getLogger(__name__)

#: Requests one holder may have in flight (a serving peer gives one requester 4 slots).
MAX_WINDOW = 3
#: A holder's window holds about this many seconds of its measured rate.
WINDOW_SECONDS = 0.5
#: The most bytes one request asks for (whole blocks; at least one).
MAX_REQUEST = 16 << 20
#: Blocks being checked and written in worker threads while one request's next chunks are read:
#: at most this many bytes of them (at least two blocks), so the network never waits for
#: the disk nor the disk for the network, and memory stays bounded.
STORE_AHEAD = 16 << 20
#: Writeback of the partial file is started each time this much more was written.
WRITEBACK_EVERY = 8 << 20
#: Blocks are handed to a worker thread in batches of about this many bytes (a thread hop
#: per block costs more than its hashing on a busy machine); a batch also leaves after
#: STORE_WAIT seconds, so a slow holder's blocks are not held back.
STORE_BATCH = 4 << 20
STORE_WAIT = 0.05
#: The most pieces one ``pwritev`` takes (Linux's IOV_MAX is 1024).
_MAX_IOV = 512
#: Pieces of a block smaller than this are gathered into one buffer as they arrive.
_SMALL_PIECE = 16 << 10
#: The bitmap is written (after an ``fdatasync`` of the data) at least this often.
CHECKPOINT_SECONDS = 2.0
CHECKPOINT_BYTES = 64 << 20
#: A holder answering ``BUSY`` with ``retry_after`` is asked again after it (at most this long),
#: and at most this many times before it is dropped.
MAX_BUSY_WAIT = 30.0
MAX_BUSY_RETRIES = 5
_BITMAP_VERSION = 1


class Holder(Protocol):
    """One peer holding the content, as the downloader uses it (a :class:`PeerHolder`)."""

    name: str
    #: The keyword and file name this holder lists the content under (each its own).
    keyword: str
    file_name: str

    def public_key(self) -> Ed25519PublicKey:
        """The key of the certificate the peer presented (chain and name checked by TLS)."""
        ...

    async def manifest(self, keyword: str, file_name: str) -> ManifestReply:
        """The peer's signed manifest of the file."""
        ...

    def blocks(self, request: RangeRequest) -> Any:
        """An async iterator of the range's bytes, in chunks."""
        ...


@dataclass
class PeerHolder:
    """A :class:`Holder` over a :class:`~peerd.client.PeerClient` and the file's name there."""

    client: PeerClient
    keyword: str
    file_name: str
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.client.domain_name

    def public_key(self) -> Ed25519PublicKey:
        """The key of the certificate the peer presented."""
        key = self.client.certificate.public_key()
        if not isinstance(key, Ed25519PublicKey):
            raise DownloadError(f"{self.name}'s certificate key is not Ed25519")
        return key

    async def manifest(self, keyword: str, file_name: str) -> ManifestReply:
        """The peer's signed manifest of the file."""
        return await self.client.manifest(keyword, file_name)

    async def blocks(self, request: RangeRequest) -> Any:
        """The range's bytes as the peer sends them."""
        stream = await self.client.fetch_range(request)
        try:
            async for chunk in stream.chunks():
                yield chunk
        finally:
            stream.cancel()  # left early (the endgame's loser, a bad block): the peer stops


@dataclass(frozen=True, slots=True)
class Source:
    """One holder as the index listed it: where it is, and its own keyword, file name,
    manifest digest and publisher signature (PROTOCOL.md §4.9)."""

    domain_name: str
    address: str
    port_number: int
    keyword: str
    file_name: str
    signature: bytes | None = None
    manifest: bytes | None = None


@dataclass(frozen=True, slots=True)
class Listing:
    """What the index listed for the file: size, digest, and (when synced with one) the
    manifest digest and the publisher's signature of ``publisher``; ``sources`` are the
    holders listed, each under its own names."""

    size: int
    sha256: bytes
    manifest: bytes | None = None
    signature: bytes | None = None
    publisher: str | None = None
    sources: tuple[Source, ...] = ()

    def manifest_of(self, holder: str) -> bytes | None:
        """The manifest digest the index listed for ``holder`` itself: a source's own, never
        another publisher's (``manifest`` stands for a holder that is not a source)."""
        source = next((s for s in self.sources if s.domain_name == holder), None)
        return self.manifest if source is None else source.manifest

    def signature_of(self, holder: str) -> bytes | None:
        """The publisher signature the index listed for ``holder``, if any."""
        if self.signature is not None and self.publisher == holder:
            return self.signature
        return next((s.signature for s in self.sources if s.domain_name == holder), None)


@dataclass
class PeerStats:
    """One holder's part in a download: bytes, blocks, measured rate, why it was dropped."""

    name: str
    received: int = 0
    blocks: int = 0
    rate: float = 0.0
    dropped: str | None = None


@dataclass(frozen=True, slots=True)
class SwarmProgress:
    """Where a download stands: bytes verified of the total, and each holder's stats."""

    done: int
    total: int
    peers: tuple[PeerStats, ...]


@dataclass(frozen=True, slots=True)
class SwarmResult:
    """A finished multi-source download."""

    path: Path
    size: int
    sha256: bytes
    blocks: int
    resumed_blocks: int
    peers: tuple[PeerStats, ...]
    checks: tuple[CheckOutcome, ...]
    already_present: bool = False

    @property
    def dropped(self) -> dict[str, str]:
        """The holders dropped, and why."""
        return {p.name: p.dropped for p in self.peers if p.dropped is not None}


class SwarmIncomplete(DownloadRefused):
    """Every holder is gone before the last block; the verified blocks are kept to resume."""


class TooSlow(P2PError):
    """A holder under the floor of ``--min-transfer-rate`` (PROTOCOL.md §6)."""


class LocalWriteFailed(DownloadError):
    """Our own disk failed a block write: the download stops, no holder is blamed."""


class BadBlock(P2PError):
    """A block that does not hash to the manifest's digest of it."""

    def __init__(self, index: int) -> None:
        super().__init__(f"block {index} does not match the manifest")
        self.index = index


# --- the manifest checks ---------------------------------------------------------------------


def check_manifest(
    reply: ManifestReply,
    holder: str,
    key: Ed25519PublicKey,
    keyword: str,
    file_name: str,
    listing: Listing | None,
) -> CheckOutcome | None:
    """The first failed check of a holder's manifest (PROTOCOL.md §7.1), None if it passes."""
    manifest, digest = reply.manifest, reply.manifest.digest()
    if reply.publisher != holder or reply.keyword.casefold() != keyword.casefold():
        return CheckOutcome(
            "publisher", False, f"{holder} signed it as {reply.publisher} under {reply.keyword!r}"
        )
    payload = publish_signing_payload(
        publisher=reply.publisher,
        keyword=reply.keyword,
        file_name=file_name,
        size=manifest.size,
        sha256=manifest.sha256,
        manifest_digest=digest,
    )
    if not publication_valid(key, reply.signature, payload):
        return CheckOutcome(
            "publisher-signature", False, f"{holder}'s signature of its manifest does not verify"
        )
    if listing is not None:
        if (manifest.size, manifest.sha256) != (listing.size, listing.sha256):
            return CheckOutcome(
                "index-digest", False, f"{holder}'s manifest is not of the content the index listed"
            )
        listed_manifest = listing.manifest_of(holder)
        if listed_manifest is not None and digest != listed_manifest:
            return CheckOutcome(
                "index-manifest",
                False,
                f"the index lists manifest {listed_manifest.hex()[:16]}…, {holder} serves"
                f" {digest.hex()[:16]}…",
            )
        listed_signature = listing.signature_of(holder)
        if listed_signature is not None:
            listed = publish_signing_payload(
                publisher=holder,
                keyword=reply.keyword,
                file_name=file_name,
                size=listing.size,
                sha256=listing.sha256,
                manifest_digest=listed_manifest or digest,
            )
            if not publication_valid(key, listed_signature, listed):
                return CheckOutcome(
                    "index-signature",
                    False,
                    f"the publisher signature the index lists is not {holder}'s",
                )
    return None


# --- the partial file and its bitmap (blocking) ---------------------------------------------


def _bitmap_doc(keyword: str, file_name: str, digest: bytes, size: int, have: bytes) -> bytes:
    return json.dumps(
        {
            "blocks": _BITMAP_VERSION,
            "keyword": keyword,
            "file_name": file_name,
            "manifest": digest.hex(),
            "size": size,
            "bitmap": have.hex(),
        }
    ).encode()


def _read_bitmap(
    staging: Staging, keyword: str, file_name: str, digest: bytes, manifest: Manifest
) -> BlockMap | None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(staging.meta, flags, dir_fd=staging.dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 1 << 20:
            return None
        check_private(st, "")
        doc = json.loads(os.pread(fd, 1 << 20, 0))
        if not isinstance(doc, dict) or doc.get("blocks") != _BITMAP_VERSION:
            return None
        if (doc.get("keyword"), doc.get("file_name"), doc.get("size")) != (
            keyword,
            file_name,
            manifest.size,
        ) or doc.get("manifest") != digest.hex():
            return None
        return BlockMap(manifest.count, bytes.fromhex(str(doc.get("bitmap"))))
    except (OSError, ValueError, UnsafeLocalFile):
        return None
    finally:
        os.close(fd)


@dataclass
class BlockPart:
    """The partial file of a multi-source download: opened, locked, its bitmap loaded."""

    staging: Staging
    fd: int
    have: BlockMap
    keyword: str
    file_name: str
    digest: bytes
    manifest: Manifest
    unsynced: int = 0
    #: The one thread that checks and writes blocks: one, so that hashing on a 2-core machine
    #: leaves the event loop its core (more threads only contend for it and for the GIL).
    writer: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="peerd-blocks"
        ),
        init=False,
    )
    #: Bytes written since writeback was last started (by the worker threads), and the
    #: writeback being started.
    _dirty: int = field(default=0, init=False)
    _writeback: concurrent.futures.Future[bool] | None = field(default=None, init=False)
    _dirty_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    #: Writes blocks with ``O_DIRECT`` where the file system allows it (:mod:`peerd.writeback`).
    direct: DirectWriter | None = None

    @classmethod
    def open(
        cls, staging: Staging, keyword: str, file_name: str, digest: bytes, manifest: Manifest
    ) -> BlockPart:
        """Open (or create) the partial file, locked; keep its verified blocks if its bitmap
        is of this very manifest, else start afresh."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(staging.part, flags, dir_fd=staging.dir_fd)
        except FileNotFoundError:
            fd = os.open(
                staging.part, flags | os.O_CREAT | os.O_EXCL, PART_MODE, dir_fd=staging.dir_fd
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise UnsafeLocalFile(f"the partial file of {staging.path} is not a plain file")
            check_private(st, f"the partial file of {staging.path}")
            have = _read_bitmap(staging, keyword, file_name, digest, manifest)
            if have is None or st.st_size != manifest.size:
                have = BlockMap(manifest.count)
                os.ftruncate(fd, 0)
            os.ftruncate(fd, manifest.size)  # sparse: blocks land at their offsets
            direct = _open_direct_writer(staging, fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DownloadError(f"{staging.path} is already being downloaded") from exc
            raise
        except BaseException:
            os.close(fd)
            raise
        return cls(staging, fd, have, keyword, file_name, digest, manifest, direct=direct)

    def write_blocks(self, blocks: Sequence[tuple[int, Sequence[Buffer]]]) -> list[int]:
        """Check each block (its index and the pieces it arrived in) against the manifest and
        write those that match at their offsets, consecutive ones in one system call; the
        indexes of those that do not match (nothing of them is written)."""
        bad: list[int] = []
        run: list[Buffer] = []
        run_at = run_end = -1
        good: list[tuple[int, Sequence[Buffer]]] = []
        for index, pieces in blocks:
            if not self.manifest.block_valid(index, pieces):
                bad.append(index)
                continue
            offset, length = self.manifest.span(index)
            if offset != run_end or len(run) + len(pieces) > _MAX_IOV:
                self._write_run(run, run_at)
                run, run_at = [], offset
            run.extend(pieces)
            run_end = offset + length
            good.append((index, pieces))
        self._write_run(run, run_at)
        return bad

    def stop_writing(self) -> None:
        """Drop the blocks not yet being written and wait for the batch being written (at most
        one): no write lands after this (blocking, briefly)."""
        self.writer.shutdown(wait=True, cancel_futures=True)
        with self._dirty_lock:
            writeback = self._writeback
        if writeback is not None:
            concurrent.futures.wait([writeback])
        if self.direct is not None:
            self.direct.release()

    def _write_run(self, pieces: list[Buffer], offset: int) -> None:
        if not pieces:
            return
        if self.direct is not None and self.direct.direct:
            self.direct.write(pieces, offset)  # straight to the device: nothing to write back
            return
        pwrite_all(self.fd, pieces, offset, max_iov=_MAX_IOV)
        length = sum(len(p) for p in pieces)
        with self._dirty_lock:
            self._dirty += length
            due = self._dirty >= WRITEBACK_EVERY
            if due:
                self._dirty = 0
            if due and (self._writeback is None or self._writeback.done()):
                # Writeback of everything written so far starts now, in large runs, so the
                # final fsync has little left. In a thread of its own: starting it may wait
                # for the disk.
                self._writeback = LOCAL.submit(start_writeback, self.fd, 0, self.manifest.size)

    def close(self) -> None:
        """Release a part opened for nothing (its download was cancelled meanwhile): the
        writer, the buffers and the descriptors (blocking, briefly)."""
        self.stop_writing()
        os.close(self.fd)
        if self.direct is not None:
            os.close(self.direct.fd)

    def sync(self) -> None:
        """Put every block written so far on disk (the direct writes handed over first)."""
        if self.direct is not None:
            self.direct.drain()
        os.fdatasync(self.fd)

    def checkpoint(self, have: bytes | None = None) -> None:
        """Put the written blocks on disk, then record ``have`` (a bitmap taken before, so
        every block it names is covered by the sync; default: the current one) beside them
        (in a new file, renamed over the old one, so a crash leaves one or the other)."""
        bits = self.have.to_bytes() if have is None else have
        self.sync()
        doc = _bitmap_doc(self.keyword, self.file_name, self.digest, self.manifest.size, bits)
        tmp = self.staging.meta + ".new"
        unlink_quietly(self.staging.dir_fd, tmp)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, PART_MODE, dir_fd=self.staging.dir_fd)
        try:
            os.write(fd, doc)
        finally:
            os.close(fd)
        d = self.staging.dir_fd
        os.replace(tmp, self.staging.meta, src_dir_fd=d, dst_dir_fd=d)


def _open_direct_writer(staging: Staging, fd: int) -> DirectWriter | None:
    """A :class:`DirectWriter` on the partial file ``fd`` has open (locked), or None where the
    file system has no ``O_DIRECT``. The file is opened again by name, so it must still be
    the one ``fd`` holds (not a file put in its place meanwhile)."""
    direct = open_direct(staging.dir_fd, staging.part)
    if direct is None:
        return None
    try:
        ours, theirs = os.fstat(fd), os.fstat(direct)
        if (ours.st_dev, ours.st_ino) != (theirs.st_dev, theirs.st_ino):
            raise UnsafeLocalFile(f"the partial file of {staging.path} was replaced")
        return DirectWriter(direct, fd)
    except BaseException:
        os.close(direct)
        raise


class _BlockBuffer:
    """The pieces of one block as its chunks arrive: large pieces kept as they came (no copy),
    small ones gathered, so a holder sending tiny chunks cannot make a block of many pieces."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.size = 0
        self.pieces: list[Buffer] = []

    def add(self, view: memoryview) -> None:
        """Append the next bytes of the block."""
        if len(view) >= _SMALL_PIECE:
            self.pieces.append(view)
        elif self.pieces and isinstance(last := self.pieces[-1], bytearray):
            last += view
        else:
            self.pieces.append(bytearray(view))
        self.size += len(view)


# --- the download ------------------------------------------------------------------------------


@dataclass
class _Peer:
    holder: Holder
    stats: PeerStats
    tasks: dict[asyncio.Task[None], list[int]] = field(default_factory=dict)
    started: float = 0.0
    #: Its pace while it has requests in flight (a fresh meter each time it starts again).
    meter: PaceMeter | None = None
    #: Not asked again before this time (it answered ``BUSY``), and how often it did.
    resting_until: float = 0.0
    busy: int = 0

    def window(self, block_size: int) -> tuple[int, int]:
        """How many requests it may have in flight, and how many blocks each asks for."""
        wanted = max(1, int(self.stats.rate * WINDOW_SECONDS / block_size))
        most = max(1, MAX_REQUEST // block_size)
        run = max(1, min(most, -(-wanted // MAX_WINDOW)))
        return MAX_WINDOW, run


#: A batch of blocks being checked and written: their indexes, and the job (the bad ones).
_Stored = tuple[list[int], ThreadJob[list[int]]]


class _Swarm:
    def __init__(
        self,
        part: BlockPart,
        holders: Sequence[Holder],
        request: Callable[[Holder, int, int], RangeRequest],
        disk: DiskWork,
        on_progress: Callable[[SwarmProgress], None] | None,
        clock: Callable[[], float],
        start: int,
        pace: PacePolicy | None = None,
    ) -> None:
        self.part = part
        self.pace = pace or PacePolicy()
        self.manifest = part.manifest
        self.plan = BlockPlan(part.have, start)
        self.peers = [_Peer(h, PeerStats(h.name)) for h in holders]
        self.request = request
        self.disk = disk
        self.on_progress = on_progress
        self.clock = clock
        self.last_checkpoint = clock()
        self.task_peer: dict[asyncio.Task[None], _Peer] = {}
        #: Blocks being checked and written in worker threads.
        self.storing: set[ThreadJob[list[int]]] = set()
        #: The checkpoint running in the background, if any (the transfer never waits for it).
        self.checkpointing: asyncio.Task[None] | None = None

    def progress(self) -> None:
        if self.on_progress is not None:
            size, bs = self.manifest.size, self.manifest.block_size
            done = self.plan.have.done * bs
            if self.manifest.count and self.manifest.count - 1 in self.plan.have:
                done -= self.manifest.count * bs - size  # the last block is short
            self.on_progress(SwarmProgress(done, size, tuple(p.stats for p in self.peers)))

    def _missing_bytes(self) -> int:
        return max(0, self.manifest.size - self.plan.have.done * self.manifest.block_size)

    def _issue(self) -> None:
        now = self.clock()
        for peer in self.peers:
            if peer.stats.dropped is not None or peer.resting_until > now:
                continue
            limit, run = peer.window(self.manifest.block_size)
            while len(peer.tasks) < limit:
                blocks = self.plan.take(peer.stats.name, run) or self.plan.endgame(peer.stats.name)
                if not blocks:
                    break
                if peer.meter is None:
                    peer.meter = PaceMeter(self.pace, now, self._missing_bytes())
                task = asyncio.create_task(self._fetch(peer, blocks))
                peer.tasks[task] = blocks
                self.task_peer[task] = peer

    async def run(self) -> None:
        self.progress()
        while not self.plan.complete:
            self._issue()
            wake = self._next_wake()
            delay = None if wake is None else max(0.0, wake - self.clock())
            if not self.task_peer:
                if delay is None:
                    break
                await asyncio.sleep(delay)  # every holder left is resting after a BUSY
                continue
            done, _ = await asyncio.wait(
                self.task_peer, timeout=delay, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                peer = self.task_peer.pop(task)
                blocks = peer.tasks.pop(task)
                if not peer.tasks:
                    peer.meter = None  # idle from now: its pace is measured afresh
                if task.cancelled():
                    self.plan.give_back(peer.stats.name, blocks)
                    continue
                exc = task.exception()
                if isinstance(exc, LocalWriteFailed):
                    raise exc  # our disk, not the holder's fault
                if isinstance(exc, Busy) and self._rest(peer, exc, blocks):
                    continue
                if exc is not None:
                    self._drop(peer, exc, blocks)
            self._check_pace()
            self._maybe_checkpoint()

    def _next_wake(self) -> float | None:
        """When a pace check falls due or a resting holder may be asked again, if ever."""
        now, times = self.clock(), []
        for peer in self.peers:
            if peer.stats.dropped is not None:
                continue
            if peer.resting_until > now:
                times.append(peer.resting_until)
            if peer.tasks and peer.meter is not None:
                times.append(peer.meter.next_check())
        wake = min(times, default=math.inf)
        return None if math.isinf(wake) else wake

    def _check_pace(self) -> None:
        """Drop every holder under the floor, even one that sends nothing at all."""
        now = self.clock()
        for peer in self.peers:
            if peer.stats.dropped is None and peer.tasks and peer.meter is not None:
                failure = peer.meter.update(now)
                if failure is not None:
                    self._drop(peer, TooSlow(failure), [])

    def _rest(self, peer: _Peer, exc: Busy, blocks: list[int]) -> bool:
        """Rest a holder that answered ``BUSY`` for its ``retry_after`` (bounded); False to
        drop it instead (no ``retry_after``, or too many times)."""
        retry = exc.extra.get("retry_after")
        peer.busy += 1
        if not isinstance(retry, int | float) or peer.busy > MAX_BUSY_RETRIES:
            return False
        wait = min(max(float(retry), 0.0), MAX_BUSY_WAIT)
        peer.resting_until = max(peer.resting_until, self.clock() + wait)
        log.info("%s is busy; asking it again in %.1f s", peer.stats.name, wait)
        self.plan.give_back(peer.stats.name, blocks)
        return True

    def _drop(self, peer: _Peer, exc: BaseException, blocks: list[int]) -> None:
        if isinstance(exc, BadBlock):
            reason = f"sent a bad block ({exc.index})"
        elif isinstance(exc, TooSlow):
            reason = f"too slow ({exc})"
        elif isinstance(exc, ConnectionClosed | OSError | TimeoutError):
            reason = f"vanished ({exc})"
        elif isinstance(exc, RequestError | P2PError):
            reason = f"failed: {exc}"
        else:
            raise exc
        self.plan.give_back(peer.stats.name, blocks)
        if peer.stats.dropped is not None:  # another of its requests failed after the first
            if isinstance(exc, BadBlock):
                peer.stats.dropped = reason  # a bad block is what it is named for
            return
        log.info(
            "dropping %s from the download of %s: %s", peer.stats.name, self.part.file_name, reason
        )
        peer.stats.dropped = reason
        for task, others in list(peer.tasks.items()):
            task.cancel()
            self.plan.give_back(peer.stats.name, others)
        self.progress()

    def _maybe_checkpoint(self) -> None:
        """Start a checkpoint in the background when one is due and none is running; raise
        the local write error of the last one, if it failed."""
        running = self.checkpointing
        if running is not None:
            if not running.done():
                return
            self.checkpointing = None
            if (exc := running.exception()) is not None:
                raise exc
        now = self.clock()
        if (
            self.part.unsynced >= CHECKPOINT_BYTES
            or now - self.last_checkpoint >= CHECKPOINT_SECONDS
        ):
            self.part.unsynced = 0
            self.last_checkpoint = now
            # The bitmap as it is now: every block in it is written, so the sync covers it.
            self.checkpointing = asyncio.create_task(self._checkpoint(self.plan.have.to_bytes()))

    async def _checkpoint(self, have: bytes | None = None) -> None:
        try:
            await self.disk.run(self.part.checkpoint, have)
        except OSError as exc:
            raise LocalWriteFailed(_write_failed(self.part.staging.path, exc)) from exc

    async def settle(self) -> None:
        """Wait for the background work to end: the blocks being written (so none lands after
        this) and the checkpoint; then, unless every block is in, a last checkpoint."""
        if self.storing:
            await asyncio.wait([job.future for job in self.storing])
        running, self.checkpointing = self.checkpointing, None
        if running is not None:
            await asyncio.wait([running])
            if not self.plan.complete and (exc := running.exception()) is not None:
                raise exc
        if not self.plan.complete:
            await self._checkpoint()

    def _store(self, batch: list[tuple[int, list[Buffer]]]) -> _Stored | None:
        """Check and write a batch of blocks in the writer thread (None: the download is
        ending and the batch is dropped unwritten)."""
        try:
            job = ThreadJob(self.part.write_blocks, batch, pool=self.part.writer)
        except RuntimeError:  # the writer is shut down
            return None
        self.storing.add(job)
        job.future.add_done_callback(lambda _: self.storing.discard(job))
        return [index for index, _ in batch], job

    async def _fetch(self, peer: _Peer, blocks: list[int]) -> None:
        """Ask ``peer`` for the run ``blocks``; check and write its blocks in worker threads
        (in batches of :data:`STORE_BATCH`) while the next ones are read, at most
        :data:`STORE_AHEAD` bytes of them at a time."""
        manifest = self.manifest
        first, last = blocks[0], blocks[-1]
        offset = first * manifest.block_size
        length = min(len(blocks) * manifest.block_size, manifest.size - offset)
        ahead = max(2, STORE_AHEAD // max(STORE_BATCH, manifest.block_size))
        started = self.clock()
        index = first
        block = _BlockBuffer(manifest.span(index)[1])
        batch: list[tuple[int, list[Buffer]]] = []
        batch_bytes, batch_started = 0, started
        stores: collections.deque[_Stored] = collections.deque()
        chunks = peer.holder.blocks(self.request(peer.holder, offset, length))
        try:
            async for chunk in chunks:
                view = memoryview(chunk)
                peer.stats.received += len(view)
                now = self.clock()
                if peer.meter is not None and (why := peer.meter.update(now, len(view))):
                    raise TooSlow(why)
                while view:
                    if index > last:
                        raise BadBlock(index)  # more bytes than the range holds
                    take = min(len(view), block.length - block.size)
                    block.add(view[:take])
                    view = view[take:]
                    if block.size == block.length:
                        if index not in self.plan.have:  # else the endgame's loser: dropped
                            if not batch:
                                batch_started = now
                            batch.append((index, block.pieces))
                            batch_bytes += block.length
                        index += 1
                        if index <= last:
                            block = _BlockBuffer(manifest.span(index)[1])
                if batch and (batch_bytes >= STORE_BATCH or now - batch_started >= STORE_WAIT):
                    if (stored := self._store(batch)) is not None:
                        stores.append(stored)
                    batch, batch_bytes = [], 0
                while stores and (stores[0][1].future.done() or len(stores) > ahead):
                    await self._settle(peer, stores)
            if index <= last:
                raise ConnectionClosed(
                    f"the range ended after {index - first} of {len(blocks)} blocks"
                )
            if batch and (stored := self._store(batch)) is not None:
                stores.append(stored)
            batch = []
            while stores:
                await self._settle(peer, stores)
        except BaseException:
            # The request failed (the holder vanished, was too slow, overran its range) or was
            # cancelled (its holder dropped, or the endgame's loser): the blocks that came whole
            # before are still checked, kept if good and charged to their sender if bad. The
            # holder is told to stop sending first (its stream is cancelled: PROTOCOL.md §3.1).
            await _close_quietly(chunks)
            if batch and (stored := self._store(batch)) is not None:
                stores.append(stored)
            while stores:
                try:
                    await self._settle(peer, stores)
                except asyncio.CancelledError:
                    continue  # cancelled again meanwhile: these blocks are still ours to judge
            raise
        finally:
            for _, job in stores:
                job.future.add_done_callback(_retrieve)  # cancelled: no longer ours to judge
        elapsed = max(self.clock() - started, 1e-3)
        rate = length / elapsed
        peer.stats.rate = rate if not peer.stats.rate else 0.5 * peer.stats.rate + 0.5 * rate

    async def _settle(self, peer: _Peer, stores: collections.deque[_Stored]) -> None:
        """Wait for the first batch of ``stores`` to be checked and written, then take it off
        (a cancel while waiting leaves it there), count its good blocks, and raise
        :class:`BadBlock` if one did not match (or the local error if the writes failed)."""
        indexes, job = stores[0]
        if not job.future.done():
            await asyncio.wait([job.future])
        stores.popleft()
        try:
            bad = job.future.result()
        except OSError as exc:
            raise LocalWriteFailed(_write_failed(self.part.staging.path, exc)) from exc
        losers: set[str] = set()
        for index in indexes:
            if index in bad or index in self.plan.have:
                continue  # a bad block; or the endgame's loser (already here from another)
            peer.stats.blocks += 1
            self.part.unsynced += self.manifest.span(index)[1]
            losers |= self.plan.finished(peer.stats.name, index)
        for other in self.peers:
            if other.stats.name in losers:
                for task, run in list(other.tasks.items()):
                    if all(b in self.plan.have for b in run):
                        task.cancel()  # the endgame's loser: its stream is cancelled
        self.progress()
        if bad:
            raise BadBlock(bad[0])


async def _close_quietly(chunks: Any) -> None:
    """Close a holder's range iterator now (not when it is collected), whatever it raises:
    its request ended, or was cancelled (a cancel meanwhile is the caller's already)."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await aclose()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # the request it belonged to ended: not logged as never retrieved


async def _gather_manifests(
    holders: Sequence[Holder],
    listing: Listing | None,
    timeout: float,
) -> tuple[ManifestReply | None, list[Holder], dict[str, CheckOutcome]]:
    """Every holder's manifest (asked under the holder's own names), checked; the agreed one,
    the holders that serve it, and the failed check of each holder refused."""

    async def one(holder: Holder) -> ManifestReply | BaseException:
        try:
            async with asyncio.timeout(timeout):
                return await holder.manifest(holder.keyword, holder.file_name)
        except (P2PError, OSError, TimeoutError) as exc:
            return exc

    replies = await asyncio.gather(*(one(h) for h in holders))
    refused: dict[str, CheckOutcome] = {}
    good: list[tuple[Holder, ManifestReply]] = []
    for holder, reply in zip(holders, replies, strict=True):
        if isinstance(reply, BaseException):
            refused[holder.name] = CheckOutcome("manifest", False, f"{holder.name}: {reply}")
            continue
        failed = check_manifest(
            reply, holder.name, holder.public_key(), holder.keyword, holder.file_name, listing
        )
        if failed is not None:
            refused[holder.name] = failed
        else:
            good.append((holder, reply))
    if not good:
        return None, [], refused
    agreed = _agreed_digest([reply.manifest.digest() for _, reply in good], listing)
    chosen: ManifestReply | None = None
    serving: list[Holder] = []
    for holder, reply in good:
        if reply.manifest.digest() == agreed:
            chosen = chosen or reply
            serving.append(holder)
        else:
            refused[holder.name] = CheckOutcome(
                "manifest-digest", False, f"{holder.name} serves a different manifest"
            )
    return chosen, serving, refused


def _agreed_digest(digests: list[bytes], listing: Listing | None) -> bytes:
    """The manifest most holders serve; on a tie the one the searched entry listed, else the
    first (one publisher alone cannot push the others' manifest out)."""
    counts = {d: digests.count(d) for d in digests}
    best = max(counts.values())
    tied = [d for d in counts if counts[d] == best]
    searched = listing.manifest if listing is not None else None
    return searched if searched is not None and searched in tied else tied[0]


async def swarm_download(
    holders: Sequence[Holder],
    keyword: str,
    file_name: str,
    dest: Path,
    *,
    listing: Listing | None = None,
    overwrite: bool = False,
    on_progress: Callable[[SwarmProgress], None] | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    manifest_timeout: float = 30.0,
    limits: DownloadLimits | None = None,
) -> SwarmResult:
    """Download ``keyword/file_name`` into the share ``dest`` from every holder at once, held
    to ``limits`` (the largest file, and each holder's pace: PROTOCOL.md §6); blocks go out in
    file order from a random start (drawn from ``rng``)."""
    limits = limits or DownloadLimits()
    if listing is not None:
        _check_size(listing.size, limits, [])  # before a holder is even asked
    reply, serving, refused = await _gather_manifests(holders, listing, manifest_timeout)
    checks: list[CheckOutcome] = list(refused.values())
    if reply is None:
        first = next(iter(refused.values()), CheckOutcome("manifest", False, "no holder"))
        raise DownloadRefused(first.name, first.detail, tuple(checks))
    manifest = reply.manifest
    _check_size(manifest.size, limits, checks)
    digest = manifest.digest()
    checks.append(
        CheckOutcome("manifest", True, f"{manifest.count} blocks of {manifest.block_size} bytes")
    )
    checks.append(
        CheckOutcome(
            "publisher-signature",
            True,
            f"signed by {', '.join(h.name for h in serving)} under their certificate keys",
        )
    )
    if listing is not None and all(listing.manifest_of(h.name) for h in serving):
        checks.append(CheckOutcome("index-manifest", True, "the manifest digest the index listed"))
    disk = DiskWork()
    # Each open hands back what it opened if the download is cancelled meanwhile (unwanted=).
    root_fd = await disk.run(open_share_root, dest, unwanted=os.close)
    try:
        folder = await disk.run(
            open_keyword_folder, root_fd, dest, keyword, unwanted=lambda f: os.close(f.fd)
        )
        staging = Staging(folder.fd, file_name, dest / folder.name / file_name)
        try:
            part = await disk.run(
                BlockPart.open,
                staging,
                keyword,
                file_name,
                digest,
                manifest,
                unwanted=BlockPart.close,
            )
            try:
                resumed = part.have.done
                missing = manifest.size - resumed * manifest.block_size
                await disk.run(check_room, folder.fd, staging.path, max(0, missing))

                def request(holder: Holder, offset: int, length: int) -> RangeRequest:
                    # each holder is asked under its own names (PROTOCOL.md §4.9)
                    return RangeRequest(holder.keyword, holder.file_name, digest, offset, length)

                # From a random start (downloaders of one file then ask the swarm for
                # different blocks first; the blocks' checks need no order: PROTOCOL.md §7.1).
                start = 0
                if manifest.count:
                    start = (rng or random.SystemRandom()).randrange(manifest.count)
                swarm = _Swarm(part, serving, request, disk, on_progress, clock, start, limits.pace)
                for name, check in refused.items():
                    swarm.peers.append(_Peer(_Refused(name), PeerStats(name, dropped=check.detail)))
                try:
                    await swarm.run()
                finally:
                    for task in list(swarm.task_peer):
                        task.cancel()
                    if swarm.task_peer:
                        ended, _ = await asyncio.wait(swarm.task_peer)
                        for task in ended:
                            if not task.cancelled():
                                task.exception()  # the download failed anyway
                    await swarm.settle()
                peers = tuple(p.stats for p in swarm.peers)
                if not part.have.complete:
                    gone = "; ".join(f"{p.name} {p.dropped}" for p in peers if p.dropped)
                    raise SwarmIncomplete(
                        "holders",
                        f"every holder is gone with {manifest.count - part.have.done} of"
                        f" {manifest.count} blocks missing ({gone}); the verified blocks are"
                        " kept, download again to resume",
                        tuple(checks),
                        partial_kept=True,
                    )
                checks.append(CheckOutcome("blocks", True, f"{manifest.count} blocks verified"))
                # Each block's check carried SHA-256 on from the block before it, and the last
                # one's finished it: the whole file's SHA-256 is the signed one (PROTOCOL.md
                # §4.8), computed over every byte written, once.
                whole = manifest.sha256
                checks.append(CheckOutcome("sha256", True, whole.hex()))
                await disk.run(part.sync)
                present = await disk.run(_install, staging, part.fd, file_name, whole, overwrite)
            finally:
                # Off the loop: the writer may still wait for the device.
                await disk.run(part.stop_writing)
                disk.close_when_idle(part.fd)
                if part.direct is not None:
                    disk.close_when_idle(part.direct.fd)
        finally:
            disk.close_when_idle(folder.fd)
            if folder.created:
                await disk.run(remove_empty_folder, root_fd, folder.name)
    finally:
        disk.close_when_idle(root_fd)
    return SwarmResult(
        staging.path,
        manifest.size,
        whole,
        manifest.count,
        resumed,
        peers,
        tuple(checks),
        present,
    )


def _check_size(size: int, limits: DownloadLimits, checks: list[CheckOutcome]) -> None:
    """Refuse a file over ``--max-download-size`` (PROTOCOL.md §6)."""
    failed = check_size_limit(size, limits.max_size)
    if failed is not None:
        raise DownloadRefused(failed.name, failed.detail, (*checks, failed))


def _write_failed(path: Path, exc: OSError) -> str:
    """The message of a local write error (disk full, I/O error) on ``path``."""
    return f"cannot write {path}: {exc.strerror or exc}; the verified blocks are kept"


def _install(staging: Staging, fd: int, file_name: str, digest: bytes, overwrite: bool) -> bool:
    return install(staging, fd, file_name, digest, overwrite=overwrite)


@dataclass
class _Refused:
    """A holder refused before the transfer, listed among the peers with its reason."""

    name: str
    keyword: str = ""
    file_name: str = ""

    def public_key(self) -> Ed25519PublicKey:  # pragma: no cover - never asked
        raise DownloadError("refused")

    async def manifest(self, keyword: str, file_name: str) -> ManifestReply:  # pragma: no cover
        raise DownloadError("refused")

    def blocks(self, request: RangeRequest) -> Any:  # pragma: no cover - never asked
        raise DownloadError("refused")


__all__ = [
    "BadBlock",
    "BlockPart",
    "Holder",
    "Listing",
    "LocalWriteFailed",
    "PeerHolder",
    "PeerStats",
    "Source",
    "SwarmIncomplete",
    "SwarmProgress",
    "SwarmResult",
    "TooSlow",
    "check_manifest",
    "part_names",
    "swarm_download",
]
