"""Forged, stretched and misused tokens against a live indexd and a live peerd (PROTOCOL.md §8).

Every forgery is sent to both daemons on an operation that needs a token: the index's
``search`` and the peer's ``list``, each with claims for that daemon's audience, so only the
forgery itself can be what is refused. The answer is TOKEN_INVALID (or TOKEN_EXPIRED), the
connection stays open and usable, and a healthy client is served after. A genuine token used
on another user's domain name is FORBIDDEN and leaves that user's listing alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from certs import load_cert, load_key
from netproto.errors import Forbidden, NotFound
from netproto.tokens import INDEX_AUDIENCE, PEER_AUDIENCE, certificate_thumbprint
from tests.support.adversary import (
    HEALTH_KEYWORD,
    MAX_FRAME,
    Live,
    assert_index_serves,
    assert_serves,
    close_writer,
    error_code,
    live_daemons,
    open_conn,
    open_raw,
    read_message,
    request_frame,
)
from tests.support.leaves import client_ctx_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

KINDS = ("index", "peer")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    async with live_daemons(pki, tmp_path_factory.mktemp("adv-tokens")) as daemons:
        # A second registered user, "peer2", whose genuine token is misused below.
        conn = await open_conn(daemons.index_port, "indexd", pki.client_ctx())
        await conn.request("register", {"username": "peer2", "password": "peer2's password"})
        await conn.close()
        yield daemons


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(value: Any) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


AUDIENCES = {"index": INDEX_AUDIENCE, "peer": PEER_AUDIENCE}


def claims(audience: str = INDEX_AUDIENCE, **changes: Any) -> dict[str, Any]:
    """Claims the live index would issue for peer2 and ``audience``; a change to None removes
    that claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": "indexd",
        "aud": audience,
        "sub": "peer2",
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "jti": "adv-jti",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


HEADER = {"alg": "EdDSA", "typ": "JWT"}


def eddsa(
    key: Ed25519PrivateKey, payload: dict[str, Any], header: dict[str, Any] | None = None
) -> str:
    signing_input = f"{_json(header or HEADER)}.{_json(payload)}"
    return f"{signing_input}.{_b64(key.sign(signing_input.encode()))}"


def hmac_token(alg: str, secret: bytes, payload: dict[str, Any]) -> str:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{_json({'alg': alg, 'typ': 'JWT'})}.{_json(payload)}"
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), digest).digest())}"


#: A forgery: made from the session PKI, for one audience.
Forge = Callable[[Any, str], str]


def _index_key(pki: Any) -> Ed25519PrivateKey:
    key = load_key(pki.key("indexd"))
    assert isinstance(key, Ed25519PrivateKey)
    return key


def _public_forms(pki: Any) -> list[bytes]:
    cert = load_cert(pki.cert("indexd"))
    public = cert.public_key()
    return [
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        cert.public_bytes(serialization.Encoding.PEM),
    ]


def _attacker_jwk(key: Ed25519PrivateKey) -> dict[str, str]:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}


INVALID = "TOKEN_INVALID"


def real(pki: Any, audience: str, header: dict[str, Any] | None = None, **changes: Any) -> str:
    """Signed with the live index's own key: the header or claim checks alone must decide. A
    peer token is bound to peer2's certificate, the one the connection to the peer presents
    (peers take bound tokens only)."""
    if audience == PEER_AUDIENCE:
        bound = certificate_thumbprint(load_cert(pki.cert("peer2")))
        changes = {"cnf": {"x5t#S256": bound}, **changes}
    return eddsa(_index_key(pki), claims(audience, **changes), header)


def unsigned(alg: str, signature: str = "") -> Forge:
    return lambda pki, aud: f"{_json({'alg': alg, 'typ': 'JWT'})}.{_json(claims(aud))}.{signature}"


def keyed_with_public_form(i: int) -> Forge:
    """HS256 with the index's public key (in form ``i`` of :func:`_public_forms`) as secret."""
    return lambda pki, aud: hmac_token("HS256", _public_forms(pki)[i], claims(aud))


def with_header(extra: dict[str, Any]) -> Forge:
    """Really signed, with ``extra`` added to the header."""
    return lambda pki, aud: real(pki, aud, {**HEADER, **extra})


def _swap_segment(pki: Any, aud: str, index: int, value: str) -> str:
    parts = real(pki, aud).split(".")
    parts[index] = value
    return ".".join(parts)


NOW = int(time.time())
STEERING_HEADERS: dict[str, dict[str, Any]] = {
    "crit": {"crit": ["exp"]},
    "jku": {"jku": "https://evil.invalid/jwks.json"},
    "kid": {"kid": "../../../../dev/null"},
    "x5u": {"x5u": "https://evil.invalid/cert.pem"},
    "x5c": {"x5c": ["MIIB"]},
    "typ at+jwt": {"typ": "at+jwt"},
    "b64 false": {"b64": False, "crit": ["b64"]},
}

