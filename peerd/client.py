"""The client library: talk to the index (:class:`IndexClient`) and to peers (:class:`PeerClient`).

Everything here is typed and async and never prints; the shell and scripts build on it. Errors
are the wire's typed errors (:mod:`netproto.errors`), rebuilt on this side of the connection;
a reply, stream header or trailer that is not what PROTOCOL.md says is the other side's fault
and raises :class:`~netproto.errors.RemoteProtocolError` (never the ``BAD_REQUEST`` a server
answers to *our* malformed request). Downloads, with every check of PROTOCOL.md §7, live in
:mod:`peerd.download`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from cryptography import x509

from netproto.client import Connection, ResponseStream
from netproto.enrollment import EnrollReply, EnrollRequest, RevokedReply, RevokedRequest
from netproto.errors import (
    AuthRequired,
    BadRequest,
    LocalProtocolError,
    NotFound,
    RemoteProtocolError,
    RequestError,
)
from netproto.manifest import ManifestReply, ManifestRequest, RangeHeader, RangeRequest
from netproto.names import canonical_domain_name
from netproto.operations import (
    MAX_CHUNK,
    AuthReply,
    ByeReply,
    Credentials,
    FetchHeader,
    FetchRequest,
    FetchTrailer,
    HoldersReply,
    KeywordRequest,
    ListingReply,
    ListingRequest,
    PeerRequest,
    PingReply,
    RegisterReply,
    SearchHit,
    SearchReply,
    SearchRequest,
    SharedFile,
    SyncDeltaRequest,
    SyncReply,
    list_reply_from_wire,
    split_sync,
)
from netproto.tls import client_context

log = logging.getLogger(__name__)

DEFAULT_INDEX_PORT = 7000  # indexd's default --port
DEFAULT_INDEX_NAME = "indexd"  # the index's certificate name when it is dialled by address
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_REQUEST_TIMEOUT = 30.0
#: How far :meth:`IndexClient.search` follows the index's pages (PROTOCOL.md §4.2): pages of
#: hits, and files per hit (the first ones come with the hit, the rest through ``listing``).
MAX_SEARCH_PAGES = 16
MAX_FILES_PER_HIT = 1000
#: The most index servers ``-index_server_name`` may list (README.md, "Several index servers").
MAX_INDEX_SERVERS = 16

#: Where a token comes from: a fixed string, or a function returning the current one (the
#: daemon re-authenticates before expiry, so long-lived peer connections ask it each time).
TokenSource = str | Callable[[], str]


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """The deployment's CA certificate, and this peer's certificate and key (if any)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def client_context(self) -> ssl.SSLContext:
        """A TLS 1.3 client context presenting this certificate (when given)."""
        return client_context(self.ca, self.cert, self.key)


