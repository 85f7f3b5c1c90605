"""``p2pshare`` against a control socket over a fake session (no index, no TLS): a refused
download and the next peer, every peer failing, sync's wording, finding the peer through
``peerd.toml``, an index that cannot be reached, and a peer that breaks the protocol."""

from __future__ import annotations

import asyncio
import io
import json
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from netproto.errors import ConnectionClosed
from p2pshare.__main__ import main
from peerd.control import ControlServer, ControlService, prepare_state_dir
from peerd.errors import DownloadRefused
from peerd.session import SyncReport
from peerd.verify import CheckOutcome
from runner import ExitCode
from tests.support.fake_session import FakePeer, FakeSession

TIMEOUT = 20.0
JOEY = b"a baby koala\n"


class ControlledFake(FakeSession):
    """The fake session with the daemon's ``sync_share``."""

    async def sync_share(self) -> SyncReport:
        return SyncReport(await self.resync(), added=1, sent=1, full=False, at=self.clock.time())


@pytest.fixture
def state_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="p2pt-") as folder:
        yield Path(folder) / "peer3"


@pytest.fixture
def session(tmp_path: Path) -> ControlledFake:
    peers = [
        FakePeer("peer1", {"koala": {"joey.txt": JOEY}}),
        FakePeer("peer2", {"koala": {"joey.txt": JOEY}}),
    ]
    return ControlledFake(tmp_path / "peer3-files", peers)


@pytest_asyncio.fixture(loop_scope="function")
async def control(session: ControlledFake, state_dir: Path) -> AsyncIterator[ControlServer]:
    server = ControlServer(ControlService(session), state_dir)
    await server.start()
    yield server
    await server.close()


async def p2pshare(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    environ = env if env is not None else {"HOME": "/nonexistent"}
    status = await asyncio.wait_for(
        asyncio.to_thread(main, list(argv), environ=environ, stdout=out, stderr=err), TIMEOUT
    )
    return int(status), out.getvalue(), err.getvalue()


def refused() -> DownloadRefused:
    checks = (
        CheckOutcome("nonce", True, "the trailer echoes our fresh nonce"),
        CheckOutcome("signature", False, "the signature does not verify under peer1's key"),
    )
    return DownloadRefused("signature", "the signature does not verify", checks)


async def test_a_refused_download_is_shown_and_the_next_peer_delivers(
    control: ControlServer, state_dir: Path, session: ControlledFake
) -> None:
    session.peers["peer1"].download_errors["joey.txt"] = refused()
    status, out, _ = await p2pshare("--state-dir", str(state_dir), "get", "koala", "joey.txt")
    assert status == ExitCode.OK
    assert re.search(r"✗\s+signature\s+the signature does not verify under peer1's key", out)
    assert "refused koala/joey.txt from peer1: the signature check failed" in out
    assert "trying the next peer that lists it: peer2" in out
    assert "✓ downloaded koala/joey.txt from peer2" in out and "a baby koala" in out


async def test_every_peer_failing_exits_1_with_each_reason(
    control: ControlServer, state_dir: Path, session: ControlledFake
) -> None:
    session.peers["peer1"].download_errors["joey.txt"] = refused()
    session.peers["peer2"].connect_error = ConnectionClosed("connection refused")
    status, out, _ = await p2pshare("--state-dir", str(state_dir), "get", "koala", "joey.txt")
    assert status == ExitCode.FAILURE
    assert "refused koala/joey.txt from peer1" in out
    assert "peer2 at 127.0.0.1:7001 is offline or unreachable" in out
    status, out, _ = await p2pshare(
        "--state-dir", str(state_dir), "get", "koala", "joey.txt", "--json"
    )
    doc = json.loads(out)
    assert status == ExitCode.FAILURE and doc["error"]["code"] == "DOWNLOAD_FAILED"
    assert [(a["peer"], a["check"]) for a in doc["attempts"]] == [
        ("peer1", "signature"),
        ("peer2", None),
    ]


async def test_a_file_nobody_lists_is_one_line_and_exit_1(
    control: ControlServer, state_dir: Path
) -> None:
    status, out, _ = await p2pshare("--state-dir", str(state_dir), "get", "koala", "x.txt")
    assert status == ExitCode.FAILURE
    assert out.strip() == "✗ no other peer shares koala/x.txt (search koala to see what is there)"


async def test_sync_says_what_it_sent(control: ControlServer, state_dir: Path) -> None:
    status, out, _ = await p2pshare("--state-dir", str(state_dir), "sync")
    assert status == ExitCode.OK
    assert "the index now lists 0 of your files" in out
    assert "1 added, 0 changed, 0 removed: 1 entry sent (only the changes)" in out


async def test_an_index_that_cannot_be_reached_is_one_line_and_exit_1(
    control: ControlServer, state_dir: Path, session: ControlledFake
) -> None:
    async def unreachable(keyword: str) -> list[object]:
        raise ConnectionClosed("connection refused")

    session.search_hook = unreachable  # type: ignore[assignment]
    status, out, _ = await p2pshare("--state-dir", str(state_dir), "search", "koala")
    assert status == ExitCode.FAILURE
    assert out.startswith("✗ the index is offline or unreachable")
    status, out, err = await p2pshare("--state-dir", str(state_dir), "search", "koala", "--json")
    assert json.loads(out)["error"]["code"] == "UNAVAILABLE" and err.startswith("p2pshare: ")


async def test_the_state_dir_of_peerd_toml_is_where_the_peer_is_found(
    control: ControlServer, state_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "cfg" / "p2pshare" / "peerd.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'hostname = "peer3"\nstate-dir = "{state_dir}"\n')
    env = {"HOME": "/nonexistent", "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    status, out, _ = await p2pshare("status", "--json", env=env)
    assert status == ExitCode.OK and json.loads(out)["domain_name"] == "peer3"
    status, out, _ = await p2pshare("status", "--json", "--config", str(config), env=env)
    assert status == ExitCode.OK


def test_with_several_peers_running_the_hostname_is_asked_for(tmp_path: Path) -> None:
    for name in ("peer1", "peer2"):
        prepare_state_dir(tmp_path / "p2pshare" / name)
        (tmp_path / "p2pshare" / name / "control.sock").touch()
    err = io.StringIO()
    env = {"HOME": "/nonexistent", "XDG_STATE_HOME": str(tmp_path)}
    status = main(["status"], environ=env, stdout=io.StringIO(), stderr=err)
    assert status == ExitCode.USAGE
    assert "several peers run here (peer1, peer2): choose one with --hostname" in err.getvalue()


async def test_a_peer_that_answers_garbage_broke_the_protocol(state_dir: Path) -> None:
    prepare_state_dir(state_dir)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"\x00\x00\x00\x03abc")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(garbage, str(state_dir / "control.sock"))
    try:
        status, _, err = await p2pshare("--state-dir", str(state_dir), "status")
    finally:
        server.close()
    assert status == ExitCode.FAILURE
    assert "the peer broke the protocol" in err
