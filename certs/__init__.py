"""PKI tool for p2pshare: an Ed25519 CA and leaf certificates for the index and each peer.

Run it as ``python -m certs`` (or ``p2pshare-certs``); the functions below are the library side,
used by ``make demo`` and by the test suite to make a throwaway PKI.
"""

from __future__ import annotations

from certs.pki import (
    CA_CERT_NAME,
    CA_KEY_NAME,
    check_absent,
    fingerprint,
    init_pki,
    issue_leaf,
    leaf_paths,
    load_cert,
    load_identity,
    load_key,
    make_ca,
    make_private_dir,
    validate_name,
    write_cert,
    write_key,
)

__all__ = [
    "CA_CERT_NAME",
    "CA_KEY_NAME",
    "check_absent",
    "fingerprint",
    "init_pki",
    "issue_leaf",
    "leaf_paths",
    "load_cert",
    "load_identity",
    "load_key",
    "make_ca",
    "make_private_dir",
    "validate_name",
    "write_cert",
    "write_key",
]
