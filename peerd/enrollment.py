"""Joining by enrollment (PROTOCOL.md §10): trust from one fingerprint, a certificate from the
index, renewal before it expires, and the index's list of revoked serials.

- :func:`fetch_ca` asks the index for its CA certificate over a TLS connection that verifies
  nothing yet, and checks it against the fingerprint the user was given; that request is the
  only thing sent before the check, so a wrong index never sees the password.
- :func:`ensure_identity` keeps the key, certificate and CA certificate in the state directory
  (0700; the key 0600): it enrolls when there is no valid certificate, logging in with the
  password over a connection verified against the CA just checked.
- :class:`CertificateRenewer` renews at two thirds of the certificate's life over mutual TLS,
  with the session's certificate-bound token instead of the password.
- :class:`RevocationList` refreshes the revoked serials from the index, so the peer server
  refuses a revoked client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from certs import pki
from certs.requests import ca_fingerprint, fingerprint_matches, make_request, serial_hex
from netproto.client import Connection
from netproto.enrollment import CaReply, EnrollReply
from netproto.errors import (
    ConnectionClosed,
    P2PError,
    RemoteProtocolError,
    RequestError,
    Timeout,
    UnknownOp,
    UserExists,
)
from netproto.operations import AuthReply
from netproto.tls import certificate_dns_names, client_context
from peerd.client import IndexClient, parse_reply
from peerd.clock import SYSTEM_CLOCK, Clock
from peerd.control import prepare_state_dir
from peerd.index_session import IndexSession
from runner import StartupError

log = logging.getLogger(__name__)

KEY_NAME = "peer.key"
CERT_NAME = "peer.crt"
CA_NAME = "ca.crt"
RENEW_FRACTION = 2 / 3
#: Revocations are refreshed at least this often, and at least every ping (PROTOCOL.md §10).
DEFAULT_REVOCATION_INTERVAL = 30.0


@dataclass(frozen=True)
class StateFiles:
    """Where an enrolled peer keeps its identity: ``peer.key``, ``peer.crt``, ``ca.crt``."""

    directory: Path

    @property
    def key(self) -> Path:
        """The Ed25519 private key (mode 0600)."""
        return self.directory / KEY_NAME

    @property
    def cert(self) -> Path:
        """The certificate the index issued."""
        return self.directory / CERT_NAME

    @property
    def ca(self) -> Path:
        """The CA certificate, checked against the fingerprint when first fetched."""
        return self.directory / CA_NAME


def renewal_time(cert: x509.Certificate, fraction: float = RENEW_FRACTION) -> float:
    """When ``cert`` is due for renewal: ``fraction`` of its life, counted from its issue
    (the profile backdates ``notBefore`` by :data:`certs.pki.CLOCK_SKEW`)."""
    end = cert.not_valid_after_utc.timestamp()
    start = min(cert.not_valid_before_utc.timestamp() + pki.CLOCK_SKEW.total_seconds(), end)
    return start + fraction * (end - start)


def _tls13_unverified() -> ssl.SSLContext:
    """TLS 1.3 that verifies nothing: only for fetching the CA certificate to check it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def fetch_ca(
    host: str,
    port: int,
    server_hostname: str,
    fingerprint: str,
    *,
    connect_timeout: float = 10.0,
    request_timeout: float = 30.0,
) -> x509.Certificate:
    """The index's CA certificate, checked against ``fingerprint``; StartupError if it does
    not match. The ``ca`` request is all that is sent before the check."""
    try:
        conn = await Connection.open(
            host,
            port,
            _tls13_unverified(),
            server_hostname=server_hostname,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
        )
    except (ConnectionClosed, Timeout) as exc:
        raise StartupError(f"cannot reach the index at {host}:{port}: {exc}") from exc
    try:
        body = await conn.request("ca", {})
        index_cert = conn.peer_certificate
    except RequestError as exc:
        raise StartupError(f"the index at {host}:{port} gives no CA certificate: {exc}") from exc
    except (ConnectionClosed, Timeout) as exc:
        raise StartupError(f"lost the connection to the index at {host}:{port}: {exc}") from exc
    finally:
        await conn.close()
    try:
        ca = x509.load_der_x509_certificate(parse_reply(CaReply.from_wire, body, "ca").certificate)
    except (ValueError, RemoteProtocolError) as exc:
        raise StartupError(f"the index sent a malformed CA certificate: {exc}") from exc
    if not fingerprint_matches(ca, fingerprint):
        raise StartupError(
            f"the index at {host}:{port} presents a CA with fingerprint {ca_fingerprint(ca)},"
            f" not {fingerprint}: refusing to go on (the password was not sent)"
        )
    try:
        index_cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise StartupError(f"the index's certificate is not issued by that CA: {exc}") from exc
    return ca


