"""Bearer tokens (PROTOCOL.md §8): EdDSA JWTs issued by the index, verified offline by anyone
holding the index certificate.

Verification pins the algorithm, requires every claim, checks the header, refuses oversized
tokens before decoding, and caches verified tokens so the hot path pays once per token.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from netproto.errors import TokenExpired, TokenInvalid
from netproto.tls import certificate_dns_names

AUDIENCE = "p2pshare"
ALGORITHM = "EdDSA"
MAX_TOKEN_BYTES = 2048
REQUIRED_CLAIMS = ("iss", "aud", "sub", "iat", "nbf", "exp", "jti")
_ALLOWED_HEADER = {"alg": ALGORITHM, "typ": "JWT"}
LEEWAY = 30  # seconds of clock skew tolerated between index and peers


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for, and until when."""

    subject: str
    expires_at: float
    token_id: str

    def check_current(self, now: float | None = None) -> None:
        """Raise :class:`TokenExpired` once the token's ``exp`` has passed."""
        if (time.time() if now is None else now) >= self.expires_at + LEEWAY:
            raise TokenExpired()


class TokenIssuer:
    """Issues tokens signed with the index's TLS key."""

    def __init__(self, key: Ed25519PrivateKey, issuer: str, ttl: float = 900) -> None:
        self._key = key
        self.issuer = issuer
        self.ttl = ttl

    def issue(self, subject: str, now: float | None = None) -> tuple[str, int]:
        """A fresh token for ``subject`` and its expiry (Unix seconds)."""
        iat = int(time.time() if now is None else now)
        exp = iat + int(self.ttl)
        claims = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": secrets.token_urlsafe(12),
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"typ": "JWT"})
        return token, exp


class TokenVerifier:
    """Verifies tokens offline against the index certificate; caches what it verified."""

    def __init__(self, index_cert: x509.Certificate, cache_size: int = 1024) -> None:
        key = index_cert.public_key()
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the index certificate must hold an Ed25519 key")
        names = certificate_dns_names(index_cert)
        if not names:
            raise ValueError("the index certificate names no DNS host")
        self._key = key
        self.issuer = names[0]
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, token: str, now: float | None = None) -> Principal:
        """The token's principal, or :class:`TokenInvalid` / :class:`TokenExpired`."""
        now = time.time() if now is None else now
        cached = self._cache.get(token)
        if cached is not None:
            self._cache.move_to_end(token)
            cached.check_current(now)
            return cached
        principal = self._verify_uncached(token, now)
        self._cache[token] = principal
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    def _verify_uncached(self, token: str, now: float) -> Principal:
        if len(token) > MAX_TOKEN_BYTES or not token.isascii():
            raise TokenInvalid("token too large or not ASCII")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid("malformed token") from exc
        # Exactly {alg: EdDSA, typ: JWT}: no kid/jku/jwk/x5u/crit to steer key selection.
        if header != _ALLOWED_HEADER:
            raise TokenInvalid("unexpected token header")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=self.issuer,
                leeway=LEEWAY,
                # strict_aud: "aud" must be exactly our audience, not a list that holds it.
                options={"require": list(REQUIRED_CLAIMS), "verify_iat": True, "strict_aud": True},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired() from exc
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid(f"token rejected: {type(exc).__name__}") from exc
        sub, jti, exp, iat = claims["sub"], claims["jti"], claims["exp"], claims["iat"]
        if type(sub) is not str or type(jti) is not str or not sub:
            raise TokenInvalid("token claims have the wrong types")
        if type(exp) is not int or type(iat) is not int or iat > now + LEEWAY:
            raise TokenInvalid("token issued in the future")
        return Principal(sub, float(exp), jti)
