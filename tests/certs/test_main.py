"""``python -m certs`` (certs/__main__.py): each subcommand, its output and exit status."""

from __future__ import annotations

import hashlib
import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from certs import init_pki, load_cert
from certs.__main__ import main
from runner import ExitCode

REPO = Path(__file__).resolve().parents[2]


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Raise InvalidSignature unless ``issuer``'s Ed25519 key signed ``cert``."""
    public = issuer.public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    public.verify(cert.signature, cert.tbs_certificate_bytes)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ips(*texts: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipaddress.ip_address(t) for t in texts]


def test_cli_ca_writes_ca_files_and_prints_only_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "pki"
    assert main(["ca", "--dir", str(d), "--name", "Demo CA", "--days", "30"]) == 0
    out = capsys.readouterr().out
    assert str(d / "ca.crt") in out and str(d / "ca.key") in out
    assert "PRIVATE" not in out
    assert mode(d) == 0o700 and mode(d / "ca.key") == 0o600
    assert load_cert(d / "ca.crt").subject.rfc4514_string() == "CN=Demo CA"


def test_cli_issue_writes_leaf_signed_by_directory_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ca", "--dir", str(tmp_path)]) == 0
    argv = ["issue", "Peer1", "--dir", str(tmp_path), "--ip", "10.0.0.9", "--ip", "10.0.0.10"]
    assert main(argv) == 0
    assert str(tmp_path / "peer1.key") in capsys.readouterr().out
    cert = load_cert(tmp_path / "peer1.crt")
    ca_cert = load_cert(tmp_path / "ca.crt")
    verify_signed_by(cert, ca_cert)
    assert sans(cert).get_values_for_type(x509.IPAddress) == ips(
        "10.0.0.9", "10.0.0.10", "127.0.0.1", "::1"
    )
    assert mode(tmp_path / "peer1.key") == 0o600


def test_cli_issue_dns_adds_dns_names_after_the_first(tmp_path: Path) -> None:
    assert main(["ca", "--dir", str(tmp_path)]) == 0
    argv = ["issue", "index", "--dir", str(tmp_path), "--dns", "Index-A", "--dns", "index-b"]
    assert main(argv) == 0
    names = sans(load_cert(tmp_path / "index.crt")).get_values_for_type(x509.DNSName)
    assert names == ["index", "index-a", "index-b"]  # the first, NAME, is the tokens' issuer


def test_cli_issue_refuses_a_bad_extra_dns_name(tmp_path: Path) -> None:
    assert main(["ca", "--dir", str(tmp_path)]) == 0
    argv = ["issue", "index", "--dir", str(tmp_path), "--dns", "bad name!"]
    assert main(argv) == ExitCode.FAILURE
    assert not (tmp_path / "index.crt").exists()


def test_cli_issue_no_loopback_leaves_out_loopback_ips(tmp_path: Path) -> None:
    assert main(["ca", "--dir", str(tmp_path)]) == 0
    assert main(["issue", "peer1", "--dir", str(tmp_path), "--no-loopback"]) == 0
    assert sans(load_cert(tmp_path / "peer1.crt")).get_values_for_type(x509.IPAddress) == []


def test_cli_init_writes_ca_and_every_leaf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "pki"
    assert main(["init", "--dir", str(d), "index", "peer1", "peer2"]) == 0
    out = capsys.readouterr().out
    for name in ("ca", "index", "peer1", "peer2"):
        assert (d / f"{name}.crt").is_file() and mode(d / f"{name}.key") == 0o600
        assert str(d / f"{name}.key") in out
    assert mode(d) == 0o700


def test_cli_show_prints_subject_sans_validity_and_fingerprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_pki(tmp_path, ["peer1"])
    cert = load_cert(tmp_path / "peer1.crt")
    assert main(["show", str(tmp_path / "peer1.crt")]) == 0
    out = capsys.readouterr().out
    assert "CN=peer1" in out and "CN=p2pshare CA" in out
    assert "peer1" in out and "127.0.0.1" in out and "::1" in out
    assert cert.not_valid_after_utc.isoformat() in out
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper() in out


def test_cli_existing_key_without_force_exits_failure_with_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_pki(tmp_path, ["peer1"])
    before = (tmp_path / "peer1.key").read_bytes()
    assert main(["issue", "peer1", "--dir", str(tmp_path)]) == ExitCode.FAILURE
    err = capsys.readouterr().err
    assert err.startswith("certs: ") and err.count("\n") == 1
    assert "--force" in err and "Traceback" not in err
    assert (tmp_path / "peer1.key").read_bytes() == before


