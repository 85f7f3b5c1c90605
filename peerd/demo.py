"""``python -m peerd.demo`` (what ``make demo`` runs): the whole system on loopback, one command.

It makes a throwaway PKI and sample shares under a git-ignored folder (``demo/``), starts
``indexd`` and two peers (``peer1``, ``peer2``) in the background, each on a free port, and
opens the shell as ``peer3`` in the foreground. ``peer3`` has no certificate of its own: it
joins by enrollment (PROTOCOL.md §10), with only the CA fingerprint the index printed.
Leaving the shell — ``quit``, end of input, Ctrl-C at the prompt, SIGTERM, or an error — stops
every process the demo started.

The demo uses bcrypt cost 4 so logins are instant (the default, 12, takes ~0.25 s a login);
the password is random per run and travels in ``P2P_PASSWORD``, never in a command line.
The folder is made afresh each run; a second demo started while one runs gets its own folder
(``demo/run-<pid>``, removed when it ends).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import os
import re
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from certs import init_pki
from peerd.shell import HISTORY_ENV

DEFAULT_DIR = Path("demo")
BIG_FILE_MB = 50
SMALL_BIG_FILE_MB = 2
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 8.0
BCRYPT_COST = 4
NAMES = ("indexd", "peer1", "peer2", "peer3")
#: What each run replaces in the demo folder (the shell history is kept).
_RUN_STATE = (
    "pki",
    "logs",
    "index.db",
    "index.db-wal",
    "index.db-shm",
    "state",
    *(f"{n}-files" for n in NAMES[1:]),
)

_BREEDS = (
    "Akhal-Teke", "Andalusian", "Appaloosa", "Arabian", "Ardennes", "Brumby", "Clydesdale",
    "Connemara", "Criollo", "Dartmoor", "Exmoor", "Falabella", "Fjord", "Friesian", "Haflinger",
    "Hanoverian", "Icelandic", "Lipizzaner", "Lusitano", "Marwari", "Mustang", "Percheron",
    "Shetland", "Shire", "Suffolk", "Tennessee Walker", "Thoroughbred", "Trakehner",
)  # fmt: skip
_TEXT_FILES: dict[str, dict[str, str]] = {
    "peer1": {
        "koala/eucalyptus.txt": (
            "Koalas eat almost nothing but eucalyptus leaves: up to a kilogram a day.\n"
            "The leaves are poor in energy and toxic to most animals;\n"
            "a koala's long gut and its microbes break the toxins down.\n"
        ),
        "koala/sleep.txt": "A koala sleeps or rests up to 22 hours a day, to save energy.\n",
        "horse/gallop.txt": (
            "The gallop is the fastest gait of a horse: about 40 to 48 km/h.\n"
            "At one moment in each stride all four hooves are off the ground.\n"
        ),
    },
    "peer2": {
        "koala/joey.txt": (
            "A newborn koala, a joey, is the size of a jelly bean.\n"
            "It lives in its mother's pouch for about six months.\n"
        ),
        "horse/breeds.txt": "".join(f"{i:2d}. {name}\n" for i, name in enumerate(_BREEDS, 1)),
    },
    "peer3": {
        "wombat/burrow.txt": "Wombats dig burrows up to 30 metres long.\n",
    },
}
_BINARY_NAME = "images/koala.png"
_BIG_NAME = "video/big-random.bin"


class DemoError(Exception):
    """The demo cannot go on; the message is one readable line."""


class _Terminated(Exception):
    """SIGTERM or SIGHUP arrived before the shell started."""


def _png(width: int = 48, height: int = 32) -> bytes:
    """A small, valid PNG (a colour gradient), so the shell has a binary file to summarise."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 5, y * 7, 160)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def _write_random(path: Path, size: int) -> None:
    block = 1 << 20
    with path.open("wb") as f:
        for start in range(0, size, block):
            f.write(os.urandom(min(block, size - start)))


