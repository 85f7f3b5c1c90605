"""The fetch figure across two hosts: ``peerd`` serves from one network namespace, the client
fetches from another, over a veth pair and a bridge (the host test bed of
``tests/support/hosts.py``); its limit is the same fetch, from the same ``peerd``, over
loopback inside the serving host. Needs root or unprivileged user namespaces; elsewhere the
figure is left out with one line saying why.

``python -m bench.hosts client ...`` is the client side, run inside a host: it logs in to the
index, fetches one file untimed (to warm up), then the measured file, and prints its rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench import clients, fixtures
from bench.fixtures import MiB
from bench.harness import Figure, child_env
from netproto.tls import client_context
from peerd.client import IndexClient, PeerClient

if TYPE_CHECKING:
    from tests.support.hosts import TestBed

REPO = Path(__file__).resolve().parent.parent
INDEX_PORT = 7000
PEER_PORT = 7001
START_TIMEOUT = 300.0
#: Host names in the test bed: the serving peer (with the index) and the fetching client.
SERVER, CLIENT = "peer1", "bench"


def _human_size(n: int) -> str:
    return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / MiB:g} MiB"


async def fetch_across_hosts(
    tmp: Path,
    pki: Path,
    share: Path,
    keyword: str,
    files: tuple[str, str],
    *,
    size: int,
    repeat: int,
    log: Callable[[str], None],
) -> list[Figure]:
    """The ``fetch_hosts`` figure (none when this machine cannot make a test bed).

    ``files`` is (warm-up file, measured file) under ``share/keyword``; repetitions alternate
    which side goes first, as the loopback figures do.
    """
    try:
        from tests.support.hosts import TestBed, TestBedError, TestBedUnavailable
    except ImportError:
        log("  fetch across hosts: left out (tests/support/hosts.py is not on the path)")
        return []
    try:
        bed = TestBed([SERVER, CLIENT])
    except TestBedUnavailable as exc:
        log(f"  fetch across hosts: left out ({exc})")
        return []
    db = tmp / "hosts-index.db"
    fast = await asyncio.to_thread(fixtures.bcrypt_hash, 4)
    await asyncio.to_thread(
        fixtures.populate_index, db, 0, fast_hash=fast, login_hash=fast, login_users=0
    )
    try:
        with bed:
            rates = await asyncio.to_thread(
                _measure, bed, pki, share, keyword, files, db, repeat, log
            )
    except TestBedError as exc:
        log(f"  fetch across hosts: failed ({exc})")
        return []
    across, loopback = rates
    return [
        Figure(
            "fetch_hosts",
            f"fetch of a {_human_size(size)} file across two hosts, verified",
            "MB/s",
            across,
            loopback,
            0.75,
            limit_name="the same fetch over loopback inside the serving host",
            notes="peerd and its client in two network namespaces on a bridge, unshaped",
            extra={"server_address": bed.address(SERVER), "client_address": bed.address(CLIENT)},
        )
    ]


def _measure(
    bed: TestBed,
    pki: Path,
    share: Path,
    keyword: str,
    files: tuple[str, str],
    db: Path,
    repeat: int,
    log: Callable[[str], None],
) -> tuple[list[float], list[float]]:
    """Start the index and peerd in the serving host, then alternate the two clients."""
    from tests.support.hosts import TestBedError

    python = sys.executable
    index = bed.start(
        SERVER,
        [
            python, "-m", "indexd", "--host", "0.0.0.0", "--port", str(INDEX_PORT),
            "--db", str(db), "--cert", str(pki / "indexd.crt"), "--key", str(pki / "indexd.key"),
            "--ca", str(pki / "ca.crt"), "--peer-ttl", "86400",
        ],
        child_env(),
        cwd=REPO,
    )  # fmt: skip
    index.wait_for("indexd listening on", START_TIMEOUT)
    peer = bed.start(
        SERVER,
        [
            python, "-m", "peerd", "-hostname", "peer1",
            "-index_server_name", f"127.0.0.1:{INDEX_PORT}", "--index-tls-name", "indexd",
            "-peer_server_port", str(PEER_PORT), "--bind", "0.0.0.0",
            "-username", fixtures.PEER_USER, "-file_directory", str(share),
            "-certificate", str(pki / "peer1.crt"), "-private_key", str(pki / "peer1.key"),
            "--ca", str(pki / "ca.crt"), "--no-shell",
        ],
        child_env({"P2P_PASSWORD": fixtures.PASSWORD}),
        cwd=REPO,
    )  # fmt: skip
    peer.wait_for("serving", START_TIMEOUT)
    server = bed.address(SERVER)
    sides = {
        "across": (CLIENT, server, server),
        "loopback": (SERVER, "127.0.0.1", "127.0.0.1"),
    }
    rates: dict[str, list[float]] = {"across": [], "loopback": []}
    for r in range(repeat):
        order = ("across", "loopback") if r % 2 == 0 else ("loopback", "across")
        for side in order:
            host, index_address, peer_address = sides[side]
            client = bed.start(
                host,
                [
                    python, "-m", "bench.hosts", "client", "--pki", str(pki),
                    "--index", f"{index_address}:{INDEX_PORT}",
                    "--peer", f"{peer_address}:{PEER_PORT}",
                    "--keyword", keyword, "--warm-up", files[0], "--file", files[1],
                ],
                child_env(),
                cwd=REPO,
            )  # fmt: skip
            if client.wait(START_TIMEOUT) != 0:
                raise TestBedError(f"the fetch client failed: {client.describe()}")
            rates[side].append(json.loads(client.stdout.splitlines()[-1])["rate"] / 1e6)
        log(
            f"  rep {r + 1}: fetch across hosts {rates['across'][-1]:.0f} vs loopback"
            f" {rates['loopback'][-1]:.0f} MB/s"
        )
    return rates["across"], rates["loopback"]


async def _client(pki: Path, index: str, peer: str, keyword: str, warm: str, name: str) -> float:
    """Log in, fetch ``warm`` untimed, then ``name``: the verified rate in bytes/s."""
    ctx = client_context(pki / "ca.crt", pki / "bench.crt", pki / "bench.key")
    index_host, _, index_port = index.rpartition(":")
    peer_host, _, peer_port = peer.rpartition(":")
    async with await IndexClient.connect(
        index_host, int(index_port), ctx, server_hostname="indexd"
    ) as conn:
        # The token for peers (PROTOCOL.md §8), bound to the certificate this client presents.
        token = (await conn.auth(fixtures.BENCH_USER, fixtures.PASSWORD)).peer_token
        assert token is not None
    async with await PeerClient.connect(
        peer_host, int(peer_port), "peer1", ctx, token=token, requester=fixtures.BENCH_USER
    ) as client:
        await clients.fetch_verified(client, keyword, warm)
        rate, _ = await clients.fetch_verified(client, keyword, name)
    return rate


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.hosts client ...``: one measured fetch; prints ``{"rate": B/s}``."""
    parser = argparse.ArgumentParser(prog="python -m bench.hosts")
    sub = parser.add_subparsers(dest="command", required=True)
    client = sub.add_parser("client", help="log in, warm up, fetch; print the rate as JSON")
    client.add_argument("--pki", type=Path, required=True)
    client.add_argument("--index", required=True, metavar="HOST:PORT")
    client.add_argument("--peer", required=True, metavar="HOST:PORT")
    client.add_argument("--keyword", required=True)
    client.add_argument("--warm-up", required=True, metavar="FILE")
    client.add_argument("--file", required=True, metavar="FILE")
    args = parser.parse_args(argv)
    rate = asyncio.run(
        _client(args.pki, args.index, args.peer, args.keyword, args.warm_up, args.file)
    )
    print(json.dumps({"rate": rate}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
