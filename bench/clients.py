"""The project's side of each measurement: its own client library against its own daemons.

Searches go through :class:`netproto.client.Connection` (a future and a timeout per request,
as every caller pays); fetches through :class:`peerd.client.PeerClient` with every check of
PROTOCOL.md §7 (:func:`peerd.download.verify_fetch`), or a whole :func:`peerd.download.download`.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from netproto.client import Connection
from netproto.operations import NONCE_SIZE
from peerd.client import PeerClient
from peerd.download import download, verify_fetch


async def search_pipelined(
    conn: Connection, bodies: Sequence[dict[str, Any]], token: str, count: int, window: int
) -> float:
    """``count`` searches with ``window`` in flight (one task per slot); searches per second."""
    loop = asyncio.get_running_loop()
    left = count
    nb = len(bodies)

    async def slot(i: int) -> None:
        nonlocal left
        request = conn.request
        while left > 0:
            left -= 1
            await request("search", bodies[i % nb], token)
            i += window

    start = loop.time()
    await asyncio.gather(*(slot(i) for i in range(min(window, count))))
    return count / (loop.time() - start)


async def search_one_at_a_time(
    conn: Connection, bodies: Sequence[dict[str, Any]], token: str, count: int
) -> list[float]:
    """``count`` searches one after another; each round trip in seconds."""
    loop = asyncio.get_running_loop()
    times: list[float] = []
    nb = len(bodies)
    request = conn.request
    for i in range(count):
        start = loop.time()
        await request("search", bodies[i % nb], token)
        times.append(loop.time() - start)
    return times


class FetchFailed(Exception):
    """A benchmark fetch did not verify (the figure would be meaningless)."""


async def fetch_verified(peer: PeerClient, keyword: str, file_name: str) -> tuple[float, int]:
    """Fetch a file, hash it as it arrives and run every check; return (bytes/s, size).

    Nothing is written to disk: this is the protocol's cost, comparable with the bare stream.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    nonce = secrets.token_bytes(NONCE_SIZE)
    stream = await peer.fetch(keyword, file_name, nonce)
    digest = hashlib.sha256()
    received = 0
    try:
        async for chunk in stream.chunks():
            digest.update(chunk)
            received += len(chunk)
        trailer = stream.trailer()
    finally:
        stream.close()
    checks = verify_fetch(
        peer=peer,
        keyword=keyword,
        file_name=file_name,
        nonce=nonce,
        size=received,
        announced_size=stream.header.size,
        digest=digest.digest(),
        trailer=trailer,
        expected=None,
    )
    elapsed = loop.time() - start
    failed = [c for c in checks if c.passed is False]
    if failed:
        raise FetchFailed(f"fetch did not verify: {failed[0].name}: {failed[0].detail}")
    return received / elapsed, received


async def download_to_disk(
    peer: PeerClient, keyword: str, file_name: str, directory: Path
) -> tuple[float, int]:
    """A whole :func:`download` (temp file, hash, verify, fsync, rename); (bytes/s, size)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await download(peer, keyword, file_name, directory, overwrite=True)
    elapsed = loop.time() - start
    await asyncio.to_thread(shutil.rmtree, directory, True)
    return result.size / elapsed, result.size
