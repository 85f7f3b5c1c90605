"""Tests for certs/pki.py: the Ed25519 CA, leaf certificates and key files."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import (
    init_pki,
    issue_leaf,
    load_cert,
    load_identity,
    load_key,
    make_ca,
    validate_name,
    write_cert,
    write_key,
)

REPO = Path(__file__).resolve().parents[2]
Pair = tuple[x509.Certificate, ed25519.Ed25519PrivateKey]


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> Pair:
    return make_ca()


@pytest.fixture(scope="module")
def other_ca() -> Pair:
    return make_ca("another CA")


@pytest.fixture(scope="module")
def leaf(ca: Pair) -> Pair:
    return issue_leaf(ca[0], ca[1], "peer1")


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Run with a umask that narrows nothing, so file modes come from the code alone."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def ext(cert: x509.Certificate, kind: type[Any]) -> x509.Extension[Any]:
    return cert.extensions.get_extension_for_class(kind)


def verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Raise InvalidSignature unless ``issuer``'s Ed25519 key signed ``cert``."""
    public = issuer.public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    public.verify(cert.signature, cert.tbs_certificate_bytes)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ips(*texts: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipaddress.ip_address(t) for t in texts]


# --- CA -------------------------------------------------------------------------------------


def test_ca_is_self_signed_with_ed25519(ca: Pair) -> None:
    cert, key = ca
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert cert.issuer == cert.subject
    key.public_key().verify(cert.signature, cert.tbs_certificate_bytes)


def test_ca_common_name_is_given_name() -> None:
    cert, _ = make_ca("Test Root", days=1)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test Root"


