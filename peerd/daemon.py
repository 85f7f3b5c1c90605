"""The peer daemon as an object: ``await PeerDaemon(config).start()``, ``.port``, ``stop()``.

It logs in to the index, serves its share (``list`` and ``fetch``) over mutual TLS, syncs the
share, and then keeps its session alive in the background: it re-authenticates before the
token expires, pings so search keeps listing it, reconnects when the index connection drops,
and re-syncs when asked. ``stop()`` says ``bye`` and drains. ``python -m peerd`` wraps it; the
shell and the tests use it in-process, and its search/download helpers are the client library
with this peer's identity filled in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from certs import load_identity
from netproto.errors import (
    AuthFailed,
    ConnectionClosed,
    Forbidden,
    NotFound,
    P2PError,
    RateLimited,
    RequestError,
    Timeout,
    TokenExpired,
    TokenInvalid,
    UserExists,
)
from netproto.names import canonical_domain_name, canonical_username
from netproto.operations import SearchHit, SharedFile
from netproto.server import Server, ServerLimits
from netproto.tls import certificate_dns_names, client_context
from netproto.tokens import Principal, TokenVerifier
from peerd.client import IndexClient, PeerClient, index_tls_name
from peerd.download import DownloadResult, ProgressCallback, download
from peerd.server import DEFAULT_MAX_FETCHES, PeerService, make_server, peer_ssl_context
from peerd.share import Share
from runner import StartupError

log = logging.getLogger(__name__)

DEFAULT_PEER_PORT = 7001
DEFAULT_PING_INTERVAL = 30.0  # well under indexd's default --peer-ttl of 120 s
REAUTH_FRACTION = 0.8
_MAX_BACKOFF = 60.0
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
    advertise_address: str | None = None
    register: bool = False
    ping_interval: float = DEFAULT_PING_INTERVAL
    reauth_fraction: float = REAUTH_FRACTION
    max_fetches: int = DEFAULT_MAX_FETCHES
    limits: ServerLimits = field(default_factory=ServerLimits)
    connect_timeout: float = 10.0
    request_timeout: float = 30.0


@dataclass(frozen=True)
class PeerStatus:
    """A snapshot of the daemon's state, for the shell's ``status`` command."""

    domain_name: str
    username: str
    port: int
    index: str
    index_connected: bool
    token_expires_at: float | None
    shared_files: int
    last_sync: float | None
    last_ping: float | None
    active_fetches: int


def _identity(config: PeerConfig) -> tuple[x509.Certificate, Ed25519PrivateKey]:
    """Load the peer's certificate and key and check they fit together, the CA and the name."""
    try:
        cert, key, _ = load_identity(config.cert, config.key, config.ca)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    if config.domain_name.lower() not in certificate_dns_names(cert):
        raise StartupError(
            f"certificate {config.cert} does not name {config.domain_name!r}"
            f" (it names {', '.join(certificate_dns_names(cert)) or 'no DNS host'})"
        )
    return cert, key


