"""The watched share (peerd/watch.py): events batched into one sync, periodic rescans with
jitter, a failing event source, a real folder through watchfiles, and — with real daemons — a
file copied into one peer's share found by another peer within 5 s, without ``sync``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from peerd.daemon import PeerDaemon
from peerd.watch import ShareWatcher, relevant, watchfiles_source
from tests.support.fake_clock import FakeClock

TIMEOUT = 10.0
ROOT = Path("/share")


class Events:
    """A change source fed by the test: ``push`` a batch, ``fail`` the next read."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[set[str] | BaseException] = asyncio.Queue()
        self.opened = 0
        self.reopened = asyncio.Event()

    def push(self, *paths: str) -> None:
        self.queue.put_nowait(set(paths))

    async def __call__(self, stop: asyncio.Event) -> AsyncIterator[set[str]]:
        self.opened += 1
        if self.opened > 1:
            self.reopened.set()
        while not stop.is_set():
            item = await self.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item


class Syncs:
    """The watcher's sync callback: records each reason and the time it came."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock
        self.calls: list[tuple[str, float]] = []
        self.called = asyncio.Event()

    async def __call__(self, reason: str) -> None:
        self.calls.append((reason, self.clock.monotonic() if self.clock else time.monotonic()))
        self.called.set()

    async def wait(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while len(self.calls) < count:
                self.called.clear()
                await self.called.wait()


@contextlib.asynccontextmanager
async def running(watcher: ShareWatcher) -> AsyncIterator[ShareWatcher]:
    task = asyncio.create_task(watcher.run())
    try:
        yield watcher
    finally:
        watcher.stop()
        await asyncio.wait_for(task, TIMEOUT)


@pytest.mark.parametrize(
    ("path", "wanted"),
    [
        ("/share/koala/joey.txt", True),
        ("/share/koala", True),
        ("/share", True),
        ("/share/.p2pshare-digests", False),
        ("/share/.p2pshare-digests.tmp", False),
        ("/share/koala/.joey.txt.p2pshare-part", False),
        ("/share/koala/joey.txt.part", False),
        ("/share/koala/notes.txt~", False),
        ("/share/.hidden/joey.txt", False),
        ("/elsewhere/koala/joey.txt", False),
    ],
)
def test_only_changes_the_share_may_list_wake_the_watcher(path: str, wanted: bool) -> None:
    assert relevant(ROOT, path) is wanted


async def test_a_burst_of_events_is_one_sync_after_the_delay() -> None:
    clock, events = FakeClock(), Events()
    syncs = Syncs(clock)
    watcher = ShareWatcher(ROOT, syncs, delay=2.0, rescan_interval=None, clock=clock, source=events)
    events.push("/share/koala/a.txt")
    events.push("/share/koala/b.txt", "/share/koala/c.txt")
    async with running(watcher):
        await syncs.wait(1)
        await asyncio.sleep(0.05)
    assert [reason for reason, _ in syncs.calls] == ["changes"]
    assert syncs.calls[0][1] == pytest.approx(2.0)  # after the settling delay
    assert watcher.batches == 2


async def test_every_later_change_gets_a_sync_of_its_own() -> None:
    clock, events = FakeClock(), Events()
    syncs = Syncs(clock)
    watcher = ShareWatcher(ROOT, syncs, rescan_interval=None, clock=clock, source=events)
    async with running(watcher):
        events.push("/share/koala/a.txt")
        await syncs.wait(1)
        events.push("/share/koala/a.txt")
        await syncs.wait(2)
    assert [reason for reason, _ in syncs.calls] == ["changes", "changes"]


async def test_the_share_is_rescanned_periodically_with_jitter() -> None:
    clock, events = FakeClock(), Events()
    syncs = Syncs(clock)
    draws = iter([0.0, 1.0, 0.5, 0.25, 0.75, 0.5])
    watcher = ShareWatcher(
        ROOT,
        syncs,
        rescan_interval=300.0,
        jitter=0.1,
        clock=clock,
        source=events,
        rng=lambda: next(draws),
    )
    async with running(watcher):
        await syncs.wait(5)
    times = [t for _, t in syncs.calls[:5]]
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert gaps == pytest.approx([270.0, 330.0, 300.0, 285.0, 315.0])
    assert {reason for reason, _ in syncs.calls} == {"rescan"}


async def test_a_failed_event_source_is_opened_again_and_a_failed_sync_is_survived(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, events = FakeClock(), Events()
    attempts: list[str] = []
    failed, done = asyncio.Event(), asyncio.Event()

    async def flaky_sync(reason: str) -> None:
        attempts.append(reason)
        if len(attempts) == 1:
            failed.set()
            raise OSError("index away")
        done.set()

    watcher = ShareWatcher(ROOT, flaky_sync, rescan_interval=None, clock=clock, source=events)
    events.queue.put_nowait(RuntimeError("inotify watch limit reached"))
    async with running(watcher):
        await asyncio.wait_for(events.reopened.wait(), TIMEOUT)
        events.push("/share/koala/a.txt")
        await asyncio.wait_for(failed.wait(), TIMEOUT)
        await asyncio.wait_for(done.wait(), TIMEOUT)  # retried without a new event
    assert attempts == ["changes", "rescan"]
    assert "cannot watch /share" in caplog.text and "retrying in 10 s" in caplog.text


async def test_a_file_written_into_a_real_folder_is_noticed(tmp_path: Path) -> None:
    (tmp_path / "koala").mkdir()
    syncs = Syncs()
    watcher = ShareWatcher(
        tmp_path, syncs, delay=0.1, rescan_interval=None, source=watchfiles_source(tmp_path)
    )
    async with running(watcher):
        await asyncio.sleep(0.3)  # the watch is in place
        (tmp_path / ".p2pshare-digests").write_text("{}")  # hidden: ignored
        await asyncio.sleep(0.6)
        assert syncs.calls == []
        (tmp_path / "koala" / "joey.txt").write_text("a baby koala\n")
        await syncs.wait(1)


# --- real daemons --------------------------------------------------------------------------


async def found(daemon: PeerDaemon, keyword: str, domain_name: str) -> list[str]:
    hits = await daemon.search(keyword)
    return sorted(f.filename for h in hits if h.domain_name == domain_name for f in h.files)


async def seconds_until(check: Any, limit: float) -> float:
    """How long until ``await check()`` is true (AssertionError past ``limit``)."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > limit:
            raise AssertionError(f"not within {limit} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def test_a_copied_file_is_in_another_peers_search_within_5_s_and_gone_within_5_s(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any, tmp_path: Path
) -> None:
    share = tmp_path / "peer1-files"
    (share / "koala").mkdir(parents=True)
    (share / "koala" / "sleep.txt").write_bytes(b"20 hours a day\n")
    async with (
        running_index(index_config()) as index,
        running_peer(peer_config("peer1", index.port, watch=True)) as peer1,
        running_peer(peer_config("peer2", index.port)) as peer2,
    ):
        assert await found(peer2, "koala", "peer1") == ["sleep.txt"]
        await asyncio.sleep(0.3)  # the watch is in place
        (share / "koala" / "joey.txt").write_bytes(b"a baby koala\n")

        async def listed() -> bool:
            return "joey.txt" in await found(peer2, "koala", "peer1")

        appeared = await seconds_until(listed, 5.0)
        (share / "koala" / "joey.txt").unlink()

        async def gone() -> bool:
            return "joey.txt" not in await found(peer2, "koala", "peer1")

        disappeared = await seconds_until(gone, 5.0)
        report = peer1.status().last_auto_sync
        assert report is not None and (report.removed, report.sent, report.full) == (1, 1, False)
        print(f"appeared in {appeared:.2f} s, gone in {disappeared:.2f} s")