def index_tls_name(host: str, explicit: str | None = None) -> str:
    """The DNS name the index's certificate must carry.

    Always a DNS name: ``explicit`` if given, else ``host`` when it is a name, else
    :data:`DEFAULT_INDEX_NAME`. Never an IP address: every certificate of a deployment may
    carry the loopback addresses, so an IP check would accept any peer as the index — and the
    index is who receives the password and whose key signs every token.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        candidate = explicit or host
    else:
        candidate = explicit or DEFAULT_INDEX_NAME
    try:
        return canonical_domain_name(candidate)
    except BadRequest as exc:
        raise ValueError(f"{candidate!r} is not a DNS name for the index") from exc


def parse_host_port(value: str, default_port: int = DEFAULT_INDEX_PORT) -> tuple[str, int]:
    """Split ``HOST[:PORT]`` (``[v6]:PORT`` for IPv6 literals); raise ValueError if malformed."""
    value = value.strip()
    if not value:
        raise ValueError("empty address")
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"malformed address {value!r}")
        ipaddress.IPv6Address(host)
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"malformed address {value!r}")
        port_text = rest[1:]
    elif value.count(":") > 1:
        ipaddress.IPv6Address(value)  # a bare IPv6 literal, no port
        return value, default_port
    else:
        host, sep, port_text = value.partition(":")
        if not host:
            raise ValueError(f"malformed address {value!r}")
        if not sep:
            return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {value!r}")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class IndexAddress:
    """One index server as given: a host (DNS name or IP literal) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_index_addresses(
    value: str, default_port: int = DEFAULT_INDEX_PORT
) -> tuple[IndexAddress, ...]:
    """Split ``HOST[:PORT],HOST[:PORT],...`` into index addresses, in the order given.

    Each entry is what :func:`parse_host_port` takes (``[v6]:PORT`` for IPv6 literals); an
    empty entry, the same address twice, or more than :data:`MAX_INDEX_SERVERS` is a
    ValueError.
    """
    entries = value.split(",")
    if len(entries) > MAX_INDEX_SERVERS:
        raise ValueError(f"at most {MAX_INDEX_SERVERS} index servers, not {len(entries)}")
    addresses: list[IndexAddress] = []
    for number, entry in enumerate(entries, 1):
        if not entry.strip():
            raise ValueError(f"entry {number} of {value!r} is empty")
        address = IndexAddress(*parse_host_port(entry, default_port))
        if address in addresses:
            raise ValueError(f"{address} is listed twice")
        addresses.append(address)
    return tuple(addresses)


#: Turns an index server's host into the addresses to dial (each one a candidate).
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


