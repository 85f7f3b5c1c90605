"""Issue 15: search throughput on SQLite, on PostgreSQL and on two index servers over one
PostgreSQL; the CPU cost of each operation; the numbers the capacity model is made of.

**Search throughput.** ``clients`` client processes (``python -m bench.cluster client``), each
with one connection per server and ``window`` searches in flight, search at once; the rate is
all their searches ÷ the slowest one's time. Four servers, measured in turn, the order reversed
on odd repetitions (ABBA): one ``indexd`` on SQLite, one on PostgreSQL, two on that PostgreSQL
(each client process searching one of them), and the bare msgpack/TLS echo
(``bench.baseline echo``, answering the same reply) that bounds the SQLite figure. Pinned like
the ``search`` group: the client processes on the upper half of the CPUs, every server on the
rest, so two index servers share what one had; see BENCHMARKS.md for what each figure means.

**CPU per operation.** The index process's CPU seconds (utime + stime of /proc/PID/stat: every
thread, the store's and the login's included) across a burst of one kind of request, ÷ the
requests; on PostgreSQL plus the CPU of the server's processes (the postmaster and all its
children, :func:`tree_cpu_seconds`), and for a sync the other index server's CPU too (it
reloads the listing on the notification, PROTOCOL.md §11.1). SQLite and PostgreSQL alternate
repetition by repetition. Each PostgreSQL figure is compared with SQLite's in the same run.
A ping batch (``record_seen`` of 1,000 peers and the ``seen_since`` read after it, what each
server does every 5 s) is timed through the store API on its own.

``python -m bench --only cluster`` runs it as part of the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack

from bench import clients, fixtures
from bench.harness import Figure, Process, child_env, client_cpus, now, pin_process, spawn
from indexd.pgstore import PostgresIndexStore
from indexd.store import IndexStore, Listing, SqliteIndexStore
from netproto.client import Connection
from netproto.operations import SharedFile
from netproto.tls import client_context
from peerd.client import IndexClient
from tests.support.postgres import PostgresServer, start_postgres

#: The peer that syncs, pings and renews: its certificate names it (bench.fixtures.PKI_NAMES).
PEER = "peer1"
#: Peers whose liveness one batch writes (PROTOCOL.md §11.1: one statement every 5 s).
BATCH_PEERS = 1000
#: Batches timed together in each repetition.
BATCHES = 20
#: Targets. A search is answered from memory on both stores: PostgreSQL must not cost more
#: than a tenth; two servers sharing the server CPUs lose at most a tenth to each other.
SEARCH_PG_TARGET = 0.90
SEARCH_PG2_TARGET = 0.90
#: As the ``search_pipelined`` figure: the index against the bare echo.
SEARCH_ECHO_TARGET = 0.80
#: CPU per operation on PostgreSQL (index + database) ÷ on SQLite, at most: search, ping and
#: login touch no database (login: bcrypt dwarfs one point SELECT); renew reads one row; a
#: synced file is written once either way, by another process and over a socket with
#: PostgreSQL.
CPU_TARGETS = {"search": 1.10, "ping": 1.25, "login": 1.10, "renew": 1.50, "sync_file": 2.0}
TICK = os.sysconf("SC_CLK_TCK")
#: The figures, in the order of the report.
KEYS = ("search_sqlite", "search_pg", "search_pg2", *(f"cpu_{op}" for op in CPU_TARGETS))


# --- CPU time from /proc -------------------------------------------------------------------


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads, also ended ones); with
    ``children``, plus those of its waited-for children that have ended."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces: count fields after its closing paren.
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + (cutime + cstime if children else 0)) / TICK


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(FileNotFoundError),
                open(f"/proc/{pid}/task/{tid}/children") as f,
            ):
                kids += [int(x) for x in f.read().split()]
    return kids


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a server and every process under it: the living ones each, and the
    ended ones through their parent's children's times (so one that ends in between still
    counts, in the parent's, after)."""
    total = cpu_seconds(pid, children=True)
    for kid in _children(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += tree_cpu_seconds(kid)
    return total


# --- the databases ------------------------------------------------------------------------


def populate(store: IndexStore, *, fast_hash: bytes, login_hash: bytes, logins: int) -> None:
    """The users and the probe listings of ``bench.fixtures`` (a small index: a search is
    answered from memory either way), and :data:`BATCH_PEERS` peers of one user to ping."""
    t = time.time()
    for user in (fixtures.BENCH_USER, fixtures.PEER_USER, "batch"):
        store.add_user(user, fast_hash, t)
    for i in range(logins):
        store.add_user(f"login{i:02d}", login_hash, t)
    for p in range(fixtures.PROBE_PEERS):
        name = f"probe-peer{p}.example"
        files = tuple(
            SharedFile(f"{kw}-file{f}.dat", kw, 1000 + f, bytes(32))
            for kw in fixtures.PROBE_KEYWORDS
            for f in range(fixtures.PROBE_FILES)
        )
        store.replace_listing(Listing(fixtures.BENCH_USER, name, 7000 + p, "127.0.0.1", files, t))


def add_batch_peers(url: str) -> list[str]:
    """:data:`BATCH_PEERS` peers with no files, owned by ``batch``, in one transaction."""
    import psycopg

    names = [f"batch{i:04d}.example" for i in range(BATCH_PEERS)]
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(
            "INSERT INTO peers (domain_name, owner, port_number, address, last_seen)"
            " VALUES (%s, 'batch', 7001, '127.0.0.1', 1.0)",
            [(n,) for n in names],
        )
    return names


# --- the client processes -----------------------------------------------------------------


async def _client(args: argparse.Namespace) -> None:
    """Connect to each port; then, per ``go INDEX COUNT`` line, search COUNT times with
    ``window`` in flight on connection INDEX and print ``done SECONDS``. Tokens come on the
    first line of stdin, never on the command line."""
    loop = asyncio.get_running_loop()
    tokens = (await loop.run_in_executor(None, sys.stdin.readline)).split()[1:]
    ctx = client_context(Path(args.pki) / "ca.crt")
    conns = [
        await Connection.open("127.0.0.1", int(p), ctx, server_hostname="indexd")
        for p in args.ports.split(",")
    ]
    bodies = [{"keyword": kw} for kw in fixtures.PROBE_KEYWORDS]
    print("ready", flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        _, index, count = line.split()
        conn, token = conns[int(index)], tokens[int(index)]
        t = now()
        await clients.search_pipelined(conn, bodies, token, int(count), args.window)
        print(f"done {now() - t:.9f}", flush=True)
    for conn in conns:
        await conn.close()


class SearchClients:
    """The client processes of the throughput figures, driven over their stdin."""

    def __init__(self, procs: list[asyncio.subprocess.Process]) -> None:
        self.procs = procs

    @classmethod
    async def start(
        cls, count: int, pki: Path, ports: Sequence[int], tokens: Sequence[str], window: int
    ) -> SearchClients:
        """Start ``count`` client processes, each connected to every port."""
        args = [
            "-m", "bench.cluster", "client", "--pki", str(pki),
            "--ports", ",".join(map(str, ports)), "--window", str(window),
        ]  # fmt: skip
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=child_env(),
            )
            for _ in range(count)
        ]
        self = cls(procs)
        for proc in procs:
            self._send(proc, "tokens " + " ".join(tokens))
        for proc in procs:
            if await self._line(proc) != "ready":
                raise RuntimeError("a search client process failed to connect")
        return self

    @staticmethod
    def _send(proc: asyncio.subprocess.Process, line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line.encode() + b"\n")

    @staticmethod
    async def _line(proc: asyncio.subprocess.Process) -> str:
        assert proc.stdout is not None
        return (await proc.stdout.readline()).decode().strip()

    async def rate(self, servers: Sequence[int], count: int) -> float:
        """Client ``i`` searches ``count`` times on connection ``servers[i % len]``, all at
        once: searches per second, all of them over the slowest client's time."""
        for i, proc in enumerate(self.procs):
            self._send(proc, f"go {servers[i % len(servers)]} {count}")
        times = []
        for proc in self.procs:
            line = await self._line(proc)
            if not line.startswith("done"):
                raise RuntimeError(f"a search client process failed: {line!r}")
            times.append(float(line.split()[1]))
        return count * len(self.procs) / max(times)

    async def close(self) -> None:
        """End the processes (their stdin closes)."""
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            await proc.wait()


