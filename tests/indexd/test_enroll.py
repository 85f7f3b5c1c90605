"""indexd.enroll against a live in-process index: ``ca``, ``enroll``, ``revoked``, and the
certificate profile whatever the request asks for (PROTOCOL.md §10)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import load_cert
from certs.requests import ca_fingerprint, make_request, serial_hex
from indexd import admin
from indexd.app import IndexConfig, IndexDaemon
from indexd.enroll import load_authority
from indexd.store import IssuedCertificate
from netproto.client import Connection
from netproto.enrollment import EnrollReply, RevokedReply
from netproto.errors import AuthFailed, AuthRequired, BadRequest, Forbidden, TokenInvalid, UnknownOp
from netproto.tls import client_context
from peerd.client import IndexClient
from runner import StartupError
from tests.conftest import PKI

PASSWORD = "correct horse battery"
TIMEOUT = 15.0

IndexRunner = Callable[[IndexConfig], contextlib.AbstractAsyncContextManager[IndexDaemon]]


def write_identity(
    directory: Path, key: ed25519.Ed25519PrivateKey, der: bytes
) -> tuple[Path, Path]:
    """Write an issued certificate and its key (for a mutual-TLS connection)."""
    cert_path, key_path = directory / "leaf.crt", directory / "leaf.key"
    cert = x509.load_der_x509_certificate(der)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@contextlib.asynccontextmanager
async def connect(
    pki: PKI, port: int, cert: Path | None = None, key: Path | None = None
) -> AsyncIterator[Connection]:
    """A connection to the index, with a client certificate when given."""
    conn = await Connection.open(
        "127.0.0.1",
        port,
        client_context(pki.ca, cert, key),
        server_hostname="indexd",
        request_timeout=TIMEOUT,
    )
    try:
        yield conn
    finally:
        await conn.close()


async def login(conn: Connection, user: str, *, register: bool = True) -> str:
    """Register (if asked) and log in; the index token."""
    creds = {"username": user, "password": PASSWORD}
    if register:
        await conn.request("register", creds)
    reply: dict[str, Any] = await conn.request("auth", creds)
    return str(reply["token"])


async def enroll(conn: Connection, token: str | None, name: str, csr: bytes) -> EnrollReply:
    """One ``enroll`` request; its typed reply."""
    body = await conn.request("enroll", {"domain_name": name, "csr": csr}, token)
    return EnrollReply.from_wire(body)


@pytest.fixture
def enrolling(index_config: Callable[..., IndexConfig], pki: PKI) -> IndexConfig:
    """An index that holds the CA key, rereading revocations every 50 ms."""
    return index_config(ca_key=pki.dir / "ca.key", revocation_refresh=0.05)


async def test_ca_gives_the_ca_certificate_whose_fingerprint_the_index_logs(
    pki: PKI, enrolling: IndexConfig, running_index: IndexRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "indexd.app")
    async with running_index(enrolling) as index, connect(pki, index.port) as conn:
        reply = await conn.request("ca", {})
    ca = load_cert(pki.ca)
    assert reply["certificate"] == ca.public_bytes(serialization.Encoding.DER)
    assert f"CA fingerprint: {ca_fingerprint(ca)}" in caplog.text


async def test_enroll_gives_the_plain_leaf_for_a_checked_request(
    pki: PKI, enrolling: IndexConfig, running_index: IndexRunner
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    async with running_index(enrolling) as index, connect(pki, index.port) as conn:
        token = await login(conn, "alice")
        reply = await enroll(conn, token, "Laptop", make_request(key, "laptop"))
    cert = x509.load_der_x509_certificate(reply.certificate)
    cert.verify_directly_issued_by(load_cert(pki.ca))
    assert cert.public_key() == key.public_key()
    assert reply.expires_at == int(cert.not_valid_after_utc.timestamp())
    assert reply.token is None  # a first enrollment, without a client certificate
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(names) == [x509.DNSName("laptop")]


async def test_a_request_for_ca_true_extra_sans_an_ip_san_or_long_life_gets_the_plain_24h_leaf(
    pki: PKI, enrolling: IndexConfig, running_index: IndexRunner
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "indexd")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("laptop"),
                    x509.DNSName("indexd"),
                    x509.DNSName("*.example"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        # A private "validity" request: nothing in a request sets the lifetime.
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x02\x02\x27\x10"
            ),
            critical=False,
        )
        .sign(key, algorithm=None)
        .public_bytes(serialization.Encoding.DER)
    )
    async with running_index(enrolling) as index, connect(pki, index.port) as conn:
        token = await login(conn, "alice")
        reply = await enroll(conn, token, "laptop", greedy)
    cert = x509.load_der_x509_certificate(reply.certificate)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans) == [x509.DNSName("laptop")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.rfc4514_string() == "CN=laptop"
    oids = {ext.oid.dotted_string for ext in cert.extensions}
    assert "1.3.6.1.4.1.99999.1" not in oids
    issued = cert.not_valid_before_utc + dt.timedelta(minutes=5)
    assert cert.not_valid_after_utc - issued == dt.timedelta(hours=24)


async def test_a_request_whose_signature_does_not_match_its_key_is_refused(
    pki: PKI, enrolling: IndexConfig, running_index: IndexRunner
) -> None:
    csr = bytearray(make_request(ed25519.Ed25519PrivateKey.generate(), "laptop"))
    csr[-1] ^= 0x01  # the signature is the last field of the request
    async with running_index(enrolling) as index, connect(pki, index.port) as conn:
        token = await login(conn, "alice")
        with pytest.raises(BadRequest, match="signature does not match"):
            await enroll(conn, token, "laptop", bytes(csr))


async def test_a_request_for_another_key_type_or_not_a_request_is_refused(
    pki: PKI, enrolling: IndexConfig, running_index: IndexRunner
) -> None:
    ec_request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "laptop")]))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    async with running_index(enrolling) as index, connect(pki, index.port) as conn:
        token = await login(conn, "alice")
        with pytest.raises(BadRequest, match="not an Ed25519 key"):
            await enroll(conn, token, "laptop", ec_request)
        with pytest.raises(BadRequest, match="not a DER PKCS#10"):
            await enroll(conn, token, "laptop", b"\x30\x03junk")
        with pytest.raises(BadRequest, match="not a DNS label"):
            csr = make_request(ed25519.Ed25519PrivateKey.generate(), "laptop")
            await enroll(conn, token, "lap.top", csr)


async def test_a_user_cannot_enroll_a_name_another_user_owns_or_the_index_s_own(
    pki: PKI, enrolling: IndexConfig, running_index: IndexRunner
) -> None:
    csr = make_request(ed25519.Ed25519PrivateKey.generate(), "laptop")
    async with running_index(enrolling) as index, connect(pki, index.port) as conn:
        alice = await login(conn, "alice")
        bob = await login(conn, "bob")
        await enroll(conn, alice, "laptop", csr)
        await enroll(conn, alice, "laptop", csr)  # the owner again: fine
        with pytest.raises(Forbidden, match="belongs to another user"):
            await enroll(conn, bob, "laptop", csr)
        with pytest.raises(Forbidden, match="the index's own"):
            await enroll(conn, bob, "indexd", csr)
    async with running_index(enrolling) as index, connect(pki, index.port) as conn:
        bob = await login(conn, "bob", register=False)
        with pytest.raises(Forbidden, match="belongs to another user"):  # after a restart too
            await enroll(conn, bob, "laptop", csr)


async def test_a_user_cannot_enroll_a_name_another_user_synced(
    pki: PKI, enrolling: IndexConfig, running_index: IndexRunner, index_client: Callable[..., Any]
) -> None:
    async with running_index(enrolling) as index:
        async with index_client(index.port, "peer1") as peer1:
            await peer1.register("carol", PASSWORD)
            await peer1.login("carol", PASSWORD)
            await peer1.sync("peer1", [])
        async with connect(pki, index.port) as conn:
            bob = await login(conn, "bob")
            with pytest.raises(Forbidden, match="belongs to another user"):
                await enroll(
                    conn, bob, "peer1", make_request(ed25519.Ed25519PrivateKey.generate(), "peer1")
                )


async def test_enroll_needs_a_token_and_the_index_s_ca_key(
    pki: PKI, index_config: Callable[..., IndexConfig], running_index: IndexRunner
) -> None:
    csr = make_request(ed25519.Ed25519PrivateKey.generate(), "laptop")
    config = index_config(ca_key=pki.dir / "ca.key")
    async with running_index(config) as index, connect(pki, index.port) as conn:
        with pytest.raises(AuthRequired):
            await enroll(conn, None, "laptop", csr)
    async with running_index(index_config()) as index, connect(pki, index.port) as conn:
        token = await login(conn, "alice")
        with pytest.raises(UnknownOp):
            await enroll(conn, token, "laptop", csr)


async def test_renewal_over_mutual_tls_needs_no_password_and_binds_tokens_to_the_new_cert(
    pki: PKI, enrolling: IndexConfig, running_index: IndexRunner, tmp_path: Path
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    csr = make_request(key, "laptop")
    async with running_index(enrolling) as index:
        async with connect(pki, index.port) as conn:
            token = await login(conn, "alice")
            first = await enroll(conn, token, "laptop", csr)
        cert, key_path = write_identity(tmp_path, key, first.certificate)
        async with connect(pki, index.port, cert, key_path) as conn:
            bound = (await conn.request("auth", {"username": "alice", "password": PASSWORD}))[
                "token"
            ]
        # A new connection with the certificate, a bound token, and no password sent on it.
        async with connect(pki, index.port, cert, key_path) as conn:
            renewed = await enroll(conn, bound, "laptop", csr)
            assert renewed.token is not None and renewed.peer_token is not None
            assert renewed.certificate != first.certificate
            assert renewed.token_expires_at > 0
            with pytest.raises(TokenInvalid):  # bound to the new certificate, not this one
                await conn.request("search", {"keyword": "koala"}, renewed.token)
        cert, key_path = write_identity(tmp_path, key, renewed.certificate)
        async with connect(pki, index.port, cert, key_path) as conn:
            assert (await conn.request("search", {"keyword": "koala"}, renewed.token))["hits"] == []


async def test_a_revoked_certificate_is_served_by_revoked_and_refused_with_its_tokens(
    pki: PKI, enrolling: IndexConfig, running_index: IndexRunner, tmp_path: Path
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    async with running_index(enrolling) as index:
        async with connect(pki, index.port) as conn:
            token = await login(conn, "alice")
            reply = await enroll(conn, token, "laptop", make_request(key, "laptop"))
        serial = serial_hex(x509.load_der_x509_certificate(reply.certificate))
        cert, key_path = write_identity(tmp_path, key, reply.certificate)
        async with connect(pki, index.port, cert, key_path) as conn:
            bound = (await conn.request("auth", {"username": "alice", "password": PASSWORD}))[
                "token"
            ]
            assert (await conn.request("revoked", {}, bound))["serials"] == []
            assert admin.main(["--db", str(enrolling.db), "revoke", "--serial", serial]) == 0
            await asyncio.sleep(0.3)
            with pytest.raises(TokenInvalid, match="revoked"):
                await conn.request("renew", {}, bound)
            with pytest.raises(TokenInvalid, match="revoked"):
                await enroll(conn, bound, "laptop", make_request(key, "laptop"))
        async with connect(pki, index.port) as conn:
            assert (await conn.request("revoked", {}, token))["serials"] == [serial]


async def test_a_disabled_user_can_neither_log_in_nor_renew_nor_enroll(
    pki: PKI, enrolling: IndexConfig, running_index: IndexRunner, tmp_path: Path
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    async with running_index(enrolling) as index:
        async with connect(pki, index.port) as conn:
            token = await login(conn, "alice")
            reply = await enroll(conn, token, "laptop", make_request(key, "laptop"))
        cert, key_path = write_identity(tmp_path, key, reply.certificate)
        async with connect(pki, index.port, cert, key_path) as conn:
            bound = (await conn.request("auth", {"username": "alice", "password": PASSWORD}))[
                "token"
            ]
            assert admin.main(["--db", str(enrolling.db), "disable-user", "alice"]) == 0
            await asyncio.sleep(0.3)
            with pytest.raises(AuthFailed):
                await conn.request("auth", {"username": "alice", "password": PASSWORD})
            with pytest.raises(TokenInvalid):
                await conn.request("renew", {}, bound)
            with pytest.raises(TokenInvalid):
                await enroll(conn, bound, "laptop", make_request(key, "laptop"))
        async with connect(pki, index.port) as conn:
            with pytest.raises(TokenInvalid, match="disabled"):
                await enroll(conn, token, "laptop", make_request(key, "laptop"))


def test_the_ca_key_must_be_readable_and_the_ca_s_own(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="cannot read"):
        load_authority(tmp_path / "none.crt", None, 60.0)
    with pytest.raises(StartupError, match="not a PEM certificate"):
        load_authority(pki.key("peer1"), None, 60.0)
    with pytest.raises(StartupError, match="is not the key of the CA"):
        load_authority(pki.ca, pki.key("peer1"), 60.0)


async def test_enrolling_past_the_domain_limit_or_against_the_database_is_forbidden(
    pki: PKI, index_config: Callable[..., IndexConfig], running_index: IndexRunner
) -> None:
    config = index_config(
        ca_key=pki.dir / "ca.key", max_domains_per_user=1, revocation_refresh=3600.0
    )
    csr = make_request(ed25519.Ed25519PrivateKey.generate(), "laptop")
    async with running_index(config) as index, connect(pki, index.port) as conn:
        token = await login(conn, "alice")
        await enroll(conn, token, "laptop", csr)
        with pytest.raises(Forbidden, match="at most 1 domain names"):
            await enroll(conn, token, "phone", csr)
        bob = await login(conn, "bob")
        # Disabled in the database, not yet reread: the database still refuses, and the name
        # is not left claimed.
        assert admin.main(["--db", str(config.db), "disable-user", "bob"]) == 0
        with pytest.raises(Forbidden, match="this user is disabled"):
            await enroll(conn, bob, "desk", csr)
        assert index.service is not None and "desk" not in index.service.owners
        assert index.enrollment is not None
        record = IssuedCertificate("ff", "carol", "tablet", 0.0, 1.0)
        assert index.enrollment._record(record) == "the token's user is not registered"


async def test_a_failed_reread_of_the_revocations_keeps_the_last_ones(
    pki: PKI,
    enrolling: IndexConfig,
    running_index: IndexRunner,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_index(enrolling) as index:
        assert index.enrollment is not None

        def broken(now: float) -> None:
            raise sqlite3.OperationalError("database is locked")

        monkeypatch.setattr(index.enrollment.store, "revocations", broken)
        await asyncio.sleep(0.3)
    assert "could not read the revocations: database is locked" in caplog.text


async def test_a_renewal_over_mutual_tls_with_another_key_or_name_is_refused(
    pki: PKI, enrolling: IndexConfig, running_index: IndexRunner, tmp_path: Path
) -> None:
    key, thief = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    async with running_index(enrolling) as index:
        async with connect(pki, index.port) as conn:
            token = await login(conn, "alice")
            first = await enroll(conn, token, "laptop", make_request(key, "laptop"))
            await enroll(conn, token, "desktop", make_request(key, "desktop"))
        cert, key_path = write_identity(tmp_path, key, first.certificate)
        async with connect(pki, index.port, cert, key_path) as conn:
            bound = (await conn.request("auth", {"username": "alice", "password": PASSWORD}))[
                "token"
            ]
            with pytest.raises(Forbidden, match="key of the certificate"):
                await enroll(conn, bound, "laptop", make_request(thief, "laptop"))
            with pytest.raises(Forbidden, match="name of the certificate"):
                await enroll(conn, bound, "desktop", make_request(key, "desktop"))
            renewed = await enroll(conn, bound, "laptop", make_request(key, "laptop"))
    assert x509.load_der_x509_certificate(renewed.certificate).public_key() == key.public_key()


async def test_revoked_pages_every_serial_and_says_when_more_follow(
    pki: PKI,
    enrolling: IndexConfig,
    running_index: IndexRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("indexd.enroll.MAX_REVOKED", 2)
    key = ed25519.Ed25519PrivateKey.generate()
    async with running_index(enrolling) as index, connect(pki, index.port) as conn:
        token = await login(conn, "alice")
        issued = set()
        for _ in range(5):
            reply = await enroll(conn, token, "laptop", make_request(key, "laptop"))
            issued.add(serial_hex(x509.load_der_x509_certificate(reply.certificate)))
        assert admin.main(["--db", str(enrolling.db), "revoke", "--user", "alice"]) == 0
        await asyncio.sleep(0.3)
        seen: list[str] = []
        body: dict[str, Any] = {}
        pages = 0
        while True:
            page = RevokedReply.from_wire(await conn.request("revoked", body, token))
            pages += 1
            assert len(page.serials) <= 2
            seen += page.serials
            if not page.more:
                break
            body = {"after": page.serials[-1]}
        assert pages == 3 and seen == sorted(issued)
        client = IndexClient(conn, "indexd")
        client.token = token
        assert await client.revoked() == frozenset(issued)
        with pytest.raises(BadRequest):
            await conn.request("revoked", {"after": "XYZ"}, token)
