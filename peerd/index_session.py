"""A peer's session with the index: log in, publish the share, keep alive, recover.

:class:`IndexSession` connects (through an injected ``connect``, so a test can hand it a fake
index), registers and logs in, syncs the listing, and then — in :meth:`IndexSession.maintain`
— renews the token before it expires, pings so search keeps listing the peer, reconnects and
re-syncs when the connection drops. Time comes from an injected :class:`~peerd.clock.Clock`.

Failures of the session itself are :class:`~peerd.errors.SessionError` subclasses chained to
their cause: :class:`~peerd.errors.IndexUnavailable`, :class:`~peerd.errors.IndexUntrusted`,
:class:`~peerd.errors.LoginRefused`, ... Turning one into a start-up error is the daemon's
business, in ``start()`` only.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from cryptography import x509

from netproto.errors import (
    AuthFailed,
    ConnectionClosed,
    Forbidden,
    NotFound,
    P2PError,
    RateLimited,
    RemoteProtocolError,
    RequestError,
    Timeout,
    TokenExpired,
    TokenInvalid,
    UnknownOp,
    UserExists,
    VersionMismatch,
)
from netproto.operations import (
    AuthReply,
    ByeReply,
    PingReply,
    SearchHit,
    SharedFile,
    SyncDeltaRequest,
    SyncReply,
)
from netproto.tokens import TokenVerifier
from peerd.clock import SYSTEM_CLOCK, Clock
from peerd.errors import (
    DomainRefused,
    IndexUnavailable,
    IndexUntrusted,
    LoginRefused,
    RegistrationRefused,
    SessionError,
    ShareTooLarge,
)
from peerd.listing import diff_listing
from peerd.session import SyncReport

log = logging.getLogger(__name__)

DEFAULT_PING_INTERVAL = 30.0  # well under indexd's default --peer-ttl of 120 s
REAUTH_FRACTION = 0.8
MAX_BACKOFF = 60.0


class IndexLink(Protocol):
    """A connection to the index (what :class:`peerd.client.IndexClient` is)."""

    @property
    def closed(self) -> bool:
        """True once the connection has failed or been closed."""
        ...

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate the index presented (its key signs the tokens)."""
        ...

    async def register(self, username: str, password: str) -> str:
        """Create a user."""
        ...

    async def auth(self, username: str, password: str) -> AuthReply:
        """Log in."""
        ...

    async def renew(self, token: str) -> AuthReply:
        """Fresh tokens for the session, with its current certificate-bound ``token``."""
        ...

    async def sync(
        self,
        domain_name: str,
        port_number: int,
        files: Iterable[SharedFile],
        address: str | None = None,
    ) -> int:
        """Replace this peer's listing."""
        ...

    async def sync_listing(
        self,
        domain_name: str,
        port_number: int,
        files: Iterable[SharedFile],
        address: str | None = None,
    ) -> SyncReply:
        """Replace this peer's listing; the reply carries its new version."""
        ...

    async def sync_delta(self, request: SyncDeltaRequest) -> SyncReply:
        """Change this peer's listing at version ``request.base`` (PROTOCOL.md §4.3.1)."""
        ...

    async def search(self, keyword: str) -> list[SearchHit]:
        """Peers holding files under ``keyword``."""
        ...

    async def ping(self, domain_name: str) -> PingReply:
        """Refresh this peer's liveness."""
        ...

    async def bye(self, domain_name: str) -> ByeReply:
        """Withdraw this peer's listing."""
        ...

    async def close(self) -> None:
        """Close the connection."""
        ...


