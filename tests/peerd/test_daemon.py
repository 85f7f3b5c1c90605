"""The peer daemon (peerd/daemon.py, peerd/__main__.py): its session with a real index, its
upkeep (token renewal, pings, reconnection), its start-up errors and its command line."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from indexd.app import IndexDaemon
from netproto.errors import AuthFailed, ConnectionClosed
from netproto.server import Server
from peerd.__main__ import build_parser, config_from_args, main, read_password
from peerd.client import IndexClient
from peerd.daemon import PeerDaemon, StartupError
from peerd.errors import IndexUnavailable, IndexUntrusted, LoginRefused
from runner import UsageError

TIMEOUT = 15.0


def put(root: Path, rel: str, content: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


async def found(daemon: PeerDaemon, keyword: str, domain_name: str) -> list[str]:
    """The files ``domain_name`` lists under ``keyword``, as ``daemon`` finds them in search."""
    hits = await daemon.search(keyword)
    return sorted(f.filename for h in hits if h.domain_name == domain_name for f in h.files)


async def eventually(check: Any, timeout: float = 5.0) -> None:
    """Wait until ``await check()`` is true."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


# --- the session with the index --------------------------------------------------------------


async def test_a_started_peer_is_found_in_search_with_its_files(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any, tmp_path: Path
) -> None:
    put(tmp_path / "peer1-files", "koala/a.txt", b"a")
    put(tmp_path / "peer1-files", "Koala/b.txt", b"b")
    async with (
        running_index(index_config()) as index,
        asyncio.timeout(TIMEOUT),
        running_peer(peer_config("peer1", index.port)) as peer1,
        running_peer(peer_config("peer2", index.port)) as peer2,
    ):
        assert await found(peer2, "koala", "peer1") == ["a.txt", "b.txt"]
        hit = next(h for h in await peer2.search("koala") if h.domain_name == "peer1")
        assert (hit.address, hit.port_number) == ("127.0.0.1", peer1.port)


async def test_stopping_a_peer_says_bye_so_it_leaves_search(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any, tmp_path: Path
) -> None:
    put(tmp_path / "peer1-files", "koala/a.txt", b"a")
    async with (
        running_index(index_config()) as index,
        asyncio.timeout(TIMEOUT),
        running_peer(peer_config("peer2", index.port)) as peer2,
    ):
        async with running_peer(peer_config("peer1", index.port)):
            assert await found(peer2, "koala", "peer1") == ["a.txt"]
        assert await found(peer2, "koala", "peer1") == []


async def test_resync_publishes_files_added_since_the_start(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any, tmp_path: Path
) -> None:
    async with (
        running_index(index_config()) as index,
        asyncio.timeout(TIMEOUT),
        running_peer(peer_config("peer1", index.port)) as peer1,
    ):
        assert await found(peer1, "koala", "peer1") == []
        put(tmp_path / "peer1-files", "koala/new.txt", b"new")
        assert await peer1.resync() == 1
        assert await found(peer1, "koala", "peer1") == ["new.txt"]


async def test_the_advertised_address_is_what_search_returns(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any, tmp_path: Path
) -> None:
    put(tmp_path / "peer1-files", "koala/a.txt", b"a")
    async with running_index(index_config()) as index, asyncio.timeout(TIMEOUT):
        config = peer_config("peer1", index.port, advertise_address="peer1.example")
        async with running_peer(config) as peer1:
            hits = await peer1.search("koala")
    assert [h.address for h in hits] == ["peer1.example"]


async def test_the_index_can_be_named_by_its_tls_name_apart_from_its_address(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any
) -> None:
    async with running_index(index_config()) as index, asyncio.timeout(TIMEOUT):
        config = peer_config("peer1", index.port, index_tls_name="indexd")
        async with running_peer(config) as peer1:
            assert peer1.index is not None
            assert peer1.index.server_hostname == "indexd"


async def test_the_token_is_renewed_before_it_expires(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any
) -> None:
    async with (
        running_index(index_config(token_ttl=2)) as index,
        asyncio.timeout(TIMEOUT),
        running_peer(peer_config("peer1", index.port)) as peer1,
    ):
        first: str = peer1.token
        first_expiry = peer1.status().token_expires_at
        assert first_expiry is not None

        async def renewed() -> bool:
            return bool(peer1.token != first)

        await eventually(renewed, timeout=4)
        assert time.time() < first_expiry + 1  # renewed around 80 % of its life


