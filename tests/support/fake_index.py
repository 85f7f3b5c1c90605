"""A fake index for :class:`peerd.index_session.IndexSession` tests: connections that answer
from memory and record each call with the (fake) time it was made."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509

from netproto.errors import ConnectionClosed, VersionMismatch
from netproto.operations import (
    AuthReply,
    ByeReply,
    ListedFile,
    PingReply,
    SearchHit,
    SharedFile,
    SyncDeltaRequest,
    SyncReply,
)
from tests.support.fake_clock import FakeClock


@dataclass
class FakeIndex:
    """The index: hands out connections, keeps the listing, and fails when told to.

    ``errors`` maps an operation (``connect``, ``auth``, ``ping``, ...) to the errors its next
    calls raise, one per call; ``calls`` is every call as ``(operation, time)``.
    """

    clock: FakeClock
    certificate: x509.Certificate
    token_ttl: int = 100
    peer_ttl: float = 120.0
    errors: dict[str, list[BaseException]] = field(default_factory=dict)
    calls: list[tuple[str, float]] = field(default_factory=list)
    listing: list[SharedFile] = field(default_factory=list)
    connections: list[FakeIndexConnection] = field(default_factory=list)
    #: The listing's version (bumped by every sync; None after a "restart").
    version: int | None = None
    #: Entries each sync or sync_delta carried, in order.
    sent: list[int] = field(default_factory=list)
    #: Set whenever a call is recorded, so a test can wait for the next one.
    called: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, op: str) -> None:
        """Note the call, then raise the next error planned for it, if any."""
        self.calls.append((op, self.clock.time()))
        self.called.set()
        planned = self.errors.get(op)
        if planned:
            raise planned.pop(0)

    def times(self, op: str, since: float = 0.0) -> list[float]:
        """When ``op`` was called, in seconds after ``since``."""
        return [t - since for o, t in self.calls if o == op]

    async def connect(self) -> FakeIndexConnection:
        """A new connection (what ``IndexClient.connect`` would return)."""
        self.record("connect")
        conn = FakeIndexConnection(self)
        self.connections.append(conn)
        return conn

    async def wait_for(self, op: str, count: int) -> None:
        """Wait until ``op`` has been called ``count`` times."""
        while len(self.times(op)) < count:
            self.called.clear()
            await self.called.wait()


class FakeIndexConnection:
    """One connection to a :class:`FakeIndex` (implements ``IndexLink``)."""

    def __init__(self, index: FakeIndex) -> None:
        self.index = index
        self._closed = False
        self.tokens = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def certificate(self) -> x509.Certificate:
        return self.index.certificate

    def _call(self, op: str) -> None:
        if self._closed:
            raise ConnectionClosed("connection closed")
        self.index.record(op)

    def drop(self) -> None:
        """The connection fails (as when the index goes away)."""
        self._closed = True

    async def register(self, username: str, password: str) -> str:
        self._call("register")
        return username

    async def auth(self, username: str, password: str) -> AuthReply:
        self._call("auth")
        self.tokens += 1
        expires_at = int(self.index.clock.time()) + self.index.token_ttl
        return AuthReply(f"token-{self.tokens}", expires_at)

    async def renew(self, token: str) -> AuthReply:
        self._call("renew")
        self.tokens += 1
        expires_at = int(self.index.clock.time()) + self.index.token_ttl
        return AuthReply(f"token-{self.tokens}", expires_at, f"peer-token-{self.tokens}")

    async def sync(
        self,
        domain_name: str,
        port_number: int,
        files: Iterable[SharedFile],
        address: str | None = None,
    ) -> int:
        return (await self.sync_listing(domain_name, port_number, files, address)).files

    async def sync_listing(
        self,
        domain_name: str,
        port_number: int,
        files: Iterable[SharedFile],
        address: str | None = None,
    ) -> SyncReply:
        self._call("sync")
        self.index.listing = list(files)
        self.index.sent.append(len(self.index.listing))
        self.index.version = (self.index.version or 0) + 1
        return SyncReply(len(self.index.listing), self.index.version)

    async def sync_delta(self, request: SyncDeltaRequest) -> SyncReply:
        self._call("sync_delta")
        if request.base != self.index.version:
            raise VersionMismatch()
        gone = {(k.keyword, k.filename) for k in request.removed}
        gone |= {(f.keyword, f.filename) for f in request.files}
        kept = [f for f in self.index.listing if (f.keyword, f.filename) not in gone]
        self.index.listing = kept + list(request.files)
        self.index.sent.append(len(request.files) + len(request.removed))
        self.index.version += 1
        return SyncReply(len(self.index.listing), self.index.version)

    async def search(self, keyword: str) -> list[SearchHit]:
        self._call("search")
        listed = tuple(
            ListedFile(f.filename, f.size, f.sha256)
            for f in self.index.listing
            if f.keyword.casefold() == keyword.casefold()
        )
        return [SearchHit("peer1", 7001, "127.0.0.1", listed)] if listed else []

    async def ping(self, domain_name: str) -> PingReply:
        self._call("ping")
        return PingReply(domain_name, self.index.peer_ttl)

    async def bye(self, domain_name: str) -> ByeReply:
        self._call("bye")
        return ByeReply(domain_name)

    async def close(self) -> None:
        self._closed = True