def certificate_untrusted(exc: BaseException) -> bool:
    """True when ``exc`` was caused by a TLS certificate that failed verification."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


class IndexSession:
    """This peer's session with the index; every index call goes through the one lock."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[IndexLink]],
        *,
        where: str,
        domain_name: str,
        username: str,
        password: str,
        advertise_address: str | None = None,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        reauth_fraction: float = REAUTH_FRACTION,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._connect_link = connect
        self.where = where  # "host:port", for messages
        self.domain_name = domain_name
        self.username = username
        self._password = password
        self.advertise_address = advertise_address
        self.ping_interval = ping_interval
        self.reauth_fraction = reauth_fraction
        self.clock = clock
        self.index: IndexLink | None = None
        self.verifier: TokenVerifier | None = None
        self.token: str | None = None
        #: The token for peers (bound to our certificate, like the index token): what
        #: ``list`` and ``fetch`` carry (PROTOCOL.md §8).
        self.peer_token: str | None = None
        self.expires_at: float | None = None
        self.reauth_at = 0.0
        #: What the index lists for this peer, as of the last successful sync.
        self.listed: list[SharedFile] = []
        self.last_sync: float | None = None
        self.last_ping: float | None = None
        #: The version of ``listed`` the index last acknowledged (None: send it whole).
        self.version: int | None = None
        #: False once the index answered that it does not know ``sync_delta``.
        self.delta_supported = True
        #: What the last sync sent.
        self.last_report: SyncReport | None = None
        self._interval = ping_interval
        self.lock = asyncio.Lock()

    @property
    def ping_every(self) -> float:
        """Seconds between pings: under a third of the index's peer TTL once it is known."""
        return self._interval

    @property
    def connected(self) -> bool:
        """True while the connection to the index is up."""
        return self.index is not None and not self.index.closed

    # --- the steps ----------------------------------------------------------------------

    async def connect(self) -> IndexLink:
        """A fresh connection to the index, replacing the old one; its key checks tokens."""
        try:
            index = await self._connect_link()
        except (ConnectionClosed, Timeout) as exc:
            if certificate_untrusted(exc):
                raise IndexUntrusted(
                    f"the index at {self.where} presented a certificate we do not trust"
                    f" (not from our CA, or not for its name): {exc}"
                ) from exc
            raise IndexUnavailable(f"cannot reach the index at {self.where}: {exc}") from exc
        old, self.index = self.index, index
        if old is not None:
            await old.close()
        try:
            # Tokens are checked against the certificate the index presented just now (its
            # chain and name checked by TLS), so a renewed index certificate is picked up.
            self.verifier = TokenVerifier(index.certificate)
        except ValueError as exc:
            raise IndexUntrusted(
                f"the index at {self.where} has an unusable certificate: {exc}"
            ) from exc
        return index

    async def register(self, index: IndexLink) -> None:
        """Create the user (an existing one is fine)."""
        try:
            await index.register(self.username, self._password)
            log.info("registered user %s", self.username)
        except UserExists:
            log.info("user %s already exists", self.username)
        except RequestError as exc:
            raise RegistrationRefused(f"cannot register {self.username}: {exc.message}") from exc

    async def auth(self, index: IndexLink) -> None:
        """Log in, and plan the renewal at ``reauth_fraction`` of the token's life."""
        try:
            reply = await index.auth(self.username, self._password)
        except AuthFailed as exc:
            raise LoginRefused(
                f"authentication failed for {self.username}: wrong username or password"
            ) from exc
        except RateLimited as exc:
            raise LoginRefused(
                f"too many login attempts; retry in {exc.retry_after:.0f} s"
            ) from exc
        except RequestError as exc:
            raise LoginRefused(f"the index refused the login: {exc.message}") from exc
        self._accept(reply)
        log.info("logged in as %s", self.username)

    async def renew(self, index: IndexLink) -> None:
        """Renew the session with its certificate-bound token, not the password, so a login
        lockout cannot knock a running peer off the index (PROTOCOL.md §8); log in with the
        password only without such a token, or when the index refuses it (expired, session
        ended, an index without ``renew``)."""
        if self.token is None or self.peer_token is None:
            await self.auth(index)  # no bound session (the index gave no peer token)
            return
        try:
            reply = await index.renew(self.token)
        except (TokenExpired, TokenInvalid, Forbidden, UnknownOp) as exc:
            log.info("the index would not renew the session (%s); logging in again", exc)
            await self.auth(index)
            return
        self._accept(reply)

    def _accept(self, reply: AuthReply) -> None:
        """Keep a login's or renewal's tokens; plan the next renewal."""
        now = self.clock.time()
        lifetime = max(reply.expires_at - now, 2.0)
        self.token, self.peer_token = reply.token, reply.peer_token
        self.expires_at = float(reply.expires_at)
        self.reauth_at = now + self.reauth_fraction * lifetime
        log.info("token renewed in %.0f s", self.reauth_at - now)

    async def sync(self, index: IndexLink, files: Sequence[SharedFile], port: int) -> int:
        """Replace this peer's listing at the index with ``files``; the count listed."""
        delta = diff_listing(self.listed, files)
        self.version = None  # until the index acknowledges the new listing
        try:
            reply = await index.sync_listing(self.domain_name, port, files, self.advertise_address)
        except Forbidden as exc:
            raise DomainRefused(
                f"the index refuses {self.domain_name!r} for {self.username}: {exc.message}"
            ) from exc
        except ValueError as exc:
            raise ShareTooLarge(f"the share is too large to sync: {exc}") from exc
        self.listed = list(files)
        self.version = reply.version
        self.last_sync = self.last_ping = self.clock.time()
        self.last_report = SyncReport(
            reply.files,
            len(delta.added),
            len(delta.changed),
            len(delta.removed),
            sent=len(self.listed),
            full=True,
            at=self.last_sync,
        )
        log.info("synced %d files (the whole listing)", reply.files)
        return reply.files

    async def update(self, index: IndexLink, files: Sequence[SharedFile], port: int) -> SyncReport:
        """Bring the index's listing to ``files``, sending only what changed when it can.

        Only the added, changed and removed entries go, against the version the index last
        acknowledged (PROTOCOL.md §4.3.1); nothing goes when nothing changed. The whole
        listing goes when there is no acknowledged version, when the index holds another one
        (``VERSION_MISMATCH``) or does not know ``sync_delta``, or when the changes do not fit
        in one frame.
        """
        files = list(files)
        if self.version is not None and self.delta_supported:
            delta = diff_listing(self.listed, files)
            if not delta:
                return SyncReport(len(files), full=False, at=self.clock.time())
            request = SyncDeltaRequest(
                self.domain_name,
                port,
                self.version,
                delta.put,
                delta.removed,
                self.advertise_address,
            )
            if request.fits():
                try:
                    reply = await index.sync_delta(request)
                except VersionMismatch:
                    log.info("the index holds another version of our listing; sending it whole")
                except UnknownOp:
                    log.info("the index does not take incremental syncs; sending it whole")
                    self.delta_supported = False
                except Forbidden as exc:
                    raise DomainRefused(
                        f"the index refuses {self.domain_name!r} for {self.username}: {exc.message}"
                    ) from exc
                else:
                    self.listed, self.version = files, reply.version
                    self.last_sync = self.last_ping = self.clock.time()
                    self.last_report = SyncReport(
                        reply.files,
                        len(delta.added),
                        len(delta.changed),
                        len(delta.removed),
                        sent=delta.size,
                        full=False,
                        at=self.last_sync,
                    )
                    log.info("synced %d change(s); %d files listed", delta.size, reply.files)
                    return self.last_report
        await self.sync(index, files, port)
        assert self.last_report is not None
        return self.last_report

    async def ping(self, index: IndexLink, resync: Callable[[IndexLink], Awaitable[int]]) -> None:
        """Refresh our liveness; ``resync`` if the index no longer lists us."""
        try:
            reply = await index.ping(self.domain_name)
        except NotFound:
            log.info("the index no longer lists %s; syncing again", self.domain_name)
            await resync(index)
            return
        self.last_ping = self.clock.time()
        # Ping well within the index's liveness window, whatever it is configured to.
        self._interval = min(self.ping_interval, reply.ttl / 3)

    async def connected_index(self) -> IndexLink:
        """The index connection, reconnected and logged in again if it dropped (hold the lock)."""
        if self.index is not None and not self.index.closed:
            return self.index
        index = await self.connect()
        await self.renew(index)
        return index

    async def fresh_index(self) -> IndexLink:
        """The index connection with a token that is not due for renewal."""
        async with self.lock:
            index = await self.connected_index()
            if self.clock.time() >= self.reauth_at:
                await self.renew(index)
            return index

    async def search(self, keyword: str) -> list[SearchHit]:
        """Search the index (reconnecting and logging in again if needed)."""
        index = await self.fresh_index()
        return await index.search(keyword)

    # --- the upkeep ---------------------------------------------------------------------

    def next_wakeup(self, now: float) -> float:
        """When the upkeep next has work: the token renewal or the next ping."""
        next_ping = (self.last_ping or now) + self._interval
        return min(self.reauth_at, next_ping)

    async def maintain(
        self, rescan: Callable[[], Awaitable[Sequence[SharedFile]]], port: Callable[[], int]
    ) -> None:
        """Renew the token, ping, and recover from a lost connection, forever.

        ``rescan`` gives the share afresh and ``port`` the port served, for a re-sync after a
        reconnection (the index may have lost us meanwhile).
        """

        async def resync(index: IndexLink) -> int:
            return await self.sync(index, await rescan(), port())

        backoff = 1.0
        while True:
            now = self.clock.time()
            await self.clock.sleep(max(0.0, self.next_wakeup(now) - now))
            try:
                async with self.lock:
                    reconnect = not self.connected
                    index = await self.connected_index()
                    if reconnect:
                        await resync(index)
                    elif self.clock.time() >= self.reauth_at:
                        await self.renew(index)
                    if self.clock.time() >= (self.last_ping or 0) + self._interval:
                        await self.ping(index, resync)
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except (TokenExpired, TokenInvalid) as exc:
                log.info("the index refused our token (%s); logging in again", exc)
                self.reauth_at = 0.0
                await self.clock.sleep(min(backoff, 1.0))  # never a tight loop on clock skew
                backoff = min(backoff * 2, MAX_BACKOFF)
            except (P2PError, OSError) as exc:
                log.warning("index upkeep failed (%s); retrying in %.0f s", exc, backoff)
                suspect = SessionError | ConnectionClosed | Timeout | RemoteProtocolError | OSError
                if self.index is not None and isinstance(exc, suspect):
                    await self.index.close()  # reconnect on the next round
                await self.clock.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception:
                log.exception("index upkeep failed unexpectedly")
                await self.clock.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def bye(self, timeout: float) -> None:
        """Withdraw our listing, if we are connected and logged in (failures only logged)."""
        index = self.index
        if index is None or index.closed or self.token is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await index.bye(self.domain_name)
        except (P2PError, TimeoutError) as exc:
            log.warning("could not say bye to the index: %s", exc)

    async def close(self) -> None:
        """Close the connection to the index."""
        if self.index is not None:
            await self.index.close()
            self.index = None


__all__ = [
    "DEFAULT_PING_INTERVAL",
    "REAUTH_FRACTION",
    "IndexLink",
    "IndexSession",
    "certificate_untrusted",
]