@pytest.mark.parametrize(
    ("folders", "per_folder"),
    [(20, 100), pytest.param(100, 1000, marks=pytest.mark.long, id="100000-files")],
)
async def test_a_share_on_disk_that_changes_one_file_hashes_one_and_sends_one_entry(
    index_config: Any,
    running_index: Any,
    peer_config: Any,
    running_peer: Any,
    tmp_path: Path,
    folders: int,
    per_folder: int,
) -> None:
    share = tmp_path / "peer1-files"
    long_ago = time.time() - 3600  # older than the digest cache's racy window
    for k in range(folders):
        folder = share / f"kw{k:02d}"
        folder.mkdir(parents=True)
        for i in range(per_folder):
            path = folder / f"file-{i:03d}.dat"
            path.write_bytes(f"{k}/{i}\n".encode())
            os.utime(path, (long_ago, long_ago))
    async with (
        running_index(index_config()) as index,
        running_peer(peer_config("peer1", index.port)) as peer1,
    ):
        total = folders * per_folder
        assert len(peer1.shared) == total
        hashed = peer1.share.hash_count
        (share / "kw07" / "file-042.dat").write_bytes(b"new content\n")
        started = time.perf_counter()
        report = await peer1.sync_share()
        elapsed = time.perf_counter() - started
        assert peer1.share.hash_count - hashed == 1
        assert (report.changed, report.sent, report.full, report.files) == (1, 1, False, total)
        print(f"{total} files, one changed: 1 hashed, 1 entry sent, {elapsed:.2f} s")
