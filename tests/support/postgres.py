"""A throwaway PostgreSQL server for tests and the driver measurement (``bench.pgdrivers``).

:func:`start_postgres` runs ``initdb`` and ``postgres`` from ``PATH`` (else from
``/usr/lib/postgresql/*/bin``, else the ``pgserver`` wheel's) on a data directory in a fresh
temporary directory, with ``fsync`` on (a commit that returned is on disk). It listens on no TCP
address at all, only on a unix socket in a directory of mode 0700, so ``trust`` authentication
lets in the user who started it (and root) and nobody else; URLs name the socket directory the
libpq way (``postgresql://postgres@/db?host=/dir&port=5432``), which psycopg, asyncpg and
``python -m indexd --db URL`` take alike. As root it runs the server as the ``postgres`` system
user if there is one, else as ``nobody``.

:meth:`PostgresServer.stop` stops it and removes the directory. If the test process dies
first, a watchdog (this file run as a script: ``watch``) sees its pipe close and does the same;
and :func:`start_postgres` first sweeps what a run whose process is gone left behind
(:func:`sweep_stale`). :meth:`PostgresServer.new_database` gives each test an empty database of
its own.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psycopg

START_TIMEOUT = 30.0  # seconds the server may take to accept connections
STOP_TIMEOUT = 30.0
SUPERUSER = "postgres"
#: The server's port: only the name of its socket file, in a directory of its own, so any
#: fixed number does (no TCP port is taken).
PORT = 5432
PREFIX = "p2pshare-pg-"  # the temporary directories' names begin so (for the sweep)
OWNER_FILE = "owner.pid"  # in each directory: the pid of the process that started the server


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries (``initdb``, ``postgres``) were found."""


def pgserver_binaries() -> Path | None:
    """The server binaries the ``pgserver`` wheel carries (the fallback where no system
    PostgreSQL is installed: it is in the ``test`` extra), or None. Found without importing
    the package (its import sets up directories of its own)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        return None
    directory = Path(spec.origin).parent / "pginstall" / "bin"
    if (directory / "initdb").exists() and (directory / "postgres").exists():
        return directory
    return None


def find_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``postgres`` — the system's (``PATH``, then
    ``/usr/lib/postgresql/*/bin``), else the ``pgserver`` wheel's — or None."""
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
    return pgserver_binaries()


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
    watchdog: subprocess.Popen[bytes] | None = None
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def socket_dir(self) -> Path:
        """Where the server's unix socket is."""
        return self.root / "run"

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL of one database, as the superuser, over the unix socket."""
        host = urllib.parse.quote(str(self.socket_dir), safe="/")
        return f"postgresql://{SUPERUSER}@/{database}?host={host}&port={self.port}"

    def new_database(self, prefix: str = "test") -> str:
        """Create an empty database (from ``template1``) and return its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown), remove its directory, and end the watchdog."""
        _stop_process(self.process)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.watchdog is not None:
            if self.watchdog.stdin is not None:
                self.watchdog.stdin.close()
            self.watchdog.wait(STOP_TIMEOUT)


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _kill_postmaster(root: Path) -> None:
    """Stop the server of ``root`` (immediate shutdown) if its postmaster is still running."""
    data = root / "data"
    pid = _read_pid(data / "postmaster.pid")
    if pid is None or not _alive(pid):
        return
    try:  # the pid may have been reused: only a postgres on this data directory is ours
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if str(data).encode() not in cmdline:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def sweep_stale() -> list[Path]:
    """Stop the servers and remove the directories of runs whose process is gone."""
    swept = []
    for root in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        owner = _read_pid(root / OWNER_FILE)
        if owner is None or _alive(owner):  # not ours to judge, or still in use
            continue
        _kill_postmaster(root)
        shutil.rmtree(root, ignore_errors=True)
        swept.append(root)
    return swept


def _start_watchdog(root: Path) -> subprocess.Popen[bytes]:
    """``watch ROOT``: waits for its stdin to close (we stopped, or died), then cleans up."""
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "watch", str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # a ^C to the tests must not end it before it cleaned up
    )


def _watch(root: Path) -> None:
    sys.stdin.buffer.read()  # EOF: the test process closed the pipe, or is gone
    _kill_postmaster(root)
    shutil.rmtree(root, ignore_errors=True)


def start_postgres(bindir: Path | None = None) -> PostgresServer:
    """Start a throwaway server (from ``bindir``, by default :func:`find_binaries`'s); raise
    :class:`PostgresUnavailable` without binaries."""
    bindir = bindir or find_binaries()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, postgres; version 15 or later) not found"
        )
    user = _server_user()
    sweep_stale()
    root = Path(tempfile.mkdtemp(prefix=PREFIX))  # mode 0700
    (root / OWNER_FILE).write_text(f"{os.getpid()}\n")
    watchdog = _start_watchdog(root)
    try:
        server = _start(bindir, user, root)
    except BaseException:
        if watchdog.stdin is not None:
            watchdog.stdin.close()  # it removes the directory
        watchdog.wait(STOP_TIMEOUT)
        shutil.rmtree(root, ignore_errors=True)
        raise
    server.watchdog = watchdog
    return server


def _start(bindir: Path, user: pwd.struct_passwd | None, root: Path) -> PostgresServer:
    run = root / "run"
    run.mkdir(mode=0o700)
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
    with open(root / "server.log", "ab") as server_log:  # the child keeps its own copy
        process = _spawn(bindir, data, run, PORT, server_log, env, root, uid, gid)
    server = PostgresServer(root, PORT, process)
    try:
        _wait_ready(server)
    except (PostgresUnavailable, psycopg.Error) as exc:
        _stop_process(process)
        log = (root / "server.log").read_text(errors="replace")[-2000:]
        raise PostgresUnavailable(f"PostgreSQL did not start: {exc}\n{log}") from None
    return server


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
            "listen_addresses=",  # no TCP: only the socket in the 0700 directory
            "-c",
            "fsync=on",
            "-c",
            "synchronous_commit=on",
            "-c",
            "max_connections=200",
            "-c",
            "unix_socket_permissions=0700",
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


if __name__ == "__main__":
    if sys.argv[1:2] != ["watch"] or len(sys.argv) != 3:
        sys.exit("usage: postgres.py watch ROOT")
    _watch(Path(sys.argv[2]))
