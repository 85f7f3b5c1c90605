"""The peer daemon as an object: ``await PeerDaemon(config).start()``, ``.port``, ``stop()``.

It logs in to the index, serves its share (``list`` and ``fetch``) over mutual TLS, syncs the
share, and then keeps its session alive in the background (:class:`~peerd.index_session.
IndexSession`: token renewal, pings, reconnection, re-sync). ``stop()`` says ``bye`` and
drains. ``python -m peerd`` wraps it; it implements :class:`~peerd.session.PeerSession`, the
protocol the shell is written against, and its search/download helpers are the client library
with this peer's identity filled in.

Failures of the session are :class:`~peerd.errors.SessionError` subclasses; only ``start()``
turns them (and every other reason not to start) into :class:`~runner.StartupError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from certs import load_identity
from netproto.errors import ConnectionClosed, RequestError, Timeout, TokenInvalid
from netproto.names import canonical_domain_name, canonical_username
from netproto.operations import Holding, ListedFile, SearchHit, SharedFile
from netproto.server import Server, ServerLimits
from netproto.tls import certificate_dns_names, client_context
from netproto.tokens import Principal
from peerd.client import (
    IndexAddress,
    IndexClient,
    PeerClient,
    Resolver,
    index_tls_name,
    resolve_host,
)
from peerd.clock import SYSTEM_CLOCK, Clock
from peerd.control import ControlServer, ControlService, ControlSocketInUse
from peerd.download import DownloadLimits, DownloadResult, ProgressCallback, download
from peerd.enrollment import (
    DEFAULT_REVOCATION_INTERVAL,
    CertificateRenewer,
    RevocationList,
    StateFiles,
    ensure_identity,
)
from peerd.errors import SessionError, ShareError
from peerd.index_session import (
    DEFAULT_PING_INTERVAL,
    REAUTH_FRACTION,
    IndexCandidate,
    IndexLink,
    IndexServers,
    IndexSession,
)
from peerd.pacing import PacePolicy
from peerd.publish import published
from peerd.server import (
    DEFAULT_MAX_FETCHES,
    DEFAULT_MAX_FETCHES_PER_REQUESTER,
    PeerService,
    make_server,
    peer_ssl_context,
)
from peerd.session import PeerStatus, SyncReport
from peerd.share import Share
from peerd.staging import DEFAULT_PARTIAL_MAX_AGE, sweep_stale_parts
from peerd.swarm import Listing, SwarmProgress, SwarmResult
from peerd.swarmget import swarm_from_sources
from peerd.watch import DEFAULT_DELAY, DEFAULT_RESCAN_INTERVAL, ShareWatcher
from runner import StartupError
from runner.metrics import MetricsEndpoint

log = logging.getLogger(__name__)

DEFAULT_PEER_PORT = 7001
_BYE_TIMEOUT = 3.0


@dataclass(frozen=True)
class PeerConfig:
    """Everything the daemon needs; ``python -m peerd`` builds it from its flags."""

    domain_name: str
    index_host: str
    index_port: int
    username: str
    password: str = field(repr=False)
    file_directory: Path
    cert: Path
    key: Path
    ca: Path
    port: int = DEFAULT_PEER_PORT
    bind: str = "0.0.0.0"  # noqa: S104 - a peer serves other machines by design
    index_tls_name: str | None = None
    #: Every index server, in order (``-index_server_name a:7000,b:7000``); empty: only
    #: ``index_host:index_port``. A failed one is left for the next (README.md, "Several
    #: index servers").
    index_servers: tuple[IndexAddress, ...] = ()
    #: How index host names become addresses (None: the system's resolver).
    index_resolver: Resolver | None = field(default=None, repr=False)
    advertise_address: str | None = None
    register: bool = False
    ping_interval: float = DEFAULT_PING_INTERVAL
    reauth_fraction: float = REAUTH_FRACTION
    max_fetches: int = DEFAULT_MAX_FETCHES
    #: Of ``max_fetches``, the most one requester may hold (``--max-fetches-per-user``).
    max_fetches_per_requester: int = DEFAULT_MAX_FETCHES_PER_REQUESTER
    #: The floor a requester must read our transfers at (the same defaults as downloads).
    serve_pace: PacePolicy = field(default_factory=PacePolicy)
    #: What our downloads accept: the largest file, and the floor on their pace.
    download_limits: DownloadLimits = field(default_factory=DownloadLimits)
    #: Partial downloads untouched for this long are removed at start (seconds).
    partial_max_age: float = DEFAULT_PARTIAL_MAX_AGE
    limits: ServerLimits = field(default_factory=ServerLimits)
    #: Where to serve Prometheus metrics (``--metrics HOST:PORT``); None: nowhere.
    metrics: tuple[str, int] | None = None
    connect_timeout: float = 10.0
    request_timeout: float = 30.0
    #: Where the control socket of the one-shot commands goes (None: no control socket).
    state_dir: Path | None = None
    #: Watch the share and sync it by itself (``python -m peerd`` does unless ``--no-watch``).
    watch: bool = False
    rescan_interval: float = DEFAULT_RESCAN_INTERVAL
    watch_delay: float = DEFAULT_DELAY
    #: The identity is the state directory's, enrolled at the index and renewed there
    #: (PROTOCOL.md §10): ``cert``, ``key`` and ``ca`` are its files.
    enroll: bool = False
    #: What the CA must hash to before anything else is sent (``--ca-fingerprint``).
    ca_fingerprint: str | None = None
    #: At most this long between refreshes of the index's revoked serials.
    revocation_interval: float = DEFAULT_REVOCATION_INTERVAL

    @property
    def index_addresses(self) -> tuple[IndexAddress, ...]:
        """The index servers to use, in order."""
        return self.index_servers or (IndexAddress(self.index_host, self.index_port),)


def _identity(config: PeerConfig) -> tuple[x509.Certificate, Ed25519PrivateKey]:
    """Load the peer's certificate and key and check they fit together, the CA and the name."""
    try:
        cert, key, _ = load_identity(config.cert, config.key, config.ca)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc
    if config.domain_name.lower() not in certificate_dns_names(cert):
        raise StartupError(
            f"certificate {config.cert} does not name {config.domain_name!r}"
            f" (it names {', '.join(certificate_dns_names(cert)) or 'no DNS host'})"
        )
    return cert, key


