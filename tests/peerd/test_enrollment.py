"""peerd.enrollment with in-process daemons: joining from one fingerprint, the state directory,
renewal without the password, and revoked peers refused by the others (PROTOCOL.md §10)."""

from __future__ import annotations

import asyncio
import contextlib
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from certs import load_cert
from certs.requests import ca_fingerprint, serial_hex
from indexd import admin
from indexd.app import IndexConfig, IndexDaemon
from indexd.handlers import IndexService
from netproto.errors import TokenInvalid
from peerd.daemon import PeerConfig, PeerDaemon
from peerd.enrollment import StateFiles, renewal_time
from runner import StartupError
from tests.conftest import PKI

IndexRunner = Callable[[IndexConfig], contextlib.AbstractAsyncContextManager[IndexDaemon]]
PeerRunner = Callable[[PeerConfig], contextlib.AbstractAsyncContextManager[PeerDaemon]]


@pytest.fixture
def seen_ops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ``register`` and ``auth`` requests the index handles, in order."""
    seen: list[str] = []
    for op in ("register", "auth"):
        original = getattr(IndexService, f"handle_{op}")

        async def spy(
            self: IndexService, ctx: Any, req: Any, _op: str = op, _f: Any = original
        ) -> Any:
            seen.append(_op)
            return await _f(self, ctx, req)

        monkeypatch.setattr(IndexService, f"handle_{op}", spy)
    return seen


@pytest.fixture
def enrolling(index_config: Callable[..., IndexConfig], pki: PKI) -> IndexConfig:
    """An index that enrolls, rereading revocations every 50 ms."""
    return index_config(ca_key=pki.dir / "ca.key", revocation_refresh=0.05)


@pytest.fixture
def joining(
    peer_config: Callable[..., PeerConfig], pki: PKI, tmp_path: Path
) -> Callable[..., PeerConfig]:
    """Configs of peers that join by enrollment: no certificate of their own, a state dir."""

    def make(name: str, index_port: int, **overrides: Any) -> PeerConfig:
        state = StateFiles(tmp_path / "state" / name)
        settings: dict[str, Any] = {
            "cert": state.cert,
            "key": state.key,
            "ca": state.ca,
            "state_dir": state.directory,
            "enroll": True,
            "ca_fingerprint": ca_fingerprint(load_cert(pki.ca)),
            "revocation_interval": 0.1,
            **overrides,
        }
        return peer_config(name, index_port, **settings)

    return make


async def test_a_newcomer_joins_with_only_the_fingerprint_and_downloads_verified(
    enrolling: IndexConfig,
    joining: Callable[..., PeerConfig],
    running_index: IndexRunner,
    running_peer: PeerRunner,
) -> None:
    async with running_index(enrolling) as index:
        laptop_config = joining("laptop", index.port)
        (laptop_config.file_directory / "koala").mkdir(parents=True)
        (laptop_config.file_directory / "koala" / "joey.txt").write_bytes(b"a baby koala\n")
        async with running_peer(laptop_config), running_peer(joining("desk", index.port)) as desk:
            [hit] = await desk.search("koala")
            assert hit.domain_name == "laptop"
            result = await desk.download(hit, "koala", "joey.txt")
        assert result.path.read_bytes() == b"a baby koala\n"
    state = StateFiles(laptop_config.state_dir or Path())
    assert stat.S_IMODE(state.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(state.key.stat().st_mode) == 0o600
    assert load_cert(state.ca) == load_cert(laptop_config.ca)


async def test_a_later_run_needs_no_fingerprint_and_keeps_the_certificate(
    enrolling: IndexConfig,
    joining: Callable[..., PeerConfig],
    running_index: IndexRunner,
    running_peer: PeerRunner,
) -> None:
    async with running_index(enrolling) as index:
        config = joining("laptop", index.port)
        async with running_peer(config):
            pass
        serial = serial_hex(load_cert(config.cert))
        async with running_peer(joining("laptop", index.port, ca_fingerprint=None)):
            assert serial_hex(load_cert(config.cert)) == serial
        wrong = "SHA256:" + "0" * 64
        with pytest.raises(StartupError, match="does not have the fingerprint"):
            async with running_peer(joining("laptop", index.port, ca_fingerprint=wrong)):
                pass
        with pytest.raises(StartupError, match="not enrolled yet"):
            async with running_peer(joining("phone", index.port, ca_fingerprint=None)):
                pass


async def test_a_wrong_fingerprint_aborts_before_the_password_is_sent(
    enrolling: IndexConfig,
    joining: Callable[..., PeerConfig],
    running_index: IndexRunner,
    running_peer: PeerRunner,
    seen_ops: list[str],
) -> None:
    async with running_index(enrolling) as index:
        wrong = "SHA256:" + "ab" * 32
        with pytest.raises(StartupError, match="the password was not sent"):
            async with running_peer(joining("laptop", index.port, ca_fingerprint=wrong)):
                pass
        assert seen_ops == []  # the index saw no register and no auth
        async with running_peer(joining("laptop", index.port)):
            assert "auth" in seen_ops


async def test_renewal_needs_no_password_and_the_peer_goes_on_with_the_new_certificate(
    enrolling: IndexConfig,
    joining: Callable[..., PeerConfig],
    running_index: IndexRunner,
    running_peer: PeerRunner,
    seen_ops: list[str],
) -> None:
    async with running_index(enrolling) as index:
        laptop_config = joining("laptop", index.port)
        (laptop_config.file_directory / "koala").mkdir(parents=True)
        (laptop_config.file_directory / "koala" / "joey.txt").write_bytes(b"a baby koala\n")
        async with (
            running_peer(laptop_config) as laptop,
            running_peer(joining("desk", index.port)) as desk,
        ):
            old = load_cert(laptop_config.cert)
            assert laptop.renewer is not None
            assert laptop.renewer.due_at == pytest.approx(renewal_time(old))
            seen_ops.clear()
            new = await asyncio.wait_for(laptop.renewer.renew(), 10)
            assert new.serial_number != old.serial_number
            assert load_cert(laptop_config.cert) == new
            # The index session reconnects with the new certificate and its bound tokens ...
            assert await laptop.search("nothing") == []
            # ... other peers accept it, and it serves with it.
            [hit] = await desk.search("koala")
            await desk.download(hit, "koala", "joey.txt")
            [hit] = await laptop.search("koala")
            assert seen_ops == []  # not one login, so not one password


async def test_a_revoked_peer_is_refused_by_other_peers_within_one_refresh(
    enrolling: IndexConfig,
    joining: Callable[..., PeerConfig],
    running_index: IndexRunner,
    running_peer: PeerRunner,
) -> None:
    async with running_index(enrolling) as index:
        desk_config = joining("desk", index.port)
        (desk_config.file_directory / "koala").mkdir(parents=True)
        (desk_config.file_directory / "koala" / "joey.txt").write_bytes(b"a baby koala\n")
        async with (
            running_peer(desk_config) as desk,
            running_peer(joining("laptop", index.port)) as laptop,
        ):
            [hit] = await laptop.search("koala")
            async with await laptop.open_peer(hit) as peer:
                assert await peer.list("koala") == ["joey.txt"]
            serial = serial_hex(load_cert(laptop.config.cert))
            assert admin.main(["--db", str(enrolling.db), "revoke", "--domain", "laptop"]) == 0
            await asyncio.sleep(0.5)  # the index rereads every 50 ms, desk refreshes every 100 ms
            assert desk.revocations.serials == {serial}
            async with await laptop.open_peer(hit) as peer:
                with pytest.raises(TokenInvalid, match="revoked"):
                    await peer.list("koala")


async def test_a_connection_opened_before_a_renewal_keeps_its_token_after_it(
    enrolling: IndexConfig,
    joining: Callable[..., PeerConfig],
    running_index: IndexRunner,
    running_peer: PeerRunner,
) -> None:
    async with running_index(enrolling) as index:
        laptop_config = joining("laptop", index.port)
        (laptop_config.file_directory / "koala").mkdir(parents=True)
        (laptop_config.file_directory / "koala" / "joey.txt").write_bytes(b"a baby koala\n")
        async with (
            running_peer(laptop_config),
            running_peer(joining("desk", index.port)) as desk,
        ):
            [hit] = await desk.search("koala")
            before = await desk.connect_peer(hit)
            try:
                assert await before.list("koala") == ["joey.txt"]
                assert desk.renewer is not None
                await asyncio.wait_for(desk.renewer.renew(), 10)
                # the old connection presented the old certificate: it keeps the old token
                assert await asyncio.wait_for(before.list("koala"), 10) == ["joey.txt"]
            finally:
                await before.close()
            after = await desk.connect_peer(hit)
            try:
                assert await asyncio.wait_for(after.list("koala"), 10) == ["joey.txt"]
            finally:
                await after.close()
