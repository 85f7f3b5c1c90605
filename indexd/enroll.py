"""The index as a certificate authority (PROTOCOL.md §10): ``ca``, ``enroll``, ``revoked``.

:class:`Enrollment` adds three operations to :class:`~indexd.handlers.IndexService`'s table and
a gate every token-bearing request passes: a disabled user's tokens, and a connection whose
client certificate is revoked, are refused. Revocations and disabled users are written by
``indexd admin`` into the database while the daemon runs; :meth:`Enrollment.run` reads them
again every ``refresh_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import certs
from certs.requests import (
    DEFAULT_CERT_TTL,
    RequestRefused,
    ca_fingerprint,
    check_label,
    issue_for_request,
    request_public_key,
    serial_hex,
)
from indexd.handlers import IndexService
from indexd.store import IndexDatabase, IssuedCertificate, PeerOwned, UnknownUser, UserDisabled
from netproto.enrollment import (
    MAX_REVOKED,
    CaReply,
    EnrollReply,
    EnrollRequest,
    RevokedReply,
    RevokedRequest,
)
from netproto.errors import BadRequest, Forbidden, TokenInvalid
from netproto.operations import parse_empty
from netproto.server import Operation, RequestContext
from netproto.tls import certificate_dns_names
from netproto.tokens import Principal
from runner import StartupError

log = logging.getLogger(__name__)

DEFAULT_REFRESH_INTERVAL = 1.0


@dataclass(frozen=True)
class Authority:
    """The CA certificate the index serves and, when it enrolls, the key it signs with."""

    cert: x509.Certificate
    key: Ed25519PrivateKey | None = None
    cert_ttl: float = DEFAULT_CERT_TTL

    @property
    def fingerprint(self) -> str:
        """The CA's fingerprint, ``SHA256:<hex>`` (what newcomers pass to peerd)."""
        return ca_fingerprint(self.cert)