class ConnectedPeer:
    """A connection to another peer whose downloads land in this peer's share."""

    def __init__(
        self,
        client: PeerClient,
        file_directory: Path,
        clock: Clock,
        limits: DownloadLimits | None = None,
    ) -> None:
        self.client = client
        self.file_directory = file_directory
        self.clock = clock
        self.limits = limits or DownloadLimits()

    @property
    def closed(self) -> bool:
        """True once the connection has failed or been closed."""
        return self.client.closed

    async def list(self, keyword: str) -> list[str]:
        """The names of the peer's files under ``keyword``."""
        return await self.client.list(keyword)

    async def download(
        self,
        keyword: str,
        file_name: str,
        *,
        expected: ListedFile | None = None,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> DownloadResult:
        """Download one file into this peer's share, verified."""
        return await download(
            self.client,
            keyword,
            file_name,
            self.file_directory,
            expected=expected,
            overwrite=overwrite,
            progress=progress,
            clock=self.clock,
            limits=self.limits,
        )

    async def close(self) -> None:
        """Close the connection."""
        await self.client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class PeerDaemon:
    """The peer daemon, in-process: ``start()``, ``port``, ``stop()`` (or ``async with``)."""

    def __init__(self, config: PeerConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.clock = clock
        #: A configuration that cannot work and why, reported by start() (start-up errors
        #: are raised there only).
        self._invalid: list[tuple[str, Exception]] = []
        try:
            self.domain_name = canonical_domain_name(config.domain_name)
            self.username = canonical_username(config.username)
        except RequestError as exc:
            self.domain_name, self.username = config.domain_name, config.username
            self._invalid.append((exc.message, exc))
        #: The DNS name each index server's certificate must carry (PROTOCOL.md §1).
        self._index_tls_names: dict[IndexAddress, str] = {}
        try:
            for address in config.index_addresses:
                self._index_tls_names[address] = index_tls_name(address.host, config.index_tls_name)
            self.index_tls_name = self._index_tls_names[config.index_addresses[0]]
        except ValueError as exc:
            self.index_tls_name = ""
            self._invalid.append((f"--index-tls-name: {exc}", exc))
        self.share = Share(config.file_directory)
        self.client_context: ssl.SSLContext | None = None
        self.service: PeerService | None = None
        self.session = IndexSession(
            IndexServers(
                config.index_addresses,
                self._connect_index,
                resolve=config.index_resolver or resolve_host,
            ),
            domain_name=self.domain_name,
            username=self.username,
            password=config.password,
            advertise_address=config.advertise_address,
            ping_interval=config.ping_interval,
            reauth_fraction=config.reauth_fraction,
            clock=clock,
        )
        self._server: Server | None = None
        self._server_ctx: ssl.SSLContext | None = None
        #: The metrics endpoint (``config.metrics``); its ``port`` is the real one.
        self.metrics: MetricsEndpoint | None = None
        self._maintainer: asyncio.Task[None] | None = None
        self.control: ControlServer | None = None
        self.watcher: ShareWatcher | None = None
        self._watching: asyncio.Task[None] | None = None
        #: One scan-and-sync at a time, so an older scan never lands after a newer one.
        self._sync_lock = asyncio.Lock()
        #: The last sync the watcher made that changed the listing.
        self.last_auto_sync: SyncReport | None = None
        #: Serials the index revoked: their holders are refused (PROTOCOL.md §10).
        self.revocations = RevocationList(
            self.session, interval=config.revocation_interval, clock=clock
        )
        self.renewer: CertificateRenewer | None = None
        self._enrollment_tasks: list[asyncio.Task[None]] = []
        #: Renewals so far, and the peer token bound to each certificate renewed away: a
        #: connection keeps the token of the certificate it presented (PROTOCOL.md §8, §10).
        self._cert_generation = 0
        self._retired_peer_tokens: dict[int, str] = {}

    # --- what the shell and scripts use (the PeerSession protocol) --------------------

    @property
    def port(self) -> int:
        """The port the peer server listens on (the real one after ``port=0``)."""
        if self._server is None:
            raise RuntimeError("the daemon is not started")
        return self._server.port

    @property
    def token(self) -> str:
        """The current token (renewed in the background before it expires)."""
        if self.session.token is None:
            raise RuntimeError("the daemon is not logged in")
        return self.session.token

    @property
    def peer_token(self) -> str:
        """The current token for peers (PROTOCOL.md §8), renewed with the index token."""
        if self.session.peer_token is None:
            raise RuntimeError("the daemon holds no token for peers")
        return self.session.peer_token

    @property
    def index(self) -> IndexLink | None:
        """The connection to the index, if there is one."""
        return self.session.index

    @property
    def file_directory(self) -> Path:
        """The shared folder (downloads land there too)."""
        return self.config.file_directory

    @property
    def shared(self) -> Sequence[SharedFile]:
        """The files the index lists for this peer (as of the last sync)."""
        return self.session.listed

    def status(self) -> PeerStatus:
        """Where the daemon stands now."""
        config, session = self.config, self.session
        return PeerStatus(
            self.domain_name,
            self.username,
            self._server.port if self._server is not None else config.port,
            session.where,
            session.connected,
            session.expires_at,
            len(session.listed),
            session.last_sync,
            session.last_ping,
            self.service.active_fetches if self.service is not None else 0,
            watching=self.watcher is not None,
            last_auto_sync=self.last_auto_sync,
        )

    async def search(self, keyword: str) -> list[SearchHit]:
        """Search the index (reconnecting and logging in again if needed)."""
        return await self.session.search(keyword)

    async def scan_share(self) -> list[SharedFile]:
        """The share as it is on disk now (scanned in a worker thread), each file with its
        manifest digest and publisher signature once the peer serves (PROTOCOL.md §4.8)."""
        files = await asyncio.to_thread(self.share.scan)
        if self.service is None:
            return files
        return await asyncio.to_thread(published, self.share, self.service.manifests, files)

    async def resync(self) -> int:
        """Scan the share again and bring the index's listing up to date; files listed."""
        return (await self.sync_share()).files

    async def sync_share(self) -> SyncReport:
        """Scan the share and send the index what changed (all of it when it must)."""
        async with self._sync_lock:
            files = await self.scan_share()
            return await self.session.publish(files, self.port)

    async def _auto_sync(self, reason: str) -> None:
        """The watcher's sync: remembered for ``status`` when it changed the listing."""
        report = await self.sync_share()
        if report.changes or report.full:
            self.last_auto_sync = report
            log.info(
                "automatic sync (%s): %d added, %d changed, %d removed; %d entries sent",
                reason,
                report.added,
                report.changed,
                report.removed,
                report.sent,
            )

    async def connect_peer(self, hit: SearchHit) -> PeerClient:
        """A mutual-TLS connection to the peer of a search hit, with this peer's token."""
        assert self.client_context is not None, "the daemon is not started"
        return await PeerClient.for_hit(
            hit,
            self.client_context,
            token=functools.partial(self._peer_token_for, self._cert_generation),
            requester=self.username,
            connect_timeout=self.config.connect_timeout,
            request_timeout=self.config.request_timeout,
        )

    async def open_peer(self, hit: SearchHit) -> ConnectedPeer:
        """A connection to the peer of a search hit, downloading into this peer's share."""
        return ConnectedPeer(
            await self.connect_peer(hit),
            self.file_directory,
            self.clock,
            self.config.download_limits,
        )

    async def holders(self, sha256: bytes) -> list[Holding]:
        """The live peers holding this content, each under its own names (PROTOCOL.md §4.9)."""

        async def holders(index: IndexLink) -> list[Holding]:
            if not isinstance(index, IndexClient):
                return []
            return list((await index.holders(sha256)).holders)

        return await self.session.call(holders)

    async def swarm_get(
        self,
        keyword: str,
        file_name: str,
        listing: Listing,
        *,
        overwrite: bool = False,
        on_progress: Callable[[SwarmProgress], None] | None = None,
    ) -> SwarmResult:
        """Download ``keyword/file_name`` from every source of ``listing`` at once, verified
        block by block (:func:`peerd.swarm.swarm_download`)."""
        return await swarm_from_sources(
            lambda s: self.connect_peer(SearchHit(s.domain_name, s.port_number, s.address, ())),
            keyword,
            file_name,
            self.file_directory,
            listing,
            overwrite=overwrite,
            on_progress=on_progress,
            limits=self.config.download_limits,
        )

    async def download(
        self,
        hit: SearchHit,
        keyword: str,
        file_name: str,
        *,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> DownloadResult:
        """Download one file of a search hit into this peer's share, verified."""
        expected = next((f for f in hit.files if f.filename == file_name), None)
        async with await self.open_peer(hit) as peer:
            return await peer.download(
                keyword, file_name, expected=expected, overwrite=overwrite, progress=progress
            )

    # --- life cycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Log in, serve the share, sync it, and start the background upkeep.

        Every reason not to start is a :class:`StartupError` with one readable line, chained
        to its cause (a :class:`SessionError` for the index session).
        """
        if self._invalid:
            message, cause = self._invalid[0]
            raise StartupError(message) from cause
        config = self.config
        if config.enroll:
            await self._enroll()
        _, key = _identity(config)
        try:
            self.client_context = client_context(config.ca, config.cert, config.key)
            self._server_ctx = peer_ssl_context(config.cert, config.key, config.ca)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"cannot set up TLS: {exc}") from exc
        try:
            await asyncio.to_thread(os.makedirs, config.file_directory, 0o755, exist_ok=True)
            await asyncio.to_thread(self.share.check)
        except OSError as exc:
            raise StartupError(
                f"cannot use {config.file_directory} as the share: {exc.strerror}"
            ) from exc
        except ShareError as exc:
            raise StartupError(str(exc)) from exc
        await self._sweep_stale_parts()
        where = self.session.where
        try:
            try:
                await self._start_session(key)
            except BaseException:
                await self._close()
                raise
        except SessionError as exc:
            raise StartupError(str(exc)) from exc
        except (ConnectionClosed, Timeout) as exc:
            raise StartupError(f"lost the connection to the index at {where}: {exc}") from exc
        except RequestError as exc:
            raise StartupError(f"the index refused: {exc.message}") from exc
        self._maintainer = asyncio.create_task(
            self.session.maintain(self.scan_share, lambda: self.port),
            name=f"peerd {self.domain_name}",
        )
        self._start_enrollment_upkeep()
        if config.state_dir is not None:
            await self._start_control(config.state_dir)
        if config.watch:
            self.watcher = ShareWatcher(
                config.file_directory,
                self._auto_sync,
                delay=config.watch_delay,
                rescan_interval=config.rescan_interval,
                clock=self.clock,
            )
            self._watching = asyncio.create_task(
                self.watcher.run(), name=f"peerd {self.domain_name} watcher"
            )
        log.info("%s serving %d files on port %d", self.domain_name, len(self.shared), self.port)

    async def _enroll(self) -> None:
        """Enroll at the index unless the state directory holds a valid identity."""
        config = self.config
        await ensure_identity(
            StateFiles(config.cert.parent),
            host=config.index_host,
            port=config.index_port,
            server_hostname=self.index_tls_name,
            domain_name=self.domain_name,
            username=self.username,
            password=config.password,
            register=config.register,
            fingerprint=config.ca_fingerprint,
            connect_timeout=config.connect_timeout,
            request_timeout=config.request_timeout,
            clock=self.clock,
        )

    def _start_enrollment_upkeep(self) -> None:
        """Refresh the revoked serials; renew an enrolled certificate when it is due."""
        tasks = [self.revocations.run()]
        if self.config.enroll:
            self.renewer = CertificateRenewer(
                StateFiles(self.config.cert.parent),
                self.session,
                self._reload_certificate,
                clock=self.clock,
            )
            tasks.append(self.renewer.run())
        self._enrollment_tasks = [asyncio.create_task(t) for t in tasks]

    def _peer_token_for(self, generation: int) -> str:
        """The peer token bound to the certificate a connection presented: the current one,
        or the one kept from before a renewal for connections opened with the old one."""
        if generation != self._cert_generation:
            kept = self._retired_peer_tokens.get(generation)
            if kept is not None:
                return kept
        return self.peer_token

    def _reload_certificate(self) -> None:
        """New connections present the renewed certificate (the key stays the same); the
        token bound to the old one is kept for the connections that presented it."""
        # called before the session takes the tokens bound to the new certificate
        old = self.session.peer_token
        if old is not None:
            self._retired_peer_tokens[self._cert_generation] = old
        self._cert_generation += 1
        # a renewal comes at two thirds of a certificate's life: a token two renewals old
        # has long expired, so only the last one is kept
        for generation in [g for g in self._retired_peer_tokens if g < self._cert_generation - 1]:
            del self._retired_peer_tokens[generation]
        config = self.config
        for context in (self.client_context, self._server_ctx):
            if context is not None:
                context.load_cert_chain(config.cert, config.key)

    async def _start_control(self, state_dir: Path) -> None:
        """Open the control socket (PROTOCOL.md §9); without it the peer runs on, warned."""
        control = ControlServer(ControlService(self), state_dir)
        try:
            await control.start()
        except (OSError, ControlSocketInUse) as exc:
            # The peer still serves and syncs; only the one-shot commands cannot reach it.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.warning("no control socket, p2pshare cannot reach this peer: %s", reason)
            return
        self.control = control

    async def _sweep_stale_parts(self) -> None:
        """Remove partial downloads nobody touched for ``partial_max_age`` seconds."""
        config = self.config
        removed = await asyncio.to_thread(
            sweep_stale_parts, config.file_directory, self.clock.time(), config.partial_max_age
        )
        for name in removed:
            log.info("removed the stale partial download %s", name)

    async def _start_session(self, key: Ed25519PrivateKey) -> None:
        config, session = self.config, self.session
        assert self._server_ctx is not None
        async with session.lock:
            index = await session.connect()
            if config.register:
                await session.register(index)
            await session.auth(index)
        files = await self.scan_share()
        self.service = PeerService(
            self.share,
            self.domain_name,
            key,
            config.max_fetches,
            config.max_fetches_per_requester,
            config.serve_pace,
            self.clock,
            self._check_binding,
        )
        self._server = make_server(
            self.service, self._server_ctx, self._authenticate_presented, config.limits
        )
        if config.metrics is not None:
            self.metrics = MetricsEndpoint(asyncio.get_running_loop())
            self.metrics.watch(self._server)
        try:
            await self._server.start(config.bind, config.port)
        except OSError as exc:
            self._server = None
            raise StartupError(
                f"cannot listen on {config.bind}:{config.port}: {exc.strerror or exc}"
            ) from exc
        if self.metrics is not None and config.metrics is not None:
            self.metrics.start(*config.metrics)
        files = await asyncio.to_thread(published, self.share, self.service.manifests, files)
        # publish, not sync: an index server lost during the (possibly long) scan is passed
        # over for the next one (README.md, "Several index servers")
        await session.publish(files, self.port)

    async def stop(self, grace: float = 5.0) -> None:
        """Say ``bye`` to the index, stop serving (transfers get ``grace`` to finish)."""
        if self.watcher is not None and self._watching is not None:
            self.watcher.stop()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._watching, 5.0)
            self.watcher = self._watching = None
        if self.control is not None:
            await self.control.close()
            self.control = None
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
            self._maintainer = None
        for task in self._enrollment_tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._enrollment_tasks = []
        await self.session.bye(_BYE_TIMEOUT)
        await self._close(grace)

    async def _close(self, grace: float = 5.0) -> None:
        if self.metrics is not None:
            metrics, self.metrics = self.metrics, None
            await asyncio.to_thread(metrics.close)
        if self._server is not None:
            await self._server.close(grace)
            self._server = None
        await self.session.close()
        await asyncio.to_thread(self.share.save_cache)

    async def __aenter__(self) -> PeerDaemon:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- the index session ----------------------------------------------------------

    def _authenticate(self, token: str) -> Principal:
        """A request's token: signed by the index, a peer token (its audience), current."""
        assert self.session.verifier is not None
        return self.session.verifier.verify(token)

    def _check_binding(self, principal: Principal, cert: x509.Certificate | None) -> None:
        """The token must be bound (RFC 8705 ``cnf``) to the client certificate presented in
        this connection's handshake; an unbound token is refused too (PROTOCOL.md §8)."""
        assert self.session.verifier is not None
        if principal.thumbprint is None:
            raise TokenInvalid("token not bound to a client certificate")
        self.session.verifier.check_binding(principal, cert)
        if self.revocations.is_revoked(cert):
            raise TokenInvalid("the client certificate is revoked")

    def _authenticate_presented(self, token: str, cert: x509.Certificate | None) -> Principal:
        """:meth:`_authenticate` and :meth:`_check_binding`: the server's authenticator, so a
        stolen token never counts as a connection's proof (PROTOCOL.md §6, §8)."""
        principal = self._authenticate(token)
        self._check_binding(principal, cert)
        return principal

    async def _connect_index(self, candidate: IndexCandidate) -> IndexClient:
        """Dial one address of an index server; TLS checks the name given for it."""
        config = self.config
        assert self.client_context is not None
        return await IndexClient.connect(
            candidate.address,
            candidate.given.port,
            self.client_context,
            server_hostname=self._index_tls_names[candidate.given],
            connect_timeout=config.connect_timeout,
            request_timeout=config.request_timeout,
        )


__all__ = [
    "DEFAULT_PEER_PORT",
    "DEFAULT_PING_INTERVAL",
    "ConnectedPeer",
    "PeerConfig",
    "PeerDaemon",
    "PeerStatus",
    "StartupError",
]
