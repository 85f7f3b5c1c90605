"""End to end: a real index and real peers on 127.0.0.1 with real TLS, in-process and as
``python -m peerd`` subprocesses (the original flags), doing what users do."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from netproto.errors import VerificationFailed
from netproto.operations import SearchHit
from peerd.download import download, part_names

TIMEOUT = 30.0
PASSWORD = "correct horse battery"  # the conftest peer_config password
REPO = Path(__file__).resolve().parents[2]


def put(root: Path, rel: str, content: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def hit_of(hits: list[SearchHit], domain_name: str) -> SearchHit:
    return next(h for h in hits if h.domain_name == domain_name)


class PeerProcess:
    """``python -m peerd --no-shell`` started with the original single-dash flags."""

    def __init__(self, pki: Any, name: str, index_port: int, share: Path) -> None:
        self.argv = [
            sys.executable, "-m", "peerd",
            "-hostname", name,
            "-index_server_name", f"127.0.0.1:{index_port}",
            "-peer_server_port", "0",
            "-username", name,
            "-file_directory", str(share),
            "-certificate", str(pki.cert(name)),
            "-private_key", str(pki.key(name)),
            "--ca", str(pki.ca),
            "--bind", "127.0.0.1",
            "--register",
            "--no-shell",
        ]  # fmt: skip
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self, password: str = PASSWORD) -> int:
        """Start it and wait for its ready line; returns the exit status if it fails."""
        # The repository first on the path, whatever the current directory or install state.
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "P2P_PASSWORD": password, "PYTHONPATH": path}
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), TIMEOUT)).decode()
        match = re.search(r"on port (\d+)", line)
        if match is None:
            return await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        self.port = int(match.group(1))
        return 0

    async def stderr(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        return (await asyncio.wait_for(self.proc.stderr.read(), TIMEOUT)).decode()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), TIMEOUT)


@pytest_asyncio.fixture(loop_scope="function")
async def spawn(pki: Any) -> AsyncIterator[Any]:
    """Start ``python -m peerd`` subprocesses; all are killed after the test."""
    procs: list[PeerProcess] = []

    def make(name: str, index_port: int, share: Path) -> PeerProcess:
        proc = PeerProcess(pki, name, index_port, share)
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        await proc.stop()


async def test_the_original_flow_search_list_fetch_verify_then_share_on_next_sync(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any, tmp_path: Path
) -> None:
    put(tmp_path / "peer1-files", "koala/eucalyptus.txt", b"koalas eat eucalyptus\n")
    put(tmp_path / "peer1-files", "koala/sleep.txt", b"20 hours a day\n")
    put(tmp_path / "peer3-files", "Koala/joey.txt", b"a baby koala\n")
    async with (
        running_index(index_config()) as index,
        asyncio.timeout(TIMEOUT),
        running_peer(peer_config("peer1", index.port)) as peer1,
        running_peer(peer_config("peer3", index.port)),
        running_peer(peer_config("peer2", index.port)) as peer2,
    ):
        hits = await peer2.search("koala")
        assert sorted(h.domain_name for h in hits) == ["peer1", "peer3"]
        results = []
        for hit in hits:
            async with await peer2.connect_peer(hit) as peer:
                names = await peer.list("koala")
                assert names == sorted(f.filename for f in hit.files)
                for listed in hit.files:
                    results.append(
                        await download(
                            peer, "koala", listed.filename, tmp_path / "peer2-files",
                            expected=listed,
                        )
                    )  # fmt: skip
        assert len(results) == 3
        assert all(check.passed for r in results for check in r.checks)
        mine = tmp_path / "peer2-files" / "koala"
        assert (mine / "joey.txt").read_bytes() == b"a baby koala\n"
        assert (mine / "sleep.txt").read_bytes() == b"20 hours a day\n"
        assert await peer2.resync() == 3
        shared = hit_of(await peer1.search("koala"), "peer2")
        assert sorted(f.filename for f in shared.files) == [
            "eucalyptus.txt",
            "joey.txt",
            "sleep.txt",
        ]


async def test_a_peer_downloads_through_its_daemon_helpers(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any, tmp_path: Path
) -> None:
    put(tmp_path / "peer1-files", "koala/sleep.txt", b"20 hours a day\n")
    async with (
        running_index(index_config()) as index,
        asyncio.timeout(TIMEOUT),
        running_peer(peer_config("peer1", index.port)),
        running_peer(peer_config("peer2", index.port)) as peer2,
    ):
        hit = hit_of(await peer2.search("KOALA"), "peer1")
        result = await peer2.download(hit, "koala", "sleep.txt")
    assert {c.name: c.passed for c in result.checks}["index-digest"] is True
    assert result.path.read_bytes() == b"20 hours a day\n"


async def test_a_peer_killed_mid_transfer_is_resumed_from_the_offset_and_verified(
    index_config: Any,
    running_index: Any,
    peer_config: Any,
    running_peer: Any,
    spawn: Any,
    tmp_path: Path,
) -> None:
    share = tmp_path / "peer1-files"
    big = share / "video" / "big.bin"
    big.parent.mkdir(parents=True)
    digest = hashlib.sha256()
    with big.open("wb") as f:
        for _ in range(64):
            block = os.urandom(1 << 20)
            digest.update(block)
            f.write(block)
    async with (
        running_index(index_config()) as index,
        asyncio.timeout(TIMEOUT * 2),
        running_peer(peer_config("peer2", index.port)) as peer2,
    ):
        first = spawn("peer1", index.port, share)
        assert await first.start() == 0
        hit = hit_of(await peer2.search("video"), "peer1")
        assert first.proc is not None

        def kill_at_16_mib(received: int, total: int) -> None:
            if received >= 16 << 20 and first.proc is not None and first.proc.returncode is None:
                first.proc.send_signal(signal.SIGKILL)

        with pytest.raises(VerificationFailed) as info:
            await peer2.download(hit, "video", "big.bin", progress=kill_at_16_mib)
        assert info.value.check == "truncated"
        mine = tmp_path / "peer2-files" / "video"
        assert not (mine / "big.bin").exists()
        kept = (mine / part_names("big.bin")[0]).stat().st_size
        assert 16 << 20 <= kept < 64 << 20

        second = spawn("peer1", index.port, share)
        assert await second.start() == 0
        hit = hit_of(await peer2.search("video"), "peer1")
        assert hit.port_number == second.port
        result = await peer2.download(hit, "video", "big.bin")
    assert result.resumed_from == kept
    assert result.received == (64 << 20) - kept
    assert all(c.passed for c in result.checks)
    assert result.sha256 == digest.digest()
    assert sorted(p.name for p in mine.iterdir()) == ["big.bin"]


async def test_peerd_exits_0_on_sigterm_and_withdraws_from_search(
    index_config: Any,
    running_index: Any,
    peer_config: Any,
    running_peer: Any,
    spawn: Any,
    tmp_path: Path,
) -> None:
    put(tmp_path / "peer1-files", "koala/sleep.txt", b"20 hours a day\n")
    async with (
        running_index(index_config()) as index,
        asyncio.timeout(TIMEOUT),
        running_peer(peer_config("peer2", index.port)) as peer2,
    ):
        peer1 = spawn("peer1", index.port, tmp_path / "peer1-files")
        assert await peer1.start() == 0
        assert [h.domain_name for h in await peer2.search("koala")] == ["peer1"]
        assert peer1.proc is not None
        peer1.proc.send_signal(signal.SIGTERM)
        assert await peer1.proc.wait() == 0
        assert await peer2.search("koala") == []
        assert "Traceback" not in await peer1.stderr()


async def test_peerd_with_a_wrong_password_exits_1_with_one_readable_line(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any, spawn: Any
) -> None:
    async with running_index(index_config()) as index, asyncio.timeout(TIMEOUT):
        async with running_peer(peer_config("peer1", index.port)):
            pass  # registers peer1 with the right password
        peer1 = spawn("peer1", index.port, Path("unused"))
        assert await peer1.start(password="not the password") == 1
        assert (await peer1.stderr()).strip().splitlines() == [
            "peerd: authentication failed for peer1: wrong username or password"
        ]


async def test_a_daemon_serves_other_peers_while_it_downloads(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any, tmp_path: Path
) -> None:
    put(tmp_path / "peer1-files", "koala/a.txt", b"from peer1")
    put(tmp_path / "peer2-files", "wombat/b.txt", b"from peer2")
    async with (
        running_index(index_config()) as index,
        asyncio.timeout(TIMEOUT),
        running_peer(peer_config("peer1", index.port)) as peer1,
        running_peer(peer_config("peer2", index.port)) as peer2,
    ):
        to_peer2, to_peer1 = await asyncio.gather(
            peer2.download(hit_of(await peer2.search("koala"), "peer1"), "koala", "a.txt"),
            peer1.download(hit_of(await peer1.search("wombat"), "peer2"), "wombat", "b.txt"),
        )
    assert to_peer2.path.read_bytes() == b"from peer1"
    assert to_peer1.path.read_bytes() == b"from peer2"
