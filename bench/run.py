"""``python -m bench``: every figure of docs/design.md §6 against its limit, in the same run.

Servers run as their own processes (``python -m indexd``, ``python -m peerd``, ``python -m
bench.baseline``); the clients of both the project and the limits run in this process, one
measurement at a time, project and limit interleaved repetition by repetition so that noise
from other work on the machine hits both alike. See BENCHMARKS.md for what each limit is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import bcrypt
import msgpack

from bench import baseline, clients, cluster, conns, fixtures, hosts, memory, swarm
from bench.fixtures import MiB
from bench.harness import (
    Figure,
    PeakRss,
    Process,
    client_cpus,
    load_average,
    now,
    pinned,
    rss_bytes,
    spawn,
)
from bench.report import render
from netproto.client import Connection
from netproto.tls import client_context
from peerd.client import PeerClient

T = TypeVar("T")

RESULTS = Path(__file__).resolve().parent / "results"
FETCH_KEYWORD = "files"


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does; ``--quick`` shrinks everything."""

    repeat: int
    search_count: int
    window: int
    rtt_count: int
    latency_count: int
    small_index: int
    large_index: int
    fetch_large: int
    fetch_small: int
    fetch_repeat: int
    logins: int
    login_repeat: int
    #: The file of the multi-source figures (bench/swarm.py); 0 leaves them out.
    swarm_hosts_size: int = 64 * MiB
    bcrypt_cost: int = 12
    probe_interval: float = 0.002
    #: Listed files of the index whose memory is measured, and of the synced share
    #: (bench/memory.py).
    memory_files: int = 10**6
    sync_files: int = 100_000
    #: Simulated peers connected at once to one index (bench/conns.py).
    conns_peers: int = 10_000
    #: Seconds the search probe measures with all of them connected and pinging.
    conns_hold: float = 30.0


FULL = Sizes(
    repeat=7,
    search_count=40_000,
    window=128,
    rtt_count=3000,
    latency_count=3000,
    small_index=10**3,
    large_index=10**6,
    fetch_large=1 << 30,
    fetch_small=256 * MiB,
    fetch_repeat=5,
    logins=16,
    login_repeat=5,
)
QUICK = Sizes(
    repeat=2,
    search_count=3000,
    window=128,
    rtt_count=300,
    latency_count=300,
    small_index=10**3,
    large_index=10**4,
    fetch_large=64 * MiB,
    fetch_small=16 * MiB,
    fetch_repeat=2,
    logins=4,
    login_repeat=1,
    swarm_hosts_size=0,
    memory_files=10**5,
    sync_files=20_000,
    conns_peers=1000,
    conns_hold=5.0,
)


def _human_size(n: int) -> str:
    return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / MiB:g} MiB"


def _count(n: int) -> str:
    exp = len(str(n)) - 1
    return f"10^{exp}" if n == 10**exp else f"{n:,}"


