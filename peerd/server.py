"""The peer server: ``list`` and ``fetch`` (PROTOCOL.md §4, §7) over mutual TLS.

Every request's token must be a peer token (its audience) bound to the client certificate of
the connection it comes on (PROTOCOL.md §8): a token captured by another peer is of no use.

``fetch`` streams a file with bounded memory whatever its size: it reads 1 MiB at a time, one
block ahead in a worker thread (read and hash overlap with TLS on the event loop), sends it in
chunks of 256 KiB,
and the connection's writer holds it back when the requester reads slowly. The digest in the
trailer is of the bytes actually read (the prefix before ``offset`` included), so a file
changed since it was listed is never served under its old digest — except for a resumed fetch
of a version whose digest the share's cache holds, which is not read again; a file changed
during the transfer ends the stream with an error instead of a trailer.

Transfers take slots (:class:`FetchSlots`): 32 at once, 4 for any one requester, each freed
when its requester reads slower than the floor (:class:`~peerd.pacing.PacePolicy`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netproto.errors import BadRequest, Busy, Timeout
from netproto.framing import DEFAULT_MAX_FRAME
from netproto.manifest import ManifestRequest, RangeRequest
from netproto.operations import (
    MAX_CHUNK,
    FetchHeader,
    FetchRequest,
    FetchTrailer,
    KeywordRequest,
)
from netproto.server import Operation, RequestContext, Server, ServerLimits, StreamReply
from netproto.service import Authenticator
from netproto.signing import fetch_signing_payload, sign_fetch
from netproto.tls import server_context
from netproto.tokens import Principal
from peerd.blockserve import handle_fetch_range, handle_manifest
from peerd.clock import SYSTEM_CLOCK, Clock
from peerd.errors import ShareError, wire_error
from peerd.manifests import ManifestCache
from peerd.pacing import PaceMeter, PacePolicy
from peerd.share import READ_BLOCK, ShareFile, ShareStore
from peerd.threadjob import SERVING, ThreadJob

log = logging.getLogger(__name__)

CHUNK_SIZE = MAX_CHUNK  # the largest a chunk may be (PROTOCOL.md §7)
_PREFIX_BLOCK = 1 << 20
DEFAULT_MAX_FETCHES = 32
#: Of those, the most one requester (a token's ``sub``) may hold at once.
DEFAULT_MAX_FETCHES_PER_REQUESTER = 4


#: What checks a token's binding: ``(principal, client certificate or None)``, raising
#: :class:`~netproto.errors.TokenInvalid` when the token may not be used on this connection.
TokenCheck = Callable[[Principal, x509.Certificate | None], None]


class FileChanged(Busy):
    """The file changed while it was being sent; the requester may fetch it again."""

    default_message = "the file changed during the transfer; fetch it again"


class ReadTooSlowly(Timeout):
    """The requester took the stream more slowly than the serving floor; its slot is freed."""

    default_message = "the transfer was read too slowly; fetch it again"


class FetchSlots:
    """The transfers a peer serves at once: ``total`` in all, ``per_requester`` for one user,
    so no single user can hold every slot."""

    def __init__(self, total: int, per_requester: int) -> None:
        self.total = total
        self.per_requester = per_requester
        self.active = 0
        self._by_requester: dict[str, int] = {}

    def acquire(self, requester: str) -> None:
        """Take a slot for ``requester``; :class:`Busy` (``retry_after``) when none is free."""
        if self.active >= self.total:
            raise Busy("too many transfers in progress", retry_after=1)
        held = self._by_requester.get(requester, 0)
        if held >= self.per_requester:
            raise Busy(
                f"{held} transfers of yours in progress here, the most one user may have",
                retry_after=1,
            )
        self.active += 1
        self._by_requester[requester] = held + 1

    def release(self, requester: str) -> None:
        """Give back a slot of ``requester``."""
        self.active -= 1
        held = self._by_requester.pop(requester, 0) - 1
        if held > 0:
            self._by_requester[requester] = held

    def held_by(self, requester: str) -> int:
        """Slots ``requester`` holds now."""
        return self._by_requester.get(requester, 0)


@dataclass
class PeerService:
    """What the handlers need: the share, this peer's name and signing key, the fetch slots,
    and the floor a requester must read a transfer at (measured on ``clock``)."""

    share: ShareStore
    domain_name: str
    signing_key: Ed25519PrivateKey
    max_fetches: int = DEFAULT_MAX_FETCHES
    max_fetches_per_requester: int = DEFAULT_MAX_FETCHES_PER_REQUESTER
    pace: PacePolicy = field(default_factory=PacePolicy)
    clock: Clock = SYSTEM_CLOCK
    #: Checks a request's token against the client certificate of its connection (RFC 8705
    #: binding, PROTOCOL.md §8): raises ``TOKEN_INVALID`` for a token bound to another
    #: certificate, or not bound at all. None checks nothing (a handler test).
    check_token: TokenCheck | None = None
    slots: FetchSlots = field(init=False)
    #: Signed manifests of the shared files by version (PROTOCOL.md §4.8).
    manifests: ManifestCache = field(init=False)

    def __post_init__(self) -> None:
        self.slots = FetchSlots(self.max_fetches, self.max_fetches_per_requester)
        self.manifests = ManifestCache(self.domain_name, self.signing_key)

    def requester(self, ctx: RequestContext) -> str:
        """The requester, once its token is shown to be bound to this connection's certificate."""
        assert ctx.principal is not None
        if self.check_token is not None:
            self.check_token(ctx.principal, ctx.peer_cert)
        return ctx.principal.subject

    @property
    def active_fetches(self) -> int:
        """Transfers being served now."""
        return self.slots.active

    async def handle_list(self, ctx: RequestContext, req: KeywordRequest) -> list[str]:
        """``list``: the file names under a keyword (matched case-insensitively)."""
        self.requester(ctx)
        try:
            names = await asyncio.to_thread(self.share.list_files, req.keyword)
        except ShareError as exc:
            raise wire_error(exc) from exc
        return fit_list_reply(names)

    async def handle_fetch(self, ctx: RequestContext, req: FetchRequest) -> StreamReply:
        """``fetch``: a header, the file from ``offset`` in chunks, a signed trailer."""
        requester = self.requester(ctx)
        self.slots.acquire(requester)
        try:
            opened = await self._open(req.keyword, req.file_name)
        except BaseException:
            self.slots.release(requester)
            raise
        size = opened.identity.size
        if req.offset > size:
            opened.close()
            self.slots.release(requester)
            raise BadRequest(f"offset: past the end of the file ({size} bytes)")
        transfer = _Transfer(self, opened, req, requester)
        header = FetchHeader(req.keyword, req.file_name, size, req.offset)
        return StreamReply(header, transfer.chunks(), transfer.trailer)

    async def _open(self, keyword: str, file_name: str) -> ShareFile:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self.share.open_file, keyword, file_name)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_close_unwanted)  # the open still completes in its thread
            raise
        except ShareError as exc:
            raise wire_error(exc) from exc


