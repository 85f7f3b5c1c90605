"""A peer with several index servers (README.md, "Several index servers"), with real daemons:
two independent in-process indexd (a SQLite database each, the one CA-signed certificate for
both), a peer that starts past a dead one, moves mid-session when one stops, dials every
address a name resolves to (checking the name, not the address), and ``python -m peerd``
given a list. The flag's parsing is here too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from indexd.app import IndexConfig, IndexDaemon
from netproto.operations import SharedFile
from peerd.__main__ import build_parser, config_from_args
from peerd.client import IndexAddress, parse_index_addresses
from peerd.daemon import PeerConfig, PeerDaemon
from runner import StartupError
from runner.command import UsageError
from tests.conftest import PEER_PASSWORD, IndexClient
from tests.support.adversary import REPO, _env
from tests.support.failover import NameTable, index_list, peerd_with_indexes, refusing_port

HOST = "127.0.0.1"
TIMEOUT = 30.0

RunIndex = Callable[[IndexConfig], contextlib.AbstractAsyncContextManager[IndexDaemon]]
RunPeer = Callable[[PeerConfig], contextlib.AbstractAsyncContextManager[PeerDaemon]]


def share_with(root: Path, keyword: str, name: str, data: bytes) -> Path:
    """A share folder holding ``keyword/name``."""
    (root / keyword).mkdir(parents=True, exist_ok=True)
    (root / keyword / name).write_bytes(data)
    return root


def listed(hits: Any) -> set[tuple[str, str]]:
    """(peer, file) of every search hit."""
    return {(hit.domain_name, f.filename) for hit in hits for f in hit.files}


async def register(index_client: Callable[..., IndexClient], port: int, *users: str) -> None:
    """Create ``users`` at the index on ``port`` (the shared store would hold them)."""
    async with index_client(port) as client:
        for user in users:
            await client.register(user, PEER_PASSWORD)


def addresses(*ports: int) -> tuple[IndexAddress, ...]:
    return tuple(IndexAddress(HOST, port) for port in ports)


@contextlib.asynccontextmanager
async def two_indexes(
    index_config: Callable[..., IndexConfig], running_index: RunIndex, tmp_path: Path
) -> AsyncIterator[tuple[IndexDaemon, IndexDaemon]]:
    """Index servers a and b: the same certificate, a database each."""
    async with (
        running_index(index_config(db=tmp_path / "a.db")) as a,
        running_index(index_config(db=tmp_path / "b.db")) as b,
    ):
        yield a, b


# --- in-process daemons ----------------------------------------------------------------------


async def test_a_peer_whose_first_index_server_is_down_joins_through_the_next(
    index_config: Callable[..., IndexConfig],
    running_index: RunIndex,
    peer_config: Callable[..., PeerConfig],
    running_peer: RunPeer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    share_with(tmp_path / "peer1-files", "koala", "a.txt", b"eucalyptus")
    with refusing_port() as dead:
        async with running_index(index_config(db=tmp_path / "b.db")) as b:
            config = peer_config("peer1", dead, index_servers=addresses(dead, b.port))
            with caplog.at_level(logging.INFO, logger="peerd.index_session"):
                async with running_peer(config) as peer:
                    async with asyncio.timeout(TIMEOUT):
                        hits = await peer.search("koala")
                    assert peer.status().index == f"{HOST}:{b.port}"
                    assert listed(hits) == {("peer1", "a.txt")}
    assert f"the index server {HOST}:{dead} does not answer" in caplog.text  # tried first


class IndexStopsDuringTheScan(PeerDaemon):
    """A peer daemon whose first share scan stops ``index`` first (as when the index server
    dies while a large share is scanned at start)."""

    def __init__(self, config: PeerConfig, index: IndexDaemon) -> None:
        super().__init__(config)
        self.stopping: IndexDaemon | None = index

    async def scan_share(self) -> list[SharedFile]:
        if self.stopping is not None:
            index, self.stopping = self.stopping, None
            await index.stop()
        return await super().scan_share()


async def test_the_start_up_sync_moves_to_the_next_index_server_when_the_first_dies_meanwhile(
    index_config: Callable[..., IndexConfig],
    running_index: RunIndex,
    index_client: Callable[..., IndexClient],
    peer_config: Callable[..., PeerConfig],
    tmp_path: Path,
) -> None:
    share_with(tmp_path / "peer1-files", "koala", "a.txt", b"eucalyptus")
    async with two_indexes(index_config, running_index, tmp_path) as (a, b):
        await register(index_client, b.port, "peer1", "peer2")
        config = peer_config("peer1", a.port, index_servers=addresses(a.port, b.port))
        peer = IndexStopsDuringTheScan(config, a)
        await asyncio.wait_for(peer.start(), TIMEOUT)
        try:
            assert peer.stopping is None  # a stopped after the login, before the sync
            assert peer.status().index == f"{HOST}:{b.port}"
            async with index_client(b.port, "peer2") as client:
                await client.login("peer2", PEER_PASSWORD)
                hits = await asyncio.wait_for(client.search("koala"), TIMEOUT)
            assert listed(hits) == {("peer1", "a.txt")}
        finally:
            await asyncio.wait_for(peer.stop(grace=1.0), TIMEOUT)


async def test_a_search_after_the_index_server_stops_goes_through_the_next_one(
    index_config: Callable[..., IndexConfig],
    running_index: RunIndex,
    index_client: Callable[..., IndexClient],
    peer_config: Callable[..., PeerConfig],
    running_peer: RunPeer,
    tmp_path: Path,
) -> None:
    share_with(tmp_path / "peer1-files", "koala", "a.txt", b"eucalyptus")
    async with two_indexes(index_config, running_index, tmp_path) as (a, b):
        await register(index_client, b.port, "peer1", "peer2")
        servers = addresses(a.port, b.port)
        async with (
            running_peer(peer_config("peer1", a.port, index_servers=servers)) as sharer,
            running_peer(peer_config("peer2", a.port, index_servers=servers)) as searcher,
        ):
            async with asyncio.timeout(TIMEOUT):
                assert listed(await searcher.search("koala")) == {("peer1", "a.txt")}
                await a.stop()
                # the sharer's next sync and the searcher's next search each move to b
                assert await sharer.resync() == 1
                hits = await searcher.search("koala")
            assert listed(hits) == {("peer1", "a.txt")}
            assert sharer.status().index == searcher.status().index == f"{HOST}:{b.port}"


async def test_every_address_a_name_resolves_to_is_dialled_under_that_name(
    index_config: Callable[..., IndexConfig],
    running_index: RunIndex,
    peer_config: Callable[..., PeerConfig],
    running_peer: RunPeer,
    tmp_path: Path,
) -> None:
    share_with(tmp_path / "peer1-files", "koala", "a.txt", b"eucalyptus")
    names = NameTable({"indexd": [HOST, "127.0.0.2"]})
    with refusing_port(HOST) as port:  # indexd's first address refuses
        async with running_index(index_config(host="127.0.0.2", port=port)):
            config = peer_config("peer1", port, index_host="indexd", index_resolver=names)
            async with running_peer(config) as peer:
                async with asyncio.timeout(TIMEOUT):
                    hits = await peer.search("koala")
                current = peer.session.servers.current
                assert current is not None and current.address == "127.0.0.2"
                assert peer.status().index == f"indexd:{port}"
                assert listed(hits) == {("peer1", "a.txt")}


async def test_the_tls_name_checked_is_the_name_given_never_the_address(
    index_config: Callable[..., IndexConfig],
    running_index: RunIndex,
    peer_config: Callable[..., PeerConfig],
    tmp_path: Path,
) -> None:
    names = NameTable({"peer2": ["127.0.0.2"]})  # the index's certificate names "indexd"
    async with running_index(index_config(host="127.0.0.2")) as index:
        config = peer_config("peer1", index.port, index_host="peer2", index_resolver=names)
        with pytest.raises(StartupError, match="certificate we do not trust"):
            await asyncio.wait_for(PeerDaemon(config).start(), TIMEOUT)


# --- the flag ---------------------------------------------------------------------------------

FLAGS = [
    "-hostname", "peer1", "-username", "alice", "-file_directory", "share",
    "-certificate", "peer1.crt", "-private_key", "peer1.key", "--ca", "ca.crt",
]  # fmt: skip


def config_for(index_server_name: str) -> PeerConfig:
    args = build_parser().parse_args([*FLAGS, "-index_server_name", index_server_name])
    return config_from_args(args, "password")


def test_one_index_address_is_read_as_before() -> None:
    config = config_for("indexd:7100")
    assert (config.index_host, config.index_port) == ("indexd", 7100)
    assert config.index_addresses == (IndexAddress("indexd", 7100),)


def test_a_comma_separated_list_gives_every_index_server_in_order() -> None:
    config = config_for("a.example:7000, [::1]:7001,b.example")
    assert config.index_addresses == (
        IndexAddress("a.example", 7000),
        IndexAddress("::1", 7001),
        IndexAddress("b.example", 7000),
    )
    assert (config.index_host, config.index_port) == ("a.example", 7000)
    assert str(config.index_addresses[1]) == "[::1]:7001"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a:7000,,b:7000", "entry 2 of 'a:7000,,b:7000' is empty"),
        ("a:7000,", "entry 2 of 'a:7000,' is empty"),
        ("a:7000,a:7000", "a:7000 is listed twice"),
        ("a:7000,b:99999", "bad port in 'b:99999'"),
        ("a:7000,[::1:7000", "malformed address"),
        (",".join(f"h{n}" for n in range(17)), "at most 16 index servers, not 17"),
    ],
)
def test_a_bad_index_server_list_is_a_usage_error_naming_the_problem(
    value: str, message: str
) -> None:
    with pytest.raises(UsageError, match="-index_server_name: ") as info:
        config_for(value)
    assert message in str(info.value)


def test_parse_index_addresses_keeps_the_order_given() -> None:
    assert parse_index_addresses("b:1,a:2") == (IndexAddress("b", 1), IndexAddress("a", 2))


# --- python -m peerd ----------------------------------------------------------------------------


async def test_peerd_given_a_dead_and_a_live_index_server_joins_and_is_found_through_the_live(
    pki: Any,
    index_config: Callable[..., IndexConfig],
    running_index: RunIndex,
    index_client: Callable[..., IndexClient],
    tmp_path: Path,
) -> None:
    share = share_with(tmp_path / "peer3-files", "koala", "a.txt", b"eucalyptus")
    with refusing_port() as dead:
        async with running_index(index_config()) as live:
            servers = index_list([dead, live.port])
            async with peerd_with_indexes(pki, "peer3", servers, share) as peer:
                async with index_client(live.port, "peer2") as client:
                    await client.register("peer2", PEER_PASSWORD)
                    await client.login("peer2", PEER_PASSWORD)
                    hits = await client.search("koala")
                assert listed(hits) == {("peer3", "a.txt")}
                assert hits[0].port_number == peer.port


async def test_peerd_with_every_index_server_down_says_so_without_a_traceback(
    pki: Any, tmp_path: Path
) -> None:
    with refusing_port() as first, refusing_port() as second:
        servers = index_list([first, second])
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "peerd", "-hostname", "peer3", "-username", "peer3"),
            *("-index_server_name", servers, "-file_directory", str(tmp_path / "share")),
            *("-certificate", str(pki.cert("peer3")), "-private_key", str(pki.key("peer3"))),
            *("--ca", str(pki.ca), "--bind", HOST, "-peer_server_port", "0", "--no-shell"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
            env=_env(),
        )
        _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    text = err.decode()
    assert proc.returncode not in (0, None)
    assert f"cannot reach any of the index servers {servers.replace(',', ', ')}" in text
    assert "Traceback" not in text