async def resolve_host(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to for TCP, in the resolver's order, each once; an IP
    literal is itself. A failed lookup is OSError (``socket.gaierror``)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [host]
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


T = TypeVar("T")


def parse_reply(parse: Callable[[Any], T], body: Any, what: str) -> T:
    """``parse(body)``, where a malformed ``body`` is the other side's fault.

    The typed messages raise the wire's errors (``BAD_REQUEST``, ``INVALID_PATH``) because a
    server parses requests with them; here they parse what the other side *sent us*.
    """
    try:
        return parse(body)
    except RequestError as exc:
        raise RemoteProtocolError(f"{what} is malformed: {exc.message}") from exc


def _token(source: TokenSource | None) -> str:
    if source is None:
        raise AuthRequired("not authenticated: call auth() first")
    return source if isinstance(source, str) else source()


class IndexClient:
    """A connection to the index: register, auth, renew, sync, search, listing, ping, bye."""

    def __init__(self, conn: Connection, server_hostname: str) -> None:
        self.conn = conn
        self.server_hostname = server_hostname
        self.username: str | None = None
        self.token: str | None = None
        self.peer_token: str | None = None
        self.expires_at: int | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        *,
        server_hostname: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> IndexClient:
        """Connect to the index at ``host:port``, checking its certificate names
        ``server_hostname`` (default: see :func:`index_tls_name`)."""
        name = index_tls_name(host, server_hostname)
        conn = await Connection.open(
            host,
            port,
            ssl_context,
            server_hostname=name,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
        )
        return cls(conn, name)

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate the index presented (chain and host name checked by TLS)."""
        return self.conn.peer_certificate

    @property
    def closed(self) -> bool:
        """True once the connection has failed or been closed."""
        return self.conn.closed

    async def register(self, username: str, password: str) -> str:
        """Create a user; returns the canonical (lower-case) username."""
        body = Credentials(username, password).to_wire()
        reply = await self.conn.request("register", body)
        return parse_reply(RegisterReply.from_wire, reply, "the index's register reply").username

    async def auth(self, username: str, password: str) -> AuthReply:
        """Log in; the token is kept for the calls that need one."""
        creds = Credentials(username.lower(), password)
        body = await self.conn.request("auth", creds.to_wire())
        reply = parse_reply(AuthReply.from_wire, body, "the index's auth reply")
        self.username = creds.username
        self.token, self.peer_token, self.expires_at = (
            reply.token,
            reply.peer_token,
            reply.expires_at,
        )
        return reply

    async def renew(self, token: str | None = None) -> AuthReply:
        """Fresh tokens for this session, with a certificate-bound index token (``token``, or
        the one kept) instead of the password (PROTOCOL.md §8); they replace the ones kept."""
        body = await self.conn.request("renew", {}, _token(token or self.token))
        reply = parse_reply(AuthReply.from_wire, body, "the index's renew reply")
        self.token, self.peer_token, self.expires_at = (
            reply.token,
            reply.peer_token,
            reply.expires_at,
        )
        return reply

    async def enroll(self, domain_name: str, csr: bytes, token: str | None = None) -> EnrollReply:
        """A certificate for ``domain_name`` from a DER PKCS#10 request (PROTOCOL.md §10)."""
        body = EnrollRequest(domain_name, csr).to_wire()
        reply = await self.conn.request("enroll", body, _token(token or self.token))
        return parse_reply(EnrollReply.from_wire, reply, "the index's enroll reply")

    async def revoked(self, token: str | None = None) -> frozenset[str]:
        """The serials the index says are revoked and not yet expired (PROTOCOL.md §10)."""
        serials: set[str] = set()
        after: str | None = None
        while True:  # page by page: the index never cuts the list silently
            body = RevokedRequest(after).to_wire()
            reply = await self.conn.request("revoked", body, _token(token or self.token))
            page = parse_reply(RevokedReply.from_wire, reply, "the index's revoked reply")
            serials.update(page.serials)
            if not page.more:
                return frozenset(serials)
            if after is not None and page.serials[-1] <= after:
                raise RemoteProtocolError("the index's revoked pages do not advance")
            after = page.serials[-1]

    async def sync(
        self,
        domain_name: str,
        port_number: int,
        files: Iterable[SharedFile],
        address: str | None = None,
    ) -> int:
        """Replace this peer's listing; a share too large for one frame goes in parts."""
        return (await self.sync_listing(domain_name, port_number, files, address)).files

    async def sync_listing(
        self,
        domain_name: str,
        port_number: int,
        files: Iterable[SharedFile],
        address: str | None = None,
    ) -> SyncReply:
        """Replace this peer's listing (in parts if it must); the last reply, with the new
        listing's version."""
        token = _token(self.token)
        last = SyncReply(0)
        for part in split_sync(domain_name, port_number, files, address):
            reply = await self.conn.request("sync", part.to_wire(), token)
            last = parse_reply(SyncReply.from_wire, reply, "the index's sync reply")
        return last

    async def sync_delta(self, request: SyncDeltaRequest) -> SyncReply:
        """Send only the changes to this peer's listing at ``request.base`` (PROTOCOL.md
        §4.3.1); ``VersionMismatch`` if the index holds another version."""
        reply = await self.conn.request("sync_delta", request.to_wire(), _token(self.token))
        return parse_reply(SyncReply.from_wire, reply, "the index's sync_delta reply")

    async def search(
        self,
        keyword: str,
        *,
        max_pages: int = MAX_SEARCH_PAGES,
        max_files_per_hit: int = MAX_FILES_PER_HIT,
    ) -> list[SearchHit]:
        """Peers holding files under ``keyword`` (case-insensitive), live ones only.

        Follows the index's pages (PROTOCOL.md §4.2) up to ``max_pages``, and completes each
        hit with ``listing`` up to ``max_files_per_hit`` files; a hit's ``total`` still says
        how many it lists when that is more.
        """
        token = _token(self.token)
        hits: list[SearchHit] = []
        cursor: bytes | None = None
        for _ in range(max_pages):
            body = SearchRequest(keyword, cursor).to_wire()
            reply = await self.conn.request("search", body, token)
            page = parse_reply(SearchReply.from_wire, reply, "the index's search reply")
            hits += page.hits
            cursor = page.cursor
            if cursor is None:
                break
        return [await self._complete(hit, keyword, max_files_per_hit) for hit in hits]

    async def _complete(self, hit: SearchHit, keyword: str, max_files: int) -> SearchHit:
        """``hit`` with its files fetched through ``listing`` up to ``max_files``."""
        files = list(hit.files)
        while len(files) < min(max_files, hit.total or 0):
            try:
                page = await self.listing(hit.domain_name, keyword, len(files))
            except NotFound:  # the peer went stale or changed its listing meanwhile
                break
            if not page.files:
                break
            files += page.files[: max_files - len(files)]
        return SearchHit(hit.domain_name, hit.port_number, hit.address, tuple(files), hit.total)

    async def listing(self, domain_name: str, keyword: str, offset: int = 0) -> ListingReply:
        """A page of one live peer's files under ``keyword``, from ``offset`` on."""
        body = ListingRequest(domain_name, keyword, offset).to_wire()
        reply = await self.conn.request("listing", body, _token(self.token))
        return parse_reply(ListingReply.from_wire, reply, "the index's listing reply")

    async def holders(self, sha256: bytes) -> HoldersReply:
        """The live peers holding this content, whatever its name or keyword (§4.9)."""
        reply = await self.conn.request("holders", {"sha256": sha256}, _token(self.token))
        return parse_reply(HoldersReply.from_wire, reply, "the index's holders reply")

    async def ping(self, domain_name: str) -> PingReply:
        """Refresh this peer's liveness; the reply says how long it now lasts (``ttl``)."""
        body = PeerRequest(domain_name).to_wire()
        reply = await self.conn.request("ping", body, _token(self.token))
        return parse_reply(PingReply.from_wire, reply, "the index's ping reply")

    async def bye(self, domain_name: str) -> ByeReply:
        """Withdraw this peer's listing (at shutdown)."""
        body = PeerRequest(domain_name).to_wire()
        reply = await self.conn.request("bye", body, _token(self.token))
        return parse_reply(ByeReply.from_wire, reply, "the index's bye reply")

    async def close(self) -> None:
        """Close the connection."""
        await self.conn.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


#: The largest chunk a fetch stream may carry (PROTOCOL.md §7).


class FetchStream:
    """A ``fetch`` answer in progress: the typed header, the chunks, then the trailer."""

    def __init__(self, stream: ResponseStream, header: FetchHeader) -> None:
        self._stream = stream
        self.header = header

    async def chunks(self, timeout: float | None = None) -> AsyncIterator[bytes | memoryview]:
        """The file's bytes from the requested offset, as they arrive.

        An empty chunk, or one over 256 KiB, is :class:`RemoteProtocolError` (PROTOCOL.md §7):
        a stream of empty chunks would otherwise never end nor make progress.
        """
        async for chunk in self._stream.chunks(timeout):
            if not 0 < len(chunk) <= MAX_CHUNK:
                self.cancel()
                raise RemoteProtocolError(
                    f"the peer sent a chunk of {len(chunk)} bytes (1 to {MAX_CHUNK} allowed)"
                )
            yield chunk

    def trailer(self) -> FetchTrailer:
        """The trailer (after the chunks); :class:`RemoteProtocolError` if malformed."""
        if self._stream.trailer is None:
            raise LocalProtocolError("the trailer was asked for before the stream ended")
        return parse_reply(FetchTrailer.from_wire, self._stream.trailer, "the peer's trailer")

    def close(self) -> None:
        """Stop listening to this stream."""
        self._stream.close()

    def cancel(self) -> None:
        """Stop listening to this stream and, unless it ended, ask the peer to stop sending
        it (PROTOCOL.md §3.1)."""
        self._stream.cancel()


class RangeStream(FetchStream):
    """A ``fetch_range`` answer in progress: the typed header, then the range's chunks."""

    def __init__(self, stream: ResponseStream, header: RangeHeader) -> None:
        self._stream = stream
        self.range = header


class PeerClient:
    """A mutual-TLS connection to one peer, verified to be ``domain_name``: list and fetch."""

    def __init__(
        self, conn: Connection, domain_name: str, *, token: TokenSource, requester: str
    ) -> None:
        self.conn = conn
        self.domain_name = domain_name
        self.requester = requester
        self._token = token

    @classmethod
    async def connect(
        cls,
        address: str,
        port: int,
        domain_name: str,
        ssl_context: ssl.SSLContext,
        *,
        token: TokenSource,
        requester: str,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> PeerClient:
        """Connect to ``address:port``; TLS checks the peer's certificate names ``domain_name``.

        ``ssl_context`` must present this peer's own certificate (peers require mutual TLS);
        ``requester`` is this user's name, the token's ``sub``, which the peer signs.
        """
        conn = await Connection.open(
            address,
            port,
            ssl_context,
            server_hostname=domain_name,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
        )
        return cls(conn, domain_name.lower(), token=token, requester=requester)

    @classmethod
    async def for_hit(
        cls,
        hit: SearchHit,
        ssl_context: ssl.SSLContext,
        *,
        token: TokenSource,
        requester: str,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> PeerClient:
        """Connect to the peer of a search hit."""
        return await cls.connect(
            hit.address,
            hit.port_number,
            hit.domain_name,
            ssl_context,
            token=token,
            requester=requester,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
        )

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate the peer presented in the TLS handshake."""
        return self.conn.peer_certificate

    @property
    def closed(self) -> bool:
        """True once the connection has failed or been closed."""
        return self.conn.closed

    async def list(self, keyword: str) -> list[str]:
        """The names of the peer's files under ``keyword``."""
        body = KeywordRequest(keyword).to_wire()
        reply = await self.conn.request("list", body, _token(self._token))
        return parse_reply(list_reply_from_wire, reply, "the peer's list reply")

    async def fetch(
        self, keyword: str, file_name: str, nonce: bytes, offset: int = 0
    ) -> FetchStream:
        """Start a fetch; returns once the header has arrived (errors are raised typed).

        A malformed header is :class:`RemoteProtocolError`: the peer is at fault, not our
        request. This is the raw operation: :func:`peerd.download.download` checks what arrives.
        """
        body = FetchRequest(keyword, file_name, nonce, offset).to_wire()
        stream = await self.conn.stream("fetch", body, _token(self._token))
        try:
            header = parse_reply(FetchHeader.from_wire, stream.header, "the peer's stream header")
        except RemoteProtocolError:
            # Unregister the stream (its chunks would otherwise fill its queue and stall every
            # other request on this connection) and tell the peer to stop sending them.
            stream.cancel()
            raise
        return FetchStream(stream, header)

    async def manifest(self, keyword: str, file_name: str) -> ManifestReply:
        """The peer's signed manifest of a file (PROTOCOL.md §4.8), its shape checked."""
        body = ManifestRequest(keyword, file_name).to_wire()
        reply = await self.conn.request("manifest", body, _token(self._token))
        return parse_reply(ManifestReply.from_wire, reply, "the peer's manifest")

    async def fetch_range(self, request: RangeRequest) -> RangeStream:
        """Start a ranged fetch (PROTOCOL.md §7.1); returns once its header has arrived."""
        stream = await self.conn.stream("fetch_range", request.to_wire(), _token(self._token))
        try:
            header = parse_reply(RangeHeader.from_wire, stream.header, "the peer's range header")
            if (header.manifest, header.offset, header.length) != (
                request.manifest,
                request.offset,
                request.length,
            ):
                raise RemoteProtocolError("the peer's range header is not the range asked for")
        except RemoteProtocolError:
            stream.cancel()
            raise
        return RangeStream(stream, header)

    async def close(self) -> None:
        """Close the connection."""
        await self.conn.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


__all__ = [
    "DEFAULT_INDEX_PORT",
    "MAX_INDEX_SERVERS",
    "FetchStream",
    "IndexAddress",
    "IndexClient",
    "PeerClient",
    "RangeStream",
    "Resolver",
    "TLSFiles",
    "TokenSource",
    "index_tls_name",
    "parse_host_port",
    "parse_index_addresses",
    "parse_reply",
    "resolve_host",
]