class Bench:
    """One run: the temporary world, the servers, and the figures as they are measured."""

    def __init__(
        self, sizes: Sizes, tmp: Path, log: Callable[[str], None], *, pin: bool = True
    ) -> None:
        self.sizes = sizes
        #: Where the clients run during the search figures (servers get the other CPUs).
        self.client_cpus = client_cpus() if pin else None
        self.tmp = tmp
        self.log = log
        self.pki = tmp / "pki"
        self.ca = self.pki / "ca.crt"
        self.share = tmp / "share"
        self.figures: list[Figure] = []
        self.info: dict[str, Any] = {}
        self.bodies = [{"keyword": kw} for kw in fixtures.PROBE_KEYWORDS]

    # --- set-up -------------------------------------------------------------------------

    async def prepare(self, groups: set[str]) -> None:
        """PKI, the index databases, the files to fetch (what ``groups`` need)."""
        s = self.sizes
        t = now()
        fixtures.make_pki(self.pki)
        fast = await asyncio.to_thread(fixtures.bcrypt_hash, 4)
        slow = await asyncio.to_thread(fixtures.bcrypt_hash, s.bcrypt_cost)
        self.info["index_shapes"] = {}
        indexes = [("small", s.small_index)]
        if groups & {"search", "scale"}:
            indexes.append(("large", s.large_index))
        for label, files in indexes:
            shape = await asyncio.to_thread(
                fixtures.populate_index,
                self.tmp / f"{label}.db",
                files,
                fast_hash=fast,
                login_hash=slow,
                login_users=s.logins,
            )
            self.info["index_shapes"][label] = asdict(shape)
        folder = self.share / FETCH_KEYWORD
        if groups & {"fetch", "hosts", "swarm", "swarm_disk"}:
            await asyncio.to_thread(fixtures.make_file, folder / "large.bin", s.fetch_large)
            await asyncio.to_thread(fixtures.make_file, folder / "small.bin", s.fetch_small)
        if "swarm" in groups and s.swarm_hosts_size:
            await asyncio.to_thread(fixtures.make_file, folder / "swarm.bin", s.swarm_hosts_size)
        self.log(f"set-up in {now() - t:.1f} s ({self.info['index_shapes']})")

    def indexd(self, label: str) -> contextlib.AbstractAsyncContextManager[Process]:
        """Start ``python -m indexd`` on one of the databases."""
        return spawn(
            [
                "-m", "indexd", "--host", "127.0.0.1", "--port", "0",
                "--db", str(self.tmp / f"{label}.db"),
                "--cert", str(self.pki / "indexd.crt"), "--key", str(self.pki / "indexd.key"),
                "--ca", str(self.ca),
                "--peer-ttl", "86400", "--bcrypt-cost", str(self.sizes.bcrypt_cost),
                "--auth-free-attempts", "1000000", "--auth-address-free-attempts", "1000000",
            ],
            "indexd listening on",
            timeout=900,
        )  # fmt: skip

    async def connect(self, port: int, *, cert: bool = False) -> Connection:
        """A project connection to a server named ``indexd`` on 127.0.0.1."""
        ctx = self._client_ctx(cert)
        return await Connection.open("127.0.0.1", port, ctx, server_hostname="indexd")

    def _client_ctx(self, cert: bool) -> ssl.SSLContext:
        if cert:
            return client_context(self.ca, self.pki / "bench.crt", self.pki / "bench.key")
        return client_context(self.ca)

    async def login(self, conn: Connection, user: str = fixtures.BENCH_USER) -> str:
        """A token for ``user``."""
        reply = await conn.request("auth", {"username": user, "password": fixtures.PASSWORD})
        return str(reply["token"])

    # --- figures 1, 2: searches against the bare echo -----------------------------------

    async def searches(self, indexd: Process) -> None:
        """Pipelined searches/s and one-in-flight round trips, each against the echo."""
        conn = await self.connect(indexd.port)
        token = await self.login(conn)
        reply = await conn.request("search", self.bodies[0], token)
        if not reply:
            raise RuntimeError("the probe keyword found nothing: the index was not loaded")
        reply_file = self.tmp / "search-reply.msgpack"
        reply_file.write_bytes(msgpack.packb(reply))
        self.info["search_reply_bytes"] = reply_file.stat().st_size
        args = ["-m", "bench.baseline", "echo", "--pki", str(self.pki), "--reply", str(reply_file)]
        async with spawn(args) as echo:
            limit_conn = await baseline.EchoClient.open(echo.port, self.ca, "indexd")
            try:
                with pinned(self.client_cpus, indexd.pid, echo.pid):
                    await self._searches(conn, limit_conn, token)
            finally:
                await limit_conn.close()
                await conn.close()

    async def _searches(self, conn: Connection, echo: baseline.EchoClient, token: str) -> None:
        s, bodies = self.sizes, self.bodies
        # Warm both up (caches, code paths), untimed.
        await clients.search_pipelined(conn, bodies, token, 2 * s.window, s.window)
        await echo.pipelined("search", bodies, token, 2 * s.window, s.window)
        rate_p: list[float] = []
        rate_l: list[float] = []
        rtt_p: list[float] = []
        rtt_l: list[float] = []
        for r in range(s.repeat):
            for side in ("project", "limit") if r % 2 == 0 else ("limit", "project"):
                if side == "project":
                    rate_p.append(
                        await clients.search_pipelined(
                            conn, bodies, token, s.search_count, s.window
                        )
                    )
                    times = await clients.search_one_at_a_time(conn, bodies, token, s.rtt_count)
                    rtt_p.append(len(times) / sum(times))
                else:
                    rate_l.append(
                        await echo.pipelined("search", bodies, token, s.search_count, s.window)
                    )
                    times = await echo.one_at_a_time("search", bodies, token, s.rtt_count)
                    rtt_l.append(len(times) / sum(times))
            self.log(
                f"  rep {r + 1}: pipelined {rate_p[-1]:,.0f} vs {rate_l[-1]:,.0f}/s;"
                f" one in flight {rtt_p[-1]:,.0f} vs {rtt_l[-1]:,.0f}/s"
            )
        size = self.info["search_reply_bytes"]
        self.figures.append(
            Figure(
                "search_pipelined",
                f"searches/s, one client, {s.window} in flight",
                "/s",
                rate_p,
                rate_l,
                0.80,
                limit_name=f"bare msgpack/TLS echo, {s.window} in flight",
                notes=f"indexd with {_count(s.large_index)} files; replies of {size} B both sides",
            )
        )
        self.figures.append(
            Figure(
                "search_one_in_flight",
                "search round trips/s, one in flight",
                "/s",
                rtt_p,
                rtt_l,
                0.80,
                limit_name="bare msgpack/TLS echo, one in flight",
                notes="rate = 1 / mean round trip",
                extra={
                    "project_rtt_us": 1e6 / statistics.median(rtt_p),
                    "limit_rtt_us": 1e6 / statistics.median(rtt_l),
                },
            )
        )

    # --- figure 6: latency against index size --------------------------------------------

    async def latency_by_size(self, small_index: Process, large_index: Process) -> None:
        """One-in-flight search latency with the large index against the small one."""
        s, bodies = self.sizes, self.bodies
        small = await self.connect(small_index.port)
        large = await self.connect(large_index.port)
        pin = pinned(self.client_cpus, small_index.pid, large_index.pid)
        try:
            pin.__enter__()
            tokens = {id(small): await self.login(small), id(large): await self.login(large)}
            # The first search of each keyword builds its reply (cached until the index
            # changes): reported apart, then the caches are warm for the measured searches.
            cold: dict[str, float] = {}
            for c, label in ((small, "small"), (large, "large")):
                first = await clients.search_one_at_a_time(c, bodies, tokens[id(c)], len(bodies))
                cold[label] = statistics.median(first) * 1e3
                await clients.search_one_at_a_time(c, bodies, tokens[id(c)], len(bodies) * 5)
            lat_s: list[float] = []
            lat_l: list[float] = []
            p99: dict[str, list[float]] = {"small": [], "large": []}
            for r in range(s.repeat):
                order = ((small, lat_s, "small"), (large, lat_l, "large"))
                for c, out, label in order if r % 2 == 0 else order[::-1]:
                    times = await clients.search_one_at_a_time(
                        c, bodies, tokens[id(c)], s.latency_count
                    )
                    out.append(statistics.median(times) * 1e3)
                    p99[label].append(statistics.quantiles(times, n=100)[98] * 1e3)
                self.log(f"  rep {r + 1}: latency {lat_l[-1]:.3f} ms vs {lat_s[-1]:.3f} ms")
        finally:
            pin.__exit__(None, None, None)
            await small.close()
            await large.close()
        self.figures.append(
            Figure(
                "search_latency_scale",
                f"search latency, {_count(s.large_index)} files indexed",
                "ms",
                lat_l,
                lat_s,
                1.5,
                direction="le",
                limit_name=f"same search, {_count(s.small_index)} files indexed",
                notes="median round trip, one in flight, replies cached; indexes filled through"
                " the store API",
                extra={
                    "p99_ms_large": statistics.median(p99["large"]),
                    "p99_ms_small": statistics.median(p99["small"]),
                    "first_search_ms_large": cold["large"],
                    "first_search_ms_small": cold["small"],
                },
            )
        )

    # --- figure 5: logins while a search probe runs -------------------------------------

    async def logins(self, indexd_port: int) -> None:
        """A burst of concurrent bcrypt logins, with a search probe on another connection."""
        s = self.sizes
        cores = os.cpu_count() or 1
        hashed = fixtures.bcrypt_hash(s.bcrypt_cost)
        probe = await self.connect(indexd_port)
        token = await self.login(probe)
        rates: list[float] = []
        limits: list[float] = []
        bcrypt_times: list[float] = []
        all_probes: list[float] = []
        probe_max: list[float] = []
        try:
            for r in range(s.login_repeat):
                # The limit first: bcrypt.checkpw timed here, in this run, on this machine.
                times = []
                for _ in range(3):
                    t = now()
                    bcrypt.checkpw(fixtures.PASSWORD.encode(), hashed)
                    times.append(now() - t)
                bcrypt_times.append(statistics.median(times))
                limits.append(cores / bcrypt_times[-1])
                rate, probes = await self._login_burst(indexd_port, probe, token)
                rates.append(rate)
                all_probes.extend(probes)
                probe_max.append(max(probes))
                self.log(
                    f"  rep {r + 1}: {rate:.2f} logins/s vs {limits[-1]:.2f};"
                    f" probe max {max(probes) * 1e3:.2f} ms over {len(probes)} searches"
                )
        finally:
            await probe.close()
        probe_ms = [p * 1e3 for p in all_probes]
        self.figures.append(
            Figure(
                "logins",
                f"logins/s, bcrypt cost {s.bcrypt_cost}, burst of {s.logins}",
                "/s",
                rates,
                limits,
                0.85,
                limit_name=f"cores ({cores}) ÷ bcrypt.checkpw time",
                notes=f"checkpw {statistics.median(bcrypt_times) * 1e3:.0f} ms in this run",
                extra={"bcrypt_seconds": bcrypt_times, "cores": cores},
            )
        )
        self.figures.append(
            Figure(
                "login_probe",
                "search probe during the logins (worst)",
                "ms",
                [p * 1e3 for p in probe_max],
                [10.0],
                1.0,
                direction="le",
                summary="max",
                limit_name="10 ms cap (docs/design.md §6)",
                notes=f"median {statistics.median(probe_ms):.2f} ms over {len(probe_ms)} searches",
                extra={
                    "probe_median_ms": statistics.median(probe_ms),
                    "probe_p99_ms": statistics.quantiles(probe_ms, n=100)[98]
                    if len(probe_ms) > 1
                    else probe_ms[0],
                    "probes": len(probe_ms),
                },
            )
        )

    async def _login_burst(
        self, port: int, probe: Connection, token: str
    ) -> tuple[float, list[float]]:
        s = self.sizes
        conns = [await self.connect(port) for _ in range(s.logins)]
        latencies: list[float] = []
        burst = asyncio.Event()
        done = asyncio.Event()

        async def probe_loop() -> None:
            body = self.bodies[0]
            while not done.is_set():
                t = now()
                await probe.request("search", body, token)
                if burst.is_set() and not done.is_set():
                    latencies.append(now() - t)
                await asyncio.sleep(s.probe_interval)

        task = asyncio.create_task(probe_loop())
        try:
            await asyncio.sleep(0.05)
            start = now()
            burst.set()
            await asyncio.gather(
                *(
                    c.request("auth", {"username": f"login{i:02d}", "password": fixtures.PASSWORD})
                    for i, c in enumerate(conns)
                )
            )
            elapsed = now() - start
            done.set()
            await task
        finally:
            done.set()
            task.cancel()
            for c in conns:
                await c.close()
        return s.logins / elapsed, latencies

    # --- figures 3, 4: fetch against the bare stream; the serving peer's memory ----------

    def peerd(self, index_port: int) -> contextlib.AbstractAsyncContextManager[Process]:
        """Start ``python -m peerd --no-shell`` serving the share, synced to the index."""
        return spawn(
            [
                "-m", "peerd", "-hostname", "peer1",
                "-index_server_name", f"127.0.0.1:{index_port}", "--index-tls-name", "indexd",
                "-peer_server_port", "0", "--bind", "127.0.0.1",
                "-username", fixtures.PEER_USER, "-file_directory", str(self.share),
                "-certificate", str(self.pki / "peer1.crt"),
                "-private_key", str(self.pki / "peer1.key"),
                "--ca", str(self.ca), "--no-shell",
            ],
            "serving",
            env={"P2P_PASSWORD": fixtures.PASSWORD},
            timeout=300,
        )  # fmt: skip

    async def fetches(self, index_port: int) -> None:
        """Fetch through peerd against the bare stream; peerd's peak RSS growth."""
        # Logged in with the certificate it fetches with: the token for peers is bound to it.
        index = await self.connect(index_port, cert=True)
        reply = await index.request(
            "auth", {"username": fixtures.BENCH_USER, "password": fixtures.PASSWORD}
        )
        token = str(reply["peer_token"])
        await index.close()
        stream_args = [
            "-m", "bench.baseline", "stream", "--pki", str(self.pki), "--name", "peer1",
            "--root", str(self.share / FETCH_KEYWORD),
        ]  # fmt: skip
        async with self.peerd(index_port) as peer, spawn(stream_args) as stream:
            client = await PeerClient.connect(
                "127.0.0.1",
                peer.port,
                "peer1",
                self._client_ctx(True),
                token=token,
                requester=fixtures.BENCH_USER,
            )
            try:
                await self._fetches(client, peer, stream)
            finally:
                await client.close()

    async def _fetches(self, client: PeerClient, peer: Process, stream: Process) -> None:
        s = self.sizes
        # Growth is counted from the idle peer, so memory a fetch keeps after it ends (e.g.
        # allocator arenas) counts against every later fetch too.
        idle = rss_bytes(peer.pid)
        # Warm up both (page cache, code paths) with the small file.
        await clients.fetch_verified(client, FETCH_KEYWORD, "small.bin")
        await baseline.stream_client(stream.port, self.ca, "peer1", "small.bin")
        rate_p: list[float] = []
        rate_l: list[float] = []
        growth: dict[str, list[float]] = {"large": [], "small": []}
        for r in range(s.fetch_repeat):
            for side in ("project", "limit") if r % 2 == 0 else ("limit", "project"):
                if side == "project":
                    with PeakRss(peer.pid, idle) as peak:
                        rate, _ = await clients.fetch_verified(client, FETCH_KEYWORD, "large.bin")
                    rate_p.append(rate / 1e6)
                    growth["large"].append(peak.growth / MiB)
                else:
                    rate, _ = await baseline.stream_client(
                        stream.port, self.ca, "peer1", "large.bin"
                    )
                    rate_l.append(rate / 1e6)
            with PeakRss(peer.pid, idle) as peak:
                await clients.fetch_verified(client, FETCH_KEYWORD, "small.bin")
            growth["small"].append(peak.growth / MiB)
            self.log(
                f"  rep {r + 1}: fetch {rate_p[-1]:.0f} vs {rate_l[-1]:.0f} MB/s;"
                f" peerd RSS +{growth['large'][-1]:.1f} MiB ({_human_size(s.fetch_large)}),"
                f" +{growth['small'][-1]:.1f} MiB ({_human_size(s.fetch_small)})"
            )
        disk_dir = self.tmp / "downloads"
        disk_rate, _ = await clients.download_to_disk(client, FETCH_KEYWORD, "large.bin", disk_dir)
        self.log(f"  download() to disk: {disk_rate / 1e6:.0f} MB/s")
        self.figures.append(
            Figure(
                "fetch",
                f"fetch of a {_human_size(s.fetch_large)} file, verified",
                "MB/s",
                rate_p,
                rate_l,
                0.75,
                limit_name="bare asyncio TLS stream, SHA-256 both ends",
                notes="PeerClient.fetch + SHA-256 + every §7 check, not written to disk;"
                f" a whole download() to disk ran at {disk_rate / 1e6:.0f} MB/s",
                extra={"download_to_disk_mb_s": disk_rate / 1e6},
            )
        )
        for label, size in (("large", s.fetch_large), ("small", s.fetch_small)):
            self.figures.append(
                Figure(
                    f"fetch_rss_{label}",
                    f"serving peer's peak RSS growth, {_human_size(size)} fetch",
                    "MiB",
                    growth[label],
                    [32.0],
                    1.0,
                    direction="le",
                    summary="max",
                    limit_name="32 MiB cap (docs/design.md §6)",
                    notes="kernel high-water mark (VmHWM) during each fetch, over the idle"
                    f" peer's RSS ({idle / MiB:.0f} MiB)",
                )
            )

    # --- issue 14: manifests, a download to disk, several holders (bench/swarm.py) ----------

    async def swarm(self, index_port: int, *, disk_only: bool = False) -> None:
        """The manifest rate, the download to disk, and (full runs) the multi-source figures;
        ``disk_only``: the download to disk alone (``--only swarm_disk``)."""
        s = self.sizes
        folder = self.share / FETCH_KEYWORD
        if not disk_only:
            self.log("  manifest computation vs plain SHA-256")
            self.figures.append(swarm.manifest_rate(folder / "large.bin", s.fetch_repeat, self.log))
        index = await self.connect(index_port, cert=True)
        reply = await index.request(
            "auth", {"username": fixtures.BENCH_USER, "password": fixtures.PASSWORD}
        )
        await index.close()
        stream_args = [
            "-m", "bench.baseline", "stream", "--pki", str(self.pki), "--name", "peer1",
            "--root", str(folder),
        ]  # fmt: skip
        self.log("  download to disk vs bare stream and dd conv=fsync")
        async with self.peerd(index_port) as peer, spawn(stream_args) as stream:
            client = await PeerClient.connect(
                "127.0.0.1",
                peer.port,
                "peer1",
                self._client_ctx(True),
                token=str(reply["peer_token"]),
                requester=fixtures.BENCH_USER,
            )
            try:
                self.figures.append(
                    await swarm.disk_download(
                        client,
                        stream.port,
                        self.ca,
                        FETCH_KEYWORD,
                        "large.bin",
                        s.fetch_large,
                        self.tmp,
                        s.fetch_repeat,
                        self.log,
                    )
                )
            finally:
                await client.close()
        if disk_only:
            return
        if not s.swarm_hosts_size:
            self.log("  multi-source on the host test bed: left out (--quick)")
            return
        self.log("  multi-source on the host test bed")
        self.figures += await swarm.multi_source(
            self.tmp, self.pki, self.share, FETCH_KEYWORD, "swarm.bin",
            size=s.swarm_hosts_size, repeat=max(2, s.fetch_repeat - 2), log=self.log,
        )  # fmt: skip


