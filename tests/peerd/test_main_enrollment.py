"""peerd's command line for joining by enrollment: no certificate flags, ``--ca-fingerprint``,
the identity in the state directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerd.__main__ import build_parser, config_from_args
from peerd.daemon import PeerConfig
from runner.command import UsageError

FINGERPRINT = "SHA256:" + "ab" * 32
BASE = ["-hostname", "laptop", "-index_server_name", "index.example", "-username", "alice"]


def config(*extra: str) -> PeerConfig:
    """The daemon config of peerd's command line with ``extra`` flags."""
    args = build_parser().parse_args([*BASE, "-file_directory", "share", *extra])
    return config_from_args(args, "a password")


def test_without_certificate_flags_the_identity_is_the_state_directory_s(tmp_path: Path) -> None:
    c = config(
        "--ca-fingerprint",
        FINGERPRINT.upper().replace("SHA256", "sha256"),
        "--state-dir",
        str(tmp_path),
    )
    assert c.enroll and c.ca_fingerprint == FINGERPRINT
    assert (c.cert, c.key, c.ca) == (
        tmp_path / "peer.crt",
        tmp_path / "peer.key",
        tmp_path / "ca.crt",
    )
    assert not config("--state-dir", str(tmp_path)).ca_fingerprint  # later runs: none needed


def test_hand_made_certificates_keep_working() -> None:
    c = config("-certificate", "a.crt", "-private_key", "a.key", "--ca", "ca.crt")
    assert not c.enroll and c.cert == Path("a.crt")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-certificate", "a.crt"], "go together"),
        (
            [
                "-certificate",
                "a.crt",
                "-private_key",
                "a.key",
                "--ca",
                "c",
                "--ca-fingerprint",
                FINGERPRINT,
            ],
            "for enrollment",
        ),
        (["--ca-fingerprint", "SHA256:00"], "not a CA fingerprint"),
    ],
)
def test_inconsistent_identity_flags_are_usage_errors(extra: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        config(*extra)