#: Room left in a frame for the reply envelope around a list of names.
_LIST_BUDGET = DEFAULT_MAX_FRAME - 1024


def fit_list_reply(names: list[str], budget: int = _LIST_BUDGET) -> list[str]:
    """The first names (in the given, sorted order) whose encoding fits in one reply frame.

    PROTOCOL.md §4.6: a folder too large for one frame is listed in part rather than not at
    all; ``search`` on the index, which has its own bound, names every file that was synced.
    """
    used = 5  # the array header, at most
    for count, name in enumerate(names):
        used += len(name.encode("utf-8", "surrogateescape")) + 3  # str header, at most
        if used > budget:
            log.info("list reply truncated to %d of %d names", count, len(names))
            return names[:count]
    return names


def _close_unwanted(future: asyncio.Future[ShareFile]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


class _Transfer:
    """One fetch in progress: reads, hashes and yields the file, then signs the trailer.

    A resumed fetch (``offset > 0``) of a file whose digest the share's cache holds for this
    very version is not hashed at all: ``offset = size`` costs a ``stat``, not a read of the
    whole file. The requester must take the chunks at the service's floor (``pace``), or the
    stream ends with ``TIMEOUT`` and the slot is freed.
    """

    def __init__(self, service: PeerService, opened: ShareFile, req: FetchRequest, sub: str):
        self.service = service
        self.opened = opened
        self.req = req
        self.requester = sub
        self.cached = service.share.cached_digest(opened) if req.offset else None
        self.sha256 = hashlib.sha256() if self.cached is None else None
        self.digest: bytes | None = None

    def _read_hashed(self, pos: int, length: int) -> bytes:
        data = self.opened.read(pos, length)
        if self.sha256 is not None:
            self.sha256.update(data)
        return data

    def _hash_prefix(self, length: int) -> None:
        pos = 0
        while pos < length:
            block = self._read_hashed(pos, min(_PREFIX_BLOCK, length - pos))
            if not block:
                raise FileChanged()
            pos += len(block)

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        size = self.opened.identity.size
        clock = self.service.clock
        # The thread work in progress, if any: the descriptor is closed only once it is done.
        pending: ThreadJob[Any] | None = None
        try:
            if self.sha256 is not None and self.req.offset:
                pending = ThreadJob(self._hash_prefix, self.req.offset, pool=SERVING)
                await pending
                pending = None
            pos = self.req.offset
            meter = PaceMeter(self.service.pace, clock.monotonic(), size - pos)
            if pos < size:
                want = min(READ_BLOCK, size - pos)
                pending = ThreadJob(self._read_hashed, pos, want, pool=SERVING)
            while pending is not None:
                data = await pending
                pending = None
                if not data:
                    raise FileChanged()  # shorter than when it was opened
                pos += len(data)
                if pos < size:
                    # Read the next block while this one is encrypted and sent.
                    want = min(READ_BLOCK, size - pos)
                    pending = ThreadJob(self._read_hashed, pos, want, pool=SERVING)
                view = memoryview(data)
                for start in range(0, len(data), CHUNK_SIZE):
                    chunk = view[start : start + CHUNK_SIZE]
                    yield chunk
                    # Resumed once the connection took the chunk: the reader's pace.
                    if meter.update(clock.monotonic(), len(chunk)) is not None:
                        log.info("fetch by %s read too slowly: %s", self.requester, meter.failure)
                        raise ReadTooSlowly(
                            f"the transfer was read too slowly ({meter.failure}); fetch it again"
                        )
            if pos != size or self.opened.current_identity() != self.opened.identity:
                raise FileChanged()
            if self.sha256 is not None:
                self.digest = self.sha256.digest()
                self.service.share.remember(self.opened, self.opened.identity, self.digest)
            else:
                self.digest = self.cached
        finally:
            self.service.slots.release(self.requester)
            self._close_after(pending)

    def _close_after(self, pending: ThreadJob[Any] | None) -> None:
        # A read may still run in a worker thread (even after the task awaiting it was
        # cancelled): close the descriptor only once the thread is done with it.
        if pending is None:
            self.opened.close()
        else:
            pending.when_finished(self.opened.close)

    def trailer(self) -> FetchTrailer:
        assert self.digest is not None
        service, req = self.service, self.req
        size = self.opened.identity.size
        payload = fetch_signing_payload(
            signer=service.domain_name,
            requester=self.requester,
            keyword=req.keyword,
            file_name=req.file_name,
            size=size,
            sha256=self.digest,
            nonce=req.nonce,
        )
        signature = sign_fetch(service.signing_key, payload)
        return FetchTrailer(size, self.digest, req.nonce, signature, service.domain_name)


Handler = Callable[[PeerService, RequestContext, Any], Awaitable[Any]]

#: The operations a peer serves: op name → (body parser, handler). PROTOCOL.md §4.
HANDLERS: Mapping[str, tuple[Callable[[dict[str, Any]], Any], Handler]] = {
    "list": (KeywordRequest.from_wire, PeerService.handle_list),
    "fetch": (FetchRequest.from_wire, PeerService.handle_fetch),
    "manifest": (ManifestRequest.from_wire, handle_manifest),
    "fetch_range": (RangeRequest.from_wire, handle_fetch_range),
}


def operations(service: PeerService) -> dict[str, Operation[Any]]:
    """The handler table bound to one service, as :class:`netproto.server.Server` takes it."""
    return {
        op: Operation(parse, functools.partial(handler, service), needs_token=True)
        for op, (parse, handler) in HANDLERS.items()
    }


def peer_ssl_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The peer server's TLS context: TLS 1.3, and a CA-issued client certificate required."""
    return server_context(cert, key, ca, require_client_cert=True)


#: A peer's default write high-water mark (PROTOCOL.md §6 has 4 MiB for servers in general).
#: A fetch keeps its connection's output at the mark, as ciphertext waiting for the socket;
#: 1 MiB instead of 4 cuts the serving peer's memory per fetch from about 27 MiB to 6 MiB,
#: at the same speed (BENCHMARKS.md).
PEER_WRITE_HIGH_WATER = 1 << 20


def make_server(
    service: PeerService,
    ssl_context: ssl.SSLContext,
    authenticate: Authenticator,
    limits: ServerLimits | None = None,
) -> Server:
    """A :class:`Server` serving ``list`` and ``fetch`` for ``service``."""
    limits = limits or ServerLimits()
    if limits.write_high_water == ServerLimits.write_high_water:  # the general default
        limits = dataclasses.replace(limits, write_high_water=PEER_WRITE_HIGH_WATER)
    return Server(
        operations(service),
        ssl_context,
        authenticate=authenticate,
        limits=limits,
        name=f"peerd {service.domain_name}",
    )


__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_MAX_FETCHES",
    "DEFAULT_MAX_FETCHES_PER_REQUESTER",
    "HANDLERS",
    "FetchSlots",
    "FileChanged",
    "PeerService",
    "ReadTooSlowly",
    "TokenCheck",
    "make_server",
    "operations",
    "peer_ssl_context",
    "wire_error",
]