GROUPS = (
    "search", "scale", "logins", "fetch", "hosts", "swarm", "swarm_disk", "memory", "conns",
    "cluster",
)  # fmt: skip
#: ``swarm_disk`` is the ``swarm`` group's download to disk alone (no manifest rate, no host bed).
#: ``--quick`` leaves out the fetch across two hosts (bench/hosts.py) and the index's memory
#: (bench/memory.py: a database of 10^5 files to write) unless ``--only`` names them, and the
#: multi-source figures of the ``swarm`` group (Sizes.swarm_hosts_size); and the simulated
#: peers (bench/conns.py: a minute or more), and the ``cluster`` group (bench/cluster.py: a
#: PostgreSQL of its own and three index servers, about 20 s).
QUICK_GROUPS = ("search", "scale", "logins", "fetch", "swarm")


async def run(
    sizes: Sizes,
    log: Callable[[str], None],
    groups: set[str] | None = None,
    *,
    pin: bool = True,
) -> tuple[list[Figure], dict[str, Any]]:
    """Set up, measure the figures (of ``groups``, default all), tear down; return the figures
    and run information."""
    groups = set(GROUPS) if groups is None else groups
    with tempfile.TemporaryDirectory(prefix="p2pshare-bench-") as tmp:
        bench = Bench(sizes, Path(tmp), log, pin=pin)
        await bench.prepare(groups)
        async with contextlib.AsyncExitStack() as stack:
            small = await stack.enter_async_context(bench.indexd("small"))
            if groups & {"search", "scale"}:
                large = await stack.enter_async_context(bench.indexd("large"))
            if "search" in groups:
                log("searches: project vs bare echo")
                await bench.searches(large)
            if "scale" in groups:
                log("search latency by index size")
                await bench.latency_by_size(small, large)
            if "logins" in groups:
                log("logins with a search probe")
                await bench.logins(small.port)
            if "fetch" in groups:
                log("fetch: project vs bare stream")
                await bench.fetches(small.port)
            if "hosts" in groups:
                log("fetch: across two hosts vs loopback")
                bench.figures += await hosts.fetch_across_hosts(
                    bench.tmp, bench.pki, bench.share, FETCH_KEYWORD, ("small.bin", "large.bin"),
                    size=sizes.fetch_large, repeat=sizes.fetch_repeat, log=log,
                )  # fmt: skip
            if groups & {"swarm", "swarm_disk"}:
                log("swarm: manifests, download to disk, several holders")
                await bench.swarm(small.port, disk_only="swarm" not in groups)
            if "memory" in groups:
                log("memory: indexd per 10^6 listed files; a large sync")
                bench.figures.append(
                    await memory.index_memory(
                        bench.tmp, bench.pki, files=sizes.memory_files,
                        repeat=min(3, sizes.repeat), log=log,
                    )
                )  # fmt: skip
                bench.figures.append(
                    await memory.sync_rate(
                        bench.tmp, bench.pki, files=sizes.sync_files,
                        repeat=min(5, sizes.repeat), log=log,
                    )
                )  # fmt: skip
            if "conns" in groups:
                log(f"conns: {sizes.conns_peers:,} simulated peers on one indexd")
                bench.figures += await conns.index_conns(
                    bench.tmp, bench.pki, log, peers=sizes.conns_peers, hold=sizes.conns_hold
                )
            if "cluster" in groups:
                log("cluster: search on SQLite, PostgreSQL, two servers; CPU per operation")
                measured, bench.info["cluster_cpu_us"] = await cluster.cluster_figures(
                    bench.tmp, bench.pki, log, repeat=min(5, sizes.repeat),
                    search_count=sizes.search_count, window=sizes.window,
                    bcrypt_cost=sizes.bcrypt_cost, logins=sizes.logins, pin=pin,
                )  # fmt: skip
                bench.figures += measured
        order = [
            "search_pipelined",
            "search_one_in_flight",
            "fetch",
            "fetch_hosts",
            "fetch_rss_large",
            "fetch_rss_small",
            "logins",
            "login_probe",
            "search_latency_scale",
            "manifest_rate",
            "swarm_disk",
            "swarm_hosts_1",
            "swarm_hosts_2",
            "swarm_hosts_4",
            "index_memory",
            "sync_rate",
            "index_conns",
            "index_conns_probe",
            *cluster.KEYS,
        ]
        figures = sorted(bench.figures, key=lambda f: order.index(f.key))
        return figures, bench.info


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()  # fmt: skip
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "msgpack": ".".join(map(str, msgpack.version)),
        "kernel": platform.release(),
        "commit": commit,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON; 0 even when a target is missed."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--repeat", type=int, help="repetitions per figure")
    parser.add_argument(
        "--json", type=Path, default=RESULTS / "latest.json", help="where to write (%(default)s)"
    )
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        default=None,
        metavar="GROUP,...",
        help=f"measure only these groups of figures: {', '.join(GROUPS)}",
    )
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="run every process without the MALLOC_* settings (to see what they are worth)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let the scheduler place clients and servers (searches pin them to different CPUs)",
    )
    args = parser.parse_args(argv)
    if args.only and not args.only <= set(GROUPS):
        parser.error(f"--only takes {', '.join(GROUPS)}")
    sizes = QUICK if args.quick else FULL
    if args.repeat:
        sizes = replace(
            sizes, repeat=args.repeat, fetch_repeat=args.repeat, login_repeat=args.repeat
        )
    from rich.console import Console

    console = Console(stderr=False)
    start_load = load_average()
    started = time.time()
    console.print(
        f"p2pshare bench ({'quick' if args.quick else 'full'}); load average"
        f" {start_load[0]:.2f} {start_load[1]:.2f} {start_load[2]:.2f}"
    )
    groups = args.only or set(QUICK_GROUPS if args.quick else GROUPS)
    figures, info = asyncio.run(
        run(sizes, lambda m: console.print(m, highlight=False), groups, pin=not args.no_pin)
    )
    end_load = load_average()
    report = {
        "mode": "quick" if args.quick else "full",
        "groups": sorted(groups),
        "pinned": not args.no_pin,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "load_average": {"start": start_load, "end": end_load},
        "machine": machine(),
        "sizes": asdict(sizes),
        "malloc_env": dict((k, v) for k, v in os.environ.items() if k.startswith("MALLOC_")),
        "info": info,
        "figures": [f.to_json() for f in figures],
        "passed": all(f.passed for f in figures),
    }
    render(console, figures, report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    console.print(f"JSON written to {args.json}")
    return 0


def _ensure_malloc_env(argv: list[str]) -> None:
    """Re-execute under the run's malloc settings (glibc reads them at start-up only): the
    clients in this process get what the servers get."""
    from bench.harness import GLIBC_DEFAULTS, MALLOC_ENV, malloc_env

    if "--glibc-defaults" in argv:
        os.environ[GLIBC_DEFAULTS] = "1"
    wanted = malloc_env()
    current = {k: v for k, v in os.environ.items() if k in MALLOC_ENV}
    if current != wanted:
        env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
        os.execve(sys.executable, [sys.executable, "-m", "bench", *argv], {**env, **wanted})


__all__ = ["FULL", "QUICK", "Sizes", "main", "run"]
