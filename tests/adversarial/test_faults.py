"""Faults (docs/design.md §5): the index killed during writes, a disk that fills up under a
download, SIGTERM with transfers in flight, and a handler that raises. Each ends with the
documented outcome and the daemons (or their restarted selves) serving a healthy client.

Covered elsewhere, and not repeated here: ``kill -9`` of indexd during a stream of registers
and syncs (tests/indexd/test_main.py), of a serving peer mid-transfer and the resume
(tests/e2e/test_seed_flow.py), SIGTERM of indexd with a request in flight
(tests/indexd/test_main.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netproto.errors import ConnectionClosed, Internal, NotFound, RequestError, Timeout
from netproto.operations import SharedFile, search_reply_from_wire, split_sync
from peerd.client import PeerClient
from peerd.daemon import PeerDaemon
from peerd.download import DownloadError, NotEnoughRoom
from tests.support.adversary import (
    HEALTH_KEYWORD,
    HOST,
    PASSWORD,
    REPO,
    STEP,
    assert_index_serves,
    assert_peer_serves,
    indexd_process,
    live_daemons,
    open_conn,
    peer_config,
    peerd_process,
    sha256,
)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- kill -9 of the index during a multi-part upload ----------------------------------------


async def test_kill_9_mid_upload_keeps_the_previous_listing_and_the_upload_starts_over(
    pki: Any, tmp_path: Path
) -> None:
    files = [SharedFile(f"v2-{i:05d}", "vault", 1, sha256(b"%d" % i)) for i in range(3000)]
    parts = split_sync("peer1", 7001, files, max_files_per_part=1000)
    async with indexd_process(pki, tmp_path / "index") as daemon:
        conn = await open_conn(daemon.port, "indexd", pki.client_ctx("peer1"))
        await conn.request("register", {"username": "owner", "password": PASSWORD})
        token = (await conn.request("auth", {"username": "owner", "password": PASSWORD}))["token"]
        old = {"domain_name": "peer1", "port_number": 7001, "files": [
            {"filename": "v1", "keyword": "vault", "size": 1, "sha256": sha256(b"v1")}
        ]}  # fmt: skip
        await conn.request("sync", old, token)
        await conn.request("sync", parts[0].to_wire(), token)
        await conn.request("sync", parts[1].to_wire(), token)
        os.kill(daemon.pid, signal.SIGKILL)
        with pytest.raises((ConnectionClosed, Timeout)):
            await conn.request("sync", parts[2].to_wire(), token)
        await conn.close()
    async with indexd_process(pki, tmp_path / "index") as daemon:
        conn = await open_conn(daemon.port, "indexd", pki.client_ctx("peer1"))
        token = (await conn.request("auth", {"username": "owner", "password": PASSWORD}))["token"]
        # The acknowledged one-shot sync survived; the interrupted upload left no trace.
        hits = search_reply_from_wire(await conn.request("search", {"keyword": "vault"}, token))
        assert [f.filename for f in hits[0].files] == ["v1"]
        with pytest.raises(NotFound):
            await conn.request("sync", parts[2].to_wire(), token)
        for part in split_sync("peer1", 7001, files, max_files_per_part=1000):
            reply = await conn.request("sync", part.to_wire(), token)
        assert reply["files"] == 3000
        await conn.close()


# --- a disk that fills up under a download -------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (skips the test where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_a_file_larger_than_the_free_space_is_refused_before_a_byte_lands(
    pki: Any, tmp_path: Path
) -> None:
    big = os.urandom(1 << 20) * 12  # 12 MiB for an 8 MiB disk
    files = {"bulk/big.bin": big, "bulk/small.bin": b"small enough\n"}
    async with live_daemons(pki, tmp_path / "rig", files=files) as live:
        with small_tmpfs(tmp_path / "small-disk") as disk:
            config = peer_config(pki, "peer2", live.index_port, disk / "share")
            downloader = PeerDaemon(config)
            await asyncio.wait_for(downloader.start(), STEP)
            try:
                [hit] = await downloader.search("bulk")
                with pytest.raises(NotEnoughRoom) as caught:
                    await downloader.download(hit, "bulk", "big.bin")
                assert "not enough free space for" in str(caught.value)
                assert "big.bin: it needs 12582912 bytes" in str(caught.value)
                assert _leftovers(disk / "share" / "bulk") == []
                small = await downloader.download(hit, "bulk", "small.bin")
                assert small.path.read_bytes() == b"small enough\n"
            finally:
                await asyncio.wait_for(downloader.stop(grace=0.5), STEP)
        await assert_peer_serves(live)


async def test_a_disk_filling_up_mid_download_is_a_readable_error_and_leaves_no_file(
    pki: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = os.urandom(1 << 20) * 12  # 12 MiB into an 8 MiB disk
    files = {"bulk/big.bin": big, "bulk/small.bin": b"small enough\n"}
    # As if another program took the space after the free-space check passed.
    monkeypatch.setattr("peerd.download.check_room", lambda *args: None)
    async with live_daemons(pki, tmp_path / "rig", files=files) as live:
        with small_tmpfs(tmp_path / "small-disk") as disk:
            config = peer_config(pki, "peer2", live.index_port, disk / "share")
            downloader = PeerDaemon(config)
            await asyncio.wait_for(downloader.start(), STEP)
            try:
                [hit] = await downloader.search("bulk")
                with pytest.raises(DownloadError) as caught:
                    await downloader.download(hit, "bulk", "big.bin")
                assert "No space left on device" in str(caught.value)
                assert "big.bin" in str(caught.value)
                folder = disk / "share" / "bulk"
                assert "big.bin" not in _leftovers(folder)
                assert not any(n.endswith(".p2pshare-part") for n in _leftovers(folder))
                # The space is back, and the daemon keeps working: downloads, serves, syncs.
                small = await downloader.download(hit, "bulk", "small.bin")
                assert small.path.read_bytes() == b"small enough\n"
                assert await downloader.resync() == 1
                peer = await PeerClient.connect(
                    HOST, downloader.port, "peer2", pki.client_ctx("peer3"),
                    token=live.peer_token("peer3"), requester="peer3",
                )  # fmt: skip
                assert await peer.list("bulk") == ["small.bin"]
                await peer.close()
            finally:
                await asyncio.wait_for(downloader.stop(grace=0.5), STEP)
        await assert_peer_serves(live)
        await assert_index_serves(live)


async def test_a_disk_already_full_before_the_download_is_a_readable_error(
    pki: Any, tmp_path: Path
) -> None:
    files = {"bulk/small.bin": b"small enough\n"}
    async with live_daemons(pki, tmp_path / "rig", files=files) as live:
        with small_tmpfs(tmp_path / "small-disk", "1m") as disk:
            config = peer_config(pki, "peer2", live.index_port, disk / "share")
            downloader = PeerDaemon(config)
            await asyncio.wait_for(downloader.start(), STEP)
            filler = disk / "filler"
            try:
                with contextlib.suppress(OSError), filler.open("wb") as f:
                    while True:
                        f.write(b"\0" * 4096)
                        f.flush()
                [hit] = await downloader.search("bulk")
                with pytest.raises(NotEnoughRoom) as caught:
                    await downloader.download(hit, "bulk", "small.bin")
                assert "not enough free space for" in str(caught.value)
                assert "small.bin: it needs 13 bytes" in str(caught.value)
                assert _leftovers(disk / "share" / "bulk") == []
                filler.unlink()
                result = await downloader.download(hit, "bulk", "small.bin")
                assert result.path.read_bytes() == b"small enough\n"
            finally:
                await asyncio.wait_for(downloader.stop(grace=0.5), STEP)
        await assert_peer_serves(live)


_FSIZE_DOWNLOADER = r"""
import asyncio, json, resource, signal, sys
from pathlib import Path
from certs import load_cert, load_key
from netproto.tokens import PEER_AUDIENCE, TokenIssuer, certificate_thumbprint
from netproto.tls import client_context
from peerd.client import PeerClient
from peerd.download import download