FORGERIES: dict[str, tuple[Forge, str]] = {
    # -- algorithm games
    "alg none": (unsigned("none"), INVALID),
    "alg None": (unsigned("None"), INVALID),
    "alg none, signature kept": (
        lambda pki, aud: _swap_segment(pki, aud, 0, _json({"alg": "none", "typ": "JWT"})),
        INVALID,
    ),
    **{
        f"HS256 keyed with the public key ({form})": (keyed_with_public_form(i), INVALID)
        for i, form in enumerate(["raw", "SPKI PEM", "SPKI DER", "certificate PEM"])
    },
    "HS512 keyed with the public key": (
        lambda pki, aud: hmac_token("HS512", _public_forms(pki)[1], claims(aud)),
        INVALID,
    ),
    "RS256 header over an EdDSA signature": (
        lambda pki, aud: real(pki, aud, {"alg": "RS256", "typ": "JWT"}),
        INVALID,
    ),
    "ES256 header": (lambda pki, aud: real(pki, aud, {"alg": "ES256", "typ": "JWT"}), INVALID),
    # -- the wrong key
    "signed by another peer's key": (
        lambda pki, aud: eddsa(load_key(pki.key("mallory")), claims(aud)),
        INVALID,
    ),
    "signed by another CA's index": (
        lambda pki, aud: eddsa(load_key(pki.key("indexd", other=True)), claims(aud)),
        INVALID,
    ),
    "payload edited after signing": (
        lambda pki, aud: _swap_segment(pki, aud, 1, _json(claims(aud, sub="peer1"))),
        INVALID,
    ),
    "signature truncated": (lambda pki, aud: real(pki, aud)[:-4], INVALID),
    "signature empty": (lambda pki, aud: _swap_segment(pki, aud, 2, ""), INVALID),
    # -- headers that steer key selection
    **{f"header {name}": (with_header(extra), INVALID) for name, extra in STEERING_HEADERS.items()},
    "header without typ": (lambda pki, aud: real(pki, aud, {"alg": "EdDSA"}), INVALID),
    "embedded jwk of the attacker's key": (
        lambda pki, aud: eddsa(
            load_key(pki.key("mallory")),
            claims(aud),
            {**HEADER, "jwk": _attacker_jwk(load_key(pki.key("mallory")))},
        ),
        INVALID,
    ),
    # -- claims
    "aud of another service": (lambda pki, aud: real(pki, aud, aud="other"), INVALID),
    "aud as a list with ours in it": (lambda pki, aud: real(pki, aud, aud=["other", aud]), INVALID),
    "aud missing": (lambda pki, aud: real(pki, aud, aud=None), INVALID),
    "iss of another index": (lambda pki, aud: real(pki, aud, iss="evil-index"), INVALID),
    "iss missing": (lambda pki, aud: real(pki, aud, iss=None), INVALID),
    "iat an hour ahead": (lambda pki, aud: real(pki, aud, iat=int(time.time()) + 3600), INVALID),
    "nbf an hour ahead": (lambda pki, aud: real(pki, aud, nbf=int(time.time()) + 3600), INVALID),
    "iat as a string": (lambda pki, aud: real(pki, aud, iat="0"), INVALID),
    "exp an hour ago": (
        lambda pki, aud: real(pki, aud, exp=NOW - 3600, iat=NOW - 4000, nbf=NOW - 4000),
        "TOKEN_EXPIRED",
    ),
    "exp missing": (lambda pki, aud: real(pki, aud, exp=None), INVALID),
    "sub missing": (lambda pki, aud: real(pki, aud, sub=None), INVALID),
    "sub as an int": (lambda pki, aud: real(pki, aud, sub=7), INVALID),
    "jti missing": (lambda pki, aud: real(pki, aud, jti=None), INVALID),
    # -- shape and size
    "not a JWT": (lambda pki, aud: "eyJhbGciOiJFZERTQSJ9", INVALID),
    "four segments": (lambda pki, aud: real(pki, aud) + ".e30", INVALID),
    "non-ASCII": (lambda pki, aud: real(pki, aud) + "é", INVALID),
    "2049 characters": (lambda pki, aud: "a" * 2049, INVALID),
    "padded to 4 KiB, validly signed": (lambda pki, aud: real(pki, aud, pad="p" * 4096), INVALID),
    "nearly a whole frame": (lambda pki, aud: "a" * (MAX_FRAME - 200), INVALID),
}


def _request(kind: str, rid: int, token: str) -> bytes:
    op = "search" if kind == "index" else "list"
    return request_frame(rid, op, {"keyword": HEALTH_KEYWORD}, token)