class PeerDaemon:
    """The peer daemon, in-process: ``start()``, ``port``, ``stop()`` (or ``async with``)."""

    def __init__(self, config: PeerConfig) -> None:
        try:
            domain_name = canonical_domain_name(config.domain_name)
            username = canonical_username(config.username)
        except RequestError as exc:
            raise StartupError(exc.message) from None
        try:
            self.index_tls_name = index_tls_name(config.index_host, config.index_tls_name)
        except ValueError as exc:
            raise StartupError(f"--index-tls-name: {exc}") from None
        self.config = config
        self.domain_name = domain_name
        self.username = username
        self.share = Share(config.file_directory)
        self.index: IndexClient | None = None
        self.verifier: TokenVerifier | None = None
        self.client_context: ssl.SSLContext | None = None
        self.service: PeerService | None = None
        self.shared: list[SharedFile] = []
        self.last_sync: float | None = None
        self.last_ping: float | None = None
        self._server: Server | None = None
        self._server_ctx: ssl.SSLContext | None = None
        self._maintainer: asyncio.Task[None] | None = None
        self._session_lock = asyncio.Lock()
        self._reauth_at = 0.0
        self._ping_interval = config.ping_interval
        self._token: str | None = None
        self._expires_at: float | None = None

    # --- what the shell and scripts use ---------------------------------------------

    @property
    def port(self) -> int:
        """The port the peer server listens on (the real one after ``port=0``)."""
        if self._server is None:
            raise RuntimeError("the daemon is not started")
        return self._server.port

    @property
    def token(self) -> str:
        """The current token (renewed in the background before it expires)."""
        if self._token is None:
            raise RuntimeError("the daemon is not logged in")
        return self._token

    def status(self) -> PeerStatus:
        """Where the daemon stands now."""
        config = self.config
        return PeerStatus(
            self.domain_name,
            self.username,
            self._server.port if self._server is not None else config.port,
            f"{config.index_host}:{config.index_port}",
            self.index is not None and not self.index.closed,
            self._expires_at,
            len(self.shared),
            self.last_sync,
            self.last_ping,
            self.service.active_fetches if self.service is not None else 0,
        )

    async def search(self, keyword: str) -> list[SearchHit]:
        """Search the index (reconnecting and logging in again if needed)."""
        index = await self._session()
        return await index.search(keyword)

    async def resync(self) -> int:
        """Scan the share again and replace this peer's listing at the index."""
        self.shared = await asyncio.to_thread(self.share.scan)
        async with self._session_lock:
            index = await self._connected()
            return await self._sync(index)

    async def connect_peer(self, hit: SearchHit) -> PeerClient:
        """A mutual-TLS connection to the peer of a search hit, with this peer's token."""
        assert self.client_context is not None, "the daemon is not started"
        return await PeerClient.for_hit(
            hit,
            self.client_context,
            token=lambda: self.token,
            requester=self.username,
            connect_timeout=self.config.connect_timeout,
            request_timeout=self.config.request_timeout,
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
        async with await self.connect_peer(hit) as peer:
            return await download(
                peer,
                keyword,
                file_name,
                self.config.file_directory,
                expected=expected,
                overwrite=overwrite,
                progress=progress,
            )

    # --- life cycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Log in, serve the share, sync it, and start the background upkeep."""
        config = self.config
        _, key = _identity(config)
        try:
            self.client_context = client_context(config.ca, config.cert, config.key)
            self._server_ctx = peer_ssl_context(config.cert, config.key, config.ca)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"cannot set up TLS: {exc}") from None
        try:
            await asyncio.to_thread(os.makedirs, config.file_directory, exist_ok=True)
        except OSError as exc:
            raise StartupError(
                f"cannot use {config.file_directory} as the share: {exc.strerror}"
            ) from None
        try:
            await self._start_session(key)
        except BaseException:
            await self._close()
            raise
        self._maintainer = asyncio.create_task(self._maintain(), name=f"peerd {self.domain_name}")
        log.info("%s serving %d files on port %d", self.domain_name, len(self.shared), self.port)

    async def _start_session(self, key: Ed25519PrivateKey) -> None:
        config = self.config
        assert self._server_ctx is not None
        try:
            async with self._session_lock:
                index = await self._connect()
                if config.register:
                    await self._register(index)
                await self._auth(index)
            self.shared = await asyncio.to_thread(self.share.scan)
            self.service = PeerService(self.share, self.domain_name, key, config.max_fetches)
            self._server = make_server(
                self.service, self._server_ctx, self._authenticate, config.limits
            )
            try:
                await self._server.start(config.bind, config.port)
            except OSError as exc:
                self._server = None
                raise StartupError(
                    f"cannot listen on {config.bind}:{config.port}: {exc.strerror or exc}"
                ) from None
            async with self._session_lock:
                await self._sync(index)
        except (ConnectionClosed, Timeout) as exc:
            where = f"{config.index_host}:{config.index_port}"
            raise StartupError(f"lost the connection to the index at {where}: {exc}") from None
        except RequestError as exc:
            raise StartupError(f"the index refused: {exc.message}") from None

    async def stop(self, grace: float = 5.0) -> None:
        """Say ``bye`` to the index, stop serving (transfers get ``grace`` to finish)."""
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
            self._maintainer = None
        index = self.index
        if index is not None and not index.closed and self._token is not None:
            try:
                async with asyncio.timeout(_BYE_TIMEOUT):
                    await index.bye(self.domain_name)
            except (P2PError, TimeoutError) as exc:
                log.warning("could not say bye to the index: %s", exc)
        await self._close(grace)

    async def _close(self, grace: float = 5.0) -> None:
        if self._server is not None:
            await self._server.close(grace)
            self._server = None
        if self.index is not None:
            await self.index.close()
            self.index = None
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
        assert self.verifier is not None
        return self.verifier.verify(token)

    async def _connect(self) -> IndexClient:
        config = self.config
        where = f"{config.index_host}:{config.index_port}"
        assert self.client_context is not None
        try:
            index = await IndexClient.connect(
                config.index_host,
                config.index_port,
                self.client_context,
                server_hostname=self.index_tls_name,
                connect_timeout=config.connect_timeout,
                request_timeout=config.request_timeout,
            )
        except (ConnectionClosed, Timeout) as exc:
            raise StartupError(f"cannot reach the index at {where}: {exc}") from None
        old, self.index = self.index, index
        if old is not None:
            await old.close()
        try:
            # Tokens are checked against the certificate the index presented just now (its
            # chain and name checked by TLS), so a renewed index certificate is picked up.
            self.verifier = TokenVerifier(index.certificate)
        except ValueError as exc:
            raise StartupError(f"the index at {where} has an unusable certificate: {exc}") from None
        return index

    async def _register(self, index: IndexClient) -> None:
        try:
            await index.register(self.username, self.config.password)
            log.info("registered user %s", self.username)
        except UserExists:
            log.info("user %s already exists", self.username)
        except RequestError as exc:
            raise StartupError(f"cannot register {self.username}: {exc.message}") from None

    async def _auth(self, index: IndexClient) -> None:
        try:
            reply = await index.auth(self.username, self.config.password)
        except AuthFailed:
            raise StartupError(
                f"authentication failed for {self.username}: wrong username or password"
            ) from None
        except RateLimited as exc:
            raise StartupError(
                f"too many login attempts; retry in {exc.retry_after:.0f} s"
            ) from None
        except RequestError as exc:
            raise StartupError(f"the index refused the login: {exc.message}") from None
        now = time.time()
        lifetime = max(reply.expires_at - now, 2.0)
        self._token, self._expires_at = reply.token, float(reply.expires_at)
        self._reauth_at = now + self.config.reauth_fraction * lifetime
        log.info("logged in as %s; token renewed in %.0f s", self.username, self._reauth_at - now)

    async def _sync(self, index: IndexClient) -> int:
        try:
            count = await index.sync(
                self.domain_name, self.port, self.shared, self.config.advertise_address
            )
        except Forbidden as exc:
            raise StartupError(
                f"the index refuses {self.domain_name!r} for {self.username}: {exc.message}"
            ) from None
        except ValueError as exc:
            raise StartupError(f"the share is too large to sync: {exc}") from None
        self.last_sync = self.last_ping = time.time()
        log.info("synced %d files", count)
        return count

    async def _connected(self) -> IndexClient:
        """The index connection, reconnected and logged in again if it dropped."""
        if self.index is not None and not self.index.closed:
            return self.index
        index = await self._connect()
        await self._auth(index)
        return index

    async def _session(self) -> IndexClient:
        async with self._session_lock:
            index = await self._connected()
            if time.time() >= self._reauth_at:
                await self._auth(index)
            return index

    async def _maintain(self) -> None:
        """Renew the token, ping, and recover from a lost index connection, forever."""
        backoff = 1.0
        while True:
            now = time.time()
            next_ping = (self.last_ping or now) + self._ping_interval
            await asyncio.sleep(max(0.0, min(self._reauth_at, next_ping) - now))
            try:
                async with self._session_lock:
                    reconnect = self.index is None or self.index.closed
                    index = await self._connected()
                    if reconnect:  # the index may have lost us meanwhile: sync afresh
                        self.shared = await asyncio.to_thread(self.share.scan)
                        await self._sync(index)
                    elif time.time() >= self._reauth_at:
                        await self._auth(index)
                    if time.time() >= (self.last_ping or 0) + self._ping_interval:
                        await self._ping(index)
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except (TokenExpired, TokenInvalid) as exc:
                log.info("the index refused our token (%s); logging in again", exc)
                self._reauth_at = 0.0
                await asyncio.sleep(min(backoff, 1.0))  # never a tight loop on clock skew
                backoff = min(backoff * 2, _MAX_BACKOFF)
            except (P2PError, OSError) as exc:
                log.warning("index upkeep failed (%s); retrying in %.0f s", exc, backoff)
                suspect = isinstance(exc, StartupError | ConnectionClosed | Timeout | OSError)
                if self.index is not None and suspect:
                    await self.index.close()  # reconnect on the next round
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            except Exception:
                log.exception("index upkeep failed unexpectedly")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _ping(self, index: IndexClient) -> None:
        try:
            reply = await index.ping(self.domain_name)
        except NotFound:
            log.info("the index no longer lists %s; syncing again", self.domain_name)
            await self._sync(index)
            return
        self.last_ping = time.time()
        # Ping well within the index's liveness window, whatever it is configured to.
        self._ping_interval = min(self.config.ping_interval, reply.ttl / 3)


__all__ = [
    "DEFAULT_PEER_PORT",
    "DEFAULT_PING_INTERVAL",
    "PeerConfig",
    "PeerDaemon",
    "PeerStatus",
    "StartupError",
]
