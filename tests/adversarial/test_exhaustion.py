"""Resource exhaustion against live daemons (PROTOCOL.md §6 deadlines and caps).

Connection caps (BUSY), handshake floods, slowloris, slow readers, pipelined amplification,
huge sync lists, and running out of file descriptors. Each case asserts the documented outcome
and that a healthy client is served by the same daemon afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from indexd.staging import StagingLimits
from netproto.errors import (
    AuthFailed,
    BadRequest,
    Busy,
    ConnectionClosed,
    NotFound,
    TokenInvalid,
)
from netproto.operations import SharedFile, SyncPart, SyncRequest, split_sync
from netproto.server import ServerLimits
from tests.support.adversary import (
    HEALTH_FILE,
    HEALTH_KEYWORD,
    HOST,
    PASSWORD,
    STEP,
    assert_closed,
    assert_index_serves,
    assert_serves,
    close_writer,
    error_code,
    expect_error_and_close,
    indexd_process,
    live_daemons,
    open_conn,
    open_raw,
    peerd_process,
    read_message,
    request_frame,
    wait_until,
)
from tests.support.leaves import client_ctx_for

KINDS = ("index", "peer")


# --- connection caps ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_connections_past_the_per_address_cap_get_busy_while_other_addresses_are_served(
    pki: Any, tmp_path: Path, kind: str
) -> None:
    limits = ServerLimits(max_connections_per_address=4)
    async with live_daemons(pki, tmp_path, index_limits=limits, peer_limits=limits) as live:
        port, name, ctx = live.target(kind)
        attacker = ("127.0.0.3", 0)
        held = [await open_raw(port, name, ctx, local_addr=attacker) for _ in range(4)]
        reader, writer = await open_raw(port, name, ctx, local_addr=attacker)
        await expect_error_and_close(reader, "BUSY")
        close_writer(writer)
        await assert_serves(live, kind)  # 127.0.0.1 has its own count
        for _, w in held:
            close_writer(w)
        # Once they are gone the address is served again.
        async with asyncio.timeout(STEP):
            while True:
                try:
                    await assert_serves(live, kind, local_addr=attacker)
                    break
                except (AssertionError, Busy, ConnectionError, OSError):
                    await asyncio.sleep(0.05)


# --- unproven connections (PROTOCOL.md §6) ----------------------------------------------------

PROOF = ServerLimits(max_pending=8, max_pending_per_address=4, proof_required=True)


@pytest.mark.parametrize("kind", KINDS)
async def test_strangers_holding_tcp_connections_without_tls_cannot_shut_out_a_client(
    pki: Any, tmp_path: Path, kind: str
) -> None:
    # A handshake deadline far off: only making room may close the strangers' connections.
    limits = dataclasses.replace(PROOF, handshake_timeout=120.0)
    async with live_daemons(pki, tmp_path, index_limits=limits, peer_limits=limits) as live:
        port, _, _ = live.target(kind)
        loop = asyncio.get_running_loop()
        held: list[socket.socket] = []
        try:
            for n in range(3, 7):  # four addresses, each at its pending cap: 16 > 8 in all
                for _ in range(PROOF.max_pending_per_address):
                    sock = socket.socket()
                    sock.setblocking(False)
                    sock.bind((f"127.0.0.{n}", 0))
                    await loop.sock_connect(sock, (HOST, port))
                    held.append(sock)
            # The oldest were closed to make room: at most max_pending are left open.
            await wait_until(lambda: sum(map(_still_open, held)) <= PROOF.max_pending, 5.0)
            server = live.index._server if kind == "index" else live.peer._server
            assert server is not None and server.admission.pending <= PROOF.max_pending
            # A newcomer still gets in (the oldest unproven connection made room) and proves.
            await assert_serves(live, kind)
            assert sum(map(_still_open, held)) < PROOF.max_pending  # it pushed one more out
        finally:
            for sock in held:
                sock.close()


def _still_open(sock: socket.socket) -> bool:
    """Whether the server still holds this raw TCP connection open (nothing was sent)."""
    try:
        return sock.recv(1) != b""  # (the server never sends on it unasked)
    except BlockingIOError:
        return True
    except OSError:
        return False


@pytest.mark.parametrize("kind", KINDS)
async def test_unproven_connections_past_the_per_address_cap_are_dropped_at_once(
    pki: Any, tmp_path: Path, kind: str
) -> None:
    async with live_daemons(pki, tmp_path, index_limits=PROOF, peer_limits=PROOF) as live:
        port, name, ctx = live.target(kind)
        attacker = ("127.0.0.3", 0)
        held = [
            await open_raw(port, name, ctx, local_addr=attacker)
            for _ in range(PROOF.max_pending_per_address)
        ]
        with pytest.raises(OSError):  # reset before any handshake (ssl.SSLError is an OSError)
            await open_raw(port, name, ctx, local_addr=attacker)
        await assert_serves(live, kind)  # other addresses are served meanwhile
        for _, w in held:
            close_writer(w)


async def test_a_peer_closes_a_tls_connection_that_shows_no_token_within_the_pending_timeout(
    pki: Any, tmp_path: Path
) -> None:
    limits = ServerLimits(pending_timeout=1.0, proof_required=True)
    async with live_daemons(pki, tmp_path, peer_limits=limits) as live:
        port, name, ctx = live.target("peer")
        started = time.monotonic()
        reader, writer = await open_raw(port, name, ctx)
        await assert_closed(reader)
        assert 0.9 <= time.monotonic() - started < STEP
        close_writer(writer)
        # A client that shows its token in time stays: it is still served past the timeout.
        conn = await open_conn(port, name, ctx)
        body = {"keyword": HEALTH_KEYWORD}
        assert await conn.request("list", body, live.peer_token("peer2")) == [HEALTH_FILE]
        await asyncio.sleep(1.5)
        assert await conn.request("list", body, live.peer_token("peer2")) == [HEALTH_FILE]
        await conn.close()


async def test_a_token_bound_to_another_certificate_is_no_proof_and_the_connection_is_closed(
    pki: Any, tmp_path: Path
) -> None:
    limits = ServerLimits(pending_timeout=1.0, proof_required=True)
    async with live_daemons(pki, tmp_path, peer_limits=limits) as live:
        port, name, ctx = live.target("peer")  # presents peer2's certificate
        stolen = live.peer_token("peer3", cert="peer3")  # a token bound to peer3's
        conn = await open_conn(port, name, ctx)
        with pytest.raises(TokenInvalid):
            await conn.request("list", {"keyword": HEALTH_KEYWORD}, stolen)
        await asyncio.sleep(1.5)  # still unproven at the pending timeout: closed
        with pytest.raises(ConnectionClosed):
            await conn.request("list", {"keyword": HEALTH_KEYWORD}, live.peer_token())
        await assert_serves(live, "peer")


async def test_the_index_takes_a_login_as_proof_and_closes_a_connection_without_one(
    pki: Any, tmp_path: Path
) -> None:
    limits = ServerLimits(pending_timeout=1.0, proof_required=True)
    async with live_daemons(pki, tmp_path, index_limits=limits) as live:
        port, name, ctx = live.target("index")
        idle = await open_conn(port, name, ctx)
        login = await open_conn(port, name, ctx)
        await login.request("register", {"username": "prover", "password": PASSWORD})
        await login.request("auth", {"username": "prover", "password": PASSWORD})
        await asyncio.sleep(1.5)
        with pytest.raises(ConnectionClosed):
            await idle.request("register", {"username": "late", "password": PASSWORD})
        with pytest.raises(AuthFailed):  # still open: the login proved it
            await login.request("auth", {"username": "prover", "password": "wrong password"})
        await login.close()
        await assert_index_serves(live)


@pytest.mark.parametrize("kind", KINDS)
async def test_connections_past_the_total_cap_get_busy_until_some_close(
    pki: Any, tmp_path: Path, kind: str
) -> None:
    limits = ServerLimits(max_connections=6)
    async with live_daemons(pki, tmp_path, index_limits=limits, peer_limits=limits) as live:
        port, name, ctx = live.target(kind)
        server = live.index._server if kind == "index" else live.peer._server
        assert server is not None
        held = []
        for i in range(2, 40):
            if server.connection_count >= 6:
                break
            held.append(await open_raw(port, name, ctx, local_addr=(f"127.0.1.{i}", 0)))
            await wait_until(lambda: server.connection_count >= min(6, len(held)), STEP)
        reader, writer = await open_raw(port, name, ctx, local_addr=("127.0.2.1", 0))
        await expect_error_and_close(reader, "BUSY")
        close_writer(writer)
        for _, w in held:
            close_writer(w)
        await wait_until(lambda: server.connection_count < 6, STEP)
        await assert_serves(live, kind)


def _is_closed(sock: socket.socket) -> bool:
    """True once the server closed (EOF or reset) a socket that never sent a byte."""
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.mark.parametrize("kind", KINDS)
async def test_a_handshake_flood_is_capped_reaped_at_the_timeout_and_others_are_served(
    pki: Any, tmp_path: Path, kind: str
) -> None:
    limits = ServerLimits(handshake_timeout=1.5, max_connections_per_address=8)
    async with live_daemons(pki, tmp_path, index_limits=limits, peer_limits=limits) as live:
        port, _, _ = live.target(kind)
        loop = asyncio.get_running_loop()
        flood: list[socket.socket] = []
        try:
            for _ in range(40):  # TCP connections that never send a ClientHello
                sock = socket.socket()
                sock.setblocking(False)
                sock.bind(("127.0.0.5", 0))
                await loop.sock_connect(sock, (HOST, port))
                flood.append(sock)
            await asyncio.sleep(0.2)
            # Past twice the per-address cap the server drops them before any handshake...
            closed_early = sum(_is_closed(s) for s in flood)
            # ...and while up to 16 of them still wait in the handshake, others are served.
            await assert_serves(live, kind)
            still_open = sum(not _is_closed(s) for s in flood)
            assert closed_early >= 40 - 16, closed_early
            assert still_open >= 8, still_open  # the health check did not wait for the reaping
            # Then the handshake timeout reaps every one of them.
            await wait_until(lambda: all(_is_closed(s) for s in flood), 1.5 + STEP / 3)
        finally:
            for sock in flood:
                sock.close()
        await assert_serves(live, kind, local_addr=("127.0.0.5", 0))


# --- slowloris and idle connections ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_frame_trickled_one_byte_at_a_time_hits_the_frame_timeout(
    pki: Any, tmp_path: Path, kind: str
) -> None:
    limits = ServerLimits(frame_timeout=1.0)
    async with live_daemons(pki, tmp_path, index_limits=limits, peer_limits=limits) as live:
        reader, writer = await open_raw(*live.target(kind))
        frame = request_frame(1, "search", {"keyword": HEALTH_KEYWORD, "pad": "x" * 64})
        answer: asyncio.Task[dict[str, Any]] = asyncio.ensure_future(read_message(reader))
        started = time.monotonic()
        with contextlib.suppress(ConnectionError):
            for i in range(len(frame)):  # a byte every 0.1 s: each one "in time", the frame not
                if answer.done():
                    break
                writer.write(frame[i : i + 1])
                await writer.drain()
                await asyncio.wait([answer], timeout=0.1)
        msg = await answer
        elapsed = time.monotonic() - started
        assert (msg["id"], error_code(msg)) == (0, "TIMEOUT")
        assert 0.8 <= elapsed <= 4.0, elapsed  # counted from the frame's first byte
        await assert_closed(reader)
        close_writer(writer)
        await assert_serves(live, kind)


@pytest.mark.parametrize("kind", KINDS)
async def test_an_idle_connection_is_closed_without_an_error_at_the_idle_timeout(
    pki: Any, tmp_path: Path, kind: str
) -> None:
    limits = ServerLimits(idle_timeout=1.0)
    async with live_daemons(pki, tmp_path, index_limits=limits, peer_limits=limits) as live:
        reader, writer = await open_raw(*live.target(kind))
        started = time.monotonic()
        await assert_closed(reader, timeout=5)
        assert 0.8 <= time.monotonic() - started <= 5
        close_writer(writer)
        await assert_serves(live, kind)


# --- slow readers and amplification ---------------------------------------------------------


async def test_a_reader_stalled_on_a_large_fetch_is_cut_off_with_bounded_server_memory(
    pki: Any, tmp_path: Path
) -> None:
    content = os.urandom(1 << 20) * 32  # 32 MiB
    limits = ServerLimits(slow_reader_timeout=1.0)
    files = {"bulk/big.bin": content}
    async with live_daemons(pki, tmp_path, peer_limits=limits, files=files) as live:
        server = live.peer._server
        assert server is not None
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window, never read
        sock.connect((HOST, live.peer_port))
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(
                sock=sock, ssl=live.pki.client_ctx("peer2"), server_hostname="peer1", limit=4096
            ),
            STEP,
        )
        body = {"keyword": "bulk", "file_name": "big.bin", "nonce": b"n" * 32}
        writer.write(request_frame(1, "fetch", body, live.peer_token()))
        await writer.drain()
        started = time.monotonic()
        stalled = list(server.admission.connections)
        assert len(stalled) == 1
        # Others are served while the reader is stalled (before it is cut off).
        await assert_serves(live, "peer")
        assert stalled[0] in server.admission.connections
        # Sample what the server holds for this connection until it cuts the reader off.
        high_water = limits.write_high_water
        peak = 0
        async with asyncio.timeout(STEP):
            while stalled[0] in server.admission.connections:
                peak = max(peak, stalled[0].buffered())
                await asyncio.sleep(0.01)
        elapsed = time.monotonic() - started
        assert peak <= high_water + 2 * (256 << 10) + (64 << 10), peak
        assert limits.slow_reader_timeout <= elapsed <= limits.slow_reader_timeout + 5
        close_writer(writer)
        await assert_serves(live, "peer")


def _long_listing(domain: int) -> list[SharedFile]:
    return [
        SharedFile(
            f"f{domain}-{i:04d}-" + "x" * 200, HEALTH_KEYWORD, i, hashlib.sha256(b"%d" % i).digest()
        )
        for i in range(1000)
    ]


async def test_pipelined_requests_with_large_replies_never_read_keep_the_index_memory_bounded(
    pki: Any, tmp_path: Path
) -> None:
    limits = ("--max-domains-per-user", "100", "--sync-burst", "100")
    async with indexd_process(pki, tmp_path / "index", *limits) as daemon:
        conn = await open_conn(daemon.port, "indexd", pki.client_ctx())
        await conn.request("register", {"username": "eve", "password": "eve's password"})
        token = (await conn.request("auth", {"username": "eve", "password": "eve's password"}))[
            "token"
        ]
        for d in range(32):  # ~1 MiB of search reply for one keyword: 100 files of 32 peers
            # Each listing needs a certificate naming its peer (PROTOCOL.md §4.5).
            owner = await open_conn(daemon.port, "indexd", client_ctx_for(pki, f"eve{d}"))
            for part in split_sync(f"eve{d}", 7001, _long_listing(d)):
                await owner.request("sync", part.to_wire(), token)
            await owner.close()
        reply = await conn.request("search", {"keyword": HEALTH_KEYWORD}, token)
        assert sum(len(hit["files"]) for hit in reply["hits"]) >= 3000
        baseline = daemon.memory_kib("VmRSS")
        daemon.reset_peak()
        # 3,000 searches (~1 MiB of requests, ~3 GiB of replies) in one go, never read.
        _, writer = await open_raw(daemon.port, "indexd", pki.client_ctx(), limit=4096)
        search = request_frame(1, "search", {"keyword": HEALTH_KEYWORD}, token)
        writer.write(search * 3000)
        await asyncio.sleep(2.0)
        growth_mib = (daemon.memory_kib("VmHWM") - baseline) / 1024
        # Meanwhile another client is answered.
        assert await conn.request("search", {"keyword": "nothing"}, token) == {
            "hits": [],
            "more": 0,
        }
        close_writer(writer)
        await conn.close()
        assert daemon.proc.returncode is None
    # The server stops producing past the write high-water mark (4 MiB): a few replies more.
    assert growth_mib <= 64, f"the index grew by {growth_mib:.0f} MiB for one unread connection"


# --- huge sync lists -----------------------------------------------------------------------


async def test_sync_lists_over_the_limits_are_refused_and_the_listing_stays(
    pki: Any, tmp_path: Path
) -> None:
    staging = StagingLimits(max_upload_files=2500, max_user_uploads=2)
    async with live_daemons(pki, tmp_path, index_overrides={"staging": staging}) as live:
        # A client certificate naming the peer it lists (PROTOCOL.md §4.5).
        conn = await open_conn(live.index_port, "indexd", live.pki.client_ctx("peer3"))
        await conn.request("register", {"username": "hoarder", "password": "hoarder's pw"})
        token = (await conn.request("auth", {"username": "hoarder", "password": "hoarder's pw"}))[
            "token"
        ]

        async def sync(body: dict[str, Any]) -> Any:
            return await conn.request("sync", body, token)

        # One part listing more than 20,000 entries: refused before any entry is looked at.
        with pytest.raises(BadRequest, match="files"):
            await sync({"domain_name": "peer3", "port_number": 7001, "files": [None] * 20_001})
        # A part number past the most an upload may have.
        part = {"upload": b"u" * 16, "seq": 10_001, "final": False}
        with pytest.raises(BadRequest, match="seq"):
            await sync({"domain_name": "peer3", "port_number": 7001, "files": [], "part": part})
        # An upload growing past max_upload_files is refused and dropped.
        files = [SharedFile(f"f{i:05d}", "k", 1, b"s" * 32) for i in range(3000)]
        parts = split_sync("peer3", 7001, files, max_files_per_part=1000)
        await sync(parts[0].to_wire())
        await sync(parts[1].to_wire())
        with pytest.raises(BadRequest, match="at most 2500"):
            await sync(parts[2].to_wire())
        with pytest.raises(NotFound):
            await sync(parts[2].to_wire())
        # More uploads in progress than a user may have: BUSY, and the staged ones stay.
        uploads = [
            SyncRequest("peer3", 7001, (files[0],), None, SyncPart(bytes([i]) * 16, 0, False))
            for i in range(3)
        ]
        await sync(uploads[0].to_wire())
        await sync(uploads[1].to_wire())
        with pytest.raises(Busy):
            await sync(uploads[2].to_wire())
        await conn.close()
        await assert_index_serves(live)  # peer1's listing is untouched


# --- file descriptors ------------------------------------------------------------------------


async def _exhaust_and_recover(
    pki: Any, proc: Any, port: int, server_hostname: str, ctx: Any
) -> None:
    loop = asyncio.get_running_loop()
    baseline = proc.open_fds()
    held: list[socket.socket] = []
    try:
        for _ in range(120):  # the daemon may hold at most 64 descriptors
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, (HOST, port))
            held.append(sock)
        # The daemon accepts until accept() fails with EMFILE; it must survive that.
        await wait_until(lambda: proc.open_fds() >= 60, STEP)
        await asyncio.sleep(1.5)  # asyncio retries accept() after 1 s: let it fail again
        assert proc.proc.returncode is None, "the daemon died of EMFILE"
    finally:
        for sock in held:
            sock.close()
    # The connections go (EOF in the handshake), descriptors come back, and it serves again.
    await wait_until(lambda: proc.open_fds() <= baseline + 4, STEP)
    _, writer = await open_raw(port, server_hostname, ctx)
    close_writer(writer)
    assert proc.proc.returncode is None


async def test_indexd_out_of_file_descriptors_keeps_running_and_serves_once_they_close(
    pki: Any, tmp_path: Path
) -> None:
    caps = (
        *("--max-connections", "1000", "--max-connections-per-address", "1000"),
        *("--max-pending", "1000", "--max-pending-per-address", "1000"),
    )
    async with indexd_process(pki, tmp_path / "index", *caps, nofile=64) as daemon:
        await _exhaust_and_recover(pki, daemon, daemon.port, "indexd", pki.client_ctx())
        conn = await open_conn(daemon.port, "indexd", pki.client_ctx())
        await conn.request("register", {"username": "after", "password": "after the storm"})
        reply = await conn.request("auth", {"username": "after", "password": "after the storm"})
        assert reply["token"]
        await conn.close()
        print(daemon.log.read_text())


async def test_peerd_out_of_file_descriptors_keeps_running_and_serves_once_they_close(
    pki: Any, tmp_path: Path
) -> None:
    caps = (
        *("--max-connections", "1000", "--max-connections-per-address", "1000"),
        *("--max-pending", "1000", "--max-pending-per-address", "1000"),
    )
    async with live_daemons(pki, tmp_path) as live:
        share = tmp_path / "peer2-files"
        (share / "wombat").mkdir(parents=True)
        (share / "wombat" / "w.txt").write_bytes(b"wombat\n")
        async with peerd_process(pki, "peer2", live.index_port, share, *caps, nofile=64) as peer:
            await _exhaust_and_recover(pki, peer, peer.port, "peer2", pki.client_ctx("peer3"))
            from peerd.client import PeerClient

            client = await PeerClient.connect(
                HOST, peer.port, "peer2", pki.client_ctx("peer3"),
                token=live.peer_token("peer3"), requester="peer3",
            )  # fmt: skip
            assert await client.list("wombat") == ["w.txt"]
            await client.close()
        await assert_index_serves(live)