def _usable(state: StateFiles, domain_name: str, now: float) -> x509.Certificate | None:
    """The state directory's certificate if it is whole, ours, for our name and unexpired."""
    try:
        cert, _, _ = pki.load_identity(state.cert, state.key, state.ca)
    except (ValueError, OSError):
        return None
    if domain_name not in certificate_dns_names(cert):
        return None
    return cert if cert.not_valid_after_utc.timestamp() > now + 60 else None


def _load_or_make_key(state: StateFiles) -> ed25519.Ed25519PrivateKey:
    """The state directory's key, or a new one written with mode 0600."""
    if state.key.exists():
        try:
            pki.check_private_key_file(state.key)
            return pki.load_key(state.key)
        except ValueError as exc:
            log.warning("making a new key: %s", exc)
    key = ed25519.Ed25519PrivateKey.generate()
    pki.write_key(state.key, key, overwrite=True)
    return key


def store_certificate(
    state: StateFiles, key: ed25519.Ed25519PrivateKey, der: bytes
) -> x509.Certificate:
    """Check the issued certificate holds ``key`` and write it; RemoteProtocolError if not."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise RemoteProtocolError(f"the index sent a malformed certificate: {exc}") from exc
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if cert.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise RemoteProtocolError("the index sent a certificate for another key")
    pki.write_cert(state.cert, cert, overwrite=True)
    return cert


async def ensure_identity(
    state: StateFiles,
    *,
    host: str,
    port: int,
    server_hostname: str,
    domain_name: str,
    username: str,
    password: str,
    register: bool = False,
    fingerprint: str | None = None,
    connect_timeout: float = 10.0,
    request_timeout: float = 30.0,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Make sure the state directory holds a valid identity, enrolling if it must."""
    try:
        await asyncio.to_thread(prepare_state_dir, state.directory)
    except OSError as exc:
        raise StartupError(f"cannot use the state directory {state.directory}: {exc}") from exc
    if state.ca.exists():
        if fingerprint is not None and not fingerprint_matches(
            pki.load_cert(state.ca), fingerprint
        ):
            raise StartupError(
                f"{state.ca} does not have the fingerprint {fingerprint}; remove the state"
                f" directory {state.directory} to join another deployment"
            )
    elif fingerprint is None:
        raise StartupError(
            f"not enrolled yet ({state.directory} holds no CA certificate): pass"
            " --ca-fingerprint SHA256:<hex> as the index's operator gives it"
            " (python -m certs fingerprint ca.crt), or --certificate/--private-key/--ca"
        )
    else:
        ca = await fetch_ca(
            host,
            port,
            server_hostname,
            fingerprint,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
        )
        pki.write_cert(state.ca, ca, overwrite=True)
        log.info("trusting the CA %s", ca_fingerprint(ca))
    if _usable(state, domain_name, clock.time()) is not None:
        return
    key = _load_or_make_key(state)
    csr = make_request(key, domain_name)
    try:
        index = await IndexClient.connect(
            host,
            port,
            client_context(state.ca),
            server_hostname=server_hostname,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
        )
    except (ConnectionClosed, Timeout) as exc:
        raise StartupError(f"cannot reach the index at {host}:{port}: {exc}") from exc
    try:
        if register:
            with contextlib.suppress(UserExists):
                await index.register(username, password)
        await index.auth(username, password)
        reply = await index.enroll(domain_name, csr)
        cert = store_certificate(state, key, reply.certificate)
    except RequestError as exc:
        raise StartupError(f"the index refused to enroll {domain_name}: {exc.message}") from exc
    except P2PError as exc:
        raise StartupError(f"enrollment at {host}:{port} failed: {exc}") from exc
    finally:
        await index.close()
    log.info(
        "enrolled %s: certificate %s until %s",
        domain_name,
        serial_hex(cert),
        cert.not_valid_after_utc,
    )


