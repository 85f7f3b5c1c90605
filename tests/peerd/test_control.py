"""The control socket (peerd/control.py): who may connect, what it refuses, a stale or busy
socket, a state folder made private, and each operation over a fake session."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from netproto.errors import Forbidden, InvalidPath, NotFound, RequestError, UnknownOp
from netproto.framing import HEADER
from peerd.control import (
    ControlClient,
    ControlServer,
    ControlService,
    ControlSocketInUse,
    DownloadFailed,
    NoPeer,
    default_state_dir,
    prepare_state_dir,
    state_home,
)
from peerd.session import SyncReport
from tests.support.fake_session import FakePeer, FakeSession

TIMEOUT = 10.0


class ControlledFake(FakeSession):
    """The fake session, with the daemon's ``sync_share``."""

    async def sync_share(self) -> SyncReport:
        return SyncReport(await self.resync(), added=1, sent=1, full=False, at=self.clock.time())


@pytest.fixture
def state_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="p2pc-") as folder:
        yield Path(folder) / "peer3"


@pytest.fixture
def session(tmp_path: Path) -> ControlledFake:
    share = tmp_path / "peer3-files"
    (share / "wombat").mkdir(parents=True)
    (share / "wombat" / "burrow.txt").write_bytes(b"30 metres\n")
    peers = [FakePeer("peer2", {"koala": {"joey.txt": b"a baby koala\n"}})]
    return ControlledFake(share, peers)


@pytest_asyncio.fixture(loop_scope="function")
async def server(session: ControlledFake, state_dir: Path) -> AsyncIterator[ControlServer]:
    server = ControlServer(ControlService(session), state_dir)
    await asyncio.wait_for(server.start(), TIMEOUT)
    yield server
    await asyncio.wait_for(server.close(), TIMEOUT)


def test_the_state_folder_follows_xdg_state_home() -> None:
    env = {"XDG_STATE_HOME": "/var/lib/u", "HOME": "/home/u"}
    assert default_state_dir("Peer1", env) == Path("/var/lib/u/p2pshare/peer1")
    assert state_home({"HOME": "/home/u"}) == Path("/home/u/.local/state/p2pshare")


def test_a_state_folder_open_to_others_is_made_private(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    prepare_state_dir(folder)
    assert folder.stat().st_mode & 0o777 == 0o700


async def test_status_search_get_and_sync_answer_over_the_socket(
    server: ControlServer, state_dir: Path, session: ControlledFake
) -> None:
    client = ControlClient(state_dir, timeout=TIMEOUT)
    status = await client.status()
    assert status.status.domain_name == "peer3" and status.share_bytes == 10
    hits = await client.search("koala")
    assert [h.domain_name for h in hits] == ["peer2"]
    peer, result, attempts = await client.get("koala", "joey.txt")
    assert (peer, result.file_name, attempts) == ("peer2", "joey.txt", [])
    assert result.path.read_bytes() == b"a baby koala\n"
    assert all(check.passed for check in result.checks)
    report = await client.sync()
    assert (report.added, report.sent, report.full) == (1, 1, False)
    assert (await client.status()).downloads == 1


async def test_get_of_a_file_nobody_lists_is_not_found(
    server: ControlServer, state_dir: Path
) -> None:
    with pytest.raises(NotFound, match=r"no other peer shares koala/nope\.txt"):
        await ControlClient(state_dir).get("koala", "nope.txt")


async def test_a_download_every_peer_fails_is_download_failed_with_each_attempt(
    server: ControlServer, state_dir: Path, session: ControlledFake
) -> None:
    session.peers["peer2"].connect_error = ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(RequestError) as caught:
        await ControlClient(state_dir).get("koala", "joey.txt")
    assert caught.value.code == DownloadFailed.code
    (attempt,) = caught.value.extra["attempts"]
    assert attempt["peer"] == "peer2" and "Connection refused" in attempt["message"]


async def test_a_bad_name_is_invalid_path_and_an_unknown_op_unknown_op(
    server: ControlServer, state_dir: Path
) -> None:
    client = ControlClient(state_dir)
    with pytest.raises(InvalidPath):
        await client.request("search", {"keyword": "../x"})
    with pytest.raises(UnknownOp):
        await client.request("shutdown", {})


async def test_a_malformed_frame_is_bad_frame(server: ControlServer, state_dir: Path) -> None:
    reader, writer = await asyncio.open_unix_connection(str(state_dir / "control.sock"))
    writer.write(HEADER.pack(3) + b"abc")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    assert b"BAD_FRAME" in data


async def test_a_client_of_another_uid_is_refused(session: ControlledFake, state_dir: Path) -> None:
    server = ControlServer(ControlService(session), state_dir, uid=os.getuid() + 1)
    await server.start()
    try:
        with pytest.raises(Forbidden):
            await ControlClient(state_dir).status()
    finally:
        await server.close()


async def test_the_socket_is_0600_and_removed_at_close(
    session: ControlledFake, state_dir: Path
) -> None:
    server = ControlServer(ControlService(session), state_dir)
    await server.start()
    assert (state_dir / "control.sock").stat().st_mode & 0o777 == 0o600
    await server.close()
    assert not (state_dir / "control.sock").exists()
    with pytest.raises(NoPeer):
        await ControlClient(state_dir).status()


async def test_a_stale_socket_is_replaced_and_a_live_one_refused(
    session: ControlledFake, state_dir: Path
) -> None:
    prepare_state_dir(state_dir)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(state_dir / "control.sock"))
    stale.close()  # bound, never listening: what a killed peer leaves
    first = ControlServer(ControlService(session), state_dir)
    await first.start()
    try:
        with pytest.raises(ControlSocketInUse):
            await ControlServer(ControlService(session), state_dir).start()
        assert (await ControlClient(state_dir).status()).status.domain_name == "peer3"
    finally:
        await first.close()


