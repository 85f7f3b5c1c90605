"""TLS attacks on a live indexd and a live peerd (PROTOCOL.md §1): old protocol versions, other
key-exchange groups, plaintext on the TLS port, silent clients, and wrong, missing or foreign
client certificates. Each is refused and the daemon serves a healthy client right after."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from netproto.errors import ConnectionClosed
from netproto.server import ServerLimits
from tests.support.adversary import (
    HEALTH_KEYWORD,
    HOST,
    STEP,
    Live,
    assert_serves,
    live_daemons,
    open_conn,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

KINDS = ("index", "peer")
HANDSHAKE_TIMEOUT = 1.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    limits = ServerLimits(handshake_timeout=HANDSHAKE_TIMEOUT)
    tmp = tmp_path_factory.mktemp("adv-tls")
    async with live_daemons(pki, tmp, index_limits=limits, peer_limits=limits) as daemons:
        yield daemons


def _legacy_client(pki: Any, version: ssl.TLSVersion, cert: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.ca))
    if version < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL 3 offer TLS 1.0/1.1 at all
    ctx.minimum_version = version
    ctx.maximum_version = version
    if cert is not None:
        ctx.load_cert_chain(str(pki.cert(cert)), str(pki.key(cert)))
    return ctx


async def _handshake(port: int, name: str, ctx: ssl.SSLContext) -> tuple[Any, Any]:
    return await asyncio.wait_for(
        asyncio.open_connection(HOST, port, ssl=ctx, server_hostname=name), STEP
    )


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "version",
    [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1],
    ids=["TLSv1.2", "TLSv1.1", "TLSv1.0"],
)
async def test_a_client_speaking_an_older_tls_version_is_refused(
    live: Live, kind: str, version: ssl.TLSVersion
) -> None:
    port, name, _ = live.target(kind)
    ctx = _legacy_client(live.pki, version, "peer2" if kind == "peer" else None)
    with pytest.raises((ssl.SSLError, ConnectionError)) as caught:
        await _handshake(port, name, ctx)
    # Refused by the server (an alert, or the connection dropped), not by our own client
    # failing to offer the version at all.
    assert "NO_PROTOCOLS_AVAILABLE" not in str(caught.value), caught.value
    await assert_serves(live, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("group", ["prime256v1", "secp384r1"])
async def test_a_tls_1_3_client_without_x25519_is_refused(
    live: Live, kind: str, group: str
) -> None:
    port, name, ctx = live.target(kind)
    ctx.set_ecdh_curve(group)  # offer only this key-exchange group
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _, writer = await _handshake(port, name, ctx)
        writer.close()
    await assert_serves(live, kind)


@pytest.mark.parametrize("kind", KINDS)
async def test_connections_negotiate_tls_1_3_with_x25519_and_an_aead_cipher(
    live: Live, kind: str
) -> None:
    port, name, ctx = live.target(kind)
    _, writer = await _handshake(port, name, ctx)
    tls = writer.get_extra_info("ssl_object")
    cipher, version, _ = tls.cipher()
    assert version == "TLSv1.3" and tls.version() == "TLSv1.3"
    assert cipher in (
        "TLS_AES_256_GCM_SHA384",
        "TLS_AES_128_GCM_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
    )
    assert tls.compression() is None
    writer.transport.abort()


PLAINTEXT = {
    "an HTTP request": b"GET / HTTP/1.1\r\nHost: indexd\r\n\r\n",
    "an HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "a protocol frame without TLS": b"\x00\x00\x00\x10" + b"\x84" + b"x" * 15,
    "a TLS record header claiming 16 MiB": b"\x16\x03\x01\xff\xff" + b"\x00" * 64,
    "an SSLv2 ClientHello": bytes.fromhex("80 2e 01 00 02 00 15 00 00 00 10") + b"\x00" * 37,
    "random bytes": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("data", PLAINTEXT.values(), ids=PLAINTEXT.keys())
async def test_plaintext_on_the_tls_port_is_closed_without_an_answer(
    live: Live, kind: str, data: bytes
) -> None:
    port, _, _ = live.target(kind)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), STEP)
    started = time.monotonic()
    writer.write(data)
    try:
        reply = await asyncio.wait_for(reader.read(), STEP)
    except ConnectionResetError:
        reply = b""
    # Nothing readable comes back (at most a TLS alert record, never an HTTP or protocol answer).
    assert reply == b"" or reply[:1] == b"\x15", reply[:32]
    assert time.monotonic() - started <= HANDSHAKE_TIMEOUT + 2
    writer.transport.abort()
    await assert_serves(live, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sends", [b"", b"\x16\x03\x01"], ids=["nothing", "half a record header"])
async def test_a_silent_client_is_dropped_at_the_handshake_timeout(
    live: Live, kind: str, sends: bytes
) -> None:
    port, _, _ = live.target(kind)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), STEP)
    started = time.monotonic()
    writer.write(sends)
    await assert_serves(live, kind)  # served while the silent one waits
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), STEP) == b""
    elapsed = time.monotonic() - started
    assert HANDSHAKE_TIMEOUT * 0.8 <= elapsed <= HANDSHAKE_TIMEOUT + 3, elapsed
    writer.transport.abort()
    await assert_serves(live, kind)


# --- client certificates ---------------------------------------------------------------------


def _self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    """A self-signed Ed25519 certificate naming ``name``: right name, wrong issuer."""
    key = Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, None)
    )
    cert_path, key_path = tmp / f"{name}-self.crt", tmp / f"{name}-self.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _client_ctx(pki: Any, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    from netproto.tls import client_context

    return client_context(pki.ca, cert, key)


async def _refused(port: int, name: str, ctx: ssl.SSLContext, token: str) -> None:
    """The handshake or the first request fails; nothing is ever answered."""
    with pytest.raises((ConnectionClosed, ssl.SSLError, ConnectionError)):
        conn = await open_conn(port, name, ctx)
        try:
            await conn.request("list", {"keyword": HEALTH_KEYWORD}, token)
        finally:
            await conn.close()


async def test_the_peer_refuses_a_client_without_a_certificate(live: Live) -> None:
    await _refused(live.peer_port, "peer1", live.pki.client_ctx(), live.token())
    await assert_serves(live, "peer")


async def test_the_peer_refuses_a_client_certificate_from_another_ca(live: Live) -> None:
    ctx = live.pki.client_ctx("peer1", other=True)
    await _refused(live.peer_port, "peer1", ctx, live.token())
    await assert_serves(live, "peer")


async def test_the_peer_refuses_a_self_signed_client_certificate_naming_a_known_peer(
    live: Live, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path, "peer2")
    await _refused(live.peer_port, "peer1", _client_ctx(live.pki, cert, key), live.token())
    await assert_serves(live, "peer")


async def test_the_index_refuses_a_client_certificate_from_another_ca(live: Live) -> None:
    ctx = live.pki.client_ctx("peer1", other=True)
    with pytest.raises((ConnectionClosed, ssl.SSLError, ConnectionError)):
        conn = await open_conn(live.index_port, "indexd", ctx)
        try:
            await conn.request("search", {"keyword": HEALTH_KEYWORD}, live.token())
        finally:
            await conn.close()
    await assert_serves(live, "index")


async def test_the_index_refuses_a_self_signed_client_certificate(
    live: Live, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path, "peer1")
    with pytest.raises((ConnectionClosed, ssl.SSLError, ConnectionError)):
        conn = await open_conn(live.index_port, "indexd", _client_ctx(live.pki, cert, key))
        try:
            await conn.request("search", {"keyword": HEALTH_KEYWORD}, live.token())
        finally:
            await conn.close()
    await assert_serves(live, "index")


async def test_a_client_refuses_a_server_certificate_for_another_name(live: Live) -> None:
    # Reaching the index while expecting peer1 (or the reverse): TLS names the impostor.
    with pytest.raises((ConnectionClosed, ssl.SSLError)):
        await open_conn(live.index_port, "peer1", live.pki.client_ctx("peer2"))
    with pytest.raises((ConnectionClosed, ssl.SSLError)):
        await open_conn(live.peer_port, "indexd", live.pki.client_ctx("peer2"))
    await assert_serves(live, "index")
    await assert_serves(live, "peer")


@pytest.mark.long
async def test_the_tls_audit_of_live_daemons_passes() -> None:
    # `make audit` runs it with sslyze in its own venv; here sslyze is used only if installed.
    from tests.support import tls_audit

    assert await asyncio.to_thread(tls_audit.main, []) == 0
