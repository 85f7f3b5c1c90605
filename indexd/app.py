"""The index daemon as an object: ``await IndexDaemon(config).start()``, ``.port``, ``stop()``.

``python -m indexd`` wraps it; tests and the demo run it in-process. Start-up problems (files
that cannot be read, a key that does not match the certificate, a database that cannot be
opened, a port in use) raise :class:`StartupError` with a one-line message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import certs
from certs.requests import DEFAULT_CERT_TTL
from indexd.enroll import DEFAULT_REFRESH_INTERVAL, Enrollment, load_authority
from indexd.handlers import (
    DEFAULT_LIVENESS_INTERVAL,
    DEFAULT_LOOKUP_BURST,
    DEFAULT_MAX_DOMAINS_PER_USER,
    DEFAULT_MAX_FILES_PER_USER,
    DEFAULT_PEER_TTL,
    IndexService,
    IndexSettings,
)
from indexd.passwords import DEFAULT_COST, PasswordHasher
from indexd.ratelimit import BackoffPolicy, BucketPolicy
from indexd.staging import StagingLimits
from indexd.store import IndexDatabase, StoreError, open_database
from netproto.server import Server, ServerLimits
from netproto.tls import certificate_dns_names, server_context
from netproto.tokens import INDEX_AUDIENCE, TokenIssuer, TokenVerifier
from runner import StartupError
from runner.metrics import LoopGauges, MetricsEndpoint

log = logging.getLogger(__name__)

DEFAULT_PORT = 7000
DEFAULT_TOKEN_TTL = 900.0
SWEEP_INTERVAL = 30.0


@dataclass(frozen=True)
class IndexConfig:
    """Everything the daemon needs; ``python -m indexd`` builds it from its flags."""

    cert: Path
    key: Path
    ca: Path
    #: The database: a SQLite file, or a ``postgresql://`` URL (README "Database").
    db: Path | str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token_ttl: float = DEFAULT_TOKEN_TTL
    peer_ttl: float = DEFAULT_PEER_TTL
    bcrypt_cost: int = DEFAULT_COST
    bcrypt_threads: int | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    login_backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    user_backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(free=100))
    address_backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(free=100))
    register_backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(free=20))
    max_domains_per_user: int = DEFAULT_MAX_DOMAINS_PER_USER
    max_files_per_user: int = DEFAULT_MAX_FILES_PER_USER
    sync_rate: BucketPolicy = field(default_factory=BucketPolicy)
    #: ``holders`` and ``listing`` per user (PROTOCOL.md §6).
    lookup_rate: BucketPolicy = field(
        default_factory=lambda: BucketPolicy(burst=DEFAULT_LOOKUP_BURST, interval=0.05)
    )
    staging: StagingLimits = field(default_factory=StagingLimits)
    #: The CA's key: with it the index enrolls peers (PROTOCOL.md §10); None: it does not.
    ca_key: Path | None = None
    cert_ttl: float = DEFAULT_CERT_TTL
    #: How often revocations and disabled users are read from the database (``indexd admin``).
    revocation_refresh: float = DEFAULT_REFRESH_INTERVAL
    #: Where to serve Prometheus metrics (``--metrics HOST:PORT``); None: nowhere.
    metrics: tuple[str, int] | None = None
    #: With PostgreSQL: seconds between two exchanges of ping liveness (PROTOCOL.md §11).
    liveness_interval: float = DEFAULT_LIVENESS_INTERVAL


@dataclass(frozen=True)
class Identity:
    """The index's certificate, key and TLS context, checked to belong together."""

    cert: x509.Certificate
    key: Ed25519PrivateKey
    name: str
    ssl_context: ssl.SSLContext


def load_identity(cert_path: Path, key_path: Path, ca_path: Path) -> Identity:
    """Load and cross-check the index's certificate, Ed25519 key and CA."""
    try:
        cert, key, _ = certs.load_identity(cert_path, key_path, ca_path)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    names = certificate_dns_names(cert)
    if not names:
        raise StartupError(f"certificate {cert_path} names no DNS host")
    try:
        context = server_context(cert_path, key_path, ca_path, require_client_cert=False)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot set up TLS: {exc}") from None
    return Identity(cert, key, names[0], context)


def open_store(database: Path | str) -> IndexDatabase:
    """Open (creating or migrating) the database — a SQLite file, or PostgreSQL for a
    ``postgresql://`` URL — or raise :class:`StartupError` naming it (never its password)."""
    try:
        return open_database(database)
    except StoreError as exc:
        raise StartupError(str(exc)) from None


#: The index's gauges (README.md, "Operating"), named after ``indexd admin stats``'s counts.
INDEX_GAUGES = {
    "p2pshare_index_peers": "Peers (domain names) the index knows, withdrawn ones included",
    "p2pshare_index_live_peers": "Listed peers seen (sync or ping) within the peer TTL",
    "p2pshare_index_files": "Files listed by all peers",
    "p2pshare_index_peer_owners": "Users who own at least one peer",
    "p2pshare_index_revoked_sessions": "Sessions ended by bye whose tokens have not expired",
}


