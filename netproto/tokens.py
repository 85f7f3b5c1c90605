"""Tokens (PROTOCOL.md §8): EdDSA JWTs issued by the index, verified offline by anyone holding
the index certificate, each for one audience and, when issued to a client certificate, bound
to it (RFC 8705 ``cnf`` with ``x5t#S256``).

Verification pins the algorithm, requires every claim, checks the header, refuses oversized
tokens before decoding, and caches verified tokens so the hot path pays once per token. The
binding is checked against the certificate the client presented in the TLS handshake
(:meth:`TokenVerifier.verify_presented`, or :meth:`TokenVerifier.check_binding` after
:meth:`TokenVerifier.verify`), memoised per (token, certificate) so that costs once too.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from netproto.errors import TokenExpired, TokenInvalid
from netproto.tls import certificate_dns_names

#: The audience of tokens for the index (``sync``, ``search``, ``ping``, ``bye``, ...).
INDEX_AUDIENCE = "p2pshare/index"
#: The audience of tokens for peers (``list``, ``fetch``).
PEER_AUDIENCE = "p2pshare/peer"
ALGORITHM = "EdDSA"
MAX_TOKEN_BYTES = 2048
REQUIRED_CLAIMS = ("iss", "aud", "sub", "iat", "nbf", "exp", "jti")
_ALLOWED_HEADER = {"alg": ALGORITHM, "typ": "JWT"}
LEEWAY = 30  # seconds of clock skew tolerated between index and peers
#: The RFC 8705 confirmation method: the certificate's SHA-256 thumbprint.
THUMBPRINT_METHOD = "x5t#S256"
_MAX_CLAIM = 256  # longest sid or thumbprint accepted (a thumbprint is 43 characters)


def certificate_thumbprint(cert: x509.Certificate) -> str:
    """RFC 8705 ``x5t#S256``: the SHA-256 of the certificate's DER, base64url, no padding."""
    digest = cert.fingerprint(hashes.SHA256())
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for, until when, and to which certificate it is bound."""

    subject: str
    expires_at: float
    token_id: str
    #: The session the token belongs to (``sid``): ``auth`` starts one, ``renew`` keeps it.
    session: str = ""
    #: ``cnf.x5t#S256`` of a bound token, or None for an unbound one.
    thumbprint: str | None = None
    audience: str = PEER_AUDIENCE

    @property
    def session_id(self) -> str:
        """The session to deny-list when it ends (the ``jti`` for a token without ``sid``)."""
        return self.session or self.token_id

    def check_current(self, now: float | None = None) -> None:
        """Raise :class:`TokenExpired` once the token's ``exp`` has passed."""
        if (time.time() if now is None else now) >= self.expires_at + LEEWAY:
            raise TokenExpired()


@dataclass(frozen=True, slots=True)
class SessionTokens:
    """What ``auth`` and ``renew`` hand out: an index token, and a peer token when bound."""

    token: str
    expires_at: int
    session: str
    peer_token: str | None = None


class TokenIssuer:
    """Issues tokens signed with the index's TLS key."""

    def __init__(self, key: Ed25519PrivateKey, issuer: str, ttl: float = 900) -> None:
        self._key = key
        self.issuer = issuer
        self.ttl = ttl

    def issue(
        self,
        subject: str,
        now: float | None = None,
        *,
        audience: str = PEER_AUDIENCE,
        thumbprint: str | None = None,
        session: str | None = None,
    ) -> tuple[str, int]:
        """A fresh token for ``subject`` and one audience, and its expiry (Unix seconds).

        With ``thumbprint`` (see :func:`certificate_thumbprint`) the token is bound to that
        certificate; ``session`` is the ``sid`` claim (a fresh one by default).
        """
        iat = int(time.time() if now is None else now)
        exp = iat + int(self.ttl)
        claims: dict[str, object] = {
            "iss": self.issuer,
            "aud": audience,
            "sub": subject,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": secrets.token_urlsafe(12),
            "sid": session if session is not None else secrets.token_urlsafe(12),
        }
        if thumbprint is not None:
            claims["cnf"] = {THUMBPRINT_METHOD: thumbprint}
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"typ": "JWT"})
        return token, exp

    def issue_session(
        self,
        subject: str,
        cert: x509.Certificate | None,
        *,
        session: str | None = None,
        now: float | None = None,
    ) -> SessionTokens:
        """The tokens of one session: for the index, and (only for a client certificate,
        since peers require one) for peers, both bound to ``cert``."""
        now = time.time() if now is None else now
        sid = session if session is not None else secrets.token_urlsafe(12)
        thumbprint = certificate_thumbprint(cert) if cert is not None else None
        token, expires_at = self.issue(
            subject, now, audience=INDEX_AUDIENCE, thumbprint=thumbprint, session=sid
        )
        peer_token = None
        if thumbprint is not None:
            peer_token, _ = self.issue(
                subject, now, audience=PEER_AUDIENCE, thumbprint=thumbprint, session=sid
            )
        return SessionTokens(token, expires_at, sid, peer_token)


