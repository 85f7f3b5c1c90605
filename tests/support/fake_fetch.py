"""An in-memory peer to download from (:class:`peerd.transfer.FetchPeer`), without sockets.

It answers ``fetch`` with a well-formed header, the file in chunks and a trailer signed with
its certificate's key, as an honest peer does; a test makes it fail in one chosen way.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from certs import load_cert, load_key
from netproto.operations import FetchHeader, FetchTrailer
from netproto.signing import fetch_signing_payload, sign_fetch

CHUNK = 1000


@dataclass(frozen=True)
class FetchCall:
    """One ``fetch`` the fake was asked for."""

    keyword: str
    file_name: str
    offset: int


class FakeFetchStream:
    """A ``fetch`` answer: the header, the chunks (or a failure after some), the trailer."""

    def __init__(
        self,
        header: FetchHeader,
        chunks: list[bytes],
        trailer: FetchTrailer,
        fail_after: int | None,
        failure: BaseException | None,
        on_chunk: Callable[[], None] | None,
    ) -> None:
        self.header = header
        self._chunks = chunks
        self._trailer = trailer
        self._fail_after = fail_after
        self._failure = failure
        self._on_chunk = on_chunk
        self.closed = False

    async def _iterate(self) -> AsyncIterator[bytes | memoryview]:
        for i, chunk in enumerate(self._chunks):
            if self._fail_after is not None and i >= self._fail_after:
                assert self._failure is not None
                raise self._failure
            await asyncio.sleep(0)
            if self._on_chunk is not None:
                self._on_chunk()
            yield chunk

    def chunks(self, timeout: float | None = None) -> AsyncIterator[bytes | memoryview]:
        return self._iterate()

    def trailer(self) -> FetchTrailer:
        return self._trailer

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeFetchPeer:
    """peer1, holding ``content`` under every name, asked by ``requester``."""

    pki: Any
    content: bytes
    name: str = "peer1"
    requester: str = "peer2"
    #: Raised by the next ``fetch`` calls, one each, before anything is answered.
    fetch_errors: list[BaseException] = field(default_factory=list)
    #: The stream fails with ``failure`` after this many chunks.
    fail_after: int | None = None
    failure: BaseException | None = None
    #: Called as each chunk is handed over (a test moves its clock there).
    on_chunk: Callable[[], None] | None = None
    calls: list[FetchCall] = field(default_factory=list)

    @property
    def domain_name(self) -> str:
        return self.name

    @property
    def certificate(self) -> x509.Certificate:
        return load_cert(self.pki.cert(self.name))

    async def fetch(
        self, keyword: str, file_name: str, nonce: bytes, offset: int = 0
    ) -> FakeFetchStream:
        self.calls.append(FetchCall(keyword, file_name, offset))
        if self.fetch_errors:
            raise self.fetch_errors.pop(0)
        digest = hashlib.sha256(self.content).digest()
        payload = fetch_signing_payload(
            signer=self.name,
            requester=self.requester,
            keyword=keyword,
            file_name=file_name,
            size=len(self.content),
            sha256=digest,
            nonce=nonce,
        )
        signature = sign_fetch(load_key(self.pki.key(self.name)), payload)
        trailer = FetchTrailer(len(self.content), digest, nonce, signature, self.name)
        rest = self.content[offset:]
        chunks = [rest[i : i + CHUNK] for i in range(0, len(rest), CHUNK)]
        header = FetchHeader(keyword, file_name, len(self.content), offset)
        return FakeFetchStream(
            header, chunks, trailer, self.fail_after, self.failure, self.on_chunk
        )
