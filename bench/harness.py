"""Running benchmark processes, measuring their memory, and summarising repetitions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# docs/design.md §6: asyncio's TLS receive path page-faults under glibc's default malloc thresholds.
# The project and every limit run under the same settings, set here for all child processes
# (the bench process itself gets them from bench.__main__, which re-executes itself if needed).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(16 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}

MiB = 1 << 20


#: ``--glibc-defaults`` runs everything without :data:`MALLOC_ENV` (to show what it is worth).
GLIBC_DEFAULTS = "P2PSHARE_BENCH_GLIBC_DEFAULTS"


def malloc_env() -> dict[str, str]:
    """The malloc settings of this run: :data:`MALLOC_ENV`, or none with ``--glibc-defaults``."""
    return {} if os.environ.get(GLIBC_DEFAULTS) else dict(MALLOC_ENV)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every benchmark process runs with."""
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    return {**env, **malloc_env(), "PYTHONUNBUFFERED": "1", **(extra or {})}


@dataclass
class Process:
    """A child process that printed a line containing its port."""

    proc: asyncio.subprocess.Process
    port: int

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.proc.pid


async def _drain(stream: asyncio.StreamReader | None, keep: list[bytes]) -> None:
    """Read a child's pipe to the end so it never blocks on a full pipe; keep the tail."""
    if stream is None:
        return
    while line := await stream.readline():
        keep.append(line)
        del keep[:-50]


@contextlib.asynccontextmanager
async def spawn(
    args: Sequence[str],
    port_marker: str = "",
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> AsyncIterator[Process]:
    """Start ``python -m ...`` with ``args``; wait for a stdout line with the marker and port.

    The port is the last number of that line (``indexd listening on 127.0.0.1:PORT``, ``peerd:
    ... on port PORT``, or a bare ``PORT``). The child gets SIGTERM on exit from the block.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(env),
    )
    err_tail: list[bytes] = []
    err_task = asyncio.create_task(_drain(proc.stderr, err_tail))
    out_task: asyncio.Task[None] | None = None
    try:
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = (await proc.stdout.readline()).decode()
                    if not line:
                        await proc.wait()
                        await err_task
                        tail = b"".join(err_tail).decode(errors="replace")[-2000:]
                        raise RuntimeError(f"{' '.join(args[:2])} exited: {tail}")
                    if port_marker in line:
                        port = int(line.strip().replace(":", " ").split()[-1])
                        break
        except TimeoutError:
            raise RuntimeError(f"{' '.join(args[:2])} did not start in {timeout} s") from None
        out_task = asyncio.create_task(_drain(proc.stdout, []))
        yield Process(proc, port)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in (err_task, out_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def client_cpus() -> set[int] | None:
    """The CPUs the benchmark's clients get when pinned (the upper half), or None if < 2."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return set(cpus[len(cpus) // 2 :])


def pin_process(pid: int, cpus: set[int]) -> None:
    """Restrict every thread of process ``pid`` (and threads they start later) to ``cpus``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def pinned(cpus: set[int] | None, *server_pids: int) -> Iterator[None]:
    """For the block, run this thread (the clients) on ``cpus`` and the servers on the others.

    With client and server on different CPUs by construction, the scheduler cannot sometimes
    co-locate them (a one-in-flight round trip then costs no cross-CPU wake-up) and sometimes
    not, which makes repetitions bimodal. ``None`` (fewer than two CPUs) pins nothing.
    """
    if not cpus:
        yield
        return
    everything = os.sched_getaffinity(0)
    servers = everything - cpus
    for pid in server_pids:
        pin_process(pid, servers)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, everything)
        for pid in server_pids:
            with contextlib.suppress(FileNotFoundError):
                pin_process(pid, everything)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class PeakRss:
    """A process's peak RSS over a span: the kernel's high-water mark, reset at the start.

    Writing ``5`` to ``/proc/PID/clear_refs`` resets ``VmHWM`` (Linux ≥ 4.0), so the peak is
    exact, not sampled. Where that is refused, a 2 ms sampler of ``statm`` stands in.
    """

    def __init__(self, pid: int, baseline: int | None = None) -> None:
        self.pid = pid
        #: RSS to measure growth from: given (e.g. the idle RSS), or the RSS at the start.
        self.baseline = baseline if baseline is not None else 0
        self._given = baseline is not None
        self.peak = 0
        self.exact = True
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            await asyncio.sleep(0.002)

    def __enter__(self) -> PeakRss:
        current = rss_bytes(self.pid)
        if not self._given:
            self.baseline = current
        self.peak = current
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.exact = False
            self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.peak = max(self.peak, rss_bytes(self.pid))
        if self.exact:
            self.peak = max(self.peak, _status_kib(self.pid, "VmHWM") * 1024)

    @property
    def growth(self) -> int:
        """Peak RSS minus the baseline."""
        return self.peak - self.baseline


Direction = Literal["ge", "le"]


@dataclass
class Figure:
    """One row of the report: the project's number against its same-run limit.

    ``ratio`` is always project ÷ limit (of the summaries); ``direction`` says whether it must
    be at least (``ge``) or at most (``le``) ``target``.
    """

    key: str
    name: str
    unit: str
    project: list[float]
    limit: list[float]
    target: float
    direction: Direction = "ge"
    #: How repetitions are summarised: the median, or the worst (``max``) for latency caps.
    summary: Literal["median", "max"] = "median"
    limit_name: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def _summarise(self, values: list[float]) -> float:
        return max(values) if self.summary == "max" else statistics.median(values)

    @property
    def project_value(self) -> float:
        """The project's summary (median or max of its repetitions)."""
        return self._summarise(self.project)

    @property
    def limit_value(self) -> float:
        """The limit's summary (median of its repetitions, or the fixed cap)."""
        return statistics.median(self.limit)

    @property
    def ratio(self) -> float:
        """project ÷ limit."""
        return self.project_value / self.limit_value if self.limit_value else float("inf")

    @property
    def passed(self) -> bool:
        """Whether the ratio meets the target."""
        if self.direction == "ge":
            return self.ratio >= self.target
        return self.ratio <= self.target

    @property
    def target_text(self) -> str:
        """The target as a human reads it."""
        if self.direction == "ge":
            return f"≥ {self.target:.0%}" if self.target < 1 else f"≥ {self.target:g}×"
        return f"≤ {self.target:g}×"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary, the raw repetitions included."""
        return {
            "key": self.key,
            "name": self.name,
            "unit": self.unit,
            "project": self.project,
            "limit": self.limit,
            "limit_name": self.limit_name,
            "summary": self.summary,
            "project_value": self.project_value,
            "limit_value": self.limit_value,
            "ratio": self.ratio,
            "target": self.target,
            "direction": self.direction,
            "target_text": self.target_text,
            "passed": self.passed,
            "notes": self.notes,
            "extra": self.extra,
        }


def now() -> float:
    """Monotonic seconds."""
    return time.perf_counter()


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    return os.getloadavg()