# --- the measurement ----------------------------------------------------------------------


class Cluster:
    """The servers of one run and the figures as they are measured."""

    def __init__(
        self,
        tmp: Path,
        pki: Path,
        log: Callable[[str], None],
        *,
        repeat: int,
        search_count: int,
        window: int,
        bcrypt_cost: int,
        logins: int,
        sync_files: int,
        syncs: int,
        clients: int,
        pin: bool,
    ) -> None:
        self.tmp, self.pki, self.log = tmp, pki, log
        self.repeat, self.search_count, self.window = repeat, search_count, window
        self.bcrypt_cost, self.logins = bcrypt_cost, logins
        self.sync_files, self.syncs, self.clients = sync_files, syncs, clients
        self.client_cpus = client_cpus() if pin else None
        self.bodies = [{"keyword": kw} for kw in fixtures.PROBE_KEYWORDS]
        self.figures: list[Figure] = []
        self.info: dict[str, Any] = {}

    def indexd_args(self, db: str) -> list[str]:
        """``python -m indexd`` on ``db`` (a file or a URL), limits out of the way."""
        return [
            "-m", "indexd", "--host", "127.0.0.1", "--port", "0", "--db", db,
            "--cert", str(self.pki / "indexd.crt"), "--key", str(self.pki / "indexd.key"),
            "--ca", str(self.pki / "ca.crt"), "--peer-ttl", "86400",
            "--bcrypt-cost", str(self.bcrypt_cost), "--sync-burst", str(10**6),
            "--max-files-per-user", str(10**7),
            "--auth-free-attempts", "1000000", "--auth-user-free-attempts", "1000000",
            "--auth-address-free-attempts", "1000000",
        ]  # fmt: skip

    async def run(self) -> list[Figure]:
        """Start PostgreSQL and the servers, measure, stop everything."""
        t = now()
        fast = await asyncio.to_thread(fixtures.bcrypt_hash, 4)
        slow = await asyncio.to_thread(fixtures.bcrypt_hash, self.bcrypt_cost)
        server = await asyncio.to_thread(start_postgres)
        try:
            url = await asyncio.to_thread(server.new_database, "cluster")
            db = self.tmp / "cluster.db"
            for store in (SqliteIndexStore(db), PostgresIndexStore(url)):
                try:
                    await asyncio.to_thread(
                        populate, store, fast_hash=fast, login_hash=slow, logins=self.logins
                    )
                finally:
                    store.close()
            names = await asyncio.to_thread(add_batch_peers, url)
            self.log(f"  set-up in {now() - t:.1f} s (PostgreSQL, two databases)")
            async with contextlib.AsyncExitStack() as stack:
                sqlite = await stack.enter_async_context(
                    spawn(self.indexd_args(str(db)), "indexd listening on", timeout=300)
                )
                pg_a = await stack.enter_async_context(
                    spawn(self.indexd_args(url), "indexd listening on", timeout=300)
                )
                pg_b = await stack.enter_async_context(
                    spawn(self.indexd_args(url), "indexd listening on", timeout=300)
                )
                await self.searches(sqlite, pg_a, pg_b)
                await self.costs(sqlite, pg_a, pg_b, server)
            await asyncio.to_thread(self.ping_batch, server, url, names)
        finally:
            await asyncio.to_thread(server.stop)
        return self.figures

    # --- search throughput ----------------------------------------------------------------

    async def _token(self, port: int) -> tuple[str, bytes]:
        conn = await Connection.open(
            "127.0.0.1", port, client_context(self.pki / "ca.crt"), server_hostname="indexd"
        )
        try:
            reply = await conn.request(
                "auth", {"username": fixtures.BENCH_USER, "password": fixtures.PASSWORD}
            )
            token = str(reply["token"])
            found = await conn.request("search", self.bodies[0], token)
            if not found:
                raise RuntimeError("the probe keyword found nothing: the index was not loaded")
            return token, msgpack.packb(found)
        finally:
            await conn.close()

    async def searches(self, sqlite: Process, pg_a: Process, pg_b: Process) -> None:
        """``search_echo_sqlite``, ``search_pg``, ``search_pg2`` (see the module docstring)."""
        got = [await self._token(p.port) for p in (sqlite, pg_a, pg_b)]
        reply_file = self.tmp / "cluster-reply.msgpack"
        reply_file.write_bytes(got[0][1])
        echo_args = [
            "-m", "bench.baseline", "echo", "--pki", str(self.pki), "--reply", str(reply_file),
        ]  # fmt: skip
        async with spawn(echo_args) as echo:
            ports = [sqlite.port, pg_a.port, pg_b.port, echo.port]
            tokens = [t for t, _ in got] + [got[0][0]]
            searchers = await SearchClients.start(
                self.clients, self.pki, ports, tokens, self.window
            )
            servers = (sqlite.pid, pg_a.pid, pg_b.pid, echo.pid)
            try:
                if self.client_cpus:
                    rest = os.sched_getaffinity(0) - self.client_cpus
                    for pid in servers:
                        pin_process(pid, rest)
                    for proc in searchers.procs:
                        pin_process(proc.pid, self.client_cpus)
                await self._searches(searchers)
            finally:
                await searchers.close()
                everything = os.sched_getaffinity(0)
                for pid in servers:
                    with contextlib.suppress(FileNotFoundError):
                        pin_process(pid, everything)

    async def _searches(self, searchers: SearchClients) -> None:
        per_client = max(1, self.search_count // self.clients)
        setups: dict[str, Sequence[int]] = {
            "sqlite": [0],
            "pg": [1],
            "pg2": [1, 2],
            "echo": [3],
        }
        for servers in setups.values():  # warm-up, untimed
            await searchers.rate(servers, 2 * self.window)
        rates: dict[str, list[float]] = {k: [] for k in setups}
        for r in range(self.repeat):
            order = list(setups) if r % 2 == 0 else list(setups)[::-1]
            for key in order:
                rates[key].append(await searchers.rate(setups[key], per_client))
            self.log(
                f"  rep {r + 1}: searches/s sqlite {rates['sqlite'][-1]:,.0f},"
                f" pg {rates['pg'][-1]:,.0f}, two pg {rates['pg2'][-1]:,.0f},"
                f" echo {rates['echo'][-1]:,.0f}"
            )
        how = f"{self.clients} client processes × {self.window} in flight"
        pinned = (
            f"servers pinned to CPUs {sorted(os.sched_getaffinity(0) - self.client_cpus)}"
            if self.client_cpus
            else "not pinned"
        )
        self.figures += [
            Figure(
                "search_sqlite",
                f"searches/s, indexd on SQLite, {how}",
                "/s",
                rates["sqlite"],
                rates["echo"],
                SEARCH_ECHO_TARGET,
                limit_name="bare msgpack/TLS echo, same clients",
                notes=f"client processes apart from the servers; {pinned}",
            ),
            Figure(
                "search_pg",
                f"searches/s, indexd on PostgreSQL, {how}",
                "/s",
                rates["pg"],
                rates["sqlite"],
                SEARCH_PG_TARGET,
                limit_name="the same on SQLite",
                notes="search is answered from memory: the database must not matter",
            ),
            Figure(
                "search_pg2",
                f"searches/s, two indexd on one PostgreSQL, {how}",
                "/s",
                rates["pg2"],
                rates["pg"],
                SEARCH_PG2_TARGET,
                limit_name="one indexd on PostgreSQL, same CPUs",
                notes=f"each client process on one of the two; {pinned}: two servers share"
                " what one had",
                extra={"echo_rates": rates["echo"]},
            ),
        ]

    # --- CPU per operation ----------------------------------------------------------------

    async def _cpu(
        self, index: Process, pg: PostgresServer | None, other: Process | None, work: int,
        body: Callable[[], Awaitable[object]],
    ) -> dict[str, float]:  # fmt: skip
        """µs of CPU per unit of ``work`` the index (and PostgreSQL, the other index) spent
        while ``body`` ran."""

        def sample() -> tuple[float, float, float]:
            return (
                cpu_seconds(index.pid),
                tree_cpu_seconds(pg.process.pid) if pg else 0.0,
                cpu_seconds(other.pid) if other else 0.0,
            )

        before = sample()
        await body()
        after = sample()
        index_us, pg_us, other_us = (
            (a - b) * 1e6 / work for a, b in zip(after, before, strict=True)
        )
        return {"index": index_us, "postgres": pg_us, "other_index": other_us}

    async def costs(
        self, sqlite: Process, pg_a: Process, pg_b: Process, server: PostgresServer
    ) -> None:
        """CPU per search, ping, renew, synced file and login, SQLite and PostgreSQL in turn."""
        results: dict[str, dict[str, list[dict[str, float]]]] = {
            op: {"sqlite": [], "pg": []} for op in CPU_TARGETS
        }
        sessions = {
            "sqlite": await self._session(sqlite),
            "pg": await self._session(pg_a),
        }
        try:
            for r in range(self.repeat):
                order = ("sqlite", "pg") if r % 2 == 0 else ("pg", "sqlite")
                for label in order:
                    index = sqlite if label == "sqlite" else pg_a
                    pg = server if label == "pg" else None
                    other = pg_b if label == "pg" else None
                    for op, cost in (
                        await self._burst(index, pg, other, sessions[label], r)
                    ).items():
                        results[op][label].append(cost)
                self.log(
                    "  rep {}: CPU µs/op sqlite → pg (index + postgres): {}".format(
                        r + 1,
                        ", ".join(
                            f"{op} {results[op]['sqlite'][-1]['index']:.0f} →"
                            f" {results[op]['pg'][-1]['index']:.0f}"
                            f" + {results[op]['pg'][-1]['postgres']:.0f}"
                            for op in CPU_TARGETS
                        ),
                    )
                )
        finally:
            for peer in sessions.values():
                await peer.close()
        names = {
            "search": "search",
            "ping": "ping",
            "renew": "renew",
            "sync_file": f"synced file ({self.sync_files:,}-file syncs)",
            "login": f"login (bcrypt cost {self.bcrypt_cost})",
        }
        for op, target in CPU_TARGETS.items():
            pg_runs, sq_runs = results[op]["pg"], results[op]["sqlite"]
            total = [round(c["index"] + c["postgres"], 2) for c in pg_runs]
            extra = {
                "sqlite_index_us": statistics.median(c["index"] for c in sq_runs),
                "pg_index_us": statistics.median(c["index"] for c in pg_runs),
                "pg_postgres_us": statistics.median(c["postgres"] for c in pg_runs),
                "pg_other_index_us": statistics.median(c["other_index"] for c in pg_runs),
            }
            self.info[op] = extra
            self.figures.append(
                Figure(
                    f"cpu_{op}",
                    f"CPU per {names[op]}, indexd + PostgreSQL",
                    "µs",
                    total,
                    [round(c["index"], 2) for c in sq_runs],
                    target,
                    direction="le",
                    limit_name="indexd on SQLite (its process)",
                    notes=f"index {extra['pg_index_us']:.1f} + postgres"
                    f" {extra['pg_postgres_us']:.1f} µs; the other index"
                    f" {extra['pg_other_index_us']:.1f} µs",
                    extra=extra,
                )
            )

    async def _session(self, index: Process) -> IndexClient:
        """The peer's connection (its certificate, a bound token), synced once."""
        ctx = client_context(
            self.pki / "ca.crt", self.pki / f"{PEER}.crt", self.pki / f"{PEER}.key"
        )
        peer = await IndexClient.connect(
            "127.0.0.1", index.port, ctx, server_hostname="indexd", request_timeout=300
        )
        await peer.auth(fixtures.PEER_USER, fixtures.PASSWORD)
        await peer.sync(PEER, 7001, self._share(-1), "127.0.0.1")
        return peer

    def _share(self, n: int) -> list[SharedFile]:
        """Sync ``n``'s files: new names each time, so no sync is a no-op."""
        return [
            SharedFile(f"s{n}-{i:05d}.dat", f"kw{i % 50:02d}", 1000 + i, bytes(32))
            for i in range(self.sync_files)
        ]

    async def _burst(
        self,
        index: Process,
        pg: PostgresServer | None,
        other: Process | None,
        peer: IndexClient,
        rep: int,
    ) -> dict[str, dict[str, float]]:
        conn, count, window = peer.conn, self.search_count, self.window
        assert peer.token is not None
        token = peer.token
        out: dict[str, dict[str, float]] = {}

        async def pipelined(op: str, body: dict[str, Any], n: int) -> None:
            left = n

            async def slot() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    await conn.request(op, body, token)

            await asyncio.gather(*(slot() for _ in range(min(window, n))))

        out["search"] = await self._cpu(
            index, pg, None, count,
            lambda: clients.search_pipelined(conn, self.bodies, token, count, window),
        )  # fmt: skip
        out["ping"] = await self._cpu(
            index, pg, None, count, lambda: pipelined("ping", {"domain_name": PEER}, count)
        )
        renews = max(1, count // 10)
        out["renew"] = await self._cpu(
            index, pg, None, renews, lambda: pipelined("renew", {}, renews)
        )

        async def syncs() -> None:
            for s in range(self.syncs):
                await peer.sync(PEER, 7001, self._share(rep * self.syncs + s), "127.0.0.1")

        out["sync_file"] = await self._cpu(index, pg, other, self.syncs * self.sync_files, syncs)

        async def logins() -> None:
            conns = [
                await Connection.open(
                    "127.0.0.1",
                    index.port,
                    client_context(self.pki / "ca.crt"),
                    server_hostname="indexd",
                )
                for _ in range(self.logins)
            ]
            try:
                await asyncio.gather(
                    *(
                        c.request(
                            "auth", {"username": f"login{i:02d}", "password": fixtures.PASSWORD}
                        )
                        for i, c in enumerate(conns)
                    )
                )
            finally:
                for c in conns:
                    await c.close()

        # The connections' handshakes are counted too: a login opens one.
        out["login"] = await self._cpu(index, pg, None, self.logins, logins)
        return out

    # --- a ping batch ---------------------------------------------------------------------

    def ping_batch(self, server: PostgresServer, url: str, names: list[str]) -> None:
        """PostgreSQL's CPU for the liveness batches each index server makes every 5 s
        (PROTOCOL.md §11.1): the ``record_seen`` write of :data:`BATCH_PEERS` peers, and the
        ``seen_since`` read that returns them; per peer, through the store API."""
        store = PostgresIndexStore(url)
        pid = server.process.pid
        writes: list[float] = []
        reads: list[float] = []
        try:
            for r in range(max(3, self.repeat)):
                t = time.time()
                before = tree_cpu_seconds(pid)
                for b in range(BATCHES):  # many, for the CPU clock's 10 ms ticks
                    store.record_seen({n: t + r + b / BATCHES for n in names})
                middle = tree_cpu_seconds(pid)
                for _ in range(BATCHES):
                    seen = store.seen_since(t - 10)
                    if len(seen) < len(names):
                        raise RuntimeError(f"seen_since read {len(seen)} of {len(names)} peers")
                after = tree_cpu_seconds(pid)
                writes.append((middle - before) * 1e6 / BATCHES / len(names))
                reads.append((after - middle) * 1e6 / BATCHES / len(names))
        finally:
            store.close()
        write, read = statistics.median(writes), statistics.median(reads)
        self.info["ping_batch"] = {
            "peers": len(names),
            "postgres_write_us_per_peer": write,
            "postgres_read_us_per_peer": read,
            "write_runs": writes,
            "read_runs": reads,
        }
        self.log(
            f"  liveness batches of {len(names):,} peers: postgres CPU {write:.2f} µs a peer"
            f" written (record_seen), {read:.2f} µs a peer read (seen_since)"
        )


async def cluster_figures(
    tmp: Path,
    pki: Path,
    log: Callable[[str], None],
    *,
    repeat: int,
    search_count: int,
    window: int,
    bcrypt_cost: int,
    logins: int,
    sync_files: int = 1000,
    syncs: int = 5,
    clients: int = 2,
    pin: bool = True,
) -> tuple[list[Figure], dict[str, Any]]:
    """The figures of this module and the per-operation costs (µs), for the capacity model."""
    run = Cluster(
        tmp, pki, log, repeat=repeat, search_count=search_count, window=window,
        bcrypt_cost=bcrypt_cost, logins=logins, sync_files=sync_files, syncs=syncs,
        clients=clients, pin=pin,
    )  # fmt: skip
    figures = await run.run()
    return figures, run.info


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.cluster client``: a search client process (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    client = sub.add_parser("client")
    client.add_argument("--pki", required=True)
    client.add_argument("--ports", required=True)
    client.add_argument("--window", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_client(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