class BindingChecker:
    """Checks a verified token's ``cnf`` against the certificate presented in the handshake.

    Pairs whose binding held are remembered by identity: a connection keeps both its
    principal and its certificate, so its later requests skip hashing the certificate again.
    """

    def __init__(self, *, require_binding: bool = False, cache_size: int = 1024) -> None:
        self.require_binding = require_binding
        self._cache_size = cache_size
        self._held: OrderedDict[tuple[int, int], tuple[Principal, x509.Certificate]] = OrderedDict()

    def check(self, principal: Principal, cert: x509.Certificate | None) -> None:
        """Raise :class:`TokenInvalid` unless a bound token comes with its certificate (and,
        with ``require_binding``, unless the token is bound at all)."""
        expected = principal.thumbprint
        if expected is None:
            if self.require_binding:
                raise TokenInvalid("token not bound to a client certificate")
            return
        if cert is None:
            raise TokenInvalid("token bound to a client certificate; none was presented")
        key = (id(principal), id(cert))
        held = self._held.get(key)
        if held is not None and held[0] is principal and held[1] is cert:
            return
        if not hmac.compare_digest(expected, certificate_thumbprint(cert)):
            raise TokenInvalid("token bound to another client certificate")
        self._held[key] = (principal, cert)  # the references keep both ids from being reused
        if len(self._held) > self._cache_size:
            self._held.popitem(last=False)


class TokenVerifier:
    """Verifies tokens of one audience offline against the index certificate.

    A server checks a request's token with :meth:`verify_presented`, passing the client
    certificate of the TLS handshake: a token bound to a certificate is refused without that
    very certificate, and with ``require_binding`` (what a peer wants: it only ever serves
    clients with a certificate) an unbound token is refused too.
    """

    def __init__(
        self,
        index_cert: x509.Certificate,
        cache_size: int = 1024,
        *,
        audience: str = PEER_AUDIENCE,
        require_binding: bool = False,
    ) -> None:
        key = index_cert.public_key()
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the index certificate must hold an Ed25519 key")
        names = certificate_dns_names(index_cert)
        if not names:
            raise ValueError("the index certificate names no DNS host")
        self._key = key
        self.issuer = names[0]
        self.audience = audience
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_size = cache_size
        self.binding = BindingChecker(require_binding=require_binding, cache_size=cache_size)

    def verify(self, token: str, now: float | None = None) -> Principal:
        """The token's principal, or :class:`TokenInvalid` / :class:`TokenExpired`.

        Everything but the binding: call :meth:`check_binding` next, or use
        :meth:`verify_presented`.
        """
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

    def verify_presented(
        self, token: str, cert: x509.Certificate | None, now: float | None = None
    ) -> Principal:
        """:meth:`verify`, then :meth:`check_binding` against the handshake's certificate."""
        principal = self.verify(token, now)
        self.check_binding(principal, cert)
        return principal

    def check_binding(self, principal: Principal, cert: x509.Certificate | None) -> None:
        """:meth:`BindingChecker.check` with this verifier's ``require_binding``."""
        self.binding.check(principal, cert)

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
                audience=self.audience,
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
        sid = claims.get("sid", "")
        if type(sid) is not str or len(sid) > _MAX_CLAIM:
            raise TokenInvalid("token claims have the wrong types")
        return Principal(sub, float(exp), jti, sid, _thumbprint(claims), self.audience)


def _thumbprint(claims: dict[str, object]) -> str | None:
    """The ``cnf`` claim's certificate thumbprint; None without ``cnf``; refused if malformed."""
    if "cnf" not in claims:
        return None
    cnf = claims["cnf"]
    # Exactly {"x5t#S256": <str>}: a confirmation method we do not check must not pass as bound.
    if type(cnf) is not dict or list(cnf) != [THUMBPRINT_METHOD]:
        raise TokenInvalid("token has an unsupported cnf claim")
    thumbprint = cnf[THUMBPRINT_METHOD]
    if type(thumbprint) is not str or not 0 < len(thumbprint) <= _MAX_CLAIM:
        raise TokenInvalid("token has a malformed cnf claim")
    return thumbprint
