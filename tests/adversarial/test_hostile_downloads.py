"""The downloader against a hostile serving peer (issue 12, items 5 and 6): empty chunks, sizes
the index never listed or no disk could hold, a trickle that never ends, a poisoned prefix left
to be resumed elsewhere, stale partial files, and a ``list`` naming files the index never
listed. After each trick the same downloader still fetches, verifies and keeps a genuine file
from the live peer."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from indexd.app import IndexDaemon
from netproto.errors import RemoteProtocolError
from netproto.operations import ListedFile, SharedFile
from netproto.server import StreamReply
from netproto.tls import client_context
from peerd.client import IndexClient, PeerClient
from peerd.daemon import PeerDaemon
from peerd.download import DownloadLimits, DownloadRefused, NotEnoughRoom, download, part_names
from peerd.install import FINAL_MODE
from peerd.pacing import PacePolicy
from peerd.shell import Shell
from peerd.ui import ShellView, make_console
from tests.support.adversary import (
    HEALTH_CONTENT,
    HEALTH_FILE,
    HEALTH_KEYWORD,
    HOST,
    PASSWORD,
    STEP,
    HostilePeer,
    Live,
    assert_peer_serves,
    index_config,
    live_daemons,
    peer_config,
    put,
    sha256,
    tree,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

CONTENT = os.urandom(48 << 10)  # 48 KiB: sent in small pieces by the tricks below
LISTED = ListedFile("new.bin", len(CONTENT), sha256(CONTENT))
#: A floor a trickle falls under within a second (the default window is 30 s).
BRISK = DownloadLimits(pace=PacePolicy(min_rate=16 << 10, window=0.5, grace=5))


@dataclass
class TricklingPeer(HostilePeer):
    """A hostile peer that waits ``delay`` seconds before each piece it sends."""

    delay: float = 0.0

    async def _fetch(self, ctx: Any, req: Any) -> Any:
        reply = await super()._fetch(ctx, req)

        async def slowed() -> AsyncIterator[bytes]:
            async for piece in reply.chunks:
                await asyncio.sleep(self.delay)
                yield piece

        return StreamReply(reply.header, slowed(), reply.trailer)


def pieces(size: int) -> Any:
    """A ``chunks`` hook cutting the file into pieces of ``size`` bytes."""
    return lambda req, data: [data[i : i + size] for i in range(0, len(data), size)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    async with live_daemons(pki, tmp_path_factory.mktemp("adv-hostile-downloads")) as daemons:
        yield daemons


@pytest_asyncio.fixture(loop_scope="module")
async def hostile(pki: Any) -> AsyncIterator[TricklingPeer]:
    peer = TricklingPeer(pki, content=CONTENT, names=[LISTED.filename])
    await peer.start()
    yield peer
    await peer.stop()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """The downloader's share, with a file of its own."""
    put(tmp_path / "share", "koala/mine.txt", b"already here\n")
    return tmp_path / "share"


async def connect(port: int, live: Live, name: str = "peer1") -> PeerClient:
    """peer2's connection to the peer serving on ``port`` as ``name``, with a peer token
    bound to peer2's certificate (as ``auth`` issues it)."""
    return await PeerClient.connect(
        HOST, port, name, live.pki.client_ctx("peer2"),
        token=live.peer_token("peer2"), requester="peer2", connect_timeout=STEP,
        request_timeout=STEP,
    )  # fmt: skip


async def still_downloads(live: Live, dest: Path) -> None:
    """The health check of the downloader: a genuine file from the live peer lands, verified,
    the user's own with its final mode; and the live peer still serves others."""
    peer = await connect(live.peer_port, live)
    try:
        result = await download(peer, HEALTH_KEYWORD, HEALTH_FILE, dest)
    finally:
        await peer.close()
    assert result.path.read_bytes() == HEALTH_CONTENT and result.ok
    st = result.path.stat()
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == FINAL_MODE
    await assert_peer_serves(live)


async def attempt(
    hostile: HostilePeer,
    live: Live,
    dest: Path,
    *,
    expected: ListedFile | None = LISTED,
    limits: DownloadLimits | None = None,
) -> BaseException:
    """One download from the hostile peer; the error it ended with."""
    peer = await connect(hostile.server.port, live)
    try:
        async with asyncio.timeout(STEP):
            await download(peer, "koala", "new.bin", dest, expected=expected, limits=limits)
    except Exception as exc:
        return exc
    finally:
        await peer.close()
    raise AssertionError("the hostile download was accepted")


def partial(dest: Path) -> Path:
    return dest / "koala" / part_names("new.bin")[0]


# --- empty chunks ------------------------------------------------------------------------


