"""Shared fixtures: one throwaway PKI per test session, made with the project's own tool."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from certs import init_pki, load_cert, load_key
from indexd.app import IndexConfig, IndexDaemon
from netproto.client import Connection
from netproto.operations import (
    SearchHit,
    SharedFile,
    search_reply_from_wire,
    split_sync,
)
from netproto.server import Server, ServerLimits
from netproto.tls import client_context, server_context
from netproto.tokens import TokenIssuer, TokenVerifier
from peerd.client import PeerClient
from peerd.daemon import PeerConfig, PeerDaemon
from peerd.server import PeerService, make_server, peer_ssl_context
from peerd.share import Share
from tests.support.postgres import PostgresServer, find_binaries, start_postgres

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


@pytest.fixture(scope="session", autouse=True)
def xdg_folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Config and state folders of the test session's own (inherited by every daemon started
    as a process), so no user's ``~/.config/p2pshare`` changes a test and no test leaves a
    control socket in the user's ``~/.local/state``."""
    root = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(root / "config"))
        mp.setenv("XDG_STATE_HOME", str(root / "state"))
        yield root


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A CA with leaves for the index, three peers and a malicious peer; and a foreign CA."""
    main = tmp_path_factory.mktemp("pki")
    other = tmp_path_factory.mktemp("other-pki")
    init_pki(main, NAMES, overwrite=True)
    init_pki(other, ("indexd", "peer1"), overwrite=True)
    return PKI(main, other)


# --- index daemon (tests/test_indexd_*.py) ------------------------------------------------

INDEX_TIMEOUT = 15.0  # seconds any one step against a test index may take


class IndexClient:
    """A thin test client of the index: one TLS connection and the token it logged in with."""

    def __init__(self, pki: PKI, port: int, cert: str | None = None, other: bool = False):
        self.pki, self.port, self.cert, self.other = pki, port, cert, other
        self.conn: Connection | None = None
        self.token: str | None = None

    async def __aenter__(self) -> IndexClient:
        self.conn = await asyncio.wait_for(
            Connection.open(
                "127.0.0.1",
                self.port,
                self.pki.client_ctx(self.cert, other=self.other),
                server_hostname="indexd",
                request_timeout=INDEX_TIMEOUT,
            ),
            INDEX_TIMEOUT,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.conn is not None:
            await asyncio.wait_for(self.conn.close(), INDEX_TIMEOUT)

    async def call(self, op: str, body: dict[str, Any], token: str | None = None) -> Any:
        """One request with the given token (none unless passed)."""
        assert self.conn is not None
        return await self.conn.request(op, body, token, timeout=INDEX_TIMEOUT)

    async def register(self, username: str, password: str) -> Any:
        return await self.call("register", {"username": username, "password": password})

    async def login(self, username: str, password: str) -> Any:
        reply = await self.call("auth", {"username": username, "password": password})
        self.token = reply["token"]
        return reply

    async def sync(
        self,
        domain_name: str,
        files: list[SharedFile],
        *,
        port_number: int = 7001,
        address: str | None = None,
    ) -> int:
        """Sync a share of any size (in parts when needed); the last reply's count."""
        count = -1
        for request in split_sync(domain_name, port_number, files, address):
            count = (await self.call("sync", request.to_wire(), self.token))["files"]
        return count

    async def search(self, keyword: str) -> list[SearchHit]:
        return search_reply_from_wire(await self.call("search", {"keyword": keyword}, self.token))

    async def ping(self, domain_name: str) -> Any:
        return await self.call("ping", {"domain_name": domain_name}, self.token)

    async def bye(self, domain_name: str) -> Any:
        return await self.call("bye", {"domain_name": domain_name}, self.token)


@pytest.fixture
def index_config(pki: PKI, tmp_path: Path) -> Callable[..., IndexConfig]:
    """Make in-process index configs: session PKI, a fresh database, port 0, bcrypt cost 4."""

    def make(**overrides: Any) -> IndexConfig:
        settings: dict[str, Any] = {
            "cert": pki.cert("indexd"),
            "key": pki.key("indexd"),
            "ca": pki.ca,
            "db": tmp_path / "index.db",
            "port": 0,
            "bcrypt_cost": 4,
            **overrides,
        }
        return IndexConfig(**settings)

    return make


@pytest.fixture
def running_index() -> Callable[[IndexConfig], contextlib.AbstractAsyncContextManager[IndexDaemon]]:
    """Run an in-process index daemon for the ``async with`` block (start/stop timed out)."""

    @contextlib.asynccontextmanager
    async def run(config: IndexConfig) -> AsyncIterator[IndexDaemon]:
        daemon = IndexDaemon(config)
        await asyncio.wait_for(daemon.start(), INDEX_TIMEOUT)
        try:
            yield daemon
        finally:
            await asyncio.wait_for(daemon.stop(), INDEX_TIMEOUT)

    return run


