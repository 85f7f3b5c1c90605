"""``p2pshare`` (p2pshare/__main__.py) against a running peer: each command's output, its
``--json`` parsed and checked, and its exit status (0 done, 1 refused or not found, 2 usage,
3 no running peer)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from p2pshare.__main__ import main
from peerd.daemon import PeerDaemon
from runner import ExitCode

TIMEOUT = 20.0
REPO = Path(__file__).resolve().parents[2]


def put(root: Path, rel: str, content: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short state folder (Unix socket paths are limited to about 100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="p2ps-") as folder:
        yield Path(folder) / "peer3"


async def p2pshare(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``p2pshare ARGV`` in a thread (it runs its own event loop); status and stdout."""
    out, err = io.StringIO(), io.StringIO()
    environ = env if env is not None else {"HOME": "/nonexistent"}
    status = await asyncio.wait_for(
        asyncio.to_thread(main, list(argv), environ=environ, stdout=out, stderr=err), TIMEOUT
    )
    return int(status), out.getvalue() + err.getvalue()


@pytest_asyncio.fixture(loop_scope="function")
async def peers(
    index_config: Any,
    running_index: Any,
    peer_config: Any,
    running_peer: Any,
    tmp_path: Path,
    state_dir: Path,
) -> AsyncIterator[PeerDaemon]:
    """An index; peer1 and peer2 sharing koala files; peer3 with a control socket."""
    put(tmp_path / "peer1-files", "koala/sleep.txt", b"20 hours a day\n")
    put(tmp_path / "peer2-files", "koala/joey.txt", b"a baby koala\n")
    put(tmp_path / "peer3-files", "wombat/burrow.txt", b"30 metres\n")
    async with (
        running_index(index_config()) as index,
        running_peer(peer_config("peer1", index.port)),
        running_peer(peer_config("peer2", index.port)),
        running_peer(peer_config("peer3", index.port, state_dir=state_dir)) as peer3,
    ):
        yield peer3


async def test_the_control_socket_is_owner_only_in_an_owner_only_folder(
    peers: PeerDaemon, state_dir: Path
) -> None:
    assert (os.stat(state_dir).st_mode & 0o777) == 0o700
    assert (os.stat(state_dir / "control.sock").st_mode & 0o777) == 0o600


async def test_search_json_lists_each_peer_with_its_files(
    peers: PeerDaemon, state_dir: Path
) -> None:
    status, out = await p2pshare("search", "koala", "--json", "--state-dir", str(state_dir))
    assert status == ExitCode.OK, out
    doc = json.loads(out)
    assert doc["ok"] is True and doc["keyword"] == "koala"
    files = {h["domain_name"]: [f["filename"] for f in h["files"]] for h in doc["hits"]}
    assert files == {"peer1": ["sleep.txt"], "peer2": ["joey.txt"]}
    joey = next(h for h in doc["hits"] if h["domain_name"] == "peer2")["files"][0]
    assert joey["size"] == 13 and len(bytes.fromhex(joey["sha256"])) == 32


async def test_search_prints_the_shells_table(peers: PeerDaemon, state_dir: Path) -> None:
    status, out = await p2pshare("--state-dir", str(state_dir), "search", "koala")
    assert status == ExitCode.OK
    assert "2 file(s) on 2 peer(s) for 'koala'" in out
    assert "joey.txt" in out and "sleep.txt" in out


async def test_a_search_that_finds_nothing_exits_1(peers: PeerDaemon, state_dir: Path) -> None:
    status, out = await p2pshare("--state-dir", str(state_dir), "search", "platypus", "--json")
    assert status == ExitCode.FAILURE
    assert json.loads(out)["hits"] == []


async def test_get_json_names_the_peer_every_check_and_the_file_in_the_share(
    peers: PeerDaemon, state_dir: Path, tmp_path: Path
) -> None:
    status, out = await p2pshare(
        "get", "koala", "joey.txt", "--json", "--state-dir", str(state_dir)
    )
    assert status == ExitCode.OK
    doc = json.loads(out)
    assert doc["ok"] is True and doc["peer"] == "peer2" and doc["signer"] == "peer2"
    # every holder at once, each block checked against the publisher-signed manifest
    checks = {c["name"]: c["passed"] for c in doc["checks"]}
    assert checks == {n: True for n in ("manifest", "publisher-signature", "index-manifest",
                                        "blocks", "sha256")}  # fmt: skip
    landed = tmp_path / "peer3-files" / "koala" / "joey.txt"
    assert Path(doc["path"]) == landed and landed.read_bytes() == b"a baby koala\n"


async def test_get_prints_the_checks_and_the_content_like_the_shell(
    peers: PeerDaemon, state_dir: Path
) -> None:
    status, out = await p2pshare("--state-dir", str(state_dir), "get", "koala", "sleep.txt")
    assert status == ExitCode.OK
    assert "✓ downloaded koala/sleep.txt from peer1" in out
    assert "20 hours a day" in out


async def test_get_of_a_file_nobody_shares_exits_1_with_the_reason(
    peers: PeerDaemon, state_dir: Path
) -> None:
    status, out = await p2pshare(
        "--state-dir", str(state_dir), "get", "koala", "nothing.txt", "--json"
    )
    assert status == ExitCode.FAILURE
    doc = json.loads(out.splitlines()[0] if out.startswith("p2pshare") else out)
    assert doc["ok"] is False and doc["error"]["code"] == "NOT_FOUND"
    assert "no other peer shares koala/nothing.txt" in doc["error"]["message"]