async def test_pings_keep_a_peer_in_search_past_the_index_peer_ttl(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any, tmp_path: Path
) -> None:
    put(tmp_path / "peer1-files", "koala/a.txt", b"a")
    async with (
        running_index(index_config(peer_ttl=0.6)) as index,
        asyncio.timeout(TIMEOUT),
        running_peer(peer_config("peer1", index.port, ping_interval=0.15)) as peer1,
    ):
        await asyncio.sleep(1.5)
        assert await found(peer1, "koala", "peer1") == ["a.txt"]
        assert peer1.status().last_ping is not None


async def test_without_pings_a_peer_drops_out_of_search_after_the_peer_ttl(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any, tmp_path: Path
) -> None:
    put(tmp_path / "peer1-files", "koala/a.txt", b"a")
    async with (
        running_index(index_config(peer_ttl=0.6)) as index,
        asyncio.timeout(TIMEOUT),
        running_peer(peer_config("peer1", index.port, ping_interval=60)) as peer1,
    ):
        await asyncio.sleep(1.0)
        assert await found(peer1, "koala", "peer1") == []


async def test_a_peer_reconnects_and_syncs_again_after_the_index_restarts(
    index_config: Any, peer_config: Any, running_peer: Any, tmp_path: Path
) -> None:
    put(tmp_path / "peer1-files", "koala/a.txt", b"a")
    config = index_config()
    first = IndexDaemon(config)
    await asyncio.wait_for(first.start(), TIMEOUT)
    port = first.port
    try:
        async with running_peer(peer_config("peer1", port, ping_interval=0.2)) as peer1:
            old = peer1.index
            await asyncio.wait_for(first.stop(grace=0), TIMEOUT)
            put(tmp_path / "peer1-files", "koala/b.txt", b"b")
            second = IndexDaemon(dataclasses.replace(config, port=port))
            await asyncio.wait_for(second.start(), TIMEOUT)
            try:

                async def reconnected() -> bool:
                    return peer1.index is not old and peer1.status().index_connected

                await eventually(reconnected, timeout=8)
                assert await found(peer1, "koala", "peer1") == ["a.txt", "b.txt"]
            finally:
                await asyncio.wait_for(second.stop(), TIMEOUT)
    finally:
        await asyncio.wait_for(first.stop(), TIMEOUT)


# --- start-up errors -------------------------------------------------------------------------


async def test_a_wrong_password_is_a_readable_startup_error(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any
) -> None:
    async with running_index(index_config()) as index, asyncio.timeout(TIMEOUT):
        async with running_peer(peer_config("peer1", index.port)):
            pass  # registers peer1
        daemon = PeerDaemon(peer_config("peer1", index.port, password="wrong password!"))
        with pytest.raises(StartupError, match="authentication failed for peer1") as info:
            await asyncio.wait_for(daemon.start(), TIMEOUT)
    assert isinstance(info.value.__cause__, LoginRefused)
    assert isinstance(info.value.__cause__.__cause__, AuthFailed)


async def test_an_unreachable_index_is_a_readable_startup_error(
    peer_config: Any, unused_tcp_port: int
) -> None:
    daemon = PeerDaemon(peer_config("peer1", unused_tcp_port))
    with pytest.raises(StartupError, match="cannot reach the index") as info:
        await asyncio.wait_for(daemon.start(), TIMEOUT)
    assert isinstance(info.value.__cause__, IndexUnavailable)
    assert isinstance(info.value.__cause__.__cause__, ConnectionClosed)


async def test_an_index_whose_certificate_we_do_not_trust_is_a_readable_startup_error(
    pki: Any, peer_config: Any
) -> None:
    # peer2's certificate is from our CA, but it does not name the index ("indexd").
    impostor = Server({}, pki.server_ctx("peer2"), name="impostor")
    await impostor.start("127.0.0.1", 0)
    try:
        daemon = PeerDaemon(peer_config("peer1", impostor.port))
        with pytest.raises(StartupError, match="a certificate we do not trust") as info:
            await asyncio.wait_for(daemon.start(), TIMEOUT)
    finally:
        await impostor.close(grace=0)
    assert isinstance(info.value.__cause__, IndexUntrusted)