port, pki_dir, dest = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), not death by signal
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # no file past 1 MiB

async def main():
    # A peer token bound to the certificate this client presents (PROTOCOL.md §8).
    bound = certificate_thumbprint(load_cert(pki_dir / "peer2.crt"))
    issuer = TokenIssuer(load_key(pki_dir / "indexd.key"), "indexd")
    token = issuer.issue("peer2", audience=PEER_AUDIENCE, thumbprint=bound)[0]
    ctx = client_context(pki_dir / "ca.crt", pki_dir / "peer2.crt", pki_dir / "peer2.key")
    peer = await PeerClient.connect("127.0.0.1", port, "peer1", ctx, token=token, requester="peer2")
    out = {}
    try:
        await download(peer, "bulk", "big.bin", dest)
        out["error"] = None
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    result = await download(peer, "bulk", "small.bin", dest)
    out["small"] = result.path.read_bytes().decode()
    await peer.close()
    print(json.dumps(out))

asyncio.run(main())
"""


async def test_a_file_size_limit_hit_mid_download_is_a_readable_error_and_leaves_no_file(
    pki: Any, tmp_path: Path
) -> None:
    # Where no tmpfs can be mounted, RLIMIT_FSIZE makes write() fail (EFBIG) the same way.
    files = {"bulk/big.bin": os.urandom(1 << 20) * 4, "bulk/small.bin": b"small enough\n"}
    async with live_daemons(pki, tmp_path / "rig", files=files) as live:
        dest = tmp_path / "dest"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _FSIZE_DOWNLOADER, str(live.peer_port), str(pki.dir), str(dest),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), STEP * 2)
        assert proc.returncode == 0, err.decode()
        report = json.loads(out)
        assert report["error"].startswith("DownloadError: cannot write"), report
        assert "File too large" in report["error"]
        assert report["small"] == "small enough\n"
        assert _leftovers(dest / "bulk") == ["small.bin"]
        await assert_peer_serves(live)


# --- SIGTERM with a transfer in flight --------------------------------------------------------


async def _sigterm_mid_fetch(
    pki: Any, tmp_path: Path, *, mib: int, read_delay: float
) -> tuple[int, float, bytes | None, str | None]:
    """Start ``python -m peerd`` serving ``mib`` MiB, fetch it reading a chunk per
    ``read_delay``, SIGTERM the peer after the first chunk; the exit status, seconds to exit,
    what arrived (None if cut) and why it was cut."""
    content = os.urandom(1 << 20) * mib
    async with live_daemons(pki, tmp_path / "rig") as live:
        share = tmp_path / "peer3-files"
        (share / "bulk").mkdir(parents=True)
        (share / "bulk" / "big.bin").write_bytes(content)
        async with peerd_process(pki, "peer3", live.index_port, share) as proc:
            token = live.peer_token("peer2")  # bound to peer2's certificate, as auth binds it
            peer = await PeerClient.connect(
                HOST, proc.port, "peer3", pki.client_ctx("peer2"),
                token=token, requester="peer2", request_timeout=STEP,
            )  # fmt: skip
            stream = await peer.fetch("bulk", "big.bin", os.urandom(32))
            received = bytearray()
            signalled_at = 0.0
            exited_at: list[float] = []
            exit_status: asyncio.Future[int] | None = None
            cut: str | None = None
            try:
                async for chunk in stream.chunks():
                    received += chunk
                    if exit_status is None:
                        proc.proc.send_signal(signal.SIGTERM)
                        signalled_at = time.monotonic()
                        exit_status = asyncio.ensure_future(proc.proc.wait())
                        exit_status.add_done_callback(lambda _: exited_at.append(time.monotonic()))
                    await asyncio.sleep(0 if exited_at else read_delay)
            except (ConnectionClosed, RequestError, Timeout) as exc:
                cut = f"{type(exc).__name__}: {exc}"
            assert exit_status is not None
            status = await asyncio.wait_for(exit_status, STEP * 2)
            exited_after = exited_at[0] - signalled_at
            complete = bytes(received) if cut is None else None
            if complete is not None:
                assert stream.trailer().sha256 == sha256(content)
            await peer.close()
            log = proc.log.read_text()
            assert "Traceback" not in log, log
        await assert_index_serves(live)
    return status, exited_after, complete, cut


async def test_sigterm_lets_a_transfer_in_flight_finish_then_exits_0(
    pki: Any, tmp_path: Path
) -> None:
    status, exited_after, complete, cut = await _sigterm_mid_fetch(
        pki, tmp_path, mib=24, read_delay=0.002
    )
    assert status == 0
    assert cut is None and complete is not None and len(complete) == 24 << 20
    assert exited_after <= 5.0 + 3.0  # the default grace of 5 s, and a little


async def test_sigterm_cuts_a_transfer_that_outlasts_the_grace_cleanly_and_exits_0(
    pki: Any, tmp_path: Path
) -> None:
    # 256 chunks of 256 KiB at 0.1 s each would take ~26 s: far past the 5 s grace, and far
    # more than all the buffers between the two ends can hold.
    status, exited_after, complete, cut = await _sigterm_mid_fetch(
        pki, tmp_path, mib=64, read_delay=0.1
    )
    assert status == 0
    assert complete is None and cut is not None, cut
    assert 4.0 <= exited_after <= 5.0 + 3.0


# --- an exception inside one handler ---------------------------------------------------------


async def test_a_handler_that_raises_answers_internal_and_everything_else_is_served(
    pki: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with live_daemons(pki, tmp_path) as live:
        service = live.index.service
        assert service is not None
        store = service.store
        real_lookup = store.password_hash
        real_replace = store.replace_listing

        def lookup(username: str) -> Any:
            if username == "boom":
                raise RuntimeError("secret detail of the store")
            return real_lookup(username)

        def replace(listing: Any) -> Any:
            if listing.domain_name == "peer3":
                raise sqlite3.OperationalError("disk I/O error (secret)")
            return real_replace(listing)

        store.password_hash = lookup  # type: ignore[method-assign]
        store.replace_listing = replace  # type: ignore[method-assign]
        # A client certificate naming the peer it lists (PROTOCOL.md §4.5).
        conn = await open_conn(live.index_port, "indexd", pki.client_ctx("peer3"))
        await conn.request("register", {"username": "tester", "password": PASSWORD})
        token = live.token("tester")
        results = await asyncio.gather(
            conn.request("auth", {"username": "boom", "password": PASSWORD}),
            conn.request("search", {"keyword": HEALTH_KEYWORD}, token),
            conn.request("sync", {"domain_name": "peer3", "port_number": 7001, "files": []}, token),
            conn.request("auth", {"username": "tester", "password": PASSWORD}),
            return_exceptions=True,
        )
        assert isinstance(results[0], Internal) and results[0].message == "internal error"
        assert not isinstance(results[1], BaseException), results[1]
        assert [h["domain_name"] for h in results[1]["hits"]] == ["peer1"]
        assert isinstance(results[2], Internal) and "secret" not in results[2].message
        assert not isinstance(results[3], BaseException), results[3]
        assert results[3]["token"]
        # The failed sync changed nothing: the name is still free, and the connection works.
        other = await open_conn(live.index_port, "indexd", pki.client_ctx("peer2"))
        reply = await other.request(
            "sync", {"domain_name": "peer2", "port_number": 7001, "files": []}, token
        )
        assert reply["files"] == 0
        await other.close()
        await conn.close()

        # The peer: one keyword's listing raises, and a read fails in the middle of a stream.
        share = live.peer.share
        real_list = share.list_files

        def list_files(keyword: str) -> list[str]:
            if keyword == "boom":
                raise OSError("secret detail of the disk")
            return real_list(keyword)

        share.list_files = list_files  # type: ignore[method-assign]
        peer = await PeerClient.connect(
            HOST, live.peer_port, "peer1", pki.client_ctx("peer2"),
            token=live.peer_token(), requester="peer2",
        )  # fmt: skip
        with pytest.raises(Internal):
            await peer.list("boom")
        assert await peer.list(HEALTH_KEYWORD) == ["hello.txt"]
        await peer.close()
        await assert_peer_serves(live)
        await assert_index_serves(live)
    logged = [r for r in caplog.records if r.exc_info is not None]
    assert len(logged) >= 3  # each failure went to the log with its traceback...
    assert all(
        "secret" not in str(e) for e in results if isinstance(e, RequestError)
    )  # ...not the wire


async def test_shutdown_does_not_wait_the_grace_for_idle_clients(pki: Any, tmp_path: Path) -> None:
    # A graceful close waits for the client's close_notify; an idle client that never reads
    # would hold the whole grace. Only connections with answers to deliver get one.
    async with live_daemons(pki, tmp_path) as live:
        conn = await open_conn(live.index_port, "indexd", pki.client_ctx())
        await conn.request("search", {"keyword": HEALTH_KEYWORD}, live.token())

        def connect_and_never_read() -> Any:
            raw = socket.create_connection((HOST, live.index_port))
            return pki.client_ctx().wrap_socket(raw, server_hostname="indexd")

        silent = await asyncio.to_thread(connect_and_never_read)
        try:
            started = time.monotonic()
            await asyncio.wait_for(live.index.stop(grace=5.0), STEP)
            assert time.monotonic() - started < 2.0
        finally:
            silent.close()
            await conn.close()
