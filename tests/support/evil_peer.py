"""A malicious serving peer for the client-library and shell tests."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from certs import load_cert, load_key
from netproto.operations import FetchHeader, FetchRequest, FetchTrailer
from netproto.server import Operation, RequestContext, Server, StreamReply
from netproto.signing import fetch_signing_payload, sign_fetch
from netproto.tokens import TokenVerifier
from peerd.server import CHUNK_SIZE, peer_ssl_context


def sha(data: bytes) -> bytes:
    """SHA-256 of ``data``."""
    return hashlib.sha256(data).digest()


@dataclass
class EvilPeer:
    """A peer server with a hand-written ``fetch`` that lies in one chosen way.

    It presents peer1's certificate (so TLS accepts it as peer1) and signs with ``key_name``'s
    key; each flag breaks one thing a downloader must check.
    """

    pki: Any
    content: bytes
    key_name: str = "peer1"
    signer: str = "peer1"
    flip_byte: bool = False
    other_nonce: bool = False
    replay: bool = False
    trailer_size_delta: int = 0
    header_size_delta: int = 0
    cut_after: int | None = None
    bad_trailer: bool = False
    server: Server | None = None
    last_signature: bytes | None = None

    async def start(self) -> int:
        verifier = TokenVerifier(load_cert(self.pki.cert("indexd")))
        ctx = peer_ssl_context(self.pki.cert("peer1"), self.pki.key("peer1"), self.pki.ca)
        ops = {"fetch": Operation(FetchRequest.from_wire, self.fetch)}
        self.server = Server(ops, ctx, authenticate=verifier.verify_presented, name="evil")
        await self.server.start("127.0.0.1", 0)
        return self.server.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close(grace=0)

    async def fetch(self, ctx: RequestContext, req: FetchRequest) -> StreamReply:
        data = bytearray(self.content)
        if self.flip_byte:
            data[len(data) // 2] ^= 0x01
        size = len(self.content)
        nonce = os.urandom(32) if self.other_nonce else req.nonce
        claimed = size + self.trailer_size_delta
        payload = fetch_signing_payload(
            signer=self.signer,
            requester=ctx.subject,
            keyword=req.keyword,
            file_name=req.file_name,
            size=claimed,
            sha256=sha(self.content),
            nonce=nonce,
        )
        signature = sign_fetch(load_key(self.pki.key(self.key_name)), payload)
        if self.replay:
            signature, self.last_signature = self.last_signature or signature, signature
        trailer: Any = FetchTrailer(claimed, sha(self.content), nonce, signature, self.signer)
        if self.bad_trailer:
            trailer = {"size": claimed, "sha256": b"short"}
        header = FetchHeader(req.keyword, req.file_name, size + self.header_size_delta, req.offset)
        return StreamReply(header, self._chunks(bytes(data[req.offset :])), lambda: trailer)

    async def _chunks(self, data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), CHUNK_SIZE):
            if self.cut_after is not None and start >= self.cut_after:
                await asyncio.sleep(0.2)  # let what was sent reach the downloader
                assert self.server is not None
                asyncio.get_running_loop().create_task(self.server.close(grace=0))
                await asyncio.sleep(30)  # cancelled when the server closes
            yield data[start : start + CHUNK_SIZE]