def test_ca_basic_constraints_allow_leaves_only_and_are_critical(ca: Pair) -> None:
    bc = ext(ca[0], x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca is True
    assert bc.value.path_length == 0


def test_ca_key_usage_is_cert_and_crl_signing_and_critical(ca: Pair) -> None:
    ku = ext(ca[0], x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature


def test_ca_has_subject_key_identifier_of_its_key(ca: Pair) -> None:
    ski = ext(ca[0], x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca[1].public_key())


def test_ca_rejects_non_positive_validity() -> None:
    with pytest.raises(ValueError, match="days"):
        make_ca(days=0)


# --- leaf -----------------------------------------------------------------------------------


def test_leaf_verifies_under_ca(ca: Pair, leaf: Pair) -> None:
    cert = leaf[0]
    verify_signed_by(cert, ca[0])
    assert cert.issuer == ca[0].subject


def test_leaf_does_not_verify_under_another_ca(other_ca: Pair, leaf: Pair) -> None:
    cert = leaf[0]
    with pytest.raises(InvalidSignature):
        other_ca[1].public_key().verify(cert.signature, cert.tbs_certificate_bytes)


def test_leaf_key_is_ed25519_and_matches_certificate(leaf: Pair) -> None:
    cert, key = leaf
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    public = cert.public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert public.public_bytes(*raw) == key.public_key().public_bytes(*raw)


def test_leaf_subject_common_name_is_name(leaf: Pair) -> None:
    assert leaf[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "peer1"


def test_leaf_sans_are_name_and_loopback_ips(leaf: Pair) -> None:
    san = sans(leaf[0])
    assert san.get_values_for_type(x509.DNSName) == ["peer1"]
    assert san.get_values_for_type(x509.IPAddress) == ips("127.0.0.1", "::1")


def test_leaf_sans_add_given_ips_once(ca: Pair) -> None:
    cert, _ = issue_leaf(ca[0], ca[1], "peer2", ips=["10.0.0.5", "127.0.0.1", "10.0.0.5"])
    assert sans(cert).get_values_for_type(x509.IPAddress) == ips("10.0.0.5", "127.0.0.1", "::1")


def test_leaf_without_loopback_has_no_loopback_ips(ca: Pair) -> None:
    cert, _ = issue_leaf(ca[0], ca[1], "peer2", ips=["192.0.2.7"], loopback=False)
    assert sans(cert).get_values_for_type(x509.DNSName) == ["peer2"]
    assert sans(cert).get_values_for_type(x509.IPAddress) == ips("192.0.2.7")


def test_leaf_name_is_lower_cased(ca: Pair) -> None:
    cert, _ = issue_leaf(ca[0], ca[1], "Peer1.Example.COM")
    assert sans(cert).get_values_for_type(x509.DNSName) == ["peer1.example.com"]
    assert cert.subject.rfc4514_string() == "CN=peer1.example.com"


def test_leaf_is_a_critical_non_ca(leaf: Pair) -> None:
    bc = ext(leaf[0], x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca is False


def test_leaf_key_usage_is_digital_signature_only_and_critical(leaf: Pair) -> None:
    ku = ext(leaf[0], x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.content_commitment)


def test_leaf_extended_key_usage_is_server_and_client_auth(leaf: Pair) -> None:
    eku = ext(leaf[0], x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def test_leaf_authority_key_identifier_is_ca_subject_key_identifier(ca: Pair, leaf: Pair) -> None:
    aki = ext(leaf[0], x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca[0], x509.SubjectKeyIdentifier).value.digest


def test_leaf_is_valid_from_five_minutes_ago(ca: Pair) -> None:
    now = dt.datetime.now(dt.UTC)
    cert, _ = issue_leaf(ca[0], ca[1], "peer1", days=10)
    skew = now - cert.not_valid_before_utc
    assert dt.timedelta(minutes=4) < skew <= dt.timedelta(minutes=5, seconds=2)
    assert cert.not_valid_after_utc - now > dt.timedelta(days=10) - dt.timedelta(seconds=5)


def test_leaf_serials_are_random(ca: Pair) -> None:
    first, _ = issue_leaf(ca[0], ca[1], "peer1")
    second, _ = issue_leaf(ca[0], ca[1], "peer1")
    assert first.serial_number != second.serial_number
    assert first.serial_number.bit_length() > 64


def test_issue_leaf_refuses_a_key_that_is_not_the_cas(ca: Pair, other_ca: Pair) -> None:
    with pytest.raises(ValueError, match="CA key"):
        issue_leaf(ca[0], other_ca[1], "peer1")


def test_issue_leaf_rejects_malformed_ip(ca: Pair) -> None:
    with pytest.raises(ValueError, match="IP address"):
        issue_leaf(ca[0], ca[1], "peer1", ips=["1.2.3"])


@pytest.mark.parametrize(
    "name",
    ["-bad", "bad-", "a..b", ".a", "a.", "under_score", "a" * 64, "", "sp ace", "é", "a/b"],
    ids=repr,
)
def test_invalid_name_raises_value_error(ca: Pair, name: str) -> None:
    with pytest.raises(ValueError, match="invalid name"):
        issue_leaf(ca[0], ca[1], name)


def test_name_longer_than_253_chars_is_invalid() -> None:
    name = ".".join(["a" * 63] * 4)  # 255 characters, each label legal
    with pytest.raises(ValueError, match="253"):
        validate_name(name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("peer1", "peer1"),
        ("Index.Example.COM", "index.example.com"),
        ("a-b", "a-b"),
        ("7up", "7up"),
    ],
)
def test_valid_name_is_accepted_lower_cased(name: str, expected: str) -> None:
    assert validate_name(name) == expected


def test_63_char_label_is_valid() -> None:
    assert validate_name("a" * 63) == "a" * 63


# --- real TLS -------------------------------------------------------------------------------


@dataclass
class Handshake:
    """What each side saw of one TLS connection."""

    version: str | None = None
    server_saw_client: dict[str, Any] | None = None
    server_errors: list[BaseException] = field(default_factory=list)


def save_pair(directory: Path, name: str, pair: Pair) -> tuple[Path, Path]:
    directory.mkdir(exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    write_cert(cert_path, pair[0], overwrite=True)
    write_key(key_path, pair[1], overwrite=True)
    return cert_path, key_path


def server_context(cert_key: tuple[Path, Path], client_ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(*cert_key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        ctx.load_verify_locations(client_ca)
    return ctx


def client_context(ca_path: Path, cert_key: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # Strict RFC 5280 checks, as newer Pythons apply by default: the PKI must pass them.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(ca_path)
    if cert_key is not None:
        ctx.load_cert_chain(*cert_key)
    return ctx


def handshake(
    server: ssl.SSLContext,
    client: ssl.SSLContext,
    hostname: str,
    result: Handshake | None = None,
) -> Handshake:
    """Connect over a socket pair, server in a thread; the client's errors propagate."""
    result = Handshake() if result is None else result
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(5)
    client_sock.settimeout(5)

    def serve() -> None:
        try:
            with server.wrap_socket(server_sock, server_side=True) as tls:
                result.server_saw_client = tls.getpeercert()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            result.server_errors.append(exc)
        finally:
            server_sock.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(client_sock, server_hostname=hostname) as tls:
            result.version = tls.version()
            # TLS 1.3 servers judge the client certificate after the client's handshake ends:
            # only a read shows whether the server accepted it.
            assert tls.recv(2) == b"ok"
    finally:
        client_sock.close()
        thread.join(5)
    return result


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory, ca: Pair, other_ca: Pair) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("tls")
    ca_path = d / "ca.crt"
    write_cert(ca_path, ca[0])
    return {
        "ca": ca_path,
        "peer1": save_pair(d, "peer1", issue_leaf(ca[0], ca[1], "peer1")),
        "peer2": save_pair(d, "peer2", issue_leaf(ca[0], ca[1], "peer2")),
        "bare": save_pair(d, "bare", issue_leaf(ca[0], ca[1], "bare", loopback=False)),
        "rogue": save_pair(d, "rogue", issue_leaf(other_ca[0], other_ca[1], "peer1")),
    }


def test_tls13_handshake_succeeds_for_leaf_name(tls_files: dict[str, Any]) -> None:
    result = handshake(server_context(tls_files["peer1"]), client_context(tls_files["ca"]), "peer1")
    assert result.version == "TLSv1.3"


def test_tls_handshake_succeeds_for_loopback_ip(tls_files: dict[str, Any]) -> None:
    server, client = server_context(tls_files["peer1"]), client_context(tls_files["ca"])
    assert handshake(server, client, "127.0.0.1").version == "TLSv1.3"
    assert handshake(server, client, "::1").version == "TLSv1.3"


def test_tls_handshake_rejects_wrong_hostname(tls_files: dict[str, Any]) -> None:
    server, client = server_context(tls_files["peer1"]), client_context(tls_files["ca"])
    with pytest.raises(ssl.SSLCertVerificationError, match="peer2"):
        handshake(server, client, "peer2")


def test_tls_handshake_rejects_loopback_ip_for_no_loopback_leaf(tls_files: dict[str, Any]) -> None:
    server, client = server_context(tls_files["bare"]), client_context(tls_files["ca"])
    assert handshake(server, client, "bare").version == "TLSv1.3"
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, client, "127.0.0.1")


def test_tls_handshake_rejects_leaf_from_another_ca(tls_files: dict[str, Any]) -> None:
    server, client = server_context(tls_files["rogue"]), client_context(tls_files["ca"])
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, client, "peer1")


def test_mutual_tls_server_accepts_client_leaf_from_ca(tls_files: dict[str, Any]) -> None:
    server = server_context(tls_files["peer1"], client_ca=tls_files["ca"])
    client = client_context(tls_files["ca"], cert_key=tls_files["peer2"])
    result = handshake(server, client, "peer1")
    assert result.server_errors == []
    assert result.server_saw_client is not None
    assert result.server_saw_client["subjectAltName"][0] == ("DNS", "peer2")


def test_mutual_tls_server_refuses_client_leaf_from_another_ca(tls_files: dict[str, Any]) -> None:
    server = server_context(tls_files["peer2"], client_ca=tls_files["ca"])
    client = client_context(tls_files["ca"], cert_key=tls_files["rogue"])
    seen = Handshake()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake(server, client, "peer2", seen)
    assert seen.server_saw_client is None
    assert any(isinstance(e, ssl.SSLCertVerificationError) for e in seen.server_errors)


# --- files ----------------------------------------------------------------------------------


def test_write_key_creates_mode_0600_even_with_zero_umask(
    tmp_path: Path, leaf: Pair, umask_zero: None
) -> None:
    path = tmp_path / "k.key"
    write_key(path, leaf[1])
    assert mode(path) == 0o600


def test_write_key_opens_new_file_exclusively_with_mode_0600(
    tmp_path: Path, leaf: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, *args: Any, **kwargs: Any) -> int:
        calls.append((flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    write_key(tmp_path / "k.key", leaf[1])
    flags, created_mode = calls[0]
    assert created_mode == 0o600
    assert flags & os.O_CREAT and flags & os.O_EXCL and not flags & os.O_TRUNC


def pkcs8_pem(key: Any) -> bytes:
    """The unencrypted PKCS#8 PEM encoding a key file must hold."""
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_write_key_is_pkcs8_pem_that_loads_back(tmp_path: Path, leaf: Pair) -> None:
    path = tmp_path / "k.key"
    write_key(path, leaf[1])
    assert path.read_bytes() == pkcs8_pem(leaf[1])
    raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    loaded = load_key(path)
    assert loaded.public_key().public_bytes(*raw) == leaf[1].public_key().public_bytes(*raw)


def test_write_key_refuses_existing_file_and_keeps_its_bytes(tmp_path: Path, leaf: Pair) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"original")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_key(path, leaf[1])
    assert path.read_bytes() == b"original"


def test_write_key_overwrite_replaces_and_narrows_mode_to_0600(tmp_path: Path, leaf: Pair) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"original")
    path.chmod(0o644)
    write_key(path, leaf[1], overwrite=True)
    assert mode(path) == 0o600
    assert path.read_bytes() == pkcs8_pem(leaf[1])


def test_write_cert_creates_mode_0644(tmp_path: Path, leaf: Pair, umask_zero: None) -> None:
    path = tmp_path / "c.crt"
    write_cert(path, leaf[0])
    assert mode(path) == 0o644
    assert load_cert(path) == leaf[0]


def test_write_cert_refuses_existing_file(tmp_path: Path, leaf: Pair) -> None:
    path = tmp_path / "c.crt"
    path.write_bytes(b"original")
    with pytest.raises(FileExistsError):
        write_cert(path, leaf[0])
    assert path.read_bytes() == b"original"


def test_load_key_rejects_a_certificate(tmp_path: Path, leaf: Pair) -> None:
    path = tmp_path / "c.crt"
    write_cert(path, leaf[0])
    with pytest.raises(ValueError, match="not a PEM private key"):
        load_key(path)


def test_load_key_rejects_non_ed25519_key(tmp_path: Path) -> None:
    path = tmp_path / "ec.key"
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="not an Ed25519"):
        load_key(path)


def test_load_key_rejects_encrypted_key(tmp_path: Path, leaf: Pair) -> None:
    path = tmp_path / "enc.key"
    path.write_bytes(
        leaf[1].private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ValueError, match="encrypted"):
        load_key(path)


def test_load_cert_rejects_non_certificate(tmp_path: Path) -> None:
    path = tmp_path / "junk.crt"
    path.write_bytes(b"not a certificate")
    with pytest.raises(ValueError, match="not a PEM certificate"):
        load_cert(path)


def test_init_pki_writes_ca_and_leaves_in_private_directory(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    init_pki(d, ["index", "peer1"], ips=["10.1.2.3"])
    assert mode(d) == 0o700
    assert sorted(p.name for p in d.iterdir()) == [
        "ca.crt",
        "ca.key",
        "index.crt",
        "index.key",
        "peer1.crt",
        "peer1.key",
    ]
    assert all(mode(p) == 0o600 for p in d.glob("*.key"))
    ca_cert = load_cert(d / "ca.crt")
    peer = load_cert(d / "peer1.crt")
    verify_signed_by(peer, ca_cert)
    assert ipaddress.ip_address("10.1.2.3") in sans(peer).get_values_for_type(x509.IPAddress)


def test_init_pki_refuses_existing_file_before_writing_anything(tmp_path: Path) -> None:
    (tmp_path / "peer1.key").write_bytes(b"original")
    with pytest.raises(FileExistsError, match=r"peer1\.key"):
        init_pki(tmp_path, ["peer1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peer1.key"]
    assert (tmp_path / "peer1.key").read_bytes() == b"original"


def test_init_pki_overwrite_replaces_existing_pki(tmp_path: Path) -> None:
    init_pki(tmp_path, ["peer1"])
    before = (tmp_path / "peer1.key").read_bytes()
    init_pki(tmp_path, ["peer1"], overwrite=True)
    assert (tmp_path / "peer1.key").read_bytes() != before


def test_init_pki_rejects_leaf_named_ca(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CA"):
        init_pki(tmp_path / "pki", ["ca"])
    assert not (tmp_path / "pki").exists()


def test_init_pki_rejects_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        init_pki(tmp_path / "pki", ["peer1", "PEER1"])


@pytest.mark.parametrize("name", ["127.0.0.1", "peer.42"])
def test_name_that_reads_as_an_ip_address_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        validate_name(name)


def test_load_identity_returns_a_matching_certificate_key_and_ca(tmp_path: Path) -> None:
    init_pki(tmp_path, ["peer1"])
    cert, key, ca = load_identity(
        tmp_path / "peer1.crt", tmp_path / "peer1.key", tmp_path / "ca.crt"
    )
    raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert cert.public_key().public_bytes(*raw) == key.public_key().public_bytes(*raw)
    assert ca.subject == cert.issuer


def test_load_identity_refuses_another_certificates_key(tmp_path: Path) -> None:
    init_pki(tmp_path, ["peer1", "peer2"])
    with pytest.raises(ValueError, match="does not match certificate"):
        load_identity(tmp_path / "peer1.crt", tmp_path / "peer2.key", tmp_path / "ca.crt")


def test_load_identity_refuses_a_certificate_from_another_ca(tmp_path: Path) -> None:
    init_pki(tmp_path / "a", ["peer1"])
    init_pki(tmp_path / "b", ["peer1"])
    a, b = tmp_path / "a", tmp_path / "b"
    with pytest.raises(ValueError, match="is not issued by CA"):
        load_identity(a / "peer1.crt", a / "peer1.key", b / "ca.crt")


@pytest.mark.parametrize("bits", [0o640, 0o604, 0o644, 0o660, 0o700, 0o666])
def test_load_identity_refuses_a_key_others_may_read_or_write(tmp_path: Path, bits: int) -> None:
    init_pki(tmp_path, ["peer1"])
    (tmp_path / "peer1.key").chmod(bits)
    with pytest.raises(ValueError, match=f"mode {bits:04o}.*chmod 600"):
        load_identity(tmp_path / "peer1.crt", tmp_path / "peer1.key", tmp_path / "ca.crt")


def test_load_identity_accepts_an_owner_read_only_key(tmp_path: Path) -> None:
    init_pki(tmp_path, ["peer1"])
    (tmp_path / "peer1.key").chmod(0o400)
    load_identity(tmp_path / "peer1.crt", tmp_path / "peer1.key", tmp_path / "ca.crt")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_load_identity_refuses_a_key_owned_by_another_user(tmp_path: Path) -> None:
    init_pki(tmp_path, ["peer1"])
    os.chown(tmp_path / "peer1.key", 65534, 65534)
    with pytest.raises(ValueError, match="belongs to uid 65534"):
        load_identity(tmp_path / "peer1.crt", tmp_path / "peer1.key", tmp_path / "ca.crt")


def test_load_identity_names_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read certificate"):
        load_identity(tmp_path / "none.crt", tmp_path / "none.key", tmp_path / "ca.crt")
