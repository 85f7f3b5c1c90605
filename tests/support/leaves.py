"""Throwaway leaf certificates for any domain name, issued by the test session's CA.

``sync``, ``ping`` and ``bye`` need a client certificate naming the ``domain_name`` (PROTOCOL.md
§4.5); a test that lists many peers gets a certificate for each here.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path
from typing import Any

from certs.pki import issue_leaf, load_cert, load_key, write_cert, write_key
from netproto.tls import client_context

_lock = threading.Lock()


def leaf_files(pki: Any, name: str) -> tuple[Path, Path]:
    """``(cert, key)`` of a leaf for ``name`` from the session CA, made once per session."""
    directory = Path(pki.dir) / "extra-leaves"
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    with _lock:
        if not cert_path.exists():
            directory.mkdir(mode=0o700, exist_ok=True)
            ca_cert, ca_key = load_cert(Path(pki.ca)), load_key(Path(pki.dir) / "ca.key")
            cert, key = issue_leaf(ca_cert, ca_key, name)
            write_key(key_path, key, overwrite=True)
            write_cert(cert_path, cert, overwrite=True)
    return cert_path, key_path


def client_ctx_for(pki: Any, name: str) -> ssl.SSLContext:
    """A client TLS context presenting a certificate for ``name`` (any DNS name)."""
    cert, key = leaf_files(pki, name)
    return client_context(Path(pki.ca), cert, key)
