"""A peer's session with the index: log in, publish the share, keep alive, recover.

:class:`IndexSession` connects (through an injected ``connect``, so a test can hand it a fake
index), registers and logs in, syncs the listing, and then — in :meth:`IndexSession.maintain`
— renews the token before it expires, pings so search keeps listing the peer, reconnects and
re-syncs when the connection drops. Time comes from an injected :class:`~peerd.clock.Clock`.

With several index servers (:class:`IndexServers`: every address of every server given), a
request whose connection is lost, refused or times out moves the session to the next one,
where it is taken up with the same token and the request runs once more (README.md, "Several
index servers").

Failures of the session itself are :class:`~peerd.errors.SessionError` subclasses chained to
their cause: :class:`~peerd.errors.IndexUnavailable`, :class:`~peerd.errors.IndexUntrusted`,
:class:`~peerd.errors.LoginRefused`, ... Turning one into a start-up error is the daemon's
business, in ``start()`` only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

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
from peerd.client import IndexAddress, Resolver
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
#: Each back-off is shortened by up to this fraction, at random, so that peers which lost the
#: same index server do not all come back to the next one in the same instant.
BACKOFF_JITTER = 0.2

T = TypeVar("T")


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


@dataclass(frozen=True, slots=True)
class IndexCandidate:
    """One address to dial: an index server as given, and one address its host resolved to."""

    given: IndexAddress
    address: str

    def __str__(self) -> str:
        if self.address == self.given.host:
            return str(self.given)
        return f"{self.given} ({self.address})"


#: Connects to one candidate (checking the certificate against the name given, never the
#: address dialled).
Dial = Callable[[IndexCandidate], Awaitable[IndexLink]]


class IndexServers:
    """The index servers a peer may use, in the order given, and the one it is on.

    Every address each host resolves to is a candidate; a round tries each candidate once,
    from the current one on (the first, at start: README.md, "Several index servers"), or
    after :meth:`skip`, from the one after the candidate that failed. The host names are
    resolved again each round, so both are found again by what they are, never by their
    position in an earlier answer. A ``resolve`` of None dials the hosts as given.
    """

    def __init__(
        self,
        addresses: Sequence[IndexAddress],
        dial: Dial,
        *,
        resolve: Resolver | None = None,
        label: str | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("no index server")
        self.addresses = tuple(addresses)
        self._dial = dial
        self._resolve = resolve
        self._label = label
        #: The candidate connected to last (None before the first connection).
        self.current: IndexCandidate | None = None
        #: The candidate that failed and was left (:meth:`skip`): the next round starts after it.
        self.skipped: IndexCandidate | None = None
        #: The candidate whose failure ended the last failed round (for its message).
        self.last_failed: IndexCandidate | None = None

    @classmethod
    def single(cls, connect: Callable[[], Awaitable[IndexLink]], where: str) -> IndexServers:
        """One index server reached through ``connect`` (``where`` names it in messages)."""
        return cls([IndexAddress(where, 0)], lambda _candidate: connect(), label=where)

    @property
    def several(self) -> bool:
        """True when more than one index server was given."""
        return len(self.addresses) > 1

    def describe(self) -> str:
        """Every index server as given, for messages."""
        return self._label or ", ".join(str(a) for a in self.addresses)

    def where(self) -> str:
        """The index server in use (as given), else every one."""
        if self.current is None:
            return self.describe()
        return self._label or str(self.current.given)

    def skip(self) -> None:
        """The current candidate failed: the next round starts at the one after it."""
        if self.current is not None:
            self.skipped = self.current

    def _start(self, candidates: Sequence[IndexCandidate]) -> int:
        """Where a round over ``candidates`` starts: after the candidate that failed, else at
        the current one; one no longer among them gives way to its server's other addresses,
        then to the next server's."""
        anchor, after = (self.skipped, 1) if self.skipped is not None else (self.current, 0)
        if anchor is None:
            return 0
        if anchor in candidates:
            return candidates.index(anchor) + after
        rank = self.addresses.index(anchor.given)
        return next(
            (n for n, c in enumerate(candidates) if self.addresses.index(c.given) >= rank), 0
        )

    async def candidates(self) -> list[IndexCandidate]:
        """Every address of every index server, in order; hosts that do not resolve are left
        out (ConnectionClosed if none does)."""
        found: list[IndexCandidate] = []
        failure: OSError | None = None
        for given in self.addresses:
            if self._resolve is None:
                found.append(IndexCandidate(given, given.host))
                continue
            try:
                addresses = await self._resolve(given.host, given.port)
            except OSError as exc:
                log.info("cannot resolve the index server %s: %s", given, exc)
                failure = exc
                continue
            found += [IndexCandidate(given, address) for address in addresses]
        if not found:
            raise ConnectionClosed(f"cannot resolve {self.describe()}: {failure}") from failure
        return found

    async def connect(self) -> IndexLink:
        """One round: a connection to the first candidate that answers, from the current one
        on; the first untrusted certificate's error if none answers, else the last error."""
        candidates = await self.candidates()
        start = self._start(candidates)
        errors: list[tuple[IndexCandidate, ConnectionClosed | Timeout]] = []
        for step in range(len(candidates)):
            at = (start + step) % len(candidates)
            candidate = candidates[at]
            try:
                link = await self._dial(candidate)
            except (ConnectionClosed, Timeout) as exc:
                if len(candidates) > 1:
                    log.info("the index server %s does not answer: %s", candidate, exc)
                errors.append((candidate, exc))
                continue
            if self.current is not None and candidate != self.current:
                log.info("moved to the index server %s", candidate)
            elif self.current is None and len(candidates) > 1:
                log.info("using the index server %s", candidate)
            self.current, self.skipped = candidate, None
            return link
        untrusted = [(c, e) for c, e in errors if certificate_untrusted(e)]
        self.last_failed, error = untrusted[0] if untrusted else errors[-1]
        raise error