async def test_an_empty_chunk_is_a_protocol_error_and_what_came_before_is_discarded(
    live: Live, hostile: TricklingPeer, pki: Any, dest: Path
) -> None:
    before = tree(dest)
    hostile.chunks = lambda req, data: [data[:1000], b"", data[1000:]]
    error = await attempt(hostile, live, dest)
    assert isinstance(error, RemoteProtocolError) and "chunk of 0 bytes" in str(error)
    assert tree(dest) == before  # no partial file: a peer that broke the protocol is not resumed
    await still_downloads(live, dest)


async def test_a_flood_of_empty_chunks_ends_at_the_first_one(
    live: Live, hostile: TricklingPeer, pki: Any, dest: Path
) -> None:
    hostile.chunks = lambda req, data: [b""] * 100_000 + [data]
    started = time.monotonic()
    error = await attempt(hostile, live, dest, expected=None)
    assert isinstance(error, RemoteProtocolError)
    assert time.monotonic() - started < 5.0
    await still_downloads(live, dest)


# --- sizes -------------------------------------------------------------------------------


async def test_a_size_other_than_the_index_listed_is_refused_before_a_byte_lands(
    live: Live, hostile: TricklingPeer, pki: Any, dest: Path
) -> None:
    before = tree(dest)
    hostile.header = lambda req, honest: {**honest, "size": len(CONTENT) + 1}
    error = await attempt(hostile, live, dest)
    assert isinstance(error, DownloadRefused) and error.check == "size"
    assert "the index listed" in str(error)
    assert tree(dest) == before
    await still_downloads(live, dest)


async def test_a_size_over_max_download_size_is_refused_before_a_byte_lands(
    live: Live, hostile: TricklingPeer, pki: Any, dest: Path
) -> None:
    before = tree(dest)
    hostile.header = lambda req, honest: {**honest, "size": 2**53}
    error = await attempt(hostile, live, dest, expected=None)
    assert isinstance(error, DownloadRefused) and error.check == "size"
    assert "over --max-download-size" in str(error)
    assert tree(dest) == before
    await still_downloads(live, dest)


async def test_a_listed_size_over_the_limit_is_refused_without_asking_the_peer(
    live: Live, hostile: TricklingPeer, pki: Any, dest: Path
) -> None:
    limits = DownloadLimits(max_size=len(CONTENT) - 1)
    error = await attempt(hostile, live, dest, limits=limits)
    assert isinstance(error, DownloadRefused) and error.check == "size"
    assert hostile.requests == []
    await still_downloads(live, dest)


async def test_a_size_the_disk_cannot_hold_is_refused_before_a_byte_lands(
    live: Live, hostile: TricklingPeer, pki: Any, dest: Path
) -> None:
    before = tree(dest)
    fs = os.statvfs(dest)
    free = fs.f_bavail * fs.f_frsize
    hostile.header = lambda req, honest: {**honest, "size": free}  # fits, but not its margin
    limits = DownloadLimits(max_size=2**53)
    error = await attempt(hostile, live, dest, expected=None, limits=limits)
    assert isinstance(error, NotEnoughRoom) and "not enough free space" in str(error)
    assert tree(dest) == before
    await still_downloads(live, dest)


# --- pace ------------------------------------------------------------------------------------


async def test_a_trickle_is_abandoned_and_resumed_from_the_same_peer_once_it_behaves(
    live: Live, hostile: TricklingPeer, pki: Any, dest: Path
) -> None:
    hostile.chunks = pieces(256)
    hostile.delay = 0.05  # about 5 KiB/s: under a floor of 16 KiB/s
    started = time.monotonic()
    error = await attempt(hostile, live, dest, limits=BRISK)
    assert isinstance(error, DownloadRefused) and error.partial_kept
    assert "abandoned" in str(error) and "under 16 KiB/s over 0.5 s" in str(error)
    assert time.monotonic() - started < 5.0
    kept = partial(dest)
    assert 0 < kept.stat().st_size < len(CONTENT)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600  # the user's alone until verified
    hostile.delay, hostile.chunks = 0.0, pieces(16 << 10)  # it behaves now
    peer = await connect(hostile.server.port, live)
    try:
        result = await download(peer, "koala", "new.bin", dest, expected=LISTED, limits=BRISK)
    finally:
        await peer.close()
    assert result.resumed_from > 0 and result.path.read_bytes() == CONTENT
    assert hostile.requests[-1].offset == result.resumed_from
    await still_downloads(live, dest)