async def test_after_the_start_an_untrusted_index_is_index_untrusted_not_a_startup_error(
    pki: Any, index_config: Any, running_index: Any, peer_config: Any, running_peer: Any
) -> None:
    async with running_index(index_config()) as index, asyncio.timeout(TIMEOUT):
        port = index.port
        async with running_peer(peer_config("peer1", port, ping_interval=3600)) as peer1:
            await index.stop(grace=0)
            impostor = Server({}, pki.server_ctx("peer2"), name="impostor")
            await impostor.start("127.0.0.1", port)
            try:
                assert peer1.index is not None
                await peer1.index.close()
                with pytest.raises(IndexUntrusted) as info:
                    await peer1.search("koala")
            finally:
                await impostor.close(grace=0)
    assert not isinstance(info.value, StartupError)
    assert isinstance(info.value.__cause__, ConnectionClosed)


async def test_an_invalid_domain_name_is_a_startup_error_from_start_not_the_constructor(
    peer_config: Any,
) -> None:
    daemon = PeerDaemon(peer_config("peer1", 1, domain_name="not a name!"))
    with pytest.raises(StartupError, match="domain_name") as info:
        await asyncio.wait_for(daemon.start(), TIMEOUT)
    assert info.value.__cause__ is not None


async def test_a_missing_certificate_file_is_a_readable_startup_error(
    peer_config: Any, tmp_path: Path
) -> None:
    daemon = PeerDaemon(peer_config("peer1", 1, cert=tmp_path / "nope.crt"))
    with pytest.raises(StartupError, match=r"cannot read certificate .*nope\.crt"):
        await asyncio.wait_for(daemon.start(), TIMEOUT)


async def test_a_certificate_for_another_name_is_a_readable_startup_error(
    pki: Any, peer_config: Any
) -> None:
    config = peer_config("peer1", 1, cert=pki.cert("peer2"), key=pki.key("peer2"))
    with pytest.raises(StartupError, match="does not name 'peer1'"):
        await asyncio.wait_for(PeerDaemon(config).start(), TIMEOUT)


async def test_a_key_that_does_not_match_the_certificate_is_a_readable_startup_error(
    pki: Any, peer_config: Any
) -> None:
    config = peer_config("peer1", 1, key=pki.key("peer2"))
    with pytest.raises(StartupError, match="does not match"):
        await asyncio.wait_for(PeerDaemon(config).start(), TIMEOUT)


async def test_a_certificate_from_another_ca_is_a_readable_startup_error(
    pki: Any, peer_config: Any
) -> None:
    config = peer_config(
        "peer1", 1, cert=pki.cert("peer1", other=True), key=pki.key("peer1", other=True)
    )
    with pytest.raises(StartupError, match="not issued by CA"):
        await asyncio.wait_for(PeerDaemon(config).start(), TIMEOUT)


async def test_a_domain_name_owned_by_another_user_is_a_readable_startup_error(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any
) -> None:
    async with running_index(index_config()) as index, asyncio.timeout(TIMEOUT):
        async with running_peer(peer_config("peer1", index.port)):
            pass  # user peer1 now owns the domain name peer1
        config = peer_config("peer1", index.port, username="someone-else")
        with pytest.raises(StartupError, match="refuses 'peer1'"):
            await asyncio.wait_for(PeerDaemon(config).start(), TIMEOUT)


async def test_a_failed_start_leaves_nothing_listening(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any
) -> None:
    async with running_index(index_config()) as index, asyncio.timeout(TIMEOUT):
        async with running_peer(peer_config("peer1", index.port)) as peer1:
            port = peer1.port
        config = peer_config("peer1", index.port, port=port, username="someone-else")
        with pytest.raises(StartupError):
            await asyncio.wait_for(PeerDaemon(config).start(), TIMEOUT)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)


async def test_without_register_an_unknown_user_cannot_log_in(
    index_config: Any, running_index: Any, peer_config: Any
) -> None:
    async with running_index(index_config()) as index, asyncio.timeout(TIMEOUT):
        daemon = PeerDaemon(peer_config("peer1", index.port, register=False))
        with pytest.raises(StartupError, match="authentication failed"):
            await asyncio.wait_for(daemon.start(), TIMEOUT)


