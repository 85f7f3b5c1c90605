"""The same-run yardsticks: a bare msgpack-over-TLS echo server and a bare TLS byte stream.

They share nothing with the project but the TLS contexts, so they show what asyncio, TLS and
msgpack alone can do on this machine today. Run as ``python -m bench.baseline echo|stream``;
each server prints its port on stdout and serves until killed.

- ``echo`` answers each frame ``{id, op, body, ...}`` with ``{id, ok: true, body}``. With
  ``--reply FILE`` the body it answers with is the msgpack value in FILE (the bench passes the
  project's own search reply, so both servers send replies of the same size); otherwise it
  echoes the request's body.
- ``stream`` sends a file in 256 KiB writes, hashing it with SHA-256 as it goes, then the
  digest; its client hashes what arrives and compares.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import signal
import ssl
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack

from netproto.tls import client_context, server_context

_LEN = struct.Struct(">I")
CHUNK = 256 << 10


async def _echo_conn(
    reply: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer each frame in turn, one write per answer."""
    unpackb, packb, unpack_len, pack_len = msgpack.unpackb, msgpack.packb, _LEN.unpack, _LEN.pack
    try:
        while True:
            (n,) = unpack_len(await reader.readexactly(4))
            msg = unpackb(await reader.readexactly(n), raw=False)
            body = msg["body"] if reply is None else reply
            out = packb({"id": msg["id"], "ok": True, "body": body})
            writer.write(pack_len(len(out)) + out)
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass
    writer.close()


async def _stream_conn(
    path: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Send the file named in the request in 256 KiB writes, hashing as it goes, then the digest."""
    try:
        (n,) = _LEN.unpack(await reader.readexactly(4))
        name = (await reader.readexactly(n)).decode()
        digest = hashlib.sha256()
        with (path / name).open("rb", buffering=0) as f:
            writer.write(os.fstat(f.fileno()).st_size.to_bytes(8, "big"))
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                writer.write(chunk)
                await writer.drain()
        writer.write(digest.digest())
        await writer.drain()
        await reader.read(1)
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass
    writer.close()


async def serve(kind: str, pki: Path, name: str, reply: Any, root: Path | None) -> None:
    """Serve one baseline until SIGTERM; print the port first."""
    ctx = server_context(
        pki / f"{name}.crt", pki / f"{name}.key", pki / "ca.crt", require_client_cert=False
    )
    if kind == "echo":
        server = await asyncio.start_server(
            lambda r, w: _echo_conn(reply, r, w), "127.0.0.1", 0, ssl=ctx, limit=256 << 10
        )
    else:
        assert root is not None
        server = await asyncio.start_server(
            lambda r, w: _stream_conn(root, r, w), "127.0.0.1", 0, ssl=ctx
        )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(server.sockets[0].getsockname()[1], flush=True)
    await stop.wait()
    server.close()


class EchoClient:
    """One TLS connection to the echo server, sending the same envelopes the project's client
    sends (``{v, id, op, body, token}``), and reading the answers with ``readexactly``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.next_id = 0

    @classmethod
    async def open(cls, port: int, ca: Path, name: str) -> EchoClient:
        """Connect to the echo server on 127.0.0.1."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(ca), server_hostname=name, limit=256 << 10
        )
        return cls(reader, writer)

    def _send(self, op: str, body: dict[str, Any], token: str) -> None:
        self.next_id += 1
        out = msgpack.packb({"v": 1, "id": self.next_id, "op": op, "body": body, "token": token})
        self.writer.write(_LEN.pack(len(out)) + out)

    async def _receive(self) -> Any:
        (n,) = _LEN.unpack(await self.reader.readexactly(4))
        return msgpack.unpackb(await self.reader.readexactly(n), raw=False)

    async def pipelined(
        self, op: str, bodies: Sequence[dict[str, Any]], token: str, count: int, window: int
    ) -> float:
        """Send ``count`` requests keeping ``window`` in flight; return requests per second."""
        loop = asyncio.get_running_loop()
        sent = received = 0
        nb = len(bodies)
        start = loop.time()
        while sent < min(window, count):
            self._send(op, bodies[sent % nb], token)
            sent += 1
        while received < count:
            await self._receive()
            received += 1
            if sent < count:
                self._send(op, bodies[sent % nb], token)
                sent += 1
        return count / (loop.time() - start)

    async def one_at_a_time(
        self, op: str, bodies: Sequence[dict[str, Any]], token: str, count: int
    ) -> list[float]:
        """Send ``count`` requests one after another; return each round trip in seconds."""
        loop = asyncio.get_running_loop()
        times: list[float] = []
        nb = len(bodies)
        for i in range(count):
            start = loop.time()
            self._send(op, bodies[i % nb], token)
            await self._receive()
            times.append(loop.time() - start)
        return times

    async def close(self) -> None:
        """Close the connection."""
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def stream_client(port: int, ca: Path, server_name: str, file_name: str) -> tuple[float, int]:
    """Receive one file over the bare stream, hashing it; return (bytes/s, size)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        port,
        ssl=client_context(ca),
        server_hostname=server_name,
        limit=CHUNK,
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    request = file_name.encode()
    writer.write(_LEN.pack(len(request)) + request)
    size = int.from_bytes(await reader.readexactly(8), "big")
    digest = hashlib.sha256()
    left = size
    while left:
        data = await reader.read(min(left, CHUNK))
        if not data:
            raise ConnectionError("stream ended early")
        digest.update(data)
        left -= len(data)
    if await reader.readexactly(32) != digest.digest():
        raise ValueError("baseline digest mismatch")
    elapsed = loop.time() - start
    writer.write(b"x")
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return size / elapsed, size


def main(argv: list[str] | None = None) -> int:
    """Entry point of the baseline server process."""
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("kind", choices=["echo", "stream"])
    parser.add_argument("--pki", type=Path, required=True)
    parser.add_argument("--name", default="indexd", help="the leaf certificate to serve with")
    parser.add_argument("--reply", type=Path, help="echo: answer with this msgpack value")
    parser.add_argument("--root", type=Path, help="stream: the folder files are served from")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        reply = msgpack.unpackb(args.reply.read_bytes(), raw=False) if args.reply else None
        asyncio.run(serve(args.kind, args.pki, args.name, reply, args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
