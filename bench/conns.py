"""Issue 15: what an idle TLS connection costs the index, and 10,000 simulated peers on one.

A real ``python -m indexd`` runs in its own process; 2–4 client processes (``python -m
bench.conns client``) open the connections and hold them. The index's RSS is read from /proc
before the first connection and once every connection is open and idle: the difference over
the number of connections is the cost of one idle connection. Meanwhile a probe client in
this process searches and records each round trip.

Each simulated peer has its own Ed25519 certificate naming its domain (``simNNNNN.example``,
made here in a second or two), so the index holds one distinct client certificate per
connection as it would in deployment. All peers share one user and its token: a token got
without a client certificate is not bound to one (PROTOCOL.md §8), and 10,000 bcrypt logins
would measure bcrypt, not connections.

``python -m bench.conns [--peers N] [--search-only]`` prints the figures; ``python -m bench
--only conns`` runs them as part of the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench import fixtures
from bench.harness import Figure, child_env, load_average, now, rss_bytes, spawn
from netproto.client import Connection
from netproto.tls import client_context
from runner.fdlimit import raise_open_file_limit

KiB = 1 << 10
#: The issue's caps: an idle connection's cost at the index, a search's p99 meanwhile.
RSS_CAP_KIB = 64.0
PROBE_CAP_MS = 10.0
#: Handshakes each client process keeps in flight while it opens its connections.
OPENING = 8
#: Peers arriving per second, all client processes together: 10,000 peers join in under a
#: minute, and the probe measures an index that is busy but not saturated.
ARRIVALS = 200.0
PROBE_INTERVAL = 0.002
#: Once connected, each simulated peer pings every this many seconds (peerd's interval), the
#: client processes spreading the pings evenly: 10,000 peers make 333 pings a second.
PING_INTERVAL = 30.0
#: Seconds the probe measures the index with every peer connected and pinging.
HOLD = 30.0


def peer_domain(i: int) -> str:
    """The domain name of simulated peer ``i``."""
    return f"sim{i:05d}.example"


def make_peer_certs(pki: Path, out: Path, count: int) -> None:
    """One certificate and key per simulated peer, signed by the bench CA, in ``out/i.pem``."""
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ed25519.Ed25519PrivateKey)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    for i in range(count):
        key = ed25519.Ed25519PrivateKey.generate()
        name = peer_domain(i)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=False)
            .sign(ca_key, algorithm=None)
        )
        pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = out / f"{i}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)


# --- the client processes -----------------------------------------------------------------


async def _hold(args: argparse.Namespace) -> None:
    """Open ``args.count`` connections from peer ``args.first`` on, each syncing once and
    pinging (or searching once); print ``ready``; hold them until stdin closes."""
    raise_open_file_limit()
    pki = Path(args.pki)
    conns: list[Connection] = []
    synced: list[tuple[Connection, str]] = []  # the peers that synced, and their names
    gate = asyncio.Semaphore(OPENING)
    plain = client_context(pki / "ca.crt")
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def open_one(i: int) -> None:
        await asyncio.sleep(start + (i - args.first) / args.rate - loop.time())
        async with gate:
            ctx = plain
            if not args.search_only:
                ctx = client_context(pki / "ca.crt", Path(args.certs) / f"{i}.pem")
            conn = await Connection.open("127.0.0.1", args.port, ctx, server_hostname="indexd")
            conns.append(conn)
            if args.search_only:
                await conn.request("search", {"keyword": "probe00"}, args.token)
                return
            domain = peer_domain(i)
            files = [{"filename": "a.txt", "keyword": "sim", "size": 1, "sha256": bytes(32)}]
            body = {"domain_name": domain, "port_number": 7000 + i % 1000, "files": files}
            await conn.request("sync", body, args.token)
            await conn.request("ping", {"domain_name": domain}, args.token)
            synced.append((conn, domain))

    await asyncio.gather(*(open_one(i) for i in range(args.first, args.first + args.count)))
    print(f"ready {len(conns)}", flush=True)
    pinging = None
    if not args.search_only:
        pinging = asyncio.create_task(_keep_pinging(synced, args.token))
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    if pinging is not None:
        pinging.cancel()
    for conn in conns:
        conn.abort()


async def _keep_pinging(peers: list[tuple[Connection, str]], token: str) -> None:
    """Each peer pings once every :data:`PING_INTERVAL`, the pings spread evenly over it."""
    loop = asyncio.get_running_loop()
    gap = PING_INTERVAL / max(1, len(peers))
    due = loop.time()
    sent: set[asyncio.Task[Any]] = set()
    while True:
        for conn, domain in peers:
            due += gap
            await asyncio.sleep(max(0.0, due - loop.time()))
            task = asyncio.create_task(conn.request("ping", {"domain_name": domain}, token))
            sent.add(task)
            task.add_done_callback(sent.discard)


# --- the measurement ----------------------------------------------------------------------


async def _client(
    port: int, pki: Path, certs: Path, span: range, token: str, rate: float, search_only: bool
) -> asyncio.subprocess.Process:
    args = [
        "-m", "bench.conns", "client", "--port", str(port), "--pki", str(pki),
        "--certs", str(certs), "--first", str(span.start), "--count", str(len(span)),
        "--token", token, "--rate", str(rate),
    ]  # fmt: skip
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        *(["--search-only"] if search_only else []),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=child_env(),
    )


async def index_conns(
    tmp: Path,
    pki: Path,
    log: Callable[[str], None],
    *,
    peers: int = 10_000,
    processes: int = 3,
    arrivals: float = ARRIVALS,
    search_only: bool = False,
    hold: float = HOLD,
) -> list[Figure]:
    """``peers`` connections to one indexd, from ``processes`` client processes: the index's
    RSS per idle connection, and a probe's search latency while they are connected and
    pinging (for ``hold`` seconds; and, in the notes, while they connect)."""
    certs = tmp / "conns-certs"
    t = now()
    if not search_only:
        await asyncio.to_thread(make_peer_certs, pki, certs, peers)
    fast = await asyncio.to_thread(fixtures.bcrypt_hash, 4)
    db = tmp / "conns.db"
    await asyncio.to_thread(
        fixtures.populate_index, db, 1000, fast_hash=fast, login_hash=fast, login_users=0
    )
    log(f"  set-up in {now() - t:.1f} s ({peers:,} peers)")
    many = str(peers + 1000)
    args = [
        "-m", "indexd", "--host", "127.0.0.1", "--port", "0", "--db", str(db),
        "--cert", str(pki / "indexd.crt"), "--key", str(pki / "indexd.key"),
        "--ca", str(pki / "ca.crt"),
        "--peer-ttl", "86400", "--max-connections", many, "--max-connections-per-address", many,
        "--max-pending", many, "--max-pending-per-address", many,
        "--max-domains-per-user", str(10**6), "--sync-burst", str(10**6),
        "--auth-free-attempts", "1000000", "--auth-address-free-attempts", "1000000",
    ]  # fmt: skip
    async with spawn(args, "indexd listening on", timeout=300) as indexd:
        probe = await Connection.open(
            "127.0.0.1", indexd.port, client_context(pki / "ca.crt"), server_hostname="indexd"
        )
        reply = await probe.request(
            "auth", {"username": fixtures.BENCH_USER, "password": fixtures.PASSWORD}
        )
        token = str(reply["token"])
        for _ in range(50):  # warm the search path before the baseline
            await probe.request("search", {"keyword": "probe00"}, token)
        await asyncio.sleep(0.5)
        before = rss_bytes(indexd.pid)
        share = -(-peers // processes)
        clients = [
            await _client(
                indexd.port,
                pki,
                certs,
                range(first, min(first + share, peers)),
                token,
                arrivals / processes,
                search_only,
            )
            for first in range(0, peers, share)
        ]
        latencies: list[float] = []
        done = asyncio.Event()

        async def probe_loop() -> None:
            while not done.is_set():
                start = now()
                await probe.request("search", {"keyword": "probe00"}, token)
                latencies.append(now() - start)
                await asyncio.sleep(PROBE_INTERVAL)

        task = asyncio.create_task(probe_loop())
        opened = 0
        t = now()
        try:
            for proc in clients:
                assert proc.stdout is not None
                line = (await proc.stdout.readline()).decode()
                if not line.startswith("ready"):
                    raise RuntimeError(f"a client process failed: {line!r}")
                opened += int(line.split()[1])
            elapsed = now() - t
            joining, latencies[:] = latencies[:], []
            await asyncio.sleep(hold)  # every peer connected, pinging; the probe measures
            done.set()
            await task
            await asyncio.sleep(1.0)  # let the last answers and their buffers go
            after = rss_bytes(indexd.pid)
        finally:
            done.set()
            task.cancel()
            for proc in clients:
                with contextlib.suppress(ProcessLookupError, BrokenPipeError):
                    assert proc.stdin is not None
                    proc.stdin.close()
            for proc in clients:
                await proc.wait()
            await probe.close()
    per_conn = (after - before) / opened / KiB
    probe_ms = sorted(x * 1e3 for x in latencies)
    p99 = _p99(probe_ms)
    joining_p99 = _p99(sorted(x * 1e3 for x in joining)) if joining else float("nan")
    what = "one search" if search_only else "one sync and one ping"
    what += f", {arrivals:g} peers/s from {len(clients)} processes"
    log(
        f"  {opened:,} connections in {elapsed:.1f} s ({what} each): index RSS"
        f" {before / (1 << 20):.1f} → {after / (1 << 20):.1f} MiB, {per_conn:.1f} KiB each;"
        f" probe p99 {p99:.2f} ms, max {probe_ms[-1]:.2f} ms over {len(probe_ms)} searches"
        f" in {hold:g} s connected (p99 {joining_p99:.2f} ms while they connected);"
        f" load {load_average()[0]:.2f}"
    )
    extra: dict[str, Any] = {
        "connections": opened,
        "rss_before": before,
        "rss_after": after,
        "seconds_to_open": elapsed,
        "client_processes": len(clients),
    }
    return [
        Figure(
            "index_conns",
            f"index RSS per idle TLS connection, {opened:,} peers",
            "KiB",
            [round(per_conn, 1)],
            [RSS_CAP_KIB],
            1.0,
            direction="le",
            summary="max",
            limit_name="64 KiB cap (issue 15)",
            notes=f"{what} each, a certificate each; RSS after − before, ÷ connections",
            extra=extra,
        ),
        Figure(
            "index_conns_probe",
            f"search p99 while {opened:,} peers are connected and pinging",
            "ms",
            [p99],
            [PROBE_CAP_MS],
            1.0,
            direction="le",
            summary="max",
            limit_name="10 ms cap (issue 15)",
            notes=f"max {probe_ms[-1]:.2f} ms over {len(probe_ms)} searches in {hold:g} s,"
            f" each peer pinging every {PING_INTERVAL:g} s; while the {opened:,} connected"
            f" ({arrivals:g}/s, handshake + sync + ping each): p99 {joining_p99:.2f} ms",
            extra={
                "probe_median_ms": statistics.median(probe_ms),
                "probes": len(probe_ms),
                "joining_p99_ms": joining_p99,
                "joining_probes": len(joining),
            },
        ),
    ]


def _p99(sorted_ms: list[float]) -> float:
    return statistics.quantiles(sorted_ms, n=100)[98] if len(sorted_ms) > 1 else sorted_ms[0]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.conns``: the figures alone (``client`` is a client process)."""
    parser = argparse.ArgumentParser(prog="python -m bench.conns", description=__doc__)
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--arrivals", type=float, default=ARRIVALS, help="peers per second")
    parser.add_argument("--search-only", action="store_true", help="a search, no sync, no cert")
    parser.add_argument("--hold", type=float, default=HOLD, help="seconds measured connected")
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("client")
    for flag in ("--port", "--first", "--count"):
        client.add_argument(flag, type=int, required=True)
    for flag in ("--pki", "--certs", "--token"):
        client.add_argument(flag, required=True)
    client.add_argument("--rate", type=float, required=True)
    client.add_argument("--search-only", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "client":
        asyncio.run(_hold(args))
        return 0
    with tempfile.TemporaryDirectory(prefix="p2pshare-conns-") as tmp:
        figures = asyncio.run(
            index_conns(
                Path(tmp),
                fixtures.make_pki(Path(tmp) / "pki"),
                print,
                peers=args.peers,
                processes=args.processes,
                arrivals=args.arrivals,
                search_only=args.search_only,
                hold=args.hold,
            )
        )
    for f in figures:
        print(f"{f.key}: {f.project_value:.2f} {f.unit} (cap {f.limit_value:g}) {f.passed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
