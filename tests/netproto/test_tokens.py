"""netproto.tokens: EdDSA JWTs issued by the index and verified offline, one audience each,
bound to the client certificate they were issued to (PROTOCOL.md §8)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from certs import load_cert, load_key
from netproto.errors import TokenExpired, TokenInvalid
from netproto.tokens import (
    INDEX_AUDIENCE,
    LEEWAY,
    MAX_TOKEN_BYTES,
    PEER_AUDIENCE,
    REQUIRED_CLAIMS,
    BindingChecker,
    TokenIssuer,
    TokenVerifier,
    certificate_thumbprint,
)


@pytest.fixture(scope="module")
def index_key(pki: Any) -> Ed25519PrivateKey:
    return load_key(pki.key("indexd"))


@pytest.fixture(scope="module")
def index_cert(pki: Any) -> x509.Certificate:
    return load_cert(pki.cert("indexd"))


@pytest.fixture
def issuer(index_key: Ed25519PrivateKey) -> TokenIssuer:
    return TokenIssuer(index_key, "indexd")


@pytest.fixture
def verifier(index_cert: x509.Certificate) -> TokenVerifier:
    return TokenVerifier(index_cert)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims for ``alice``; a change to ``None`` removes that claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": "indexd",
        "aud": PEER_AUDIENCE,
        "sub": "alice",
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "jti": "jti-1",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Ed25519PrivateKey, **headers: Any) -> str:
    """An EdDSA JWT over ``payload`` with extra header keys."""
    return jwt.encode(payload, key, algorithm="EdDSA", headers={"typ": "JWT", **headers})


def hs256(payload: dict[str, Any], secret: bytes) -> str:
    """A JWT MAC'd with HS256: the classic algorithm-confusion forgery."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(payload).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


# --- what is accepted ----------------------------------------------------------------------


def test_issued_token_verifies_to_its_subject(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token, expires_at = issuer.issue("alice")
    principal = verifier.verify(token)
    assert principal.subject == "alice"
    assert principal.expires_at == expires_at


def test_issued_token_has_the_pinned_header_and_every_claim(issuer: TokenIssuer) -> None:
    token, expires_at = issuer.issue("alice", now=1_700_000_000)
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "typ": "JWT"}
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {*REQUIRED_CLAIMS, "sid"}
    assert payload["iat"] == payload["nbf"] == 1_700_000_000
    assert payload["exp"] == expires_at == 1_700_000_000 + 900
    assert (payload["iss"], payload["aud"], payload["sub"]) == ("indexd", PEER_AUDIENCE, "alice")


def test_each_issued_token_has_a_fresh_jti(issuer: TokenIssuer) -> None:
    first, _ = issuer.issue("alice", now=1_700_000_000)
    second, _ = issuer.issue("alice", now=1_700_000_000)
    ids = {jwt.decode(t, options={"verify_signature": False})["jti"] for t in (first, second)}
    assert len(ids) == 2


