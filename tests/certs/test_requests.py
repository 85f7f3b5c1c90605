"""certs.requests: the fingerprint string, requests, and what the CA's side refuses."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from certs import load_cert, load_key
from certs.__main__ import main
from certs.requests import (
    MAX_REQUEST_SIZE,
    RequestRefused,
    ca_fingerprint,
    check_label,
    fingerprint_matches,
    issue_for_request,
    make_request,
    parse_fingerprint,
    request_public_key,
    serial_hex,
)
from tests.conftest import PKI


def test_the_fingerprint_is_sha256_of_the_der_and_the_cli_prints_it(
    pki: PKI, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = load_cert(pki.ca)
    der = ca.public_bytes(serialization.Encoding.DER)
    assert ca_fingerprint(ca) == "SHA256:" + hashlib.sha256(der).hexdigest()
    assert main(["fingerprint", str(pki.ca)]) == 0
    assert capsys.readouterr().out == ca_fingerprint(ca) + "\n"


def test_a_fingerprint_is_read_in_any_case_with_or_without_colons(pki: PKI) -> None:
    ca = load_cert(pki.ca)
    digits = ca_fingerprint(ca).removeprefix("SHA256:")
    colons = ":".join(digits[i : i + 2] for i in range(0, 64, 2)).upper()
    assert parse_fingerprint(f" sha256:{colons} ") == ca_fingerprint(ca)
    assert fingerprint_matches(ca, "SHA256:" + digits.upper())
    assert not fingerprint_matches(load_cert(pki.other_ca), ca_fingerprint(ca))


DIGITS = "ab" * 32


@pytest.mark.parametrize("text", ["", DIGITS, "SHA1:" + DIGITS, "SHA256:" + "g" * 64])
def test_anything_else_is_not_a_fingerprint(text: str) -> None:
    with pytest.raises(ValueError, match="not a CA fingerprint"):
        parse_fingerprint(text)


@pytest.mark.parametrize("name", ["", "a.b", "-a", "a-", "123", "a" * 64, "é"])
def test_a_name_to_enroll_is_one_dns_label(name: str) -> None:
    with pytest.raises(RequestRefused):
        check_label(name)


def test_the_ca_issues_the_requested_key_for_the_given_name_only(pki: PKI, tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    csr = make_request(key, "laptop")
    assert request_public_key(csr) == key.public_key()
    cert = issue_for_request(load_cert(pki.ca), load_key(pki.dir / "ca.key"), csr, "Laptop")
    assert cert.public_key() == key.public_key()
    assert serial_hex(cert) == f"{cert.serial_number:x}"
    with pytest.raises(RequestRefused, match="larger than"):
        request_public_key(b"\x30" * (MAX_REQUEST_SIZE + 1))
