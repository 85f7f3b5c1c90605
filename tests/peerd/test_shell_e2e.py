"""The shell (peerd/shell.py) over real daemons: an index and peers on 127.0.0.1 with real TLS,
first in-process with a scripted input, then the real ``python -m peerd`` driven through a
pseudo-terminal, including a peer that forges its signatures. Its commands one by one, against a
fake session, are in test_shell.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import re
import socket
import sys
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pytest
import pytest_asyncio

from indexd.app import IndexConfig, IndexDaemon
from netproto.errors import UserExists
from netproto.operations import SharedFile
from netproto.server import Server
from netproto.tls import client_context
from peerd.client import IndexClient
from peerd.daemon import PeerConfig, PeerDaemon
from peerd.shell import Shell, StreamLines
from peerd.ui import ShellView, make_console
from tests.support.evil_peer import EvilPeer  # the malicious peer of the client-library tests

TIMEOUT = 20.0
PASSWORD = "correct horse battery"  # the conftest peer_config password
REPO = Path(__file__).resolve().parents[2]
FAKE = b"a file whose signature is made with mallory's key\n"
#: What a download from every holder ticks (a signed manifest, PROTOCOL.md §7.1), in order.
SWARM_CHECKED = (r"✓\s+manifest", r"✓\s+digest", r"✓\s+blocks", r"✓\s+peer\s+peer2")


def put(root: Path, rel: str, content: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


class ScriptLines:
    """Input lines given in advance; None (end of input) after the last one."""

    def __init__(self, *lines: str) -> None:
        self.lines = list(lines)

    async def read(self, prompt: str) -> str | None:
        return self.lines.pop(0) if self.lines else None


def plain_shell(daemon: PeerDaemon, lines: Any) -> tuple[Shell, io.StringIO]:
    out = io.StringIO()
    view = ShellView(make_console(interactive=False, file=out), interactive=False)
    return Shell(daemon, view, lines, echo=True), out


async def run_script(daemon: PeerDaemon, *lines: str) -> str:
    """Run the shell over ``lines`` until they end; everything it printed."""
    shell, out = plain_shell(daemon, ScriptLines(*lines))
    await asyncio.wait_for(shell.run(), TIMEOUT)
    return out.getvalue()


async def list_fake_peer(
    index_port: int, pki: Any, domain_name: str, port: int, files: list[SharedFile]
) -> None:
    """Make the index list ``domain_name`` at ``port`` (a peer that is not a PeerDaemon)."""
    ctx = client_context(pki.ca, pki.cert(domain_name), pki.key(domain_name))
    async with await IndexClient.connect(
        "127.0.0.1", index_port, ctx, server_hostname="indexd"
    ) as index:
        with contextlib.suppress(UserExists):  # the user may run an honest daemon too
            await index.register(domain_name, PASSWORD)
        await index.auth(domain_name, PASSWORD)
        await index.sync(domain_name, port, files)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest_asyncio.fixture(loop_scope="function")
async def koala_peers(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any, tmp_path: Path
) -> AsyncIterator[Any]:
    """An index, peer1 and peer2 sharing koala files, and peer3 (the shell's daemon)."""
    put(tmp_path / "peer1-files", "koala/sleep.txt", b"20 hours a day\n")
    put(tmp_path / "peer2-files", "koala/joey.txt", b"a baby koala\n")
    put(tmp_path / "peer3-files", "wombat/burrow.txt", b"30 metres\n")
    async with (
        running_index(index_config()) as index,
        running_peer(peer_config("peer1", index.port)),
        running_peer(peer_config("peer2", index.port)),
        running_peer(peer_config("peer3", index.port)) as peer3,
    ):
        yield index, peer3


# --- the commands, in-process ----------------------------------------------------------------


async def test_get_downloads_verifies_shows_the_content_and_lands_in_the_share(
    koala_peers: Any, tmp_path: Path
) -> None:
    _, peer3 = koala_peers
    out = await run_script(peer3, "get koala joey.txt")
    assert "✓ downloaded koala/joey.txt from peer2" in out
    for check in SWARM_CHECKED:
        assert re.search(check, out)
    assert "a baby koala" in out
    assert (tmp_path / "peer3-files" / "koala" / "joey.txt").read_bytes() == b"a baby koala\n"


async def test_a_peer_listed_but_offline_is_one_readable_line(koala_peers: Any, pki: Any) -> None:
    index, peer3 = koala_peers
    files = [SharedFile("gone.txt", "ghost", 3, bytes(32))]
    await list_fake_peer(index.port, pki, "mallory", closed_port(), files)
    out = await run_script(peer3, "get ghost gone.txt")
    assert re.search(r"✗ mallory at 127\.0\.0\.1:\d+ is offline or unreachable", out)
    assert "Traceback" not in out


async def test_a_peer_with_a_certificate_for_another_name_is_not_trusted(
    koala_peers: Any, pki: Any
) -> None:
    index, peer3 = koala_peers
    peer1 = next(h for h in await peer3.search("koala") if h.domain_name == "peer1")
    files = [SharedFile("sleep.txt", "koala", 15, bytes(32))]
    await list_fake_peer(index.port, pki, "mallory", peer1.port_number, files)  # peer1's port
    out = await run_script(peer3, "get koala sleep.txt --from mallory")
    assert re.search(r"✗ mallory at 127\.0\.0\.1:\d+ presented a certificate we do not trust", out)


async def test_an_index_presenting_a_certificate_we_do_not_trust_is_said_so(
    koala_peers: Any, pki: Any
) -> None:
    index, peer3 = koala_peers
    port = index.port
    await asyncio.wait_for(index.stop(grace=0), TIMEOUT)
    # peer2's certificate is from our CA but does not name the index ("indexd").
    impostor = Server({}, pki.server_ctx("peer2"), name="impostor")
    await impostor.start("127.0.0.1", port)
    try:
        assert peer3.index is not None
        await peer3.index.close()  # the next command reconnects, to the impostor
        out = await run_script(peer3, "search koala")
    finally:
        await impostor.close(grace=0)
    assert "✗ the index presented a certificate we do not trust" in out


async def test_the_peer_keeps_serving_while_the_shell_waits_for_input(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any, tmp_path: Path
) -> None:
    put(tmp_path / "peer3-files", "wombat/burrow.txt", b"30 metres\n")
    read_fd, write_fd = os.pipe()
    try:
        async with (
            running_index(index_config()) as index,
            running_peer(peer_config("peer3", index.port)) as peer3,
            running_peer(peer_config("peer1", index.port)) as peer1,
        ):
            shell, _ = plain_shell(peer3, StreamLines(read_fd))
            running = asyncio.ensure_future(shell.run())
            await asyncio.sleep(0.1)  # the shell now waits for a line that does not come
            hit = next(h for h in await peer1.search("wombat") if h.domain_name == "peer3")
            result = await asyncio.wait_for(peer1.download(hit, "wombat", "burrow.txt"), TIMEOUT)
            assert not running.done()
            os.write(write_fd, b"quit\n")
            await asyncio.wait_for(running, TIMEOUT)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert result.path.read_bytes() == b"30 metres\n"


# --- the real shell in a pseudo-terminal -----------------------------------------------------


class LoopThread:
    """An event loop in a thread, so in-process daemons serve while pexpect blocks this one."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


@dataclass
class Rig:
    pki: Any
    index_port: int


@pytest.fixture(scope="module")
def rig(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """An index; peer2, honest, sharing koala/joey.txt; and a forger listed as peer1 sharing
    horse/fake.txt (it presents peer1's certificate and signs with mallory's key)."""
    root = tmp_path_factory.mktemp("pty-rig")
    put(root / "peer2-files", "koala/joey.txt", b"a baby koala\n")
    loop = LoopThread()
    index = IndexDaemon(
        IndexConfig(
            cert=pki.cert("indexd"),
            key=pki.key("indexd"),
            ca=pki.ca,
            db=root / "index.db",
            port=0,
            bcrypt_cost=4,
        )
    )
    evil = EvilPeer(pki, FAKE, key_name="mallory")
    peer2: PeerDaemon | None = None
    try:
        loop.run(index.start())
        peer2 = PeerDaemon(
            PeerConfig(
                domain_name="peer2",
                index_host="127.0.0.1",
                index_port=index.port,
                username="peer2",
                password=PASSWORD,
                file_directory=root / "peer2-files",
                cert=pki.cert("peer2"),
                key=pki.key("peer2"),
                ca=pki.ca,
                port=0,
                bind="127.0.0.1",
                register=True,
            )
        )
        loop.run(peer2.start())
        evil_port = loop.run(evil.start())
        files = [SharedFile("fake.txt", "horse", len(FAKE), hashlib.sha256(FAKE).digest())]
        loop.run(list_fake_peer(index.port, pki, "peer1", evil_port, files))
        yield Rig(pki, index.port)
    finally:
        loop.run(evil.stop())
        if peer2 is not None:
            loop.run(peer2.stop(grace=0.5))
        loop.run(index.stop())
        loop.close()


@pytest.fixture
def terminal_shell(rig: Rig, tmp_path: Path) -> Iterator[Any]:
    """``python -m peerd`` as peer3 in a pseudo-terminal, at its first prompt.

    After the test it must leave on ``quit`` with status 0, and nothing it printed may be a
    traceback.
    """
    pki = rig.pki
    argv = [
        "-m", "peerd",
        "-hostname", "peer3",
        "-index_server_name", f"127.0.0.1:{rig.index_port}",
        "-peer_server_port", "0",
        "-username", "peer3",
        "-file_directory", str(tmp_path / "peer3-files"),
        "-certificate", str(pki.cert("peer3")),
        "-private_key", str(pki.key("peer3")),
        "--ca", str(pki.ca),
        "--bind", "127.0.0.1",
        "--register",
    ]  # fmt: skip
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "P2P_PASSWORD": PASSWORD,
        "PYTHONPATH": path,
        "P2P_HISTORY": str(tmp_path / "history"),
        "TERM": "xterm-256color",
    }
    transcript = io.StringIO()
    child = pexpect.spawn(
        sys.executable, argv, env=env, encoding="utf-8", timeout=TIMEOUT, dimensions=(50, 140)
    )
    child.logfile_read = transcript
    try:
        child.expect_exact("p2pshare> ")
        yield child
        child.sendline("quit")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert "Traceback" not in transcript.getvalue()
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_in_a_terminal_search_shows_a_table_of_peers_and_files(terminal_shell: Any) -> None:
    terminal_shell.sendline("search koala")
    # One table row (colour codes may sit between the borders and the text).
    terminal_shell.expect(r"│[^\n]*peer2[^\n]*│[^\n]*127\.0\.0\.1:\d+[^\n]*│[^\n]*joey\.txt")
    terminal_shell.expect_exact("p2pshare> ")


def test_in_a_terminal_a_download_ticks_the_manifest_digest_and_blocks(
    terminal_shell: Any,
) -> None:
    terminal_shell.sendline("get koala joey.txt")
    terminal_shell.expect(r"downloaded .*koala/joey\.txt")
    for check in SWARM_CHECKED:
        terminal_shell.expect(check.replace(r"\s+", r"[^\n]*"))  # colour codes in between
    terminal_shell.expect_exact("a baby koala")
    terminal_shell.expect_exact("p2pshare> ")


def test_in_a_terminal_a_forged_signature_is_a_cross_with_a_readable_reason(
    terminal_shell: Any,
) -> None:
    terminal_shell.sendline("get horse fake.txt")
    terminal_shell.expect(r"✗.*signature.*the signature does not verify under peer1's")
    terminal_shell.expect(r"refused .*horse/fake\.txt.* from .*peer1.*: the signature check failed")
    terminal_shell.expect_exact("p2pshare> ")


def test_in_a_terminal_an_unknown_command_is_answered_with_the_help(terminal_shell: Any) -> None:
    terminal_shell.sendline("frobnicate")
    terminal_shell.expect(r"unknown command .*'frobnicate'")
    terminal_shell.expect_exact("search <keyword>")
    terminal_shell.expect_exact("p2pshare> ")


def test_in_a_terminal_tab_completes_commands_keywords_files_and_peers(
    terminal_shell: Any,
) -> None:
    # "sea<Tab>" becomes "search ": the search runs only if the command was completed.
    terminal_shell.send("sea\tkoala\r")
    terminal_shell.expect(r"│[^\n]*peer2[^\n]*│[^\n]*joey\.txt")
    terminal_shell.expect_exact("p2pshare> ")
    # The keyword from the last search, its file, and the peer it found, each by Tab.
    terminal_shell.send("get ko\tjo\t--fr\tpe\t\r")
    terminal_shell.expect(r"get koala joey\.txt --from peer2")
    terminal_shell.expect(r"downloaded .*koala/joey\.txt.* from .*peer2")
    terminal_shell.expect_exact("p2pshare> ")
