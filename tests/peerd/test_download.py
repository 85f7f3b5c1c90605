"""How download() (peerd/download.py) ties staging, transfer, verification and install
together, against an in-memory peer (tests/support/fake_fetch.py): whose fault restarts a
resumed download, where its disk work runs, and whose clock it reads. The same download over
real mutual TLS, against honest and lying peers, is in test_client.py."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from netproto.errors import BadRequest, ConnectionClosed, NotFound, RemoteProtocolError
from peerd.download import DownloadRefused, download, part_names
from tests.support.fake_clock import FakeClock
from tests.support.fake_fetch import CHUNK, FakeFetchPeer

CONTENT = os.urandom(5 * CHUNK + 123)


def partial_of(dest: Path) -> Path:
    return dest / "koala" / part_names("file.bin")[0]


async def cut_off(pki: Any, dest: Path) -> int:
    """A download cut off after two chunks; the size of the partial file it keeps."""
    peer = FakeFetchPeer(pki, CONTENT, fail_after=2, failure=ConnectionClosed("reset"))
    with pytest.raises(DownloadRefused) as info:
        await download(peer, "koala", "file.bin", dest)
    assert info.value.check == "truncated" and info.value.partial_kept
    return partial_of(dest).stat().st_size


async def test_a_download_from_the_fake_peer_passes_every_check(pki: Any, tmp_path: Path) -> None:
    result = await download(FakeFetchPeer(pki, CONTENT), "koala", "file.bin", tmp_path)
    assert all(c.passed is not False for c in result.checks)
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT


async def test_a_resumed_download_asks_from_where_the_partial_file_ends(
    pki: Any, tmp_path: Path
) -> None:
    kept = await cut_off(pki, tmp_path)
    peer = FakeFetchPeer(pki, CONTENT)
    result = await download(peer, "koala", "file.bin", tmp_path)
    assert kept == 2 * CHUNK
    assert [c.offset for c in peer.calls] == [kept]
    assert result.resumed_from == kept
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT


async def test_a_bad_request_for_a_resumed_offset_restarts_from_the_beginning(
    pki: Any, tmp_path: Path
) -> None:
    kept = await cut_off(pki, tmp_path)
    peer = FakeFetchPeer(pki, CONTENT, fetch_errors=[BadRequest("offset: past the end")])
    result = await download(peer, "koala", "file.bin", tmp_path)
    assert [c.offset for c in peer.calls] == [kept, 0]  # our offset was refused: start over
    assert result.resumed_from == 0
    assert (tmp_path / "koala" / "file.bin").read_bytes() == CONTENT


async def test_a_peer_breaking_the_protocol_is_its_fault_and_never_restarts_the_download(
    pki: Any, tmp_path: Path
) -> None:
    kept = await cut_off(pki, tmp_path)
    before = partial_of(tmp_path).read_bytes()
    malformed = RemoteProtocolError("the peer's stream header is malformed: size: expected...")
    peer = FakeFetchPeer(pki, CONTENT, fetch_errors=[malformed])
    with pytest.raises(RemoteProtocolError):
        await download(peer, "koala", "file.bin", tmp_path)
    assert [c.offset for c in peer.calls] == [kept]  # asked once: no restart from 0
    assert partial_of(tmp_path).read_bytes() == before  # what we had is kept for later


async def test_a_refusal_before_anything_arrived_leaves_nothing(pki: Any, tmp_path: Path) -> None:
    peer = FakeFetchPeer(pki, CONTENT, fetch_errors=[NotFound("no such file")])
    with pytest.raises(NotFound):
        await download(peer, "koala", "file.bin", tmp_path)
    assert not (tmp_path / "koala").exists()


@pytest.mark.parametrize(
    "failure, partial_kept",
    [
        (ConnectionClosed("reset"), True),
        (RemoteProtocolError("a chunk that is not a chunk"), False),
        (NotFound("the file went away"), False),
    ],
    ids=["connection-lost", "protocol-broken", "error-from-the-peer"],
)
async def test_a_stream_ended_early_is_truncated_and_kept_only_if_the_connection_dropped(
    pki: Any, tmp_path: Path, failure: BaseException, partial_kept: bool
) -> None:
    peer = FakeFetchPeer(pki, CONTENT, fail_after=3, failure=failure)
    with pytest.raises(DownloadRefused) as info:
        await download(peer, "koala", "file.bin", tmp_path)
    assert (info.value.check, info.value.partial_kept) == ("truncated", partial_kept)
    assert info.value.__cause__ is failure
    assert partial_of(tmp_path).exists() is partial_kept


async def test_the_download_rate_is_measured_on_the_injected_clock(
    pki: Any, tmp_path: Path
) -> None:
    clock = FakeClock()
    peer = FakeFetchPeer(pki, CONTENT, on_chunk=lambda: clock.advance(0.5))
    result = await download(peer, "koala", "file.bin", tmp_path, clock=clock)
    assert result.elapsed == 0.5 * 6  # six chunks


async def test_every_disk_operation_of_a_download_runs_off_the_event_loop(
    pki: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.current_thread()
    on_loop: list[str] = []
    seen: set[str] = set()

    def watched(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            seen.add(name)
            if threading.current_thread() is loop_thread:
                on_loop.append(name)
            return real(*args, **kwargs)

        return call

    for module, name in [
        (os, "open"),
        (os, "makedirs"),
        (os, "mkdir"),
        (os, "listdir"),
        (os, "stat"),
        (os, "pread"),
        (os, "pwrite"),
        (os, "ftruncate"),
        (os, "fsync"),
        (os, "link"),
        (os, "replace"),
        (os, "rename"),
        (os, "unlink"),
        (fcntl, "flock"),
    ]:
        monkeypatch.setattr(module, name, watched(name, getattr(module, name)))
    cut = FakeFetchPeer(pki, CONTENT, fail_after=2, failure=ConnectionClosed("reset"))
    with pytest.raises(DownloadRefused):  # a partial file and its sidecar are kept...
        await download(cut, "koala", "file.bin", tmp_path)
    await download(FakeFetchPeer(pki, CONTENT), "koala", "file.bin", tmp_path)  # ...resumed
    monkeypatch.undo()
    assert {"makedirs", "mkdir", "open", "flock", "pread", "pwrite", "ftruncate"} <= seen
    assert {"fsync", "link", "unlink"} <= seen
    assert on_loop == []