async def test_a_state_folder_with_a_long_path_still_works(session: ControlledFake) -> None:
    with tempfile.TemporaryDirectory(prefix="p2pc-") as folder:
        deep = Path(folder, *(["a-rather-long-folder-name"] * 5))
        assert len(str(deep / "control.sock")) > 108
        server = ControlServer(ControlService(session), deep)
        await server.start()
        try:
            assert (await ControlClient(deep).status()).status.domain_name == "peer3"
        finally:
            await server.close()


async def test_no_socket_is_no_peer(state_dir: Path) -> None:
    with pytest.raises(NoPeer):
        await ControlClient(state_dir).status()


@pytest.fixture
def holders_session(tmp_path: Path) -> ControlledFake:
    """peer1 and peer2 list koala/joey.txt with a signed manifest; peer4 holds the same
    content as wombat/copy.txt."""
    joey = b"a baby koala\n"
    peers = [
        FakePeer("peer1", {"koala": {"joey.txt": joey}}, port=7101, signed=True),
        FakePeer("peer2", {"koala": {"joey.txt": joey}}, port=7102, signed=True),
        FakePeer("peer4", {"wombat": {"copy.txt": joey}}, port=7104, signed=True),
    ]
    return ControlledFake(tmp_path / "peer3-files", peers)


async def test_get_downloads_from_every_holder_at_once(
    holders_session: ControlledFake, state_dir: Path
) -> None:
    server = ControlServer(ControlService(holders_session), state_dir)
    await asyncio.wait_for(server.start(), TIMEOUT)
    try:
        peer, result, attempts = await ControlClient(state_dir, timeout=TIMEOUT).get(
            "koala", "joey.txt"
        )
    finally:
        await asyncio.wait_for(server.close(), TIMEOUT)
    assert holders_session.swarms == [
        ["peer1:koala/joey.txt", "peer2:koala/joey.txt", "peer4:wombat/copy.txt"]
    ]
    assert holders_session.downloads == []  # no whole-file fetch
    assert (peer, attempts) == ("peer1, peer2, peer4", [])
    assert result.path.read_bytes() == b"a baby koala\n"
    assert [c.name for c in result.checks] == ["manifest", "blocks", "sha256"]


async def test_get_from_limits_the_download_to_that_holder(
    holders_session: ControlledFake, state_dir: Path
) -> None:
    server = ControlServer(ControlService(holders_session), state_dir)
    await asyncio.wait_for(server.start(), TIMEOUT)
    try:
        peer, _, _ = await ControlClient(state_dir, timeout=TIMEOUT).get(
            "koala", "joey.txt", source="PEER2"
        )
    finally:
        await asyncio.wait_for(server.close(), TIMEOUT)
    assert holders_session.swarms == [["peer2:koala/joey.txt"]]
    assert peer == "peer2"


async def test_get_with_every_holder_gone_is_download_failed_naming_the_check(
    holders_session: ControlledFake, state_dir: Path
) -> None:
    for name in ("peer1", "peer2", "peer4"):
        holders_session.peers[name].drop_reason = "vanished (connection reset)"
    server = ControlServer(ControlService(holders_session), state_dir)
    await asyncio.wait_for(server.start(), TIMEOUT)
    try:
        with pytest.raises(RequestError) as caught:
            await ControlClient(state_dir, timeout=TIMEOUT).get("koala", "joey.txt")
    finally:
        await asyncio.wait_for(server.close(), TIMEOUT)
    assert caught.value.code == DownloadFailed.code
    (attempt,) = caught.value.extra["attempts"]
    assert attempt["check"] == "holders" and attempt["partial_kept"] is True
    assert holders_session.downloads == []
