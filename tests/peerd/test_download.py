"""How download() (peerd/download.py) ties staging, transfer, verification and install
together, against an in-memory peer (tests/support/fake_fetch.py): whose fault restarts a
resumed download, where its disk work runs, and whose clock it reads. The same download over
real mutual TLS, against honest and lying peers, is in test_client.py."""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from netproto.errors import BadRequest, ConnectionClosed, NotFound, RemoteProtocolError
from netproto.operations import ListedFile
from peerd.download import DownloadLimits, DownloadRefused, NotEnoughRoom, download, part_names
from peerd.pacing import PacePolicy
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
        (NotFound("the file went away"), False),
    ],
    ids=["connection-lost", "error-from-the-peer"],
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


async def test_a_stream_that_breaks_the_protocol_mid_transfer_raises_it_and_keeps_nothing(
    pki: Any, tmp_path: Path
) -> None:
    failure = RemoteProtocolError("the peer sent a chunk of 0 bytes (1 to 262144 allowed)")
    peer = FakeFetchPeer(pki, CONTENT, fail_after=3, failure=failure)
    with pytest.raises(RemoteProtocolError) as info:
        await download(peer, "koala", "file.bin", tmp_path)
    assert info.value is failure
    assert not partial_of(tmp_path).exists()


def _slow(clock: FakeClock, seconds: float) -> Callable[[], None]:
    return lambda: clock.advance(seconds)


async def test_a_transfer_under_the_floor_is_abandoned_and_its_partial_kept(
    pki: Any, tmp_path: Path
) -> None:
    clock = FakeClock()
    # 1000-byte chunks 31 s apart: far under 16 KiB/s over 30 s.
    peer = FakeFetchPeer(pki, CONTENT, on_chunk=_slow(clock, 31))
    with pytest.raises(DownloadRefused) as info:
        await download(peer, "koala", "file.bin", tmp_path, clock=clock)
    assert info.value.check == "truncated" and info.value.partial_kept
    assert "abandoned" in str(info.value) and "under 16 KiB/s over 30 s" in str(info.value)


async def test_the_floor_and_its_window_come_from_the_limits(pki: Any, tmp_path: Path) -> None:
    clock = FakeClock()
    limits = DownloadLimits(pace=PacePolicy(min_rate=10, window=60))  # 600 bytes a minute
    peer = FakeFetchPeer(pki, CONTENT, on_chunk=_slow(clock, 31))
    result = await download(peer, "koala", "file.bin", tmp_path, clock=clock, limits=limits)
    assert result.size == len(CONTENT)


async def test_a_transfer_past_its_deadline_is_abandoned(pki: Any, tmp_path: Path) -> None:
    clock = FakeClock()
    # A window of 10 s is never closed, but the whole file (5123 bytes at 1 kB/s, no grace)
    # is due after 5.1 s, and the sixth chunk comes at 6 s.
    limits = DownloadLimits(pace=PacePolicy(min_rate=1000, window=10, grace=0))
    peer = FakeFetchPeer(pki, CONTENT, on_chunk=_slow(clock, 1.0))
    with pytest.raises(DownloadRefused) as info:
        await download(peer, "koala", "file.bin", tmp_path, clock=clock, limits=limits)
    assert "not done within 5 s" in str(info.value) and info.value.partial_kept


async def test_a_file_over_the_size_limit_is_refused_before_anything_is_written(
    pki: Any, tmp_path: Path
) -> None:
    peer = FakeFetchPeer(pki, CONTENT)
    limits = DownloadLimits(max_size=len(CONTENT) - 1)
    with pytest.raises(DownloadRefused) as info:
        await download(peer, "koala", "file.bin", tmp_path, limits=limits)
    assert info.value.check == "size" and "--max-download-size" in str(info.value)
    assert not (tmp_path / "koala").exists()


async def test_a_listed_file_over_the_size_limit_is_refused_without_asking_the_peer(
    pki: Any, tmp_path: Path
) -> None:
    peer = FakeFetchPeer(pki, CONTENT)
    listed = ListedFile("file.bin", 1 << 40, hashlib.sha256(CONTENT).digest())
    with pytest.raises(DownloadRefused):
        await download(peer, "koala", "file.bin", tmp_path, expected=listed)
    assert peer.calls == []


async def test_a_file_the_disk_cannot_hold_is_refused_with_a_readable_error(
    pki: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.fstatvfs

    def nearly_full(fd: int) -> Any:
        fs = real(fd)
        free = (len(CONTENT) + 1000) // fs.f_frsize  # less than the file and its margin
        return SimpleNamespace(f_bavail=free, f_frsize=fs.f_frsize, f_blocks=fs.f_blocks)

    monkeypatch.setattr(os, "fstatvfs", nearly_full)
    with pytest.raises(NotEnoughRoom, match=r"not enough free space for .*file\.bin"):
        await download(FakeFetchPeer(pki, CONTENT), "koala", "file.bin", tmp_path)
    assert not (tmp_path / "koala").exists()


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
