"""The figures of issue 14: multi-source downloads, a download to disk, manifest computation.

- ``manifest_rate``: :func:`peerd.manifests.compute_manifest` of a file against a plain
  SHA-256 of the same file, both from the page cache, in this process.
- ``swarm_disk``: :func:`peerd.swarm.swarm_download` from a real ``peerd`` over loopback into a
  share folder (blocks verified, written at their offsets, fsync'ed, renamed) against the
  slower of two limits measured in the same repetition: the bare TLS + SHA-256 stream
  (``bench.baseline stream``) and ``dd if=/dev/zero bs=1M conv=fsync`` of the same size; each
  timed on a settled disk (a sync and a second's rest first: :data:`SETTLE_SECONDS`).
- ``swarm_hosts_N``: on the host test bed (``tests/support/hosts.py``), 1, 2 and 4 holders,
  each in its own network namespace with its link out limited to the same rate R, and a
  client in another; the download's rate against N × R.

``python -m bench.swarm client ...`` is the multi-source client, run inside the client host.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench import baseline, fixtures
from bench.fixtures import MiB
from bench.harness import Figure, child_env, now
from netproto.tls import client_context
from peerd.client import IndexClient, PeerClient
from peerd.manifests import compute_manifest
from peerd.share import FileIdentity, OpenFile
from peerd.swarm import Holder, PeerHolder, swarm_download

if TYPE_CHECKING:
    from tests.support.hosts import TestBed

REPO = Path(__file__).resolve().parent.parent
INDEX_PORT = 7000
PEER_PORT = 7001
START_TIMEOUT = 300.0
#: The rate each holder's link is limited to, in bit/s.
HOLDER_RATE = 80e6
#: How many holders each multi-source figure uses.
HOLDER_COUNTS = (1, 2, 4)
CLIENT = "bench"
_READ = 4 << 20


def _human_size(n: int) -> str:
    return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / MiB:g} MiB"


# --- manifest computation against plain SHA-256 -----------------------------------------------


def _manifest_seconds(path: Path) -> float:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    opened = OpenFile(fd, path.parent.name, path.name, FileIdentity.of(os.fstat(fd)))
    try:
        start = now()
        compute_manifest(opened)
        return now() - start
    finally:
        opened.close()


def _sha256_seconds(path: Path) -> float:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        start = now()
        h, pos = hashlib.sha256(), 0
        while data := os.pread(fd, _READ, pos):
            h.update(data)
            pos += len(data)
        h.digest()
        return now() - start
    finally:
        os.close(fd)


def manifest_rate(path: Path, repeat: int, log: Callable[[str], None]) -> Figure:
    """The ``manifest_rate`` figure: manifests of ``path`` against plain SHA-256 of it."""
    size = path.stat().st_size
    _sha256_seconds(path)  # into the page cache
    _manifest_seconds(path)
    project: list[float] = []
    limit: list[float] = []
    for r in range(repeat):
        for side in ("project", "limit") if r % 2 == 0 else ("limit", "project"):
            if side == "project":
                project.append(size / _manifest_seconds(path) / 1e6)
            else:
                limit.append(size / _sha256_seconds(path) / 1e6)
        log(f"  rep {r + 1}: manifest {project[-1]:.0f} vs SHA-256 {limit[-1]:.0f} MB/s")
    return Figure(
        "manifest_rate",
        f"manifest computation, {_human_size(size)} file",
        "MB/s",
        project,
        limit,
        0.85,
        limit_name="plain SHA-256 of the same file",
        notes="peerd.manifests.compute_manifest (one SHA-256 pass, its chaining value at every"
        " block's end), page cache",
    )


# --- a download to disk against the bare stream and dd ----------------------------------------


#: After each measurement's files are removed: a sync (and this long) before the next one, so
#: that neither inherits the disk's work for the one before (freed blocks discarded, a device
#: still busy after direct writes: measured, dd ran at 550-800 MB/s right after a 1 GiB
#: direct-write download was deleted, 1,100-1,500 after a settled disk).
SETTLE_SECONDS = 1.0


async def _settle() -> None:
    """Put everything written on disk and let the device rest before a timed measurement."""
    await asyncio.to_thread(os.sync)
    await asyncio.sleep(SETTLE_SECONDS)


def _dd_rate(directory: Path, size: int) -> float:
    """``dd if=/dev/zero of=F bs=1M count=N conv=fsync``: bytes/s (the file is removed)."""
    target = directory / "dd.bin"
    count = max(1, size // MiB)
    start = now()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={count}", "conv=fsync"],
        check=True,
        capture_output=True,
    )
    elapsed = now() - start
    target.unlink()
    return count * MiB / elapsed


async def _swarm_rate(holders: list[Holder], keyword: str, name: str, dest: Path) -> float:
    """One timed :func:`swarm_download` into a fresh share folder ``dest``: bytes/s."""
    start = now()
    result = await swarm_download(holders, keyword, name, dest, overwrite=True)
    elapsed = now() - start
    await asyncio.to_thread(shutil.rmtree, dest, True)
    return result.size / elapsed


async def disk_download(
    client: PeerClient,
    stream_port: int,
    ca: Path,
    keyword: str,
    name: str,
    size: int,
    tmp: Path,
    repeat: int,
    log: Callable[[str], None],
) -> Figure:
    """The ``swarm_disk`` figure: ``client`` serves ``keyword/name`` (``size`` bytes) and the
    bare stream server on ``stream_port`` serves the same file."""
    holders: list[Holder] = [PeerHolder(client, keyword, name)]
    dest = tmp / "swarm-downloads"
    scratch = tmp / "dd"
    scratch.mkdir(exist_ok=True)
    await _swarm_rate(holders, keyword, name, dest)  # warm-up: the peer computes its manifest
    project: list[float] = []
    streams: list[float] = []
    dds: list[float] = []
    for r in range(repeat):
        for side in ("project", "limit") if r % 2 == 0 else ("limit", "project"):
            await _settle()
            if side == "project":
                project.append(await _swarm_rate(holders, keyword, name, dest) / 1e6)
            else:
                rate, _ = await baseline.stream_client(stream_port, ca, "peer1", name)
                streams.append(rate / 1e6)
                await _settle()
                dds.append(await asyncio.to_thread(_dd_rate, scratch, size) / 1e6)
        log(
            f"  rep {r + 1}: swarm download to disk {project[-1]:.0f} MB/s vs stream"
            f" {streams[-1]:.0f}, dd conv=fsync {dds[-1]:.0f} MB/s"
        )
    limit = [min(s, d) for s, d in zip(streams, dds, strict=True)]
    median = statistics.median
    return Figure(
        "swarm_disk",
        f"download to disk of a {_human_size(size)} file, one holder, verified",
        "MB/s",
        project,
        limit,
        0.85,
        limit_name="slower of: bare TLS + SHA-256 stream, dd bs=1M conv=fsync",
        notes="swarm_download: blocks verified, written at their offsets, whole SHA-256, fsync,"
        f" rename; stream {median(streams):.0f} MB/s, dd {median(dds):.0f} MB/s; against"
        f" the stream alone {median(project) / median(streams):.0%}, against dd alone"
        f" {median(project) / median(dds):.0%}",
        extra={"stream_mb_s": streams, "dd_mb_s": dds},
    )


# --- several rate-limited holders on the host test bed -----------------------------------------


async def multi_source(
    tmp: Path,
    pki: Path,
    share: Path,
    keyword: str,
    name: str,
    *,
    size: int,
    repeat: int,
    log: Callable[[str], None],
) -> list[Figure]:
    """The ``swarm_hosts_N`` figures (none when this machine cannot make a test bed)."""
    try:
        from tests.support.hosts import TestBed, TestBedError, TestBedUnavailable
    except ImportError:
        log("  multi-source: left out (tests/support/hosts.py is not on the path)")
        return []
    holders = [f"peer{i}" for i in range(1, max(HOLDER_COUNTS) + 1)]
    try:
        bed = TestBed([*holders, CLIENT])
    except TestBedUnavailable as exc:
        log(f"  multi-source: left out ({exc})")
        return []
    db = tmp / "swarm-index.db"
    fast = await asyncio.to_thread(fixtures.bcrypt_hash, 4)
    await asyncio.to_thread(
        fixtures.populate_index,
        db,
        0,
        fast_hash=fast,
        login_hash=fast,
        login_users=len(holders),
    )
    # Each holder its own share (a copy: the same content, its own digest cache).
    shares = []
    for i, host in enumerate(holders):
        folder = tmp / f"swarm-share-{host}"
        (folder / keyword).mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.chmod(0o700)
        await asyncio.to_thread(shutil.copyfile, share / keyword / name, folder / keyword / name)
        shares.append((host, f"login{i:02d}", folder))
    try:
        with bed:
            rates = await asyncio.to_thread(
                _measure, bed, pki, shares, keyword, name, tmp, repeat, log
            )
    except TestBedError as exc:
        log(f"  multi-source: failed ({exc})")
        return []
    per_link = HOLDER_RATE / 8 / 1e6
    return [
        Figure(
            f"swarm_hosts_{n}",
            f"download of a {_human_size(size)} file from {n} holder{'s' * (n > 1)},"
            f" each at {HOLDER_RATE / 1e6:g} Mbit/s",
            "MB/s",
            rates[n],
            [n * per_link],
            0.85,
            limit_name=f"{n} × the rate each link is limited to (tc tbf)",
            notes="holders and client in network namespaces on a bridge; blocks verified,"
            " written, fsync'ed",
        )
        for n in HOLDER_COUNTS
    ]


def _measure(
    bed: TestBed,
    pki: Path,
    shares: list[tuple[str, str, Path]],
    keyword: str,
    name: str,
    tmp: Path,
    repeat: int,
    log: Callable[[str], None],
) -> dict[int, list[float]]:
    """Start the index and every holder, limit their links, then run the client per N."""
    from tests.support.hosts import TestBedError

    python = sys.executable
    first = shares[0][0]
    index = bed.start(
        first,
        [
            python, "-m", "indexd", "--host", "0.0.0.0", "--port", str(INDEX_PORT),
            "--db", str(tmp / "swarm-index.db"), "--cert", str(pki / "indexd.crt"),
            "--key", str(pki / "indexd.key"), "--ca", str(pki / "ca.crt"), "--peer-ttl", "86400",
        ],
        child_env(),
        cwd=REPO,
    )  # fmt: skip
    index.wait_for("indexd listening on", START_TIMEOUT)
    index_address = bed.address(first)
    peers = []
    for host, user, folder in shares:
        peer = bed.start(
            host,
            [
                python, "-m", "peerd", "-hostname", host,
                "-index_server_name", f"{index_address}:{INDEX_PORT}",
                "--index-tls-name", "indexd",
                "-peer_server_port", str(PEER_PORT), "--bind", "0.0.0.0",
                "-username", user, "-file_directory", str(folder),
                "-certificate", str(pki / f"{host}.crt"),
                "-private_key", str(pki / f"{host}.key"),
                "--ca", str(pki / "ca.crt"), "--no-shell",
            ],
            child_env({"P2P_PASSWORD": fixtures.PASSWORD}),
            cwd=REPO,
        )  # fmt: skip
        peers.append(peer)
    for peer in peers:
        peer.wait_for("serving", START_TIMEOUT)
    for host, _, _ in shares:
        bed.limit(host, HOLDER_RATE, direction="out")
    rates: dict[int, list[float]] = {n: [] for n in HOLDER_COUNTS}
    for r in range(repeat):
        order = HOLDER_COUNTS if r % 2 == 0 else HOLDER_COUNTS[::-1]
        for n in order:
            holders = ",".join(f"{h}@{bed.address(h)}:{PEER_PORT}" for h, _, _ in shares[:n])
            client = bed.start(
                CLIENT,
                [
                    python, "-m", "bench.swarm", "client", "--pki", str(pki),
                    "--index", f"{index_address}:{INDEX_PORT}", "--holders", holders,
                    "--keyword", keyword, "--file", name,
                    "--dest", str(tmp / f"swarm-client-{n}"),
                ],
                child_env(),
                cwd=REPO,
            )  # fmt: skip
            if client.wait(START_TIMEOUT) != 0:
                raise TestBedError(f"the multi-source client failed: {client.describe()}")
            rates[n].append(json.loads(client.stdout.splitlines()[-1])["rate"] / 1e6)
        log(
            "  rep "
            + f"{r + 1}: "
            + ", ".join(f"{n} holders {rates[n][-1]:.1f} MB/s" for n in HOLDER_COUNTS)
        )
    return rates


async def _client(
    pki: Path, index: str, holders: list[tuple[str, str, int]], keyword: str, name: str, dest: Path
) -> float:
    """Log in, connect to every holder and ask each for its manifest (untimed), then one timed
    download from all of them: bytes/s."""
    ctx = client_context(pki / "ca.crt", pki / "bench.crt", pki / "bench.key")
    index_host, _, index_port = index.rpartition(":")
    async with await IndexClient.connect(
        index_host, int(index_port), ctx, server_hostname="indexd"
    ) as conn:
        token = (await conn.auth(fixtures.BENCH_USER, fixtures.PASSWORD)).peer_token
        assert token is not None
    clients = [
        await PeerClient.connect(
            host, port, peer_name, ctx, token=token, requester=fixtures.BENCH_USER
        )
        for peer_name, host, port in holders
    ]
    try:
        swarm: list[Holder] = [PeerHolder(c, keyword, name) for c in clients]
        for holder in swarm:
            await holder.manifest(keyword, name)  # the holder computes it once, untimed
        return await _swarm_rate(swarm, keyword, name, dest)
    finally:
        for c in clients:
            await c.close()


def _holder(text: str) -> tuple[str, str, int]:
    peer_name, _, address = text.partition("@")
    host, _, port = address.rpartition(":")
    return peer_name, host, int(port)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.swarm client ...``: one timed download; prints ``{"rate": B/s}``."""
    parser = argparse.ArgumentParser(prog="python -m bench.swarm")
    sub = parser.add_subparsers(dest="command", required=True)
    client = sub.add_parser("client", help="log in, download from every holder, print the rate")
    client.add_argument("--pki", type=Path, required=True)
    client.add_argument("--index", required=True, metavar="HOST:PORT")
    client.add_argument("--holders", required=True, metavar="NAME@HOST:PORT,...")
    client.add_argument("--keyword", required=True)
    client.add_argument("--file", required=True)
    client.add_argument("--dest", type=Path, required=True)
    args = parser.parse_args(argv)
    holders = [_holder(h) for h in args.holders.split(",")]
    rate = asyncio.run(_client(args.pki, args.index, holders, args.keyword, args.file, args.dest))
    print(json.dumps({"rate": rate}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
