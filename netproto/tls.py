"""TLS contexts (PROTOCOL.md §1): TLS 1.3 only, X25519, the deployment's own CA."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509


def _base(purpose: int, ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ecdh_curve("X25519")
    ctx.load_verify_locations(cafile=str(ca))
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def server_context(cert: Path, key: Path, ca: Path, *, require_client_cert: bool) -> ssl.SSLContext:
    """A server context; client certificates are checked when sent, or required."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, ca)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.num_tickets = 0  # nothing resumes a session: no tickets to make, send or hold
    return ctx


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client context that verifies the server's chain and host name against ``ca``."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, ca)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    return ctx


def certificate_dns_names(cert: x509.Certificate) -> list[str]:
    """The DNS names of a certificate's SubjectAltName, lower-cased."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in san.get_values_for_type(x509.DNSName)]