@pytest.mark.parametrize("kind", KINDS)
async def test_the_unforged_token_every_forgery_starts_from_is_accepted(
    live: Live, kind: str
) -> None:
    # So each forgery below is refused for what it changes, not for a wrong audience.
    reader, writer = await open_raw(*live.target(kind))
    writer.write(_request(kind, 1, real(live.pki, AUDIENCES[kind])))
    answer = await read_message(reader)
    assert answer["id"] == 1 and answer["ok"] is True, answer
    close_writer(writer)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("forge,code", FORGERIES.values(), ids=FORGERIES.keys())
async def test_a_forged_or_stretched_token_is_refused_and_the_connection_stays_usable(
    live: Live, kind: str, forge: Forge, code: str
) -> None:
    token = forge(live.pki, AUDIENCES[kind])
    reader, writer = await open_raw(*live.target(kind))
    writer.write(_request(kind, 5, token))
    answer = await read_message(reader, timeout=10)
    assert (answer["id"], error_code(answer)) == (5, code), answer
    # The same connection still works with a genuine token (nothing was cached for the bad one).
    writer.write(_request(kind, 6, live.token_for(kind)))
    after = await read_message(reader)
    assert after["id"] == 6 and after["ok"] is True, after
    close_writer(writer)
    await assert_serves(live, kind)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_genuine_token_still_works_after_a_forgery_for_the_same_user_on_the_connection(
    live: Live, kind: str
) -> None:
    genuine = live.token_for(kind, "peer2")
    forged = eddsa(load_key(live.pki.key("mallory")), claims(AUDIENCES[kind], sub="peer2"))
    reader, writer = await open_raw(*live.target(kind))
    writer.write(
        _request(kind, 1, genuine) + _request(kind, 2, forged) + _request(kind, 3, genuine)
    )
    answers = {m["id"]: m for m in [await read_message(reader) for _ in range(3)]}
    assert answers[1]["ok"] is True and answers[3]["ok"] is True, answers
    assert error_code(answers[2]) == "TOKEN_INVALID"
    close_writer(writer)


async def test_a_token_from_another_index_is_refused_by_both_daemons(live: Live, pki: Any) -> None:
    # The other deployment's index would issue this very token (same names, its own key).
    from netproto.tokens import TokenIssuer

    other = TokenIssuer(load_key(pki.key("indexd", other=True)), "indexd")
    for kind in KINDS:
        token = other.issue("peer2", audience=AUDIENCES[kind])[0]
        reader, writer = await open_raw(*live.target(kind))
        writer.write(_request(kind, 1, token))
        assert error_code(await read_message(reader)) == "TOKEN_INVALID"
        close_writer(writer)
        await assert_serves(live, kind)


@pytest.mark.parametrize("op", ["sync", "ping", "bye"])
async def test_a_valid_token_of_one_user_cannot_touch_another_users_domain_name(
    live: Live, op: str
) -> None:
    token = live.token("peer2")  # genuine, for a registered user
    body: dict[str, Any] = {"domain_name": "peer1"}
    if op == "sync":
        body.update(port_number=7009, files=[])
    # Without a certificate naming peer1: refused before ownership is even looked at.
    bare = await open_conn(live.index_port, "indexd", live.pki.client_ctx())
    with pytest.raises(Forbidden, match="client certificate"):
        await bare.request(op, body, token)
    await bare.close()
    # Even with peer1's certificate, the name is another user's.
    conn = await open_conn(live.index_port, "indexd", live.pki.client_ctx("peer1"))
    with pytest.raises(Forbidden, match="another user"):
        await conn.request(op, body, token)
    # Spelled in another case, or with a trailing dot: the same name, still peer1's.
    for spelling in ("PEER1", "peer1."):
        with pytest.raises(Forbidden, match="another user"):
            await conn.request(op, {**body, "domain_name": spelling}, token)
    await conn.close()
    await assert_index_serves(live)  # peer1's listing is still there, unchanged


async def test_a_valid_token_for_a_user_that_was_never_registered_cannot_sync(live: Live) -> None:
    conn = await open_conn(live.index_port, "indexd", client_ctx_for(live.pki, "ghost"))
    token = live.token("ghost")
    with pytest.raises(Forbidden, match="not registered"):
        await conn.request(
            "sync", {"domain_name": "ghost", "port_number": 7001, "files": []}, token
        )
    with pytest.raises(NotFound):
        await conn.request("ping", {"domain_name": "ghost"}, token)
    await conn.close()
    await assert_index_serves(live)


async def test_a_genuine_token_with_a_client_certificate_of_another_peer_cannot_sync_its_name(
    live: Live,
) -> None:
    # peer2's user and token, but presenting peer3's certificate: the name must match the cert.
    conn = await open_conn(live.index_port, "indexd", live.pki.client_ctx("peer3"))
    with pytest.raises(Forbidden, match="does not name"):
        await conn.request(
            "sync", {"domain_name": "peer2", "port_number": 7002, "files": []}, live.token("peer2")
        )
    await conn.close()
    await assert_index_serves(live)
