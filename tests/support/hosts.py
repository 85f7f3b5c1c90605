"""A test bed of separate hosts: network namespaces joined by a bridge, each with its own address.

Every host is a Linux network namespace with loopback up and one veth (``eth0``) to a bridge
that sits in a namespace of its own (the "switch"), so nothing is made in the machine's own
namespace. Addresses come from 198.18.0.0/15 (RFC 2544's benchmarking range), one /24 per
test bed; no namespace gets a default route, so traffic cannot leave the bed. A host's link can
be limited to a rate (``tc`` ``tbf``, ``htb`` where ``tbf`` is missing), and, since the kernel
may have no ``netem``, latency comes from :class:`DelayProxy`, a user-space TCP forwarder.

As root the namespaces are made with ``ip netns``; unprivileged, inside a user + network +
mount namespace held by a helper process (``unshare -Urnm``) and entered with ``nsenter``.
Names carry a per-run prefix, ``p2pt<pid>-<n>-``: every namespace, link and process a bed made
is removed when it closes (a finaliser covers a bed nobody closed), a watchdog process removes
them if the test process dies, and leftovers of a run whose process is gone are removed when
the next bed opens.

Run as a script (``python tests/support/hosts.py``) it is that watchdog (``watch``), the
unprivileged holder (``hold``), the delay proxy (``delay``), or a manual clean-up (``sweep``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

#: Every name the test bed makes starts with this, then the pid of the run that made it.
PREFIX = "p2pt"
NETWORK = ipaddress.IPv4Network("198.18.0.0/15")
NETNS_DIR = Path("/run/netns")
MAX_HOSTS = 200
COMMAND_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0

_OWNER = re.compile(rf"^{PREFIX}(\d+)-")
_SUBNETS = NETWORK.num_addresses // 256
_sequence = itertools.count(1)
#: Every process any test bed of this interpreter started (for :func:`leftovers`).
_started: list[subprocess.Popen[bytes]] = []
#: Network namespace inodes of every host this interpreter made (for :func:`leftovers`).
_inodes: set[int] = set()

Mode = Literal["root", "userns"]


class TestBedUnavailable(RuntimeError):
    """This machine cannot make a test bed; the message says why, in one line."""

    __test__ = False


class TestBedError(RuntimeError):
    """A command that builds or runs the test bed failed."""

    __test__ = False


# --- running commands -------------------------------------------------------------------


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one command, capturing its output; raise :class:`TestBedError` if it fails."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        if check:
            raise TestBedError(f"{' '.join(argv)}: {exc}") from None
        return subprocess.CompletedProcess(list(argv), 127, "", str(exc))
    if check and done.returncode != 0:
        raise TestBedError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _netns_names(admin: Sequence[str] = ()) -> list[str]:
    """The names ``ip netns list`` shows (in the holder's mount namespace, via ``admin``)."""
    done = _run([*admin, "ip", "netns", "list"], check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _remove_netns(names: Sequence[str], admin: Sequence[str] = ()) -> None:
    """Kill every process inside these namespaces, then delete them (and their links)."""
    for name in names:
        pids = _run([*admin, "ip", "netns", "pids", name], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    for name in names:
        deadline = time.monotonic() + STOP_TIMEOUT
        while _run([*admin, "ip", "netns", "pids", name], check=False).stdout.split():
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        _run([*admin, "ip", "netns", "del", name], check=False)


def sweep_stale(*, everything_of: int | None = None) -> list[str]:
    """Remove namespaces of runs whose process is gone (or all of run ``everything_of``).

    Returns the names removed. Only namespaces in this mount namespace are seen: an
    unprivileged run's namespaces vanish with its holder process anyway.
    """
    stale = []
    for name in _netns_names():
        owner = _OWNER.match(name)
        if owner is None:
            continue
        pid = int(owner.group(1))
        if pid == everything_of or (everything_of is None and not _pid_alive(pid)):
            stale.append(name)
    _remove_netns(stale)
    return stale


# --- privileges ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """How the test bed gets CAP_NET_ADMIN: as root, or as root of a user namespace."""

    mode: Mode


def _missing_tools(mode: Mode) -> list[str]:
    tools = ["ip", "tc"] + (["unshare", "nsenter", "mount"] if mode == "userns" else [])
    return [tool for tool in tools if shutil.which(tool) is None]


def _root_works() -> str:
    """Empty if ``ip netns`` works here; otherwise why not."""
    if os.geteuid() != 0:
        return "not root"
    if missing := _missing_tools("root"):
        return f"missing {', '.join(missing)} (iproute2)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        _run(["ip", "netns", "add", probe])
        _run(["ip", "netns", "exec", probe, "true"])
    except TestBedError as exc:
        return str(exc)
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    return ""


def _userns_works() -> str:
    """Empty if unprivileged user + network + mount namespaces work here; otherwise why not."""
    if missing := _missing_tools("userns"):
        return f"missing {', '.join(missing)}"
    done = _run(["unshare", "-Urnm", "ip", "link", "set", "lo", "up"], check=False)
    return "" if done.returncode == 0 else f"unshare -Urnm failed: {done.stderr.strip()}"


_backend: Backend | TestBedUnavailable | None = None


def probe_backend() -> Backend:
    """The way this machine makes test beds (found once); :class:`TestBedUnavailable` if none."""
    global _backend
    if _backend is None:
        root = _root_works()
        if not root:
            _backend = Backend("root")
        elif not (userns := _userns_works()):
            _backend = Backend("userns")
        else:
            _backend = TestBedUnavailable(
                "host tests need root (CAP_NET_ADMIN) or unprivileged user namespaces:"
                f" as root, {root}; unprivileged, {userns}"
            )
    if isinstance(_backend, TestBedUnavailable):
        raise _backend
    return _backend


# --- processes inside hosts ---------------------------------------------------------------


class HostProcess:
    """A process running inside one host; its stdout and stderr are collected as they come."""

    def __init__(self, host: Host, argv: Sequence[str], popen: subprocess.Popen[bytes]) -> None:
        self.host = host
        self.argv = list(argv)
        self.popen = popen
        self._lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", popen.stdout), ("stderr", popen.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream: IO[bytes]) -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                with self._changed:
                    self._lines[name].append(raw.decode(errors="replace"))
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        """The process id (``ip netns exec`` and ``nsenter`` exec the command in place)."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while it runs."""
        return self.popen.poll()

    @property
    def stdout(self) -> str:
        """Everything it wrote to stdout so far."""
        with self._changed:
            return "".join(self._lines["stdout"])

    @property
    def stderr(self) -> str:
        """Everything it wrote to stderr so far."""
        with self._changed:
            return "".join(self._lines["stderr"])

    def describe(self) -> str:
        """The command, its status and the tail of its output (for failure messages)."""
        status = "running" if self.returncode is None else f"exit {self.returncode}"
        return (
            f"{' '.join(self.argv)} on {self.host.name} ({status})\n"
            f"stdout: {self.stdout[-1500:]}\nstderr: {self.stderr[-1500:]}"
        )

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first stdout line matching ``pattern``, waiting for it; TestBedError if it never
        comes (the process exits first, or ``timeout`` passes)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                lines = self._lines["stdout"]
                for line in lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(lines)
                left = deadline - time.monotonic()
                finished = self.popen.poll() is not None and not any(
                    r.is_alive() for r in self._readers
                )
                if finished or left <= 0:
                    why = "exited" if finished else f"timed out after {timeout} s"
                    raise TestBedError(f"no line matching {pattern!r} ({why}): {self.describe()}")
                self._changed.wait(min(left, 0.1))

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for it to exit (and its output to be read); its exit status."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TestBedError(f"still running after {timeout} s: {self.describe()}") from None
        for reader in self._readers:
            reader.join(timeout)
        return code

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout``; its exit status."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.wait(timeout)


# --- the test bed -------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """One host of a test bed: its name, network namespace and address."""

    name: str
    number: int
    netns: str
    address: str
    #: Its veth end on the switch (inside the switch namespace).
    switch_port: str


@dataclass(frozen=True)
class Endpoint:
    """An address and port something listens on inside a host, and that process."""

    address: str
    port: int
    process: HostProcess


@dataclass
class _State:
    """What a test bed made, kept apart from it so its finaliser can remove it all."""

    backend: Backend
    prefix: str
    netns: list[str] = field(default_factory=list)
    processes: list[HostProcess] = field(default_factory=list)
    keeper: subprocess.Popen[bytes] | None = None

    def admin(self) -> list[str]:
        """The prefix that runs a command where the test bed's namespaces are named."""
        if self.backend.mode == "root":
            return []
        assert self.keeper is not None
        return ["nsenter", "-t", str(self.keeper.pid), "-U", "-m", "-n", "--preserve-credentials"]


def _teardown(state: _State) -> None:
    """Stop every process, then remove every namespace (and so every link), then the keeper."""
    running = [p for p in state.processes if p.returncode is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in running:
        try:
            process.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait()
    keeper = state.keeper
    if state.backend.mode == "root" or (keeper is not None and keeper.poll() is None):
        _remove_netns(state.netns, state.admin())
    if keeper is not None and keeper.poll() is None:
        assert keeper.stdin is not None
        with contextlib.suppress(OSError):
            keeper.stdin.close()  # the keeper sweeps once more, then exits
        try:
            keeper.wait(COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            keeper.kill()
            keeper.wait()
    if keeper is not None and keeper.stdout is not None:
        keeper.stdout.close()
    state.netns.clear()


class TestBed:
    """N hosts as network namespaces on one bridge; ``with TestBed([...]) as bed:``."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        rates: Mapping[str, float] | None = None,
        backend: Backend | None = None,
    ) -> None:
        if not 1 <= len(hosts) <= MAX_HOSTS or len(set(hosts)) != len(hosts):
            raise ValueError(f"1 to {MAX_HOSTS} distinct host names, not {list(hosts)}")
        self.backend = backend or probe_backend()
        run = next(_sequence)
        self.prefix = f"{PREFIX}{os.getpid()}-{run}"
        # One /24 of 198.18.0.0/15 per bed: parallel runs (other pids) get other subnets.
        block = (os.getpid() * 7 + run) % _SUBNETS
        self.subnet = ipaddress.IPv4Network((int(NETWORK.network_address) + block * 256, 24))
        self.switch = f"{self.prefix}-sw"
        self.hosts = {
            name: Host(
                name,
                n,
                f"{self.prefix}-h{n}",
                str(self.subnet.network_address + n),
                f"h{n}",
            )
            for n, name in enumerate(hosts, start=1)
        }
        self._rates = dict(rates or {})
        self._state = _State(self.backend, self.prefix)
        self._finalizer = weakref.finalize(self, _teardown, self._state)
        self._opened = False

    # --- building and removing -----------------------------------------------------------

    def __enter__(self) -> TestBed:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Remove stale leftovers, start the keeper, make the switch and every host."""
        if self._opened:
            raise RuntimeError("this test bed is already open")
        self._opened = True
        if self.backend.mode == "root":
            sweep_stale()
        self._start_keeper()
        self._add_netns(self.switch)
        self._admin("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        self._admin("ip", "-n", self.switch, "link", "set", "br0", "up")
        for host in self.hosts.values():
            self._add_host(host)
        for name, rate in self._rates.items():
            self.limit(name, rate)

    def close(self) -> None:
        """Stop every process and remove every namespace and link (safe to call twice)."""
        self._finalizer()

    def _start_keeper(self) -> None:
        """The watchdog (root) or holder (unprivileged): sweeps this bed when we go away."""
        script = [sys.executable, str(Path(__file__).resolve())]
        if self.backend.mode == "root":
            argv = [*script, "watch", self.prefix]
        else:
            argv = ["unshare", "-Urnm", "--propagation", "private", *script, "hold", self.prefix]
        keeper = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
        )
        _started.append(keeper)
        self._state.keeper = keeper
        assert keeper.stdout is not None
        ready = keeper.stdout.readline()
        if ready.strip() != b"ready":
            raise TestBedError(f"the test bed keeper did not start: {' '.join(argv)}")

    def _admin(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([*self._state.admin(), *argv], check=check)

    def _in(self, netns: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return self._admin("ip", "netns", "exec", netns, *argv)

    def _add_netns(self, name: str) -> None:
        self._admin("ip", "netns", "add", name)
        self._state.netns.append(name)
        _inodes.add(self._netns_inode(name))
        # Links made from now on get no IPv6 link-local address: the bed uses only its own
        # 198.18 addresses (and loopback). Kernels without IPv6 have nothing to switch off.
        self._in(
            name,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6 2>/dev/null || true",
        )
        self._admin("ip", "-n", name, "link", "set", "lo", "up")

    def _netns_inode(self, name: str) -> int:
        if self.backend.mode == "root":
            return (NETNS_DIR / name).stat().st_ino
        assert self._state.keeper is not None
        return Path(f"/proc/{self._state.keeper.pid}/root/run/netns/{name}").stat().st_ino

    def _add_host(self, host: Host) -> None:
        self._add_netns(host.netns)
        ns, sw = host.netns, self.switch
        self._admin(
            "ip", "-n", ns, "link", "add", "eth0", "type", "veth",
            "peer", "name", host.switch_port, "netns", sw,
        )  # fmt: skip
        self._admin("ip", "-n", sw, "link", "set", host.switch_port, "master", "br0", "up")
        self._admin("ip", "-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        self._admin("ip", "-n", ns, "link", "set", "eth0", "up")

    # --- hosts, links and processes -------------------------------------------------------

    def host(self, name: str) -> Host:
        """The host of that name."""
        return self.hosts[name]

    def address(self, name: str) -> str:
        """The 198.18 address of that host."""
        return self.hosts[name].address

    def limit(
        self,
        name: str,
        rate: float | None,
        *,
        direction: Literal["both", "out", "in"] = "both",
    ) -> None:
        """Limit a host's link to ``rate`` bit/s (None lifts the limit), out of it, into it or
        both: ``tbf`` on its own ``eth0`` (out) and on its switch port (in)."""
        host = self.hosts[name]
        devices = []
        if direction in ("both", "out"):
            devices.append((host.netns, "eth0"))
        if direction in ("both", "in"):
            devices.append((self.switch, host.switch_port))
        for netns, dev in devices:
            self._admin("tc", "-n", netns, "qdisc", "del", "dev", dev, "root", check=False)
            if rate is not None:
                self._shape(netns, dev, rate)

    def _shape(self, netns: str, dev: str, rate: float) -> None:
        # A burst of 4 ms at the rate (at least 32 KiB) lets TCP reach the rate without a
        # visible head start; the queue holds 50 ms.
        bits = str(int(rate))
        burst = str(max(32 << 10, int(rate / 8 * 0.004)))
        tbf = self._admin(
            "tc", "-n", netns, "qdisc", "add", "dev", dev, "root",
            "tbf", "rate", f"{bits}bit", "burst", burst, "latency", "50ms",
            check=False,
        )  # fmt: skip
        if tbf.returncode == 0:
            return
        self._admin(
            "tc", "-n", netns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb",
            "default", "1",
        )  # fmt: skip
        self._admin(
            "tc", "-n", netns, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1",
            "htb", "rate", f"{bits}bit", "burst", burst,
        )  # fmt: skip

    def qdisc(self, name: str) -> str:
        """``tc qdisc show`` of a host's ``eth0`` and its switch port (what limits it)."""
        host = self.hosts[name]
        mine = self._admin("tc", "-n", host.netns, "qdisc", "show", "dev", "eth0").stdout
        port = self._admin("tc", "-n", self.switch, "qdisc", "show", "dev", host.switch_port)
        return mine + port.stdout

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        stdin: str | None = None,
        cwd: Path | None = None,
    ) -> HostProcess:
        """Start ``argv`` inside host ``name`` (``ip netns exec``); ``stdin`` is fed then
        closed. The environment is this one plus ``env``, unbuffered."""
        if not self._opened or not self._finalizer.alive:
            raise RuntimeError("the test bed is not open")
        host = self.hosts[name]
        full = [*self._state.admin(), "ip", "netns", "exec", host.netns, *argv]
        popen = subprocess.Popen(
            full,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=cwd,
            start_new_session=True,  # a Ctrl-C at the terminal reaches pytest, not the bed
        )
        _started.append(popen)
        process = HostProcess(host, argv, popen)
        self._state.processes.append(process)
        if stdin is not None:
            assert popen.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                popen.stdin.write(stdin.encode())
            with contextlib.suppress(BrokenPipeError):
                popen.stdin.close()
        return process

    def delay_proxy(
        self, name: str, target: tuple[str, int], delay: float, *, port: int = 0
    ) -> Endpoint:
        """A :class:`DelayProxy` inside host ``name`` forwarding to ``target``, adding ``delay``
        seconds each way; where it listens."""
        argv = [
            sys.executable, str(Path(__file__).resolve()), "delay",
            "--listen", f"0.0.0.0:{port}", "--to", f"{target[0]}:{target[1]}",
            "--delay", str(delay),
        ]  # fmt: skip
        process = self.start(name, argv)
        match = process.wait_for(r"delay proxy listening on [\d.]+:(\d+)", COMMAND_TIMEOUT)
        return Endpoint(self.address(name), int(match.group(1)), process)

    @property
    def keeper_pid(self) -> int | None:
        """The pid of the watchdog (root) or holder (unprivileged) process, once open."""
        keeper = self._state.keeper
        return keeper.pid if keeper is not None else None

    @property
    def netns(self) -> list[str]:
        """The names of every namespace this bed made that still exists."""
        return list(self._state.netns)


def unavailable_means_failure(environ: Mapping[str, str]) -> bool:
    """Whether a machine that cannot make a test bed fails the host tests (under CI) rather
    than skipping them."""
    return environ.get("CI", "").strip().lower() in ("true", "1", "yes")


# --- leftovers ----------------------------------------------------------------------------


def _processes_in(inodes: set[int]) -> Iterator[int]:
    """Pids of processes whose network namespace is one of ``inodes``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            link = os.readlink(entry / "ns" / "net")
            if int(link.partition("[")[2].rstrip("]")) in inodes and _pid_alive(int(entry.name)):
                yield int(entry.name)


def _netns_of(pid: int) -> str:
    """The name of the named namespace process ``pid`` is in ("" if none): a namespace's
    number is reused once it is gone, so a process another run put in a namespace of its
    own that got one of this run's old numbers is told apart by the name."""
    return _run(["ip", "netns", "identify", str(pid)], check=False).stdout.strip()


def leftovers(pid: int | None = None) -> list[str]:
    """What test beds of run ``pid`` (default: this one) left behind: namespaces, links in
    this namespace, processes they started, and processes still inside their namespaces."""
    pid = os.getpid() if pid is None else pid
    mine = f"{PREFIX}{pid}-"
    found = [f"namespace {name}" for name in _netns_names() if name.startswith(mine)]
    links = _run(["ip", "-o", "link", "show"], check=False).stdout.splitlines()
    for line in links:
        link = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if link.startswith(PREFIX):
            found.append(f"link {link}")
    if pid == os.getpid():
        found += [f"process {p.pid} ({p.args!r:.80})" for p in _started if p.poll() is None]
        found += [
            f"process {p} inside a test bed namespace"
            for p in _processes_in(_inodes)
            if _netns_of(p).startswith(mine) or not _netns_of(p)
        ]
    return found


# --- the delay proxy ----------------------------------------------------------------------


class DelayProxy:
    """A TCP forwarder that holds every chunk ``delay`` seconds before passing it on, in each
    direction (so a round trip through it takes ``2 * delay`` longer)."""

    #: Chunks in flight per direction before reading pauses (backpressure).
    QUEUE = 256

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        if delay < 0:
            raise ValueError("delay must not be negative")
        self.target = target
        self.delay = delay
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen; the address and port it listens on."""
        self._server = await asyncio.start_server(self._accept, host, port)
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> DelayProxy:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Read from ``src``; write each chunk to ``dst`` once it is ``delay`` old."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(self.QUEUE)

        async def forward() -> None:
            while True:
                due, data = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                dst.write(data)
                await dst.drain()

        forwarder = asyncio.create_task(forward())
        try:
            while True:
                data = await src.read(1 << 16)
                await queue.put((loop.time() + self.delay, data))
                if not data:
                    break
            await forwarder
        finally:
            forwarder.cancel()


async def _serve_delay(listen: str, target: str, delay: float) -> None:
    host, _, port = listen.rpartition(":")
    to_host, _, to_port = target.rpartition(":")
    proxy = DelayProxy((to_host, int(to_port)), delay)
    address, bound = await proxy.start(host, int(port))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"delay proxy listening on {address}:{bound}", flush=True)
    await stop.wait()
    await proxy.close()


# --- the keeper processes -----------------------------------------------------------------


def _keep(prefix: str, *, hold: bool) -> int:
    """Wait for our parent to close our stdin (or die), then remove the bed's namespaces.

    ``hold`` (unprivileged, in a fresh user + net + mount namespace): first put a private
    /run in place, so ``ip netns`` has somewhere to name namespaces.
    """
    if hold:
        _run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"])
        NETNS_DIR.mkdir()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bed is swept on EOF, not on Ctrl-C
    print("ready", flush=True)
    while sys.stdin.buffer.read(1 << 16):
        pass
    _remove_netns([n for n in _netns_names() if n.startswith(f"{prefix}-")])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The script: ``watch PREFIX``, ``hold PREFIX``, ``delay ...`` or ``sweep``."""
    parser = argparse.ArgumentParser(prog="tests/support/hosts.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("watch", "hold"):
        sub.add_parser(command).add_argument("prefix")
    delay = sub.add_parser("delay", help="run a delay proxy until SIGTERM")
    delay.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    delay.add_argument("--to", required=True, metavar="HOST:PORT")
    delay.add_argument("--delay", type=float, required=True, metavar="SECONDS")
    sub.add_parser("sweep", help="remove what test beds of finished runs left behind")
    args = parser.parse_args(argv)
    if args.command in ("watch", "hold"):
        return _keep(args.prefix, hold=args.command == "hold")
    if args.command == "delay":
        asyncio.run(_serve_delay(args.listen, args.to, args.delay))
        return 0
    for name in sweep_stale():
        print(f"removed {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