async def test_register_creates_the_user_the_daemon_logs_in_as(
    pki: Any, index_config: Any, running_index: Any, peer_config: Any, running_peer: Any
) -> None:
    async with running_index(index_config()) as index, asyncio.timeout(TIMEOUT):
        async with running_peer(peer_config("peer1", index.port)):
            pass
        client = await IndexClient.connect(
            "127.0.0.1", index.port, pki.client_ctx(), server_hostname="indexd"
        )
        async with client:
            reply = await client.auth("peer1", "correct horse battery")
    assert reply.token


# --- the command line ------------------------------------------------------------------------

ORIGINAL_FLAGS = [
    "-hostname",
    "peer1",
    "-index_server_name",
    "127.0.0.1:7100",
    "-peer_server_port",
    "7001",
    "-username",
    "peer1",
    "-file_directory",
    "peer1-files",
    "-certificate",
    "peer1.crt",
    "-private_key",
    "peer1.key",
    "--ca",
    "ca.crt",
]


def test_the_original_single_dash_flags_are_accepted() -> None:
    args = build_parser().parse_args(ORIGINAL_FLAGS)
    config = config_from_args(args, "secret password")
    assert (config.domain_name, config.index_host, config.index_port) == (
        "peer1",
        "127.0.0.1",
        7100,
    )
    assert (config.port, config.username) == (7001, "peer1")
    assert (config.file_directory, config.cert, config.key) == (
        Path("peer1-files"),
        Path("peer1.crt"),
        Path("peer1.key"),
    )


def test_double_dash_flags_mean_the_same() -> None:
    flags = [
        f"-{f}".replace("_", "-") if f.startswith("-") and f[1] != "-" else f
        for f in ORIGINAL_FLAGS
    ]
    assert build_parser().parse_args(flags) == build_parser().parse_args(ORIGINAL_FLAGS)


def test_the_index_port_defaults_to_indexds_port() -> None:
    flags = list(ORIGINAL_FLAGS)
    flags[3] = "indexd"
    config = config_from_args(build_parser().parse_args(flags), "secret password")
    assert (config.index_host, config.index_port) == ("indexd", 7000)


def test_a_malformed_index_address_is_a_usage_error() -> None:
    flags = list(ORIGINAL_FLAGS)
    flags[3] = "indexd:notaport"
    with pytest.raises(UsageError, match="index_server_name"):
        config_from_args(build_parser().parse_args(flags), "secret password")


def test_the_password_comes_from_the_environment_first() -> None:
    args = argparse.Namespace(password=None, username="peer1")
    assert read_password(args, {"P2P_PASSWORD": "from env"}, interactive=False) == "from env"


def test_the_password_is_prompted_for_on_a_terminal() -> None:
    args = argparse.Namespace(password=None, username="peer1")
    prompts: list[str] = []

    def prompt(text: str) -> str:
        prompts.append(text)
        return "typed"

    assert read_password(args, {}, prompt, interactive=True) == "typed"
    assert prompts == ["password for peer1: "]


def test_without_a_password_or_terminal_it_is_a_usage_error() -> None:
    args = argparse.Namespace(password=None, username="peer1")
    with pytest.raises(UsageError, match="P2P_PASSWORD"):
        read_password(args, {}, interactive=False)


def test_main_reports_an_unreadable_certificate_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("P2P_PASSWORD", "secret password")
    argv = [*ORIGINAL_FLAGS, "--no-shell"]
    argv[argv.index("-file_directory") + 1] = str(tmp_path / "files")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "peerd: cannot read certificate peer1.crt: No such file or directory"
    ]


def test_main_reports_an_unreachable_index_in_one_line(
    pki: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    unused_tcp_port: int,
) -> None:
    monkeypatch.setenv("P2P_PASSWORD", "secret password")
    argv = [
        "-hostname", "peer1",
        "-index_server_name", f"127.0.0.1:{unused_tcp_port}",
        "-username", "peer1",
        "-file_directory", str(tmp_path / "files"),
        "-certificate", str(pki.cert("peer1")),
        "-private_key", str(pki.key("peer1")),
        "--ca", str(pki.ca),
        "--no-shell",
    ]  # fmt: skip
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"peerd: cannot reach the index at 127.0.0.1:{unused_tcp_port}")