@pytest.fixture
def index_client(pki: PKI) -> Callable[..., IndexClient]:
    """Make test clients: ``async with index_client(port, cert=None) as client``."""

    def make(port: int, cert: str | None = None, *, other: bool = False) -> IndexClient:
        return IndexClient(pki, port, cert, other)

    return make


# --- peer section (peerd tests) -----------------------------------------------------------


@dataclass
class PeerRig:
    """Peer servers and peer clients on 127.0.0.1 with real mutual TLS, closed at teardown.

    Tokens come from a :class:`TokenIssuer` on the index's key, as the index would issue them.
    """

    pki: PKI
    issuer: TokenIssuer
    servers: list[Server]
    clients: list[PeerClient]

    def token(self, sub: str = "peer2") -> str:
        return self.issuer.issue(sub)[0]

    async def serve(
        self,
        share_dir: Path,
        name: str = "peer1",
        *,
        max_fetches: int = 32,
        limits: ServerLimits | None = None,
    ) -> Server:
        service = PeerService(Share(share_dir), name, load_key(self.pki.key(name)), max_fetches)
        verifier = TokenVerifier(load_cert(self.pki.cert("indexd")))
        ctx = peer_ssl_context(self.pki.cert(name), self.pki.key(name), self.pki.ca)
        server = make_server(service, ctx, verifier.verify_presented, limits)
        await asyncio.wait_for(server.start("127.0.0.1", 0), 10)
        self.servers.append(server)
        return server

    async def connect(
        self,
        port: int,
        *,
        domain_name: str = "peer1",
        client: str | None = "peer2",
        other_ca: bool = False,
        sub: str = "peer2",
        token: str | None = None,
    ) -> PeerClient:
        ctx = self.pki.client_ctx(client, other=other_ca)
        peer = await PeerClient.connect(
            "127.0.0.1",
            port,
            domain_name,
            ctx,
            token=token if token is not None else self.token(sub),
            requester=sub,
            connect_timeout=10,
            request_timeout=10,
        )
        self.clients.append(peer)
        return peer


@pytest_asyncio.fixture(loop_scope="function")
async def peer_rig(pki: PKI) -> AsyncIterator[PeerRig]:
    """Factories for peer servers and clients; everything is closed after the test."""
    rig = PeerRig(pki, TokenIssuer(load_key(pki.key("indexd")), "indexd"), [], [])
    yield rig
    for peer in rig.clients:
        await asyncio.wait_for(peer.close(), 10)
    for server in rig.servers:
        await asyncio.wait_for(server.close(grace=0.5), 10)


PEER_PASSWORD = "correct horse battery"


@pytest.fixture
def peer_config(pki: PKI, tmp_path: Path) -> Callable[..., PeerConfig]:
    """Make peer daemon configs: ``peer_config("peer1", index_port, **overrides)``.

    Session PKI, a share at ``tmp_path/<name>-files``, port 0 on 127.0.0.1, the index reached
    by its loopback address, and ``--register`` so the user exists.
    """

    def make(name: str, index_port: int, **overrides: Any) -> PeerConfig:
        settings: dict[str, Any] = {
            "domain_name": name,
            "index_host": "127.0.0.1",
            "index_port": index_port,
            "username": name,
            "password": PEER_PASSWORD,
            "file_directory": tmp_path / f"{name}-files",
            "cert": pki.cert(name),
            "key": pki.key(name),
            "ca": pki.ca,
            "port": 0,
            "bind": "127.0.0.1",
            "register": True,
            "connect_timeout": 10.0,
            "request_timeout": 10.0,
            **overrides,
        }
        return PeerConfig(**settings)

    return make


@pytest.fixture
def running_peer() -> Callable[[PeerConfig], contextlib.AbstractAsyncContextManager[PeerDaemon]]:
    """Run an in-process peer daemon for the ``async with`` block (start/stop timed out)."""

    @contextlib.asynccontextmanager
    async def run(config: PeerConfig) -> AsyncIterator[PeerDaemon]:
        daemon = PeerDaemon(config)
        await asyncio.wait_for(daemon.start(), 15)
        try:
            yield daemon
        finally:
            await asyncio.wait_for(daemon.stop(grace=1.0), 15)

    return run


# --- PostgreSQL (indexd.pgstore; tests/support/postgres.py) -------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the session; skipped only when no server binaries
    are installed and CI is not ``true`` (under CI the test fails instead)."""
    if find_binaries() is None:
        message = "PostgreSQL server binaries (initdb, postgres; 15 or later) not found"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The ``postgresql://`` URL of an empty database of the test's own."""
    return postgres_server.new_database()
