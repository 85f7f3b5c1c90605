"""Deployments on a test bed: the index and peers each on a host of its own, started as a user
starts them (``python -m indexd``, ``python -m peerd``), with certificates naming no address."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.hosts import HostProcess, TestBed

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "host tests password"  # a throwaway account of a throwaway index
NAMES = ("indexd", "peer1", "peer2", "peer3")
INDEX_PORT = 7000
PEER_PORT = 7001
START_TIMEOUT = 30.0
SESSION_TIMEOUT = 60.0


@dataclass(frozen=True)
class HostPKI:
    """A CA and leaf certificates naming only DNS names: no loopback, no IP address at all."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def certs(*args: str) -> subprocess.Popen[str]:
    """Start ``python -m certs ARGS``."""
    return subprocess.Popen(
        [sys.executable, "-m", "certs", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen[str]) -> str:
    """Wait for a ``python -m certs`` run; its stdout (it must succeed)."""
    out, err = proc.communicate(timeout=START_TIMEOUT)
    assert proc.returncode == 0, f"{proc.args!r}: {err}"
    return out


def put(root: Path, rel: str, content: bytes) -> Path:
    """Write a file under ``root`` (folders made as needed)."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class Deployment:
    """An index and peers of one test, each on its own host, started as a user starts them."""

    def __init__(self, bed: TestBed, pki: HostPKI, root: Path) -> None:
        self.bed = bed
        self.pki = pki
        self.root = root

    def share(self, name: str) -> Path:
        """A peer's shared folder."""
        return self.root / f"{name}-files"

    def index(self, host: str = "index", *, cert: str = "indexd") -> HostProcess:
        """``python -m indexd`` on ``host``, listening on every address, port 7000."""
        process = self.start_index(host, cert=cert)
        process.wait_for(r"indexd listening on", START_TIMEOUT)
        return process

    def start_index(self, host: str = "index", *, cert: str = "indexd") -> HostProcess:
        """``python -m indexd`` on ``host``, not waited for."""
        argv = [
            sys.executable, "-m", "indexd", "--host", "0.0.0.0", "--port", str(INDEX_PORT),
            "--db", str(self.root / f"index-{host}.db"),
            "--cert", str(self.pki.cert(cert)), "--key", str(self.pki.key(cert)),
            "--ca", str(self.pki.ca), "--bcrypt-cost", "4",
        ]  # fmt: skip
        return self.bed.start(host, argv, cwd=REPO)

    def peer(
        self,
        name: str,
        *,
        index_host: str = "index",
        shell: str | None = None,
        extra: Sequence[str] = (),
    ) -> HostProcess:
        """``python -m peerd`` as ``name`` on host ``name``, dialling the index by address with
        its TLS name; a daemon (``--no-shell``), or the shell fed ``shell`` on stdin."""
        argv = [
            sys.executable, "-m", "peerd",
            "-hostname", name,
            "-index_server_name", f"{self.bed.address(index_host)}:{INDEX_PORT}",
            "--index-tls-name", "indexd",
            "-peer_server_port", str(PEER_PORT),
            "-username", name,
            "-file_directory", str(self.share(name)),
            "-certificate", str(self.pki.cert(name)),
            "-private_key", str(self.pki.key(name)),
            "--ca", str(self.pki.ca),
            "--register",
            *extra,
        ]  # fmt: skip
        if shell is None:
            argv.append("--no-shell")
        self.share(name).mkdir(parents=True, exist_ok=True)
        env = {"P2P_PASSWORD": PASSWORD, "P2P_HISTORY": str(self.root / f"{name}.history")}
        return self.bed.start(name, argv, env, stdin=shell, cwd=REPO)

    def ready(self, *peers: HostProcess) -> None:
        """Wait until every peer daemon serves (it has logged in and synced)."""
        for peer in peers:
            peer.wait_for(r"serving \d+ files on port", START_TIMEOUT)

    def session(self, name: str, script: str, **kwargs: object) -> str:
        """Run the shell as ``name`` with ``script`` on stdin to its end; its output (exit 0)."""
        shell = self.peer(name, shell=script, **kwargs)  # type: ignore[arg-type]
        code = shell.wait(SESSION_TIMEOUT)
        assert code == 0, shell.describe()
        assert "Traceback" not in shell.stderr, shell.describe()
        return shell.stdout


DOWNLOADED = re.compile(
    r"downloaded (?P<keyword>[^/\s]+)/(?P<file>\S+) from (?P<peer>\S+): .* in"
    r" (?P<seconds>[\d.]+) s"
)


def downloads(output: str) -> list[re.Match[str]]:
    """Every ``downloaded KEYWORD/FILE from PEER: ... in S s`` line of a shell session."""
    return list(DOWNLOADED.finditer(output))
