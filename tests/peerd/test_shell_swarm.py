"""The shell's ``get`` from every holder at once (peerd/shell.py, peerd/ui.py) against a fake
session: several holders, ``--from``, a dropped peer named with its reason, and files without
a manifest still fetched whole."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from peerd.errors import DownloadRefused
from peerd.shell import Shell
from peerd.swarm import PeerStats, SwarmProgress, SwarmResult
from peerd.ui import ShellView, make_console
from tests.support.fake_session import FakePeer, FakeSession

TIMEOUT = 10.0
JOEY = b"a baby koala\n"


class ScriptLines:
    """Input lines given in advance; None after the last one."""

    def __init__(self, *lines: str) -> None:
        self.lines = list(lines)

    async def read(self, prompt: str) -> str | None:
        return self.lines.pop(0) if self.lines else None


async def run_script(session: FakeSession, *lines: str) -> str:
    out = io.StringIO()
    view = ShellView(make_console(interactive=False, file=out), interactive=False)
    shell = Shell(session, view, ScriptLines(*lines), echo=True, clock=session.clock)
    await asyncio.wait_for(shell.run(), TIMEOUT)
    return out.getvalue()


@pytest.fixture
def session(tmp_path: Path) -> FakeSession:
    """peer1 and peer2 list koala/joey.txt signed; peer4 holds it as wombat/copy.txt."""
    return FakeSession(
        tmp_path / "peer3-files",
        [
            FakePeer("peer1", {"koala": {"joey.txt": JOEY}}, port=7101, signed=True),
            FakePeer("peer2", {"koala": {"joey.txt": JOEY}}, port=7102, signed=True),
            FakePeer("peer4", {"wombat": {"copy.txt": JOEY}}, port=7104, signed=True),
            FakePeer("old", {"koala": {"plain.txt": b"no manifest\n"}}, port=7105),
        ],
    )


async def test_get_uses_every_holder_including_those_found_by_content(
    session: FakeSession,
) -> None:
    out = await run_script(session, "get koala joey.txt")
    assert session.swarms == [
        ["peer1:koala/joey.txt", "peer2:koala/joey.txt", "peer4:wombat/copy.txt"]
    ]
    assert "✓ downloaded koala/joey.txt from peer1, peer2, peer4" in out
    assert re.search(r"✓\s+blocks\s+1 of 1 blocks verified", out)
    for name in ("peer1", "peer2", "peer4"):
        assert re.search(rf"✓\s+peer\s+{name}: 1 blocks", out)
    assert (session.file_directory / "koala" / "joey.txt").read_bytes() == JOEY
    assert session.downloads == []


async def test_get_from_uses_only_the_named_holder(session: FakeSession) -> None:
    out = await run_script(session, "get koala joey.txt --from PEER2")
    assert session.swarms == [["peer2:koala/joey.txt"]]
    assert "✓ downloaded koala/joey.txt from peer2:" in out


async def test_a_dropped_peer_is_shown_with_its_reason(session: FakeSession) -> None:
    session.peers["peer1"].drop_reason = "sent a bad block (3)"
    out = await run_script(session, "get koala joey.txt")
    assert re.search(r"✗\s+peer\s+peer1 dropped: sent a bad block \(3\)", out)
    assert (session.file_directory / "koala" / "joey.txt").read_bytes() == JOEY


async def test_every_holder_gone_is_refused_and_the_partial_kept(session: FakeSession) -> None:
    for name in ("peer1", "peer2", "peer4"):
        session.peers[name].drop_reason = "vanished"
    out = await run_script(session, "get koala joey.txt", "status")
    assert "the partial file is kept" in out
    assert not (session.file_directory / "koala" / "joey.txt").exists()


async def test_a_file_without_a_manifest_is_fetched_whole(session: FakeSession) -> None:
    out = await run_script(session, "get koala plain.txt")
    assert session.swarms == [] and session.downloads == ["old:koala/plain.txt"]
    assert "✓ downloaded koala/plain.txt from old" in out


async def test_a_conflicting_local_file_is_an_error_line(session: FakeSession) -> None:
    target = session.file_directory / "koala" / "joey.txt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"mine\n")
    out = await run_script(session, "get koala joey.txt")
    assert "exists" in out and target.read_bytes() == b"mine\n"


async def test_an_index_without_holders_uses_the_search_hits_alone(
    session: FakeSession,
) -> None:
    async def no_holders(sha256: bytes) -> list[object]:
        from netproto.errors import BadRequest

        raise BadRequest("unknown op")

    session.holders = no_holders  # type: ignore[method-assign,assignment]
    await run_script(session, "get koala joey.txt")
    assert session.swarms == [["peer1:koala/joey.txt", "peer2:koala/joey.txt"]]


def test_the_live_progress_shows_the_total_and_each_peers_rate() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    view = ShellView(console, interactive=True)
    with view.swarm_transfer("koala", "joey.txt", 2) as update:
        update(
            SwarmProgress(
                50,
                100,
                (PeerStats("peer1", 30, 1, 2_000_000.0), PeerStats("peer2", 20, 0, 0, "vanished")),
            )
        )
    text = out.getvalue()
    assert "koala/joey.txt from 2 peers" in text
    assert "peer1 2.0 MB/s" in text and "peer2 dropped" in text


async def test_a_refused_manifest_falls_back_to_a_whole_file_fetch(session: FakeSession) -> None:
    async def refused(*args: object, **kwargs: object) -> SwarmResult:
        raise DownloadRefused("index-manifest", "mallory serves another manifest")

    session.swarm_get = refused  # type: ignore[method-assign]
    out = await run_script(session, "get koala joey.txt")
    assert "fetching the whole file from one holder instead" in out
    assert session.downloads == ["peer1:koala/joey.txt"]
    assert (session.file_directory / "koala" / "joey.txt").read_bytes() == JOEY