def load_authority(ca: Path, ca_key: Path | None, cert_ttl: float) -> Authority:
    """Load the CA certificate (and its key, checked to match); StartupError otherwise."""
    try:
        cert = certs.load_cert(ca)
        key = None
        if ca_key is not None:
            certs.pki.check_private_key_file(ca_key)
            key = certs.load_key(ca_key)
    except OSError as exc:
        raise StartupError(f"cannot read {exc.filename}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    if key is not None:
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        cert_key = cert.public_key()
        if cert_key.public_bytes(*raw) != key.public_key().public_bytes(*raw):
            raise StartupError(f"--ca-key {ca_key} is not the key of the CA {ca}")
    return Authority(cert, key, cert_ttl)


class Enrollment:
    """Enrollment, revocation and disabled users at the index, beside its other handlers."""

    def __init__(
        self,
        service: IndexService,
        store: IndexDatabase,
        authority: Authority,
        index_cert: x509.Certificate,
        *,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.store = store
        self.authority = authority
        self.refresh_interval = refresh_interval
        self.clock = clock
        # The index's own names (and localhost) are nobody's to enroll: a peer by that name
        # could pass for the index.
        self.reserved = frozenset(certificate_dns_names(index_cert)) | {"localhost"}
        self.disabled: frozenset[str] = frozenset()
        self.revoked: frozenset[str] = frozenset()
        self._revoked_order: tuple[str, ...] = ()  # sorted, for the pages of ``revoked``
        self._ca_der = authority.cert.public_bytes(serialization.Encoding.DER)

    async def open(self) -> None:
        """Load the enrolled names' owners and the revocations; put the gate in place."""
        names = await self.service._read(self.store.enrolled_names)
        for name, user in names.items():
            self.service._own(name, user)
        await self.refresh()
        self.service.gates.append(self.gate)

    async def refresh(self) -> None:
        """Read the disabled users and unexpired revoked serials again."""
        disabled, revoked = await self.service._read(self.store.revocations, self.clock())
        if (disabled, revoked) != (self.disabled, self.revoked):
            log.info(
                "revocations: %d users disabled, %d serials revoked", len(disabled), len(revoked)
            )
        if revoked != self.revoked:
            self._revoked_order = tuple(sorted(revoked))
        self.disabled, self.revoked = disabled, revoked

    async def run(self) -> None:
        """Refresh every ``refresh_interval`` seconds, forever (failures only logged)."""
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except Exception as exc:  # the database is busy or gone: keep the last state
                log.warning("could not read the revocations: %s", exc)

    def gate(self, ctx: RequestContext, principal: Principal) -> None:
        """Refuse a disabled user's tokens and a connection with a revoked certificate."""
        if principal.subject in self.disabled:
            raise TokenInvalid("this user is disabled")
        if ctx.peer_cert is not None and serial_hex(ctx.peer_cert) in self.revoked:
            raise TokenInvalid("the client certificate is revoked")

    # -- handlers -----------------------------------------------------------------------

    async def handle_ca(self, ctx: RequestContext, req: None) -> CaReply:
        """The CA certificate, for a newcomer to check against its fingerprint."""
        return CaReply(self._ca_der)

    async def handle_revoked(self, ctx: RequestContext, req: RevokedRequest) -> RevokedReply:
        """A page of the serials revoked and not yet expired, for peers to refuse: never cut
        silently, ``more`` says another page follows (PROTOCOL.md §10)."""
        self.service._authorize(ctx)
        order = self._revoked_order
        start = 0 if req.after is None else bisect.bisect_right(order, req.after)
        page = order[start : start + MAX_REVOKED]
        return RevokedReply(page, start + len(page) < len(order))

    async def handle_enroll(self, ctx: RequestContext, req: EnrollRequest) -> EnrollReply:
        """Issue the fixed-profile leaf for a checked request, for a name free or the user's."""
        principal = self.service._authorize(ctx)
        user, key = principal.subject, self.authority.key
        assert key is not None, "enroll is served only with a CA key"
        try:
            name = check_label(req.domain_name)
            request_public_key(req.csr)
        except RequestRefused as exc:
            raise BadRequest(str(exc)) from None
        if name in self.reserved:
            raise Forbidden("this domain_name is the index's own")
        if principal.thumbprint is not None:
            self._check_renewal(ctx, name, req.csr)
        service = self.service
        claiming = service._check_owner(user, name) is None
        limit = service.settings.max_domains_per_user
        if claiming and len(service.domains.get(user, ())) >= limit:
            raise Forbidden(f"a user may own at most {limit} domain names")
        now = self.clock()
        cert = issue_for_request(
            self.authority.cert,
            key,
            req.csr,
            name,
            ttl=self.authority.cert_ttl,
            now=dt.datetime.fromtimestamp(now, dt.UTC),
        )
        not_after = cert.not_valid_after_utc.timestamp()
        record = IssuedCertificate(serial_hex(cert), user, name, now, not_after)
        if claiming:
            service._own(name, user)  # before the write, so a racing claim sees it
        try:
            refusal = await service._write(self._record, record)
        except BaseException:
            if claiming:
                service._disown(name, user)
            raise
        if refusal is not None:
            if claiming:
                service._disown(name, user)
            raise Forbidden(refusal)
        log.info("issued certificate %s for %s to %s", record.serial, name, user)
        der = cert.public_bytes(serialization.Encoding.DER)
        if principal.thumbprint is None:
            return EnrollReply(der, int(not_after))
        # A renewal over mutual TLS: the session goes on, bound to the new certificate.
        tokens = service.issuer.issue_session(user, cert, session=principal.session_id)
        return EnrollReply(
            der, int(not_after), tokens.token, tokens.peer_token, int(tokens.expires_at)
        )

    @staticmethod
    def _check_renewal(ctx: RequestContext, name: str, csr: bytes) -> None:
        """A renewal over mutual TLS is for the presented certificate's name and key only
        (PROTOCOL.md §10): a stolen bound token cannot move the name to another key."""
        cert = ctx.peer_cert
        if cert is None:  # the binding check has already refused this; kept as a guard
            raise Forbidden("a renewal needs the current client certificate")
        if name not in certificate_dns_names(cert):
            raise Forbidden("a renewal is for the name of the certificate presented")
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if request_public_key(csr).public_bytes(*spki) != cert.public_key().public_bytes(*spki):
            raise Forbidden("a renewal is for the key of the certificate presented")

    def _record(self, record: IssuedCertificate) -> str | None:
        """Record the certificate; the reason it may not be issued, or None."""
        try:
            self.store.record_certificate(record)
        except PeerOwned:
            return "this domain_name belongs to another user"
        except UserDisabled:
            return "this user is disabled"
        except UnknownUser:
            return "the token's user is not registered"
        return None

    def operations(self) -> dict[str, Operation[Any]]:
        """``ca`` and ``revoked`` always; ``enroll`` when the index holds the CA key."""
        table: dict[str, Operation[Any]] = {
            "ca": Operation(parse_empty, self.handle_ca, needs_token=False),
            "revoked": Operation(RevokedRequest.from_wire, self.handle_revoked),
        }
        if self.authority.key is not None:
            table["enroll"] = Operation(EnrollRequest.from_wire, self.handle_enroll)
        return table