def index_counts(service: IndexService) -> dict[str, float]:
    """The values of :data:`INDEX_GAUGES`, from the service's memory (on its event loop)."""
    now, index = service.clock(), service.index
    return {
        "p2pshare_index_peers": len(service.owners),
        "p2pshare_index_live_peers": sum(1 for name in service.owners if index.is_live(name, now)),
        "p2pshare_index_files": sum(service.listed.values()),
        "p2pshare_index_peer_owners": len(service.domains),
        "p2pshare_index_revoked_sessions": len(service.revoked),
    }


class IndexDaemon:
    """The index daemon, in-process: ``start()``, ``port``, ``stop()`` (or ``async with``)."""

    def __init__(self, config: IndexConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.service: IndexService | None = None
        self.identity: Identity | None = None
        self._store: IndexDatabase | None = None
        self._server: Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.enrollment: Enrollment | None = None
        self._refresher: asyncio.Task[None] | None = None
        #: The metrics endpoint (``config.metrics``); its ``port`` is the real one.
        self.metrics: MetricsEndpoint | None = None

    @property
    def port(self) -> int:
        """The port the daemon listens on (the real one after ``port=0``)."""
        if self._server is None:
            raise RuntimeError("the daemon is not started")
        return self._server.port

    @property
    def name(self) -> str:
        """The index's TLS name (its certificate's first DNS name; the tokens' issuer)."""
        if self.identity is None:
            raise RuntimeError("the daemon is not started")
        return self.identity.name

    async def start(self) -> None:
        """Check the identity, open the database, load the index, and listen."""
        config = self.config
        loop = asyncio.get_running_loop()
        self.identity = identity = load_identity(config.cert, config.key, config.ca)
        authority = load_authority(config.ca, config.ca_key, config.cert_ttl)
        try:
            self._store = await loop.run_in_executor(None, open_store, config.db)
            limits = config.limits
            settings = IndexSettings(
                peer_ttl=config.peer_ttl,
                max_frame=limits.max_frame,
                login_backoff=config.login_backoff,
                user_backoff=config.user_backoff,
                address_backoff=config.address_backoff,
                register_backoff=config.register_backoff,
                max_domains_per_user=config.max_domains_per_user,
                max_files_per_user=config.max_files_per_user,
                sync_rate=config.sync_rate,
                lookup_rate=config.lookup_rate,
                staging=config.staging,
                liveness_interval=config.liveness_interval,
            )
            hasher = PasswordHasher(config.bcrypt_cost, concurrency=config.bcrypt_threads)
            issuer = TokenIssuer(identity.key, identity.name, config.token_ttl)
            # Over PostgreSQL other index servers may share the database (PROTOCOL.md §11):
            # the service asks the store (:class:`indexd.store.SharedDatabase`).
            self.service = IndexService(self._store, issuer, hasher, settings, clock=self.clock)
            await self.service.open()
            self.enrollment = Enrollment(
                self.service,
                self._store,
                authority,
                identity.cert,
                refresh_interval=config.revocation_refresh,
                clock=self.clock,
            )
            await self.enrollment.open()
            log.info("CA fingerprint: %s", authority.fingerprint)
            # Index tokens only, bound to the connection's certificate if bound at all; ended
            # sessions are checked by the handlers (a bye elsewhere ends them at once).
            verifier = TokenVerifier(identity.cert, audience=INDEX_AUDIENCE)
            self._server = Server(
                {**self.service.operations(), **self.enrollment.operations()},
                identity.ssl_context,
                authenticate=verifier.verify_presented,
                limits=limits,
                name="indexd",
            )
            if config.metrics is not None:
                self.metrics = MetricsEndpoint(loop)
                self.metrics.watch(self._server)
                service = self.service
                self.metrics.add(LoopGauges(loop, lambda: index_counts(service), INDEX_GAUGES))
            try:
                await self._server.start(config.host, config.port)
            except OSError as exc:
                self._server = None
                raise StartupError(
                    f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
                ) from None
            if self.metrics is not None and config.metrics is not None:
                self.metrics.start(*config.metrics)
        except BaseException:
            await self.stop()
            raise
        self._sweeper = asyncio.create_task(self._sweep())
        self._refresher = asyncio.create_task(self.enrollment.run())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            if self.service is not None:
                self.service.sweep()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish within ``grace``, close the database."""
        if self.metrics is not None:
            metrics, self.metrics = self.metrics, None
            await asyncio.get_running_loop().run_in_executor(None, metrics.close)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._server is not None:
            await self._server.close(grace)
            self._server = None
        if self.service is not None:
            await self.service.close()
            self.service = None
        if self._store is not None:
            store, self._store = self._store, None
            await asyncio.get_running_loop().run_in_executor(None, store.close)

    async def __aenter__(self) -> IndexDaemon:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