async def test_get_with_an_invalid_name_is_a_usage_error(
    peers: PeerDaemon, state_dir: Path
) -> None:
    status, out = await p2pshare("--state-dir", str(state_dir), "get", "koala", "../etc")
    assert status == ExitCode.USAGE
    assert "invalid name" in out


async def test_status_json_describes_the_peer(peers: PeerDaemon, state_dir: Path) -> None:
    status, out = await p2pshare("status", "--json", "--state-dir", str(state_dir))
    assert status == ExitCode.OK
    doc = json.loads(out)
    assert doc["domain_name"] == "peer3" and doc["username"] == "peer3"
    assert doc["port"] == peers.port and doc["index_connected"] is True
    assert doc["shared_files"] == 1 and doc["share_bytes"] == 10
    assert doc["watching"] is False and doc["downloads"]["files"] == 0


async def test_status_prints_the_shells_status(peers: PeerDaemon, state_dir: Path) -> None:
    status, out = await p2pshare("status", "--state-dir", str(state_dir))
    assert status == ExitCode.OK
    assert "peer3, serving on port" in out and "last sync" in out


async def test_sync_json_reports_only_the_change_sent(
    peers: PeerDaemon, state_dir: Path, tmp_path: Path
) -> None:
    put(tmp_path / "peer3-files", "wombat/diet.txt", b"grasses and roots\n")
    status, out = await p2pshare("sync", "--json", "--state-dir", str(state_dir))
    assert status == ExitCode.OK
    doc = json.loads(out)
    assert (doc["files"], doc["added"], doc["changed"], doc["removed"]) == (2, 1, 0, 0)
    assert doc["sent"] == 1 and doc["full"] is False
    status, out = await p2pshare("sync", "--json", "--state-dir", str(state_dir))
    assert json.loads(out)["sent"] == 0


async def test_the_peer_is_found_by_its_hostname_under_the_state_home(
    peers: PeerDaemon, state_dir: Path
) -> None:
    env = {"HOME": "/nonexistent", "XDG_STATE_HOME": str(state_dir.parent.parent)}
    # state_dir is <tmp>/peer3; make <tmp> look like $XDG_STATE_HOME/p2pshare
    home = state_dir.parent
    env["XDG_STATE_HOME"] = str(home.parent)
    link = home.parent / "p2pshare"
    if not link.exists():
        link.symlink_to(home)
    try:
        status, out = await p2pshare("status", "--json", "--hostname", "peer3", env=env)
        assert status == ExitCode.OK, out
        status, out = await p2pshare("status", "--json", env=env)  # the only one running
        assert status == ExitCode.OK, out
    finally:
        link.unlink()


def test_no_running_peer_exits_3(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    status = main(
        ["status", "--state-dir", str(tmp_path / "nobody")],
        environ={"HOME": "/nonexistent"},
        stdout=out,
        stderr=err,
    )
    assert status == ExitCode.NO_PEER and int(status) == 3
    assert "no peer answers" in err.getvalue()


def test_no_running_peer_under_the_state_home_exits_3_with_json(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    env = {"HOME": "/nonexistent", "XDG_STATE_HOME": str(tmp_path)}
    status = main(["search", "koala", "--json"], environ=env, stdout=out, stderr=err)
    assert status == ExitCode.NO_PEER
    assert json.loads(out.getvalue())["error"]["code"] == "NO_PEER"


@pytest.mark.parametrize(
    "argv", [[], ["frobnicate"], ["search"], ["get", "koala"], ["status", "--bogus"]]
)
def test_a_bad_command_line_exits_2(argv: list[str]) -> None:
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stderr", err)
        status = main(argv, environ={"HOME": "/nonexistent"}, stdout=io.StringIO())
    assert status == ExitCode.USAGE and int(status) == 2


def test_the_console_script_runs_and_reports_no_peer(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path), "HOME": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "p2pshare", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 3
    assert done.stderr.startswith("p2pshare: no running peer")


async def test_peerd_alone_starts_the_configured_peer_that_p2pshare_then_finds(
    index_config: Any, running_index: Any, pki: Any, tmp_path: Path
) -> None:
    """``peerd`` with no flag reads ``$XDG_CONFIG_HOME/p2pshare/peerd.toml``; ``p2pshare``
    finds it through the same file."""
    put(tmp_path / "share", "koala/joey.txt", b"a baby koala\n")
    with tempfile.TemporaryDirectory(prefix="p2px-") as short:
        state = Path(short) / "state"
        async with running_index(index_config()) as index:
            config = tmp_path / "cfg" / "p2pshare" / "peerd.toml"
            config.parent.mkdir(parents=True)
            config.write_text(
                f"""hostname = "peer1"
index-server-name = "127.0.0.1:{index.port}"
peer-server-port = 0
bind = "127.0.0.1"
username = "peer1"
file-directory = "{tmp_path / "share"}"
certificate = "{pki.cert("peer1")}"
private-key = "{pki.key("peer1")}"
ca = "{pki.ca}"
register = true
no-shell = true
state-dir = "{state}"
"""
            )
            env = {
                **os.environ,
                "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
                "P2P_PASSWORD": "correct horse battery",
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
                ),
            }
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "peerd",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
                assert b"peer1 serving 1 files" in line
                status, out = await p2pshare(
                    "status", "--json", env={"XDG_CONFIG_HOME": env["XDG_CONFIG_HOME"]}
                )
                assert status == ExitCode.OK, out
                doc = json.loads(out)
                assert doc["domain_name"] == "peer1" and doc["watching"] is True
            finally:
                proc.terminate()
                _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
            assert proc.returncode == 0, err.decode()
            assert not (state / "control.sock").exists()