class CertificateRenewer:
    """Renews the state directory's certificate at two thirds of its life, without the
    password: over the session's mutual-TLS connection, with its bound token."""

    def __init__(
        self,
        state: StateFiles,
        session: IndexSession,
        reload: Callable[[], None],
        *,
        fraction: float = RENEW_FRACTION,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.state = state
        self.session = session
        self.reload = reload
        self.fraction = fraction
        self.clock = clock
        self.cert = pki.load_cert(state.cert)

    @property
    def due_at(self) -> float:
        """When the current certificate is due for renewal."""
        return renewal_time(self.cert, self.fraction)

    async def renew(self) -> x509.Certificate:
        """Renew now: a new certificate for the same key, and the session's tokens bound to
        it; the index connection is then remade with it."""
        session = self.session
        key = pki.load_key(self.state.key)
        csr = make_request(key, session.domain_name)
        async with session.lock:
            index = await session.connected_index()
            if not isinstance(index, IndexClient):
                raise TypeError("renewal needs an IndexClient")
            reply: EnrollReply = await index.enroll(session.domain_name, csr, session.token)
            cert = await asyncio.to_thread(store_certificate, self.state, key, reply.certificate)
            self.reload()
            if reply.token is not None and reply.peer_token is not None:
                session._accept(AuthReply(reply.token, reply.token_expires_at, reply.peer_token))
            await session.close()  # the next call reconnects presenting the new certificate
        self.cert = cert
        log.info("renewed the certificate: %s until %s", serial_hex(cert), cert.not_valid_after_utc)
        return cert

    async def run(self) -> None:
        """Renew whenever due, forever; a failure is retried within a tenth of what is left."""
        while True:
            now = self.clock.time()
            await self.clock.sleep(max(0.0, self.due_at - now))
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                left = self.cert.not_valid_after_utc.timestamp() - self.clock.time()
                wait = min(60.0, max(1.0, left / 10))
                log.warning("certificate renewal failed (%s); retrying in %.0f s", exc, wait)
                await self.clock.sleep(wait)


class RevocationList:
    """The serials the index says are revoked; refreshed at least every ping interval (so
    at least every third of the index's ``--peer-ttl``)."""

    def __init__(
        self,
        session: IndexSession,
        *,
        interval: float = DEFAULT_REVOCATION_INTERVAL,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.session = session
        self.interval = interval
        self.clock = clock
        self.serials: frozenset[str] = frozenset()
        self.refreshed_at: float | None = None

    def is_revoked(self, cert: x509.Certificate | None) -> bool:
        """Whether ``cert`` is on the list."""
        return cert is not None and serial_hex(cert) in self.serials

    async def refresh(self) -> None:
        """Ask the index for the list again."""
        index = await self.session.fresh_index()
        if not isinstance(index, IndexClient):
            return
        serials = await index.revoked(self.session.token)
        if serials != self.serials:
            log.info("%d certificate serial(s) revoked", len(serials))
        self.serials, self.refreshed_at = serials, self.clock.time()

    async def run(self) -> None:
        """Refresh every ``interval`` (at most the session's ping interval), forever."""
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except UnknownOp:
                log.info("the index serves no revocation list")
                return
            except (P2PError, OSError) as exc:
                log.warning("could not refresh the revocation list: %s", exc)
            await self.clock.sleep(min(self.interval, self.session.ping_every))