def test_token_expired_less_than_the_leeway_ago_is_accepted(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token, _ = issuer.issue("alice", now=time.time() - issuer.ttl - LEEWAY / 2)
    assert verifier.verify(token).subject == "alice"


# --- expired -------------------------------------------------------------------------------


def test_expired_token_is_token_expired(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token, _ = issuer.issue("alice", now=time.time() - 3600)
    with pytest.raises(TokenExpired):
        verifier.verify(token)


def test_cached_token_becomes_expired_at_its_exp(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token, expires_at = issuer.issue("alice")
    verifier.verify(token)
    with pytest.raises(TokenExpired):
        verifier.verify(token, now=expires_at + LEEWAY + 1)


# --- forged or malformed -------------------------------------------------------------------


def test_alg_none_is_token_invalid(verifier: TokenVerifier) -> None:
    head = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    token = f"{head}.{_b64(json.dumps(claims()).encode())}."
    with pytest.raises(TokenInvalid):
        verifier.verify(token)


@pytest.mark.parametrize("encoding", ["raw", "pem"])
def test_hs256_keyed_with_the_public_key_is_token_invalid(
    verifier: TokenVerifier, index_cert: x509.Certificate, encoding: str
) -> None:
    if encoding == "raw":
        fmt = serialization.PublicFormat.Raw
        secret = index_cert.public_key().public_bytes(serialization.Encoding.Raw, fmt)
    else:
        fmt = serialization.PublicFormat.SubjectPublicKeyInfo
        secret = index_cert.public_key().public_bytes(serialization.Encoding.PEM, fmt)
    with pytest.raises(TokenInvalid):
        verifier.verify(hs256(claims(), secret))


def test_token_signed_by_another_ed25519_key_is_token_invalid(
    pki: Any, verifier: TokenVerifier
) -> None:
    foreign = load_key(pki.key("indexd", other=True))
    with pytest.raises(TokenInvalid):
        verifier.verify(sign(claims(), foreign))


def test_edited_payload_is_token_invalid(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token, _ = issuer.issue("alice")
    head, _, signature = token.split(".")
    forged = f"{head}.{_b64(json.dumps(claims(sub='admin')).encode())}.{signature}"
    with pytest.raises(TokenInvalid):
        verifier.verify(forged)


@pytest.mark.parametrize(
    "change",
    [
        {"aud": "someone-else"},
        {"iss": "peer1"},
        {"sub": ""},
        {"sub": 42},
        {"jti": 42},
        {"exp": int(time.time()) + 900.5},
        {"nbf": int(time.time()) + 600},
        {"iat": int(time.time()) + 600},
    ],
    ids=[
        "wrong aud",
        "wrong iss",
        "empty sub",
        "int sub",
        "int jti",
        "float exp",
        "nbf in the future",
        "iat in the future",
    ],
)
def test_token_with_bad_claims_is_token_invalid(
    index_key: Ed25519PrivateKey, verifier: TokenVerifier, change: dict[str, Any]
) -> None:
    with pytest.raises(TokenInvalid):
        verifier.verify(sign(claims(**change), index_key))


@pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
def test_token_missing_a_required_claim_is_token_invalid(
    index_key: Ed25519PrivateKey, verifier: TokenVerifier, claim: str
) -> None:
    with pytest.raises(TokenInvalid):
        verifier.verify(sign(claims(**{claim: None}), index_key))


@pytest.mark.parametrize(
    "header",
    [
        {"kid": "index-key-1"},
        {"jku": "https://attacker.example/jwks.json"},
        {"crit": ["exp"]},
        {"typ": "at+jwt"},
    ],
    ids=["kid", "jku", "crit", "typ"],
)
def test_token_with_unexpected_header_is_token_invalid(
    index_key: Ed25519PrivateKey, verifier: TokenVerifier, header: dict[str, Any]
) -> None:
    with pytest.raises(TokenInvalid):
        verifier.verify(sign(claims(), index_key, **header))


def test_oversized_token_is_token_invalid_before_decoding(
    verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an oversized token reached the JWT library")

    monkeypatch.setattr(jwt, "get_unverified_header", must_not_run)
    monkeypatch.setattr(jwt, "decode", must_not_run)
    with pytest.raises(TokenInvalid):
        verifier.verify("a" * (MAX_TOKEN_BYTES + 1))


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b", "a.b.c.d", "é.é.é"])
def test_malformed_token_is_token_invalid(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(TokenInvalid):
        verifier.verify(token)


# --- caching -------------------------------------------------------------------------------


def test_second_verification_of_a_token_comes_from_the_cache(
    issuer: TokenIssuer, verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    token, _ = issuer.issue("alice")
    first = verifier.verify(token)
    second = verifier.verify(token)
    assert calls == 1
    assert first == second


def test_cache_forgets_the_least_recently_used_token(
    issuer: TokenIssuer, index_cert: x509.Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    verifier = TokenVerifier(index_cert, cache_size=1)
    alice, _ = issuer.issue("alice")
    bob, _ = issuer.issue("bob")
    verifier.verify(alice)
    verifier.verify(bob)
    verifier.verify(alice)
    assert calls == 3


def test_rejected_token_is_not_cached(
    index_key: Ed25519PrivateKey, verifier: TokenVerifier
) -> None:
    token = sign(claims(nbf=int(time.time()) + 600), index_key)
    for _ in range(2):
        with pytest.raises(TokenInvalid):
            verifier.verify(token)


# --- the verifier's key --------------------------------------------------------------------


def _self_signed(key: Any, names: list[str]) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if names:
        san = x509.SubjectAlternativeName([x509.DNSName(n) for n in names])
        builder = builder.add_extension(san, critical=False)
    algorithm = None if isinstance(key, Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def test_verifier_refuses_an_index_certificate_without_an_ed25519_key() -> None:
    cert = _self_signed(ec.generate_private_key(ec.SECP256R1()), ["indexd"])
    with pytest.raises(ValueError, match="Ed25519"):
        TokenVerifier(cert)


def test_verifier_refuses_an_index_certificate_without_a_dns_name() -> None:
    cert = _self_signed(Ed25519PrivateKey.generate(), [])
    with pytest.raises(ValueError, match="DNS"):
        TokenVerifier(cert)


# --- audiences, sessions, certificate binding (RFC 8705) -----------------------------------


@pytest.fixture(scope="module")
def peer1_cert(pki: Any) -> x509.Certificate:
    return load_cert(pki.cert("peer1"))


@pytest.fixture(scope="module")
def peer2_cert(pki: Any) -> x509.Certificate:
    return load_cert(pki.cert("peer2"))


def test_the_thumbprint_is_the_unpadded_base64url_sha256_of_the_der(
    peer1_cert: x509.Certificate,
) -> None:
    der = peer1_cert.public_bytes(serialization.Encoding.DER)
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert certificate_thumbprint(peer1_cert) == expected
    assert len(expected) == 43 and "=" not in expected


def test_a_session_bound_to_a_certificate_names_its_thumbprint_in_cnf_for_both_audiences(
    issuer: TokenIssuer, peer1_cert: x509.Certificate
) -> None:
    tokens = issuer.issue_session("alice", peer1_cert)
    assert tokens.peer_token is not None
    index = jwt.decode(tokens.token, options={"verify_signature": False})
    peer = jwt.decode(tokens.peer_token, options={"verify_signature": False})
    assert (index["aud"], peer["aud"]) == (INDEX_AUDIENCE, PEER_AUDIENCE)
    assert index["cnf"] == peer["cnf"] == {"x5t#S256": certificate_thumbprint(peer1_cert)}
    assert index["sid"] == peer["sid"] == tokens.session
    assert index["jti"] != peer["jti"]


def test_a_session_without_a_certificate_gets_an_unbound_index_token_and_no_peer_token(
    issuer: TokenIssuer,
) -> None:
    tokens = issuer.issue_session("alice", None)
    assert tokens.peer_token is None
    assert "cnf" not in jwt.decode(tokens.token, options={"verify_signature": False})


@pytest.mark.parametrize(
    ("issued", "verified"),
    [(INDEX_AUDIENCE, PEER_AUDIENCE), (PEER_AUDIENCE, INDEX_AUDIENCE)],
    ids=["index token at a peer", "peer token at the index"],
)
def test_a_token_for_the_other_audience_is_token_invalid(
    issuer: TokenIssuer, index_cert: x509.Certificate, issued: str, verified: str
) -> None:
    token, _ = issuer.issue("alice", audience=issued)
    with pytest.raises(TokenInvalid):
        TokenVerifier(index_cert, audience=verified).verify(token)
    # ...and the same verifier still takes a token of its own audience.
    own, _ = issuer.issue("alice", audience=verified)
    assert TokenVerifier(index_cert, audience=verified).verify(own).subject == "alice"


def test_a_bound_token_verifies_with_the_certificate_it_names(
    issuer: TokenIssuer, verifier: TokenVerifier, peer1_cert: x509.Certificate
) -> None:
    token = issuer.issue_session("alice", peer1_cert).peer_token
    assert token is not None
    principal = verifier.verify_presented(token, peer1_cert)
    assert principal.thumbprint == certificate_thumbprint(peer1_cert)
    assert principal.audience == PEER_AUDIENCE


def test_a_bound_token_with_another_certificate_is_token_invalid(
    issuer: TokenIssuer,
    verifier: TokenVerifier,
    peer1_cert: x509.Certificate,
    peer2_cert: x509.Certificate,
) -> None:
    token = issuer.issue_session("alice", peer1_cert).peer_token
    assert token is not None
    with pytest.raises(TokenInvalid, match="another client certificate"):
        verifier.verify_presented(token, peer2_cert)
    assert verifier.verify_presented(token, peer1_cert).subject == "alice"


def test_a_bound_token_without_a_certificate_is_token_invalid(
    issuer: TokenIssuer, verifier: TokenVerifier, peer1_cert: x509.Certificate
) -> None:
    token = issuer.issue_session("alice", peer1_cert).peer_token
    assert token is not None
    with pytest.raises(TokenInvalid, match="none was presented"):
        verifier.verify_presented(token, None)
    assert verifier.verify_presented(token, peer1_cert).subject == "alice"


def test_a_verifier_requiring_binding_refuses_an_unbound_token(
    issuer: TokenIssuer, index_cert: x509.Certificate, peer1_cert: x509.Certificate
) -> None:
    strict = TokenVerifier(index_cert, require_binding=True)
    unbound, _ = issuer.issue("alice")
    with pytest.raises(TokenInvalid, match="not bound"):
        strict.verify_presented(unbound, peer1_cert)
    bound = issuer.issue_session("alice", peer1_cert).peer_token
    assert bound is not None
    assert strict.verify_presented(bound, peer1_cert).subject == "alice"


def test_a_binding_that_held_is_not_hashed_again_for_the_same_certificate_object(
    issuer: TokenIssuer,
    verifier: TokenVerifier,
    peer1_cert: x509.Certificate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = issuer.issue_session("alice", peer1_cert).peer_token
    assert token is not None
    verifier.verify_presented(token, peer1_cert)
    calls = 0
    real = x509.Certificate.fingerprint

    def counting(self: x509.Certificate, algorithm: Any) -> bytes:
        nonlocal calls
        calls += 1
        return real(self, algorithm)

    monkeypatch.setattr(x509.Certificate, "fingerprint", counting, raising=False)
    for _ in range(3):
        verifier.verify_presented(token, peer1_cert)
    assert calls == 0


@pytest.mark.parametrize(
    "cnf",
    [{"x5t": "abc"}, {"x5t#S256": 42}, {"x5t#S256": ""}, "abc", {"x5t#S256": "a", "jkt": "b"}],
    ids=["other method", "int thumbprint", "empty thumbprint", "not a map", "extra method"],
)
def test_a_malformed_cnf_claim_is_token_invalid(
    index_key: Ed25519PrivateKey, verifier: TokenVerifier, cnf: Any
) -> None:
    with pytest.raises(TokenInvalid, match="cnf"):
        verifier.verify(sign(claims(cnf=cnf), index_key))
    assert verifier.verify(sign(claims(), index_key)).subject == "alice"


def test_the_session_id_is_the_sid_claim_or_else_the_jti(
    index_key: Ed25519PrivateKey, verifier: TokenVerifier
) -> None:
    assert verifier.verify(sign(claims(sid="s-1"), index_key)).session_id == "s-1"
    assert verifier.verify(sign(claims(jti="j-2"), index_key)).session_id == "j-2"


def test_a_checker_without_require_binding_lets_an_unbound_token_pass(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    principal = verifier.verify(issuer.issue("alice")[0])
    BindingChecker().check(principal, None)
    with pytest.raises(TokenInvalid):
        BindingChecker(require_binding=True).check(principal, None)