def _die_with_parent() -> None:
    """In a background child: get SIGTERM if the demo itself is killed (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Background:
    """A daemon the demo runs in the background, in its own process group, logging to a file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    address: str = ""

    def log_tail(self, lines: int = 15) -> str:
        """The end of its log, for an error message."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, pattern: str, timeout: float = READY_TIMEOUT) -> re.Match[str]:
        """Wait for its ready line in its log; DemoError if it exits or takes too long."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                match = regex.search(self.log.read_text(errors="replace"))
                if match is not None:
                    return match
            if self.proc.poll() is not None:
                raise DemoError(
                    f"{self.name} exited with status {self.proc.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise DemoError(f"{self.name} did not start in {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        """Signal its whole process group (it and anything it started)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


class Demo:
    """One demo session: prepare the folder, start the daemons, run the shell, stop it all."""

    def __init__(self, root: Path, big_size: int, out: TextIO = sys.stdout) -> None:
        self.root = root
        self.big_size = big_size
        self.out = out
        self.password = secrets.token_urlsafe(18)
        self.python = sys.executable
        self.background: list[Background] = []
        self.shell: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def say(self, message: str) -> None:
        """One line of the demo's own narration (dropped if the output was closed)."""
        try:
            print(f"demo: {message}", file=self.out, flush=True)
        except BrokenPipeError:  # ``... | head``: carry on (and clean up) without an output
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.out.fileno())
            os.close(devnull)

    @property
    def pki(self) -> Path:
        """The throwaway PKI folder."""
        return self.root / "pki"

    def env(self) -> dict[str, str]:
        """The children's environment: ours, plus the password (never in argv)."""
        return {**os.environ, "P2P_PASSWORD": self.password, "PYTHONUNBUFFERED": "1"}

    # --- the folder -------------------------------------------------------------------

    def prepare(self) -> None:
        """A fresh PKI and the sample shares (the large file generated now, not committed)."""
        for name in _RUN_STATE:
            path = self.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        init_pki(self.pki, NAMES[:3], overwrite=True)  # peer3 enrolls at the index
        (self.root / "logs").mkdir()
        for peer, files in _TEXT_FILES.items():
            for rel, text in files.items():
                path = self.root / f"{peer}-files" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
        share2 = self.root / "peer2-files"
        (share2 / _BINARY_NAME).parent.mkdir(parents=True, exist_ok=True)
        (share2 / _BINARY_NAME).write_bytes(_png())
        (share2 / _BIG_NAME).parent.mkdir(parents=True, exist_ok=True)
        _write_random(share2 / _BIG_NAME, self.big_size)
        self.say(
            f"fresh throwaway PKI in {self.pki} (a CA and certificates for"
            f" {', '.join(NAMES[:3])}); sample shares in {self.root}/peer*-files"
        )
        self.say(
            f"peer2 shares {_BIG_NAME}: {self.big_size / 1e6:.1f} MB of random bytes made just now"
        )

    # --- the daemons ------------------------------------------------------------------

    def spawn(self, name: str, argv: Sequence[str]) -> Background:
        """Start a daemon in the background, in its own session (Ctrl-C is the shell's)."""
        log = self.root / "logs" / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [self.python, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        background = Background(name, proc, log)
        self.background.append(background)
        return background

    def _peer_argv(self, name: str, index_port: int, fingerprint: str | None = None) -> list[str]:
        """A peer's command line: with its certificate, or joining by ``fingerprint``."""
        if fingerprint is None:
            identity = [
                "-certificate", str(self.pki / f"{name}.crt"),
                "-private_key", str(self.pki / f"{name}.key"),
                "--ca", str(self.pki / "ca.crt"),
            ]  # fmt: skip
        else:
            identity = ["--ca-fingerprint", fingerprint]
        return [
            "-m", "peerd",
            "-hostname", name,
            "-index_server_name", f"127.0.0.1:{index_port}",
            "-peer_server_port", "0",
            "-username", name,
            "-file_directory", str(self.root / f"{name}-files"),
            *identity,
            "--bind", "127.0.0.1",
            "--register",
            "--state-dir", str(self.root / "state" / name),
        ]  # fmt: skip

    def start_daemons(self) -> tuple[int, str]:
        """Start indexd, then peer1 and peer2; the index's port and CA fingerprint."""
        index = self.spawn(
            "indexd",
            [
                "-m", "indexd",
                "--host", "127.0.0.1",
                "--port", "0",
                "--db", str(self.root / "index.db"),
                "--cert", str(self.pki / "indexd.crt"),
                "--key", str(self.pki / "indexd.key"),
                "--ca", str(self.pki / "ca.crt"),
                "--ca-key", str(self.pki / "ca.key"),
                "--bcrypt-cost", str(BCRYPT_COST),
            ],
        )  # fmt: skip
        port = int(index.wait_ready(r"indexd listening on [^\s]+:(\d+)").group(1))
        fingerprint = index.wait_ready(r"CA fingerprint: (SHA256:[0-9a-f]{64})").group(1)
        self.say(
            f"indexd  pid {index.proc.pid:<7} 127.0.0.1:{port}  (bcrypt cost {BCRYPT_COST} for a"
            " quick demo; the default is 12)"
        )
        peers = [
            self.spawn(name, [*self._peer_argv(name, port), "--no-shell"]) for name in NAMES[1:3]
        ]
        for peer in peers:
            match = peer.wait_ready(r"serving (\d+) files on port (\d+)")
            self.say(
                f"{peer.name:<7} pid {peer.proc.pid:<7} 127.0.0.1:{match.group(2):<6}"
                f" {match.group(1)} files shared"
            )
        return port, fingerprint

    def run_shell(self, index_port: int, fingerprint: str) -> int:
        """The shell as peer3, joining by enrollment, in the foreground, on this terminal (or
        this script)."""
        self.say(
            f"peer3 joins with no certificate of its own: peerd ... --ca-fingerprint"
            f" {fingerprint} (it checks the index's CA against it, then enrolls)"
        )
        self.say(
            f"logs in {self.root}/logs; opening the shell as peer3 (try: search koala,"
            " get koala joey.txt, 2, help); quit stops everything"
        )
        env = {**self.env(), HISTORY_ENV: str(self.root / ".history")}
        argv = self._peer_argv("peer3", index_port, fingerprint)
        self.shell = subprocess.Popen([self.python, *argv], env=env)
        while True:
            try:
                return self.shell.wait()
            except _Terminated:  # raised by a handler installed before the shell existed
                continue

    # --- signals and the end ----------------------------------------------------------

    def on_terminate(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGHUP: ask the shell to leave (cleanup follows), or stop setting up."""
        if self.shell is not None and self.shell.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.shell.send_signal(signal.SIGTERM)
            return
        if not self.stopping:  # never cut the clean-up short
            raise _Terminated

    def stop_all(self) -> None:
        """Stop the shell if it still runs, then the peers, then the index (SIGTERM, then
        SIGKILL for anything still there after a grace period)."""
        self.stopping = True
        signal.signal(signal.SIGINT, _ignore)
        if self.shell is not None and self.shell.poll() is None:
            self.shell.terminate()
            try:
                self.shell.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.shell.kill()
                self.shell.wait()
        # Peers first, so they say bye to a running index.
        for group in (self.background[1:], self.background[:1]):
            for bg in group:
                bg.signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for bg in group:
                try:
                    bg.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    bg.signal(signal.SIGKILL)
                    bg.proc.wait()
                bg.signal(signal.SIGKILL)  # anything the daemon left in its group
        order = [*self.background[1:], *self.background[:1]]
        if self.shell is not None:
            order.insert(0, Background("peer3", self.shell, Path()))
        if order:
            # A clean stop is exit status 0 for every daemon (they drain on SIGTERM).
            stopped = [f"{bg.name} (pid {bg.proc.pid}, exit {bg.proc.returncode})" for bg in order]
            self.say(f"stopped {', '.join(stopped)}")


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A handler that does nothing (unlike SIG_IGN, children do not inherit it)."""


@contextlib.contextmanager
def _session_folder(root: Path, out: TextIO) -> Iterator[Path]:
    """The folder for this run: ``root`` itself, or a private one if another demo holds it."""
    root.mkdir(parents=True, exist_ok=True)
    lock = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            private = root / f"run-{os.getpid()}"
            print(f"demo: another demo uses {root}; this one runs in {private}", file=out)
            private.mkdir()
            try:
                yield private
            finally:
                shutil.rmtree(private, ignore_errors=True)
            return
        yield root
    finally:
        os.close(lock)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m peerd.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m peerd.demo",
        description="Run indexd, peer1 and peer2 on loopback and open the shell as peer3.",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help="the demo folder, made afresh each run (%(default)s)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--big-mb",
        type=int,
        default=BIG_FILE_MB,
        metavar="MB",
        help="size of peer2's large random file in MiB (%(default)s)",
    )
    size.add_argument(
        "--small",
        dest="big_mb",
        action="store_const",
        const=SMALL_BIG_FILE_MB,
        help=f"a {SMALL_BIG_FILE_MB} MiB large file instead (quick runs, tests)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; the exit status is the shell's (1 if the demo could not start)."""
    args = build_parser().parse_args(argv)
    out = sys.stdout
    with _session_folder(args.dir, out) as root:
        demo = Demo(root, max(1, args.big_mb) << 20, out)
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.getsignal(sig) for sig in signals}
        signal.signal(signal.SIGTERM, demo.on_terminate)
        signal.signal(signal.SIGHUP, demo.on_terminate)
        try:
            demo.prepare()
            port, fingerprint = demo.start_daemons()
            # From here Ctrl-C belongs to the shell (same terminal, same process group): it
            # stops a running download or leaves at the prompt; the demo waits for it.
            signal.signal(signal.SIGINT, _ignore)
            return demo.run_shell(port, fingerprint)
        except DemoError as exc:
            print(f"demo: {exc}", file=sys.stderr, flush=True)
            return 1
        except (_Terminated, KeyboardInterrupt):
            print("demo: interrupted", file=sys.stderr, flush=True)
            return 130
        finally:
            demo.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
