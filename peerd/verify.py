"""The checks of PROTOCOL.md §7 on a received file, as a pure function: no I/O, no clock.

:func:`verify_fetch` takes what we asked for (:class:`FetchExpectation`: the nonce, the names,
the index's listing), what arrived (size, digest, trailer) and the public key of the
certificate the peer presented in the TLS handshake, and returns one :class:`CheckOutcome` per
check, in :data:`CHECKS` order. Deciding what to do with a failure is the caller's business.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from netproto.operations import FetchHeader, FetchTrailer, ListedFile
from netproto.signing import fetch_signature_valid, fetch_signing_payload

#: The checks of PROTOCOL.md §7, in the order they are reported (and the first failed one
#: names the error).
CHECKS = ("nonce", "size", "sha256", "signer", "signature", "index-digest")


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """One verification check: passed (True), failed (False) or not applicable (None)."""

    name: str
    passed: bool | None
    detail: str


@dataclass(frozen=True, slots=True)
class FetchExpectation:
    """What a fetch must prove: who signs it for whom, which file, our nonce, the listing."""

    signer: str  # the peer we asked, the name its TLS certificate carries
    requester: str  # this user, the token's ``sub``
    keyword: str
    file_name: str
    nonce: bytes
    listed: ListedFile | None = None  # the index's listing of the file, if it had one


def check_header(
    expected: FetchExpectation, header: FetchHeader, offset: int
) -> CheckOutcome | None:
    """The failed check if the stream header does not answer our request, else None."""
    if (
        header.offset != offset
        or header.keyword != expected.keyword
        or header.file_name != expected.file_name
        or header.size < offset
    ):
        return CheckOutcome("header", False, "the peer's stream header does not answer our request")
    listed = expected.listed
    if listed is not None and header.size != listed.size:
        return CheckOutcome(
            "size", False, f"the peer offers {header.size} bytes, the index listed {listed.size}"
        )
    return None


def check_size_limit(size: int, max_size: int) -> CheckOutcome | None:
    """The failed ``size`` check if a file of ``size`` bytes is over ``max_size``, else None."""
    if size > max_size:
        return CheckOutcome(
            "size", False, f"the file is {size} bytes, over --max-download-size ({max_size})"
        )
    return None


def verify_fetch(
    expected: FetchExpectation,
    *,
    size: int,
    announced_size: int,
    digest: bytes,
    trailer: FetchTrailer,
    public_key: CertificatePublicKeyTypes,
) -> tuple[CheckOutcome, ...]:
    """Every check of PROTOCOL.md §7 on a received file, in :data:`CHECKS` order.

    ``size`` and ``digest`` are of the bytes received (a resumed prefix included),
    ``announced_size`` is the stream header's, and ``public_key`` is the peer's certificate's.
    """
    outcomes: list[CheckOutcome] = []

    def check(name: str, passed: bool | None, ok: str, bad: str) -> None:
        outcomes.append(CheckOutcome(name, passed, ok if passed is not False else bad))

    signer = expected.signer
    check(
        "nonce",
        secrets.compare_digest(trailer.nonce, expected.nonce),
        "the trailer echoes our fresh nonce",
        "the trailer's nonce is not the one we sent (a replayed or misdirected answer)",
    )
    sizes_agree = trailer.size == size == announced_size
    if expected.listed is not None:
        sizes_agree = sizes_agree and size == expected.listed.size
    check(
        "size",
        sizes_agree,
        f"{size} bytes, as announced",
        f"received {size} bytes, header said {announced_size}, trailer says {trailer.size}",
    )
    check(
        "sha256",
        secrets.compare_digest(digest, trailer.sha256),
        f"the bytes hash to {digest.hex()[:16]}…",
        "the bytes received do not hash to the trailer's sha256",
    )
    check(
        "signer",
        trailer.signer == signer,
        f"signed as {trailer.signer}",
        f"the trailer is signed as {trailer.signer!r}, we asked {signer!r}",
    )
    payload = fetch_signing_payload(
        signer=signer,
        requester=expected.requester,
        keyword=expected.keyword,
        file_name=expected.file_name,
        size=trailer.size,
        sha256=trailer.sha256,
        nonce=expected.nonce,
    )
    valid = isinstance(public_key, Ed25519PublicKey) and fetch_signature_valid(
        public_key, trailer.digital_signature, payload
    )
    check(
        "signature",
        valid,
        f"Ed25519 signature by {signer}'s certificate key",
        f"the signature does not verify under {signer}'s certificate key",
    )
    if expected.listed is None:
        check("index-digest", None, "the index listed no digest", "")
    else:
        check(
            "index-digest",
            secrets.compare_digest(expected.listed.sha256, trailer.sha256),
            "matches the digest the index listed",
            "the file's digest is not the one the index listed",
        )
    return tuple(outcomes)


def first_failure(checks: tuple[CheckOutcome, ...]) -> CheckOutcome | None:
    """The first check that failed, or None when none did."""
    return next((c for c in checks if c.passed is False), None)


__all__ = [
    "CHECKS",
    "CheckOutcome",
    "FetchExpectation",
    "check_header",
    "check_size_limit",
    "first_failure",
    "verify_fetch",
]
