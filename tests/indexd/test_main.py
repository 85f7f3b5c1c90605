"""``python -m indexd`` as a process: start-up line and errors, SIGTERM, and ``kill -9``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from indexd.__main__ import build_parser, config_from_args, main
from netproto.errors import ConnectionClosed, RequestError, Timeout
from netproto.operations import SharedFile
from runner import ExitCode

PASSWORD = "correct horse"
TIMEOUT = 20.0
# `python -m indexd` runs from the repository root, so it finds the package in any install.
REPO = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def indexd_process(
    pki: Any, db: Path, *extra: str, log: Path | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """Run ``python -m indexd --port 0``; yield the process and the port it printed."""
    err = (log or db.with_suffix(".log")).open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "indexd",
        "--port",
        "0",
        "--db",
        str(db),
        "--cert",
        str(pki.cert("indexd")),
        "--key",
        str(pki.key("indexd")),
        "--ca",
        str(pki.ca),
        "--bcrypt-cost",
        "4",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=err,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode()
        assert line.startswith("indexd listening on 127.0.0.1:"), line
        yield proc, int(line.rsplit(":", 1)[1])
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), TIMEOUT)
        err.close()


def _file(keyword: str, name: str) -> SharedFile:
    return SharedFile(name, keyword, 1, hashlib.sha256(name.encode()).digest())


# --- start-up errors ---------------------------------------------------------------------


def _ec_key(tmp_path: Path) -> Path:
    path = tmp_path / "ec.key"
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing-cert", "cannot read certificate"),
        ("missing-key", "cannot read private key"),
        ("missing-ca", "cannot read CA certificate"),
        ("cert-not-pem", "bad certificate"),
        ("key-of-another-cert", "does not match certificate"),
        ("non-ed25519-key", "not an Ed25519 private key"),
        ("cert-of-another-ca", "is not issued by CA"),
        ("unwritable-db", "cannot open database"),
        ("port-in-use", "cannot listen on 127.0.0.1"),
    ],
)
def test_startup_errors_are_one_readable_line_and_exit_failure(
    pki: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, expected: str
) -> None:
    args = {
        "--cert": str(pki.cert("indexd")),
        "--key": str(pki.key("indexd")),
        "--ca": str(pki.ca),
        "--db": str(tmp_path / "index.db"),
        "--port": "0",
    }
    busy = socket.socket()
    if case == "missing-cert":
        args["--cert"] = str(tmp_path / "absent.crt")
    elif case == "missing-key":
        args["--key"] = str(tmp_path / "absent.key")
    elif case == "missing-ca":
        args["--ca"] = str(tmp_path / "absent.crt")
    elif case == "cert-not-pem":
        args["--cert"] = str(pki.key("indexd"))
    elif case == "key-of-another-cert":
        args["--key"] = str(pki.key("peer1"))
    elif case == "non-ed25519-key":
        args["--key"] = str(_ec_key(tmp_path))
    elif case == "cert-of-another-ca":
        args["--cert"] = str(pki.cert("indexd", other=True))
        args["--key"] = str(pki.key("indexd", other=True))
    elif case == "unwritable-db":
        (tmp_path / "file").write_text("not a directory")
        args["--db"] = str(tmp_path / "file" / "index.db")
    elif case == "port-in-use":
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args["--port"] = str(busy.getsockname()[1])
    with busy:
        code = main([item for pair in args.items() for item in pair])
    err = capsys.readouterr().err
    assert code == ExitCode.FAILURE
    assert err.count("\n") == 1 and err.startswith("indexd: ") and expected in err
    assert "Traceback" not in err


def test_startup_error_of_the_real_command_exits_1_without_traceback(
    pki: Any, tmp_path: Path
) -> None:
    import subprocess

    result = subprocess.run(
        [
            *(sys.executable, "-m", "indexd", "--port", "0", "--db", str(tmp_path / "i.db")),
            *("--cert", str(tmp_path / "absent.crt"), "--key", str(pki.key("indexd"))),
            *("--ca", str(pki.ca)),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO,
    )
    assert result.returncode == ExitCode.FAILURE
    assert result.stderr.startswith("indexd: cannot read certificate")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


# --- signals -----------------------------------------------------------------------------


async def test_sigterm_drains_the_request_in_flight_and_exits_0(
    pki: Any, tmp_path: Path, index_client: Any
) -> None:
    db = tmp_path / "index.db"
    # Cost 12: the register below is still hashing when SIGTERM arrives.
    async with indexd_process(pki, db, "--bcrypt-cost", "12") as (proc, port):
        async with index_client(port) as client:
            register = asyncio.ensure_future(client.register("alice", PASSWORD))
            # Requests are read in order: once this one is answered, the register was read.
            with pytest.raises(RequestError):
                await client.call("search", {"keyword": "k"})
            assert not register.done()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(register, TIMEOUT) == {"username": "alice"}
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    async with indexd_process(pki, db) as (proc, port), index_client(port) as client:
        assert (await client.login("alice", PASSWORD))["token"]


# --- durability --------------------------------------------------------------------------


async def test_kill_9_during_a_stream_of_writes_loses_no_acknowledged_one(
    pki: Any, tmp_path: Path, index_client: Any
) -> None:
    db = tmp_path / "index.db"
    registered: list[str] = []
    synced: dict[str, int] = {}  # domain name -> last acknowledged version
    peers = ["peer1", "peer2", "peer3"]
    enough = asyncio.Event()  # set once plenty of writes were acknowledged

    def progress() -> None:
        if len(registered) >= 20 and len(synced) == 3 and min(synced.values()) >= 5:
            enough.set()

    async def register_stream(client: Any) -> None:
        for i in range(10_000):
            await client.register(f"user{i}", PASSWORD)
            registered.append(f"user{i}")
            progress()

    async def sync_stream(client: Any, domain: str, keyword: str) -> None:
        for version in range(1, 10_000):
            files = [_file(keyword, f"v{version:05d}-{j:03d}") for j in range(100)]
            await client.sync(domain, files)
            synced[domain] = version
            progress()

    async with (
        indexd_process(
            pki, db, "--register-free-attempts", "1000000", "--sync-burst", "1000000"
        ) as (proc, port),
        index_client(port) as owner,
        index_client(port) as registrar,
        index_client(port, "peer1") as c1,
        index_client(port, "peer2") as c2,
        index_client(port, "peer3") as c3,
    ):
        await owner.register("owner", PASSWORD)
        for c in (c1, c2, c3):
            await c.login("owner", PASSWORD)
        streams = [
            asyncio.ensure_future(register_stream(registrar)),
            *(
                asyncio.ensure_future(sync_stream(c, d, f"kw-{d}"))
                for c, d in zip((c1, c2, c3), peers, strict=True)
            ),
        ]
        await asyncio.wait_for(enough.wait(), TIMEOUT)
        os.kill(proc.pid, signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*streams, return_exceptions=True), TIMEOUT)
    assert all(isinstance(r, ConnectionClosed | Timeout) for r in results), results

    async with indexd_process(pki, db) as (proc, port), index_client(port) as client:
        for name in registered:
            assert (await client.login(name, PASSWORD))["token"]
        await client.login("owner", PASSWORD)
        for domain in peers:
            [hit] = await client.search(f"kw-{domain}")
            versions = {f.filename.split("-")[0] for f in hit.files}
            assert len(versions) == 1 and len(hit.files) == 100  # one whole listing
            assert int(versions.pop()[1:]) >= synced[domain]


# --- the limits of issue 12 as flags -------------------------------------------------------


def test_the_per_user_and_attempt_limit_flags_reach_the_config() -> None:
    args = build_parser().parse_args(
        [
            *("--cert", "c", "--key", "k", "--ca", "a"),
            *("--max-domains-per-user", "2", "--max-files-per-user", "1000"),
            *("--sync-burst", "3", "--sync-interval", "20"),
            *("--auth-free-attempts", "4", "--auth-user-free-attempts", "50"),
            *("--auth-address-free-attempts", "60", "--register-free-attempts", "7"),
        ]
    )
    config = config_from_args(args)
    assert (config.max_domains_per_user, config.max_files_per_user) == (2, 1000)
    assert (config.sync_rate.burst, config.sync_rate.interval) == (3, 20.0)
    assert config.login_backoff.free == 4
    assert config.user_backoff.free == 50
    assert config.address_backoff.free == 60
    assert config.register_backoff.free == 7


def test_the_limits_of_issue_12_default_to_the_documented_values() -> None:
    config = config_from_args(build_parser().parse_args(["--cert", "c", "--key", "k", "--ca", "a"]))
    assert (config.max_domains_per_user, config.max_files_per_user) == (4, 200_000)
    assert (config.sync_rate.burst, config.sync_rate.interval) == (10, 6.0)
    assert (config.login_backoff.free, config.user_backoff.free) == (5, 100)
    assert (config.address_backoff.free, config.register_backoff.free) == (100, 20)
