"""peerd.enrollment when things go wrong: an unreachable or lying index, a spoilt state
directory, a renewal or a revocation refresh that fails."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from certs import load_cert
from certs.requests import ca_fingerprint
from indexd.app import IndexConfig, IndexDaemon
from netproto.client import Connection
from netproto.errors import ConnectionClosed, NotFound, RemoteProtocolError, UnknownOp
from peerd.enrollment import (
    CertificateRenewer,
    RevocationList,
    StateFiles,
    ensure_identity,
    fetch_ca,
    store_certificate,
)
from runner import StartupError
from tests.conftest import PKI
from tests.support.fake_clock import FakeClock

IndexRunner = Callable[[IndexConfig], contextlib.AbstractAsyncContextManager[IndexDaemon]]
PASSWORD = "correct horse battery"


class FakeConnection:
    """What fetch_ca uses of a connection: one reply (or error) and a presented certificate."""

    def __init__(self, reply: Any, peer_certificate: Any) -> None:
        self.reply, self.peer_certificate = reply, peer_certificate

    async def request(self, op: str, body: dict[str, Any]) -> Any:
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply

    async def close(self) -> None:
        pass


def fake_index(monkeypatch: pytest.MonkeyPatch, reply: Any, cert: Any = None) -> None:
    """Make fetch_ca's connection a :class:`FakeConnection`."""

    async def open_(*args: Any, **kwargs: Any) -> FakeConnection:
        return FakeConnection(reply, cert)

    monkeypatch.setattr(Connection, "open", open_)


def der(path: Path) -> bytes:
    return load_cert(path).public_bytes(serialization.Encoding.DER)


async def test_fetch_ca_refuses_an_unreachable_index_and_lying_answers(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp = ca_fingerprint(load_cert(pki.ca))
    with pytest.raises(StartupError, match="cannot reach"):
        await fetch_ca("127.0.0.1", 1, "indexd", fp, connect_timeout=2)
    cases: list[tuple[Any, Any, str]] = [
        (UnknownOp("no"), None, "gives no CA certificate"),
        (ConnectionClosed("gone"), None, "lost the connection"),
        ({"certificate": b"\x30\x03abc"}, None, "malformed CA certificate"),
        ({"certificate": der(pki.ca)}, load_cert(pki.cert("indexd", other=True)), "not issued"),
    ]
    for reply, cert, message in cases:
        fake_index(monkeypatch, reply, cert)
        with pytest.raises(StartupError, match=message):
            await fetch_ca("127.0.0.1", 1, "indexd", fp)


def test_a_certificate_that_is_malformed_or_for_another_key_is_not_stored(
    pki: PKI, tmp_path: Path
) -> None:
    state = StateFiles(tmp_path)
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(RemoteProtocolError, match="malformed"):
        store_certificate(state, key, b"junk")
    with pytest.raises(RemoteProtocolError, match="another key"):
        store_certificate(state, key, der(pki.cert("peer1")))
    assert not state.cert.exists()


async def test_ensure_identity_refuses_a_state_dir_that_is_a_file_or_an_absent_index(
    pki: PKI, tmp_path: Path
) -> None:
    common: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 1,
        "server_hostname": "indexd",
        "domain_name": "laptop",
        "username": "alice",
        "password": PASSWORD,
        "connect_timeout": 2.0,
    }
    (tmp_path / "file").write_text("")
    with pytest.raises(StartupError, match="cannot use the state directory"):
        await ensure_identity(StateFiles(tmp_path / "file"), **common)
    state = StateFiles(tmp_path / "state")
    state.directory.mkdir(mode=0o700)
    state.ca.write_bytes(pki.ca.read_bytes())
    with pytest.raises(StartupError, match="cannot reach"):
        await ensure_identity(state, **common)


async def test_a_spoilt_key_or_another_name_enrolls_again_and_a_refusal_stops_the_start(
    pki: PKI,
    index_config: Callable[..., IndexConfig],
    running_index: IndexRunner,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = StateFiles(tmp_path / "state")
    async with running_index(index_config(ca_key=pki.dir / "ca.key")) as index:
        common: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": index.port,
            "server_hostname": "indexd",
            "username": "alice",
            "password": PASSWORD,
            "register": True,
        }
        fp = ca_fingerprint(load_cert(pki.ca))
        await ensure_identity(state, domain_name="laptop", fingerprint=fp, **common)
        first = load_cert(state.cert)
        await ensure_identity(state, domain_name="phone", **common)  # another name: enroll
        assert load_cert(state.cert) != first
        state.key.write_bytes(b"not a key")
        await ensure_identity(state, domain_name="tablet", **common)
        assert "making a new key" in caplog.text
        with pytest.raises(StartupError, match="refused to enroll indexd"):
            await ensure_identity(state, domain_name="indexd", **common)


class FailingSession:
    """An index session whose index cannot be had (or is not an IndexClient)."""

    domain_name = "laptop"
    token = "t"
    ping_every = 5.0

    def __init__(self, failure: Exception | None) -> None:
        self.failure = failure
        self.lock = asyncio.Lock()

    async def connected_index(self) -> object:
        if self.failure is not None:
            raise self.failure
        return object()

    fresh_index = connected_index


async def test_a_failed_renewal_is_retried_within_a_tenth_of_what_is_left(
    pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = StateFiles(tmp_path)
    state.cert.write_bytes(pki.cert("peer1").read_bytes())
    state.key.write_bytes(pki.key("peer1").read_bytes())
    clock = FakeClock()
    session: Any = FailingSession(ConnectionClosed("down"))
    renewer = CertificateRenewer(state, session, lambda: None, clock=clock)
    task = asyncio.create_task(renewer.run())
    await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert "certificate renewal failed (down); retrying in 60 s" in caplog.text
    with pytest.raises(TypeError):
        await CertificateRenewer(state, FailingSession(None), lambda: None).renew()  # type: ignore[arg-type]


async def test_the_revocation_list_keeps_going_after_failures_and_stops_without_the_op(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    failing: Any = FailingSession(NotFound("busy"))
    revocations = RevocationList(failing, interval=1.0, clock=clock)
    task = asyncio.create_task(revocations.run())
    await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert "could not refresh the revocation list" in caplog.text
    unknown: Any = FailingSession(UnknownOp("revoked"))
    await asyncio.wait_for(RevocationList(unknown, clock=clock).run(), 5)
    other: Any = FailingSession(None)
    await RevocationList(other, clock=clock).refresh()  # not an IndexClient: nothing to ask
    assert not RevocationList(other).is_revoked(None)
