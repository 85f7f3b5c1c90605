"""Shared fixtures: one throwaway PKI per test session, made with the project's own tool."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest

from certs import init_pki
from netproto.tls import client_context, server_context

NAMES = ("indexd", "peer1", "peer2", "peer3", "mallory")


@dataclass(frozen=True)
class PKI:
    """Paths of the session's CA and leaf certificates, plus a second, unrelated CA."""

    dir: Path
    other_dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def other_ca(self) -> Path:
        return self.other_dir / "ca.crt"

    def cert(self, name: str, *, other: bool = False) -> Path:
        return (self.other_dir if other else self.dir) / f"{name}.crt"

    def key(self, name: str, *, other: bool = False) -> Path:
        return (self.other_dir if other else self.dir) / f"{name}.key"

    def server_ctx(self, name: str, *, require_client_cert: bool = False) -> ssl.SSLContext:
        return server_context(
            self.cert(name), self.key(name), self.ca, require_client_cert=require_client_cert
        )

    def client_ctx(self, name: str | None = None, *, other: bool = False) -> ssl.SSLContext:
        if name is None:
            return client_context(self.ca)
        return client_context(self.ca, self.cert(name, other=other), self.key(name, other=other))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A CA with leaves for the index, three peers and a malicious peer; and a foreign CA."""
    main = tmp_path_factory.mktemp("pki")
    other = tmp_path_factory.mktemp("other-pki")
    init_pki(main, NAMES, overwrite=True)
    init_pki(other, ("indexd", "peer1"), overwrite=True)
    return PKI(main, other)