async def test_a_poisoned_prefix_is_not_resumed_from_another_peer(
    live: Live, hostile: TricklingPeer, pki: Any, dest: Path, tmp_path: Path
) -> None:
    # peer1 (hostile) sends the first bytes of a file that is not the listed one, then
    # trickles until it is abandoned; peer3 shares the genuine file the index lists.
    poisoned = bytes(b ^ 0xFF for b in CONTENT)
    hostile.content, hostile.chunks, hostile.delay = poisoned, pieces(4096), 0.3
    hostile.trailer = None
    error = await attempt(hostile, live, dest, limits=BRISK)
    assert isinstance(error, DownloadRefused) and error.partial_kept
    put(tmp_path / "peer3-files", "koala/new.bin", CONTENT)
    honest = PeerDaemon(peer_config(pki, "peer3", live.index_port, tmp_path / "peer3-files"))
    await asyncio.wait_for(honest.start(), STEP)
    try:
        peer = await connect(honest.port, live, "peer3")
        try:
            result = await download(peer, "koala", "new.bin", dest, expected=LISTED)
        finally:
            await peer.close()
    finally:
        await asyncio.wait_for(honest.stop(grace=0.5), STEP)
    assert result.resumed_from == 0  # resuming peer1's bytes would fail the digest check
    assert result.path.read_bytes() == CONTENT and result.ok
    await still_downloads(live, dest)


# --- stale partial files ---------------------------------------------------------------------


async def test_stale_partial_files_are_removed_when_the_peer_starts(
    live: Live, pki: Any, tmp_path: Path
) -> None:
    share = tmp_path / "peer3-files"
    put(share, "koala/kept.txt", b"shared\n")
    old_part, old_meta = part_names("old.bin")
    new_part, new_meta = part_names("new.bin")
    for name in (old_part, old_meta, new_part, new_meta):
        put(share, f"koala/{name}", b"partial")
    four_days_ago = time.time() - 4 * 86400
    for name in (old_part, old_meta):
        os.utime(share / "koala" / name, (four_days_ago, four_days_ago))
    daemon = PeerDaemon(peer_config(pki, "peer3", live.index_port, share))
    await asyncio.wait_for(daemon.start(), STEP)
    try:
        names = sorted(p.name for p in (share / "koala").iterdir())
        assert names == sorted(["kept.txt", new_part, new_meta])
        peer = await connect(daemon.port, live, "peer3")
        try:
            assert await peer.list("koala") == ["kept.txt"]
        finally:
            await peer.close()
    finally:
        await asyncio.wait_for(daemon.stop(grace=0.5), STEP)


# --- menu 2 against a peer whose list names files the index never listed ---------------------


async def test_menu_2_fetches_only_what_the_index_listed_for_the_hostile_peer(
    pki: Any, tmp_path: Path
) -> None:
    index = IndexDaemon(index_config(pki, tmp_path))
    await asyncio.wait_for(index.start(), STEP)
    extra = [f"unlisted-{i:03d}.bin" for i in range(300)]
    liar = HostilePeer(pki, content=CONTENT, names=[LISTED.filename, *extra])
    port = await liar.start()
    me = PeerDaemon(peer_config(pki, "peer3", index.port, tmp_path / "peer3-files"))
    try:
        # The hostile peer lists one file at the index, as peer1, then offers 301.
        ctx = client_context(pki.ca, pki.cert("peer1"), pki.key("peer1"))
        async with await IndexClient.connect(
            HOST, index.port, ctx, server_hostname="indexd"
        ) as client:
            await client.register("peer1", PASSWORD)
            await client.auth("peer1", PASSWORD)
            await client.sync(
                "peer1", port, [SharedFile("new.bin", "koala", LISTED.size, LISTED.sha256)]
            )
        await asyncio.wait_for(me.start(), STEP)
        out = io.StringIO()
        view = ShellView(make_console(interactive=False, file=out), interactive=False)
        shell = Shell(me, view, _Lines("2 koala"), echo=True)
        await asyncio.wait_for(shell.run(), STEP * 2)
    finally:
        await asyncio.wait_for(me.stop(grace=0.5), STEP)
        await liar.stop()
        await asyncio.wait_for(index.stop(grace=0.5), STEP)
    text = out.getvalue()
    assert "peer1 offers 300 file(s) the index does not list for it: not downloaded" in text
    assert [r.file_name for r in liar.requests] == ["new.bin"]
    assert "✓ downloaded koala/new.bin from peer1" in text  # the listed one, verified
    landed = sorted(p.name for p in (tmp_path / "peer3-files" / "koala").iterdir())
    assert landed == ["new.bin"]


class _Lines:
    """Shell input given in advance."""

    def __init__(self, *lines: str) -> None:
        self.lines = list(lines)

    async def read(self, prompt: str) -> str | None:
        return self.lines.pop(0) if self.lines else None
