"""The fetch signature (PROTOCOL.md §7): Ed25519 over the file digest and the requester's nonce."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from netproto.codec import pack

SIGNATURE_CONTEXT = b"p2pshare/1 fetch\n"


def fetch_signing_payload(
    *,
    signer: str,
    requester: str,
    keyword: str,
    file_name: str,
    size: int,
    sha256: bytes,
    nonce: bytes,
) -> bytes:
    """The exact bytes the serving peer signs for one fetch."""
    fields = [signer, requester, keyword, file_name, size, sha256, nonce]
    return SIGNATURE_CONTEXT + pack(fields)


def sign_fetch(key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """Sign a payload made by :func:`fetch_signing_payload`."""
    return key.sign(payload)


def fetch_signature_valid(public_key: Ed25519PublicKey, signature: bytes, payload: bytes) -> bool:
    """True when ``signature`` is the signer's Ed25519 signature of ``payload``."""
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True
