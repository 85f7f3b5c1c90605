"""Joining by enrollment across hosts (issue 13, PROTOCOL.md §10): a newcomer on a host of its
own runs one command — no certificate, key or CA file, only the CA fingerprint — and shares
and downloads; a wrong fingerprint stops it before the password leaves."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.hosts.deployment import (
    INDEX_PORT,
    PASSWORD,
    REPO,
    SESSION_TIMEOUT,
    START_TIMEOUT,
    Deployment,
    downloads,
    put,
)
from tests.support.hosts import HostProcess


def enrolling_index(d: Deployment) -> tuple[HostProcess, str]:
    """``python -m indexd --ca-key ...`` on host ``index``; the fingerprint it prints."""
    argv = [
        sys.executable, "-m", "indexd", "-v", "--host", "0.0.0.0", "--port", str(INDEX_PORT),
        "--db", str(d.root / "index.db"),
        "--cert", str(d.pki.cert("indexd")), "--key", str(d.pki.key("indexd")),
        "--ca", str(d.pki.ca), "--ca-key", str(d.pki.dir / "ca.key"), "--bcrypt-cost", "4",
    ]  # fmt: skip
    index = d.bed.start("index", argv, cwd=REPO)
    index.wait_for(r"indexd listening on", START_TIMEOUT)
    return index, index.wait_for(r"CA fingerprint: (SHA256:[0-9a-f]{64})", START_TIMEOUT)[1]


def join(
    d: Deployment, name: str, user: str, fingerprint: str | None, *, shell: str | None = None
) -> HostProcess:
    """The one command of a newcomer on host ``name``, as the README gives it."""
    argv = [
        sys.executable, "-m", "peerd",
        "-hostname", name,
        "-index_server_name", f"{d.bed.address('index')}:{INDEX_PORT}",
        "-username", user,
        "-file_directory", str(d.share(name)),
        "--register",
    ]  # fmt: skip
    if fingerprint is not None:
        argv += ["--ca-fingerprint", fingerprint]
    if shell is None:
        argv.append("--no-shell")
    d.share(name).mkdir(parents=True, exist_ok=True)
    env = {
        "P2P_PASSWORD": PASSWORD,
        "XDG_STATE_HOME": str(d.root / "state"),
        "P2P_HISTORY": str(d.root / f"{name}.history"),
    }
    return d.bed.start(name, argv, env, stdin=shell, cwd=REPO)


def test_one_command_on_a_second_host_joins_from_nothing_shares_and_downloads_verified(
    deploy: Callable[..., Deployment],
) -> None:
    d = deploy(["index", "laptop", "desk"])
    put(d.share("laptop"), "koala/joey.txt", b"a baby koala\n")
    _, fingerprint = enrolling_index(d)
    laptop = join(d, "laptop", "alice", fingerprint)
    d.ready(laptop)

    desk = join(d, "desk", "bob", fingerprint, shell="2\nkoala\nquit\n")
    assert desk.wait(SESSION_TIMEOUT) == 0, desk.describe()

    assert [(m["peer"], m["file"]) for m in downloads(desk.stdout)] == [("laptop", "joey.txt")]
    assert (d.share("desk") / "koala" / "joey.txt").read_bytes() == b"a baby koala\n"
    state = Path(d.root / "state" / "p2pshare")
    for name in ("laptop", "desk"):
        assert {"ca.crt", "peer.crt", "peer.key"} <= {p.name for p in (state / name).iterdir()}
    assert PASSWORD not in desk.stderr + laptop.stderr


def test_a_wrong_fingerprint_stops_the_newcomer_before_the_index_sees_an_auth(
    deploy: Callable[..., Deployment],
) -> None:
    d = deploy(["index", "laptop"])
    index, fingerprint = enrolling_index(d)
    wrong = "SHA256:" + ("0" if fingerprint[-1] != "0" else "1") * 64
    newcomer = join(d, "laptop", "alice", wrong)
    assert newcomer.wait(START_TIMEOUT) == 1, newcomer.describe()
    assert "the password was not sent" in newcomer.stderr
    assert not (d.root / "state" / "p2pshare" / "laptop" / "peer.key").exists()
    assert "alice" not in index.stderr  # no register, no auth reached the index

    joined = join(d, "laptop", "alice", fingerprint)  # the same command, the right string
    d.ready(joined)
    # The ready peer has logged in, and the index logs each auth (so the check above can fail).
    deadline = time.monotonic() + START_TIMEOUT
    while "user alice logged in" not in index.stderr and time.monotonic() < deadline:
        time.sleep(0.05)  # the index's log is read by a thread of the test bed
    assert "user alice logged in" in index.stderr