class IndexSession:
    """This peer's session with the index; every index call goes through the one lock."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[IndexLink]] | IndexServers,
        *,
        where: str | None = None,
        domain_name: str,
        username: str,
        password: str,
        advertise_address: str | None = None,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        reauth_fraction: float = REAUTH_FRACTION,
        clock: Clock = SYSTEM_CLOCK,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if isinstance(connect, IndexServers):
            self.servers = connect
        else:
            self.servers = IndexServers.single(connect, where or "the index")
        self.domain_name = domain_name
        self.username = username
        self._password = password
        self.advertise_address = advertise_address
        self.ping_interval = ping_interval
        self.reauth_fraction = reauth_fraction
        self.clock = clock
        self._jitter = jitter
        #: Lists this peer again when an index server does not know it (set by ``maintain``).
        self._resync: Callable[[IndexLink], Awaitable[int]] | None = None
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
    def where(self) -> str:
        """The index server in use ("host:port" as given), for messages."""
        return self.servers.where()

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
        """A fresh connection to the index, replacing the old one; its key checks tokens.

        With several index servers, one round over them from the current one (see
        :class:`IndexServers`); IndexUnavailable when none answers.
        """
        servers = self.servers
        try:
            index = await servers.connect()
        except (ConnectionClosed, Timeout) as exc:
            if certificate_untrusted(exc):
                failed = servers.last_failed
                where = servers.describe() if failed is None else str(failed)
                raise IndexUntrusted(
                    f"the index at {where} presented a certificate we do not trust"
                    f" (not from our CA, or not for its name): {exc}"
                ) from exc
            if servers.several:
                raise IndexUnavailable(
                    f"cannot reach any of the index servers {servers.describe()}: {exc}"
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

    async def connected_index(self, *, ping: bool = True) -> IndexLink:
        """The index connection, reconnected and logged in again if it dropped (hold the lock).

        A connection that dropped moves the session to the next index server (see
        :meth:`move_from`; ``ping=False`` when the caller lists the peer there anyway); after
        :meth:`close` (ours, not the transport's) it reconnects to the one it was on.
        """
        if self.index is None:
            index = await self.connect()
            await self.renew(index)
            return index
        if self.index.closed:
            return await self.move_from(self.index, ping=ping)
        return self.index

    async def move_from(self, failed: IndexLink, *, ping: bool = True) -> IndexLink:
        """A request on ``failed`` was lost, refused or timed out: move to the next index
        server and take the session up there (hold the lock).

        The token is valid at every index server of the deployment (renewed, or a fresh login
        if refused); listing versions are per index process, so the next sync goes whole, and
        a ping tells whether this server lists us (else the listing goes again). If another
        request moved already, its connection is the answer.
        """
        if self.index is not failed and self.index is not None and not self.index.closed:
            return self.index
        await failed.close()
        self.servers.skip()
        self.version = None
        index = await self.connect()
        await self.renew(index)
        if not ping:
            return index
        resync = self._resync
        try:
            await self.ping(index, resync if resync is not None else _listed_at_start)
        except (ConnectionClosed, Timeout):
            raise
        except P2PError as exc:  # the upkeep tries again at its next round
            log.warning("ping after moving to the index server %s failed: %s", self.where, exc)
        return index

    async def call(self, request: Callable[[IndexLink], Awaitable[T]]) -> T:
        """Run an idempotent ``request`` (search, listing, holders, ...) on the index; if its
        connection is lost, refused or times out, move to the next index server and run it
        there once more. Protocol refusals (``AUTH_FAILED``, ``FORBIDDEN``, ...) are raised
        as they come."""
        index = await self.fresh_index()
        try:
            return await request(index)
        except (ConnectionClosed, Timeout) as exc:
            log.info("the index server %s failed (%s); moving on", self.where, exc)
        async with self.lock:
            index = await self.move_from(index)
        return await request(index)

    async def publish(self, files: Sequence[SharedFile], port: int) -> SyncReport:
        """:meth:`update` the listing; if the connection is lost, refused or times out, move
        to the next index server and send the listing whole there (the start-up sync too, so
        an index server that dies during the share scan is passed over, not a failed start).

        No ping after a move: its re-sync would send the listing a second time.
        """
        async with self.lock:
            index = await self.connected_index(ping=False)
            try:
                return await self.update(index, files, port)
            except (ConnectionClosed, Timeout) as exc:
                log.info("the index server %s failed (%s); moving on", self.where, exc)
            index = await self.move_from(index, ping=False)
            return await self.update(index, files, port)

    async def fresh_index(self) -> IndexLink:
        """The index connection with a token that is not due for renewal."""
        async with self.lock:
            index = await self.connected_index()
            if self.clock.time() >= self.reauth_at:
                await self.renew(index)
            return index

    async def search(self, keyword: str) -> list[SearchHit]:
        """Search the index (reconnecting, or moving to the next index server, if needed)."""
        return await self.call(lambda index: index.search(keyword))

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

        self._resync = resync
        backoff = 1.0
        while True:
            now = self.clock.time()
            await self.clock.sleep(max(0.0, self.next_wakeup(now) - now))
            try:
                async with self.lock:
                    await self._upkeep(resync)
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except (TokenExpired, TokenInvalid) as exc:
                log.info("the index refused our token (%s); logging in again", exc)
                self.reauth_at = 0.0
                await self.clock.sleep(min(backoff, 1.0))  # never a tight loop on clock skew
                backoff = min(backoff * 2, MAX_BACKOFF)
            except (P2PError, OSError) as exc:
                delay = self.backoff(backoff)
                log.warning("index upkeep failed (%s); retrying in %.0f s", exc, delay)
                if isinstance(exc, ConnectionClosed | Timeout):
                    # The server failed: the next round moves to the next one.
                    if self.index is not None:
                        await self.index.close()
                elif isinstance(exc, SessionError | RemoteProtocolError | OSError):
                    # A refusal (FORBIDDEN, RATE_LIMITED, ...) or a bad answer is no reason to
                    # leave the server: the next round reconnects to the same one.
                    await self.close()
                await self.clock.sleep(delay)
                backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception:
                log.exception("index upkeep failed unexpectedly")
                await self.clock.sleep(self.backoff(backoff))
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _upkeep(self, resync: Callable[[IndexLink], Awaitable[int]]) -> None:
        """One round of upkeep (hold the lock): reconnect and list again, renew, ping; a
        request lost on an established connection moves to the next index server at once."""
        reconnect = not self.connected
        index = await self.connected_index(ping=not reconnect)  # the re-sync refreshes us
        try:
            if reconnect:
                await resync(index)
            elif self.clock.time() >= self.reauth_at:
                await self.renew(index)
            if self.clock.time() >= (self.last_ping or 0) + self._interval:
                await self.ping(index, resync)
        except (ConnectionClosed, Timeout) as exc:
            log.info("the index server %s failed (%s); moving on", self.where, exc)
            index = await self.move_from(index, ping=not reconnect)  # renews, pings there
            if reconnect:
                await resync(index)

    def backoff(self, seconds: float) -> float:
        """``seconds`` (at most a minute), shortened at random by up to a fifth."""
        return min(seconds, MAX_BACKOFF) * (1.0 - BACKOFF_JITTER * self._jitter())

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


async def _listed_at_start(index: IndexLink) -> int:
    """Before the upkeep runs, the daemon's start lists the peer itself."""
    log.info("this index server does not list us yet; the start-up sync will")
    return 0


__all__ = [
    "BACKOFF_JITTER",
    "DEFAULT_PING_INTERVAL",
    "REAUTH_FRACTION",
    "Dial",
    "IndexCandidate",
    "IndexLink",
    "IndexServers",
    "IndexSession",
    "certificate_untrusted",
]
