"""A throwaway PostgreSQL server for tests and the driver measurement (``bench.pgdrivers``).

:func:`start_postgres` runs ``initdb`` and ``postgres`` from ``PATH`` (else from
``/usr/lib/postgresql/*/bin``) on a data directory in a fresh temporary directory, listening on
127.0.0.1 on a free port and on a unix socket in that directory, with ``fsync`` on (a commit
that returned is on disk) and ``trust`` authentication for local connections only. As root it
runs the server as the ``postgres`` system user if there is one, else as ``nobody``.
:meth:`PostgresServer.stop` stops it and removes the directory. :meth:`PostgresServer.new_database`
gives each test an empty database of its own.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psycopg

START_TIMEOUT = 30.0  # seconds the server may take to accept connections
STOP_TIMEOUT = 30.0
SUPERUSER = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries (``initdb``, ``postgres``) were found."""


def find_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, or None."""
    found = shutil.which("initdb")
    if found is not None and shutil.which("postgres") is not None:
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for directory in reversed(versions):
        if (Path(directory) / "initdb").exists() and (Path(directory) / "postgres").exists():
            return Path(directory)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None for ourselves, or an unprivileged user when we are root
    (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable("running as root, and there is no postgres or nobody user")


@dataclass
class PostgresServer:
    """A running throwaway server: its port, socket directory and process."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def socket_dir(self) -> Path:
        """Where the server's unix socket is."""
        return self.root / "run"

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL of one database, as the superuser over TCP."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "test") -> str:
        """Create an empty database (from ``template1``) and return its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Start a throwaway server; raise :class:`PostgresUnavailable` without binaries."""
    bindir = find_binaries()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, postgres; version 15 or later) not found"
        )
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="p2pshare-pg-"))
    try:
        return _start(bindir, user, root)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _start(bindir: Path, user: pwd.struct_passwd | None, root: Path) -> PostgresServer:
    run = root / "run"
    run.mkdir()
    uid = gid = None
    if user is not None:
        uid, gid = user.pw_uid, user.pw_gid
        for path in (root, run):
            os.chown(path, uid, gid)
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    if user is not None:
        env["HOME"] = str(root)
    data = root / "data"
    subprocess.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",  # the cluster's files at creation; the server itself fsyncs
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=root,
        user=uid,
        group=gid,
        extra_groups=None if uid is None else [],
    )
    last_error: Exception | None = None
    for _ in range(5):  # a free port may be taken between the probe and the bind
        port = _free_port()
        with open(root / "server.log", "ab") as server_log:  # the child keeps its own copy
            process = _spawn(bindir, data, run, port, server_log, env, root, uid, gid)
        server = PostgresServer(root, port, process)
        try:
            _wait_ready(server)
            return server
        except (PostgresUnavailable, psycopg.Error) as exc:
            last_error = exc
            if process.poll() is None:
                process.kill()
            process.wait()
    log = (root / "server.log").read_text(errors="replace")[-2000:]
    raise PostgresUnavailable(f"PostgreSQL did not start: {last_error}\n{log}")


def _spawn(
    bindir: Path,
    data: Path,
    run: Path,
    port: int,
    server_log: IO[bytes],
    env: dict[str, str],
    root: Path,
    uid: int | None,
    gid: int | None,
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(run),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=on",
            "-c",
            "synchronous_commit=on",
            "-c",
            "max_connections=200",
            "-c",
            "logging_collector=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=server_log,
        env=env,
        cwd=root,
        start_new_session=True,
        user=uid,
        group=gid,
        extra_groups=None if uid is None else [],
    )


def _wait_ready(server: PostgresServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            raise PostgresUnavailable(f"postgres exited with status {server.process.returncode}")
        try:
            with psycopg.connect(server.url(), connect_timeout=2, autocommit=True):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
