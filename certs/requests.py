"""Certificates by request: a peer's PKCS#10 request, and the leaf the index issues for it.

The requester makes an Ed25519 key and a request for its ``domain_name``
(:func:`make_request`); the CA's side (:func:`issue_for_request`) checks the request's own
signature (proof of possession) and its key type, and then throws away every name and
extension the request asks for: the leaf has the fixed profile of PROTOCOL.md §10 — ``CA:FALSE``,
EKU serverAuth + clientAuth, SAN ``DNS:<domain_name>`` only, and the CA's lifetime, not the
requester's. Trust in the CA travels as one string, :func:`ca_fingerprint`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.pki import CLOCK_SKEW, validate_name

#: The largest DER request taken (an Ed25519 request is about 150 bytes).
MAX_REQUEST_SIZE = 4096
DEFAULT_CERT_TTL = 24 * 3600.0
_FINGERPRINT = re.compile(r"SHA256:([0-9a-f]{64})")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class RequestRefused(ValueError):
    """A certificate request the CA will not sign; the message says why."""


def ca_fingerprint(cert: x509.Certificate) -> str:
    """``SHA256:<64 hex digits>``: the SHA-256 of the certificate's DER (PROTOCOL.md §10)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def parse_fingerprint(text: str) -> str:
    """A fingerprint in canonical form (lower-case hex); ValueError if it is not one."""
    candidate = text.strip()
    prefix, sep, digits = candidate.partition(":")
    if sep and prefix.upper() == "SHA256":
        candidate = "SHA256:" + digits.replace(":", "").lower()
    if not _FINGERPRINT.fullmatch(candidate):
        raise ValueError(f"not a CA fingerprint: {text!r} (expected SHA256:<64 hex digits>)")
    return candidate


def fingerprint_matches(cert: x509.Certificate, expected: str) -> bool:
    """Whether ``cert`` has the fingerprint ``expected`` (compared in constant time)."""
    return hmac.compare_digest(ca_fingerprint(cert), parse_fingerprint(expected))


def check_label(name: str) -> str:
    """``name`` lower-cased if it is one DNS label (``a-z0-9-``, 1–63); else RequestRefused."""
    lowered = name.lower()
    if not _LABEL.fullmatch(lowered) or lowered.isdigit():
        raise RequestRefused(f"domain_name {name!r} is not a DNS label (a-z, 0-9, '-')")
    return lowered


def make_request(key: ed25519.Ed25519PrivateKey, domain_name: str) -> bytes:
    """A DER PKCS#10 request for ``domain_name`` signed by ``key``."""
    host = validate_name(domain_name)
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, algorithm=None)
    )
    return request.public_bytes(serialization.Encoding.DER)


def request_public_key(der: bytes) -> ed25519.Ed25519PublicKey:
    """The Ed25519 key of a DER request whose own signature holds; RequestRefused otherwise."""
    if len(der) > MAX_REQUEST_SIZE:
        raise RequestRefused(f"the request is larger than {MAX_REQUEST_SIZE} bytes")
    try:
        request = x509.load_der_x509_csr(der)
        key = request.public_key()
    except (ValueError, TypeError):
        raise RequestRefused("the request is not a DER PKCS#10 certificate request") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise RequestRefused("the request's key is not an Ed25519 key")
    if not request.is_signature_valid:
        raise RequestRefused("the request's signature does not match its key")
    return key


def issue_for_request(
    ca_cert: x509.Certificate,
    ca_key: ed25519.Ed25519PrivateKey,
    der: bytes,
    domain_name: str,
    *,
    ttl: float = DEFAULT_CERT_TTL,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """The leaf for a checked request: the fixed profile, whatever the request asked for."""
    public_key = request_public_key(der)
    host = check_label(domain_name)
    start = now or dt.datetime.now(dt.UTC)
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + dt.timedelta(seconds=ttl))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(ca_key, algorithm=None)
    )


def serial_hex(cert: x509.Certificate) -> str:
    """The certificate's serial as lower-case hex, the form serials travel and are stored in."""
    return f"{cert.serial_number:x}"