def test_cli_existing_ca_without_force_exits_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ca", "--dir", str(tmp_path)]) == 0
    before = (tmp_path / "ca.key").read_bytes()
    assert main(["ca", "--dir", str(tmp_path)]) == ExitCode.FAILURE
    assert capsys.readouterr().err.startswith("certs: refusing to overwrite")
    assert (tmp_path / "ca.key").read_bytes() == before


def test_cli_force_overwrites_existing_key(tmp_path: Path) -> None:
    init_pki(tmp_path, ["peer1"])
    before = (tmp_path / "peer1.key").read_bytes()
    assert main(["issue", "peer1", "--dir", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "peer1.key").read_bytes() != before
    assert mode(tmp_path / "peer1.key") == 0o600


def test_cli_force_unlinks_the_old_key_so_an_open_descriptor_never_sees_the_new_one(
    tmp_path: Path,
) -> None:
    init_pki(tmp_path, ["peer1"])
    key = tmp_path / "peer1.key"
    key.chmod(0o644)  # once readable by others, who kept it open
    spy = key.open("rb")
    old_inode = key.stat().st_ino
    try:
        assert main(["issue", "peer1", "--dir", str(tmp_path), "--force"]) == 0
        assert key.stat().st_ino != old_inode  # a new file, not the old one rewritten
        assert mode(key) == 0o600
        assert spy.read() != key.read_bytes()  # the old descriptor reads the old key only
    finally:
        spy.close()


def test_cli_force_replaces_a_symlink_without_writing_through_it(tmp_path: Path) -> None:
    init_pki(tmp_path, ["peer1"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"not a key\n")
    (tmp_path / "peer1.key").unlink()
    (tmp_path / "peer1.key").symlink_to(elsewhere)
    assert main(["issue", "peer1", "--dir", str(tmp_path), "--force"]) == 0
    assert elsewhere.read_bytes() == b"not a key\n"
    assert not (tmp_path / "peer1.key").is_symlink() and mode(tmp_path / "peer1.key") == 0o600


def test_cli_issue_refuses_a_ca_key_readable_by_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ca", "--dir", str(tmp_path)]) == 0
    (tmp_path / "ca.key").chmod(0o640)
    assert main(["issue", "peer1", "--dir", str(tmp_path)]) == ExitCode.FAILURE
    err = capsys.readouterr().err
    assert err.startswith("certs: private key") and "mode 0640" in err and "chmod 600" in err
    assert not (tmp_path / "peer1.key").exists()


def test_cli_bad_name_exits_failure_with_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ca", "--dir", str(tmp_path)]) == 0
    assert main(["issue", "under_score", "--dir", str(tmp_path)]) == ExitCode.FAILURE
    err = capsys.readouterr().err
    assert err.startswith("certs: invalid name 'under_score'") and "Traceback" not in err
    assert not (tmp_path / "under_score.key").exists()


def test_cli_issue_without_ca_exits_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["issue", "peer1", "--dir", str(tmp_path)]) == ExitCode.FAILURE
    assert capsys.readouterr().err.startswith(f"certs: no CA in {tmp_path}")
    assert list(tmp_path.iterdir()) == []


def test_cli_issue_named_ca_exits_failure_and_keeps_ca(tmp_path: Path) -> None:
    assert main(["ca", "--dir", str(tmp_path)]) == 0
    before = (tmp_path / "ca.key").read_bytes()
    assert main(["issue", "ca", "--dir", str(tmp_path), "--force"]) == ExitCode.FAILURE
    assert (tmp_path / "ca.key").read_bytes() == before


def test_cli_show_of_non_certificate_exits_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_pki(tmp_path, ["peer1"])
    assert main(["show", str(tmp_path / "peer1.key")]) == ExitCode.FAILURE
    err = capsys.readouterr().err
    assert err.startswith("certs: ") and "PRIVATE" not in err


def test_cli_usage_error_exits_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["issue"]) == ExitCode.USAGE
    assert "usage:" in capsys.readouterr().err


def test_python_m_certs_error_exits_1_without_traceback(tmp_path: Path) -> None:
    init_pki(tmp_path, ["peer1"])
    proc = subprocess.run(
        [sys.executable, "-m", "certs", "issue", "peer1", "--dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == ExitCode.FAILURE
    assert proc.stderr.startswith("certs: refusing to overwrite") and "Traceback" not in proc.stderr
