"""A share that keeps itself in sync: file-system events, batched, plus a periodic rescan.

:class:`ShareWatcher` waits for changes under the share (new, changed, removed and renamed
files, from :func:`watchfiles.awatch`), lets them settle for ``delay`` seconds (about 2 s) so a
burst of events — a folder copied in, a file written in many pieces — becomes one sync, then
calls ``sync``. In case an event was missed (an overflowed inotify queue, a network file
system) it also calls ``sync`` every ``rescan_interval`` seconds, give or take ``jitter``, so
peers started together do not all rescan at the same moment. ``sync`` is the daemon's: it
rescans the share (only files whose size, mtime or inode changed are hashed again: the digest
cache of :mod:`peerd.share`) and sends the index only what changed (PROTOCOL.md §4.3.1).

Names the share never lists do not wake it up: hidden names (the digest cache, partial
downloads) and temporary files. Time comes from an injected :class:`~peerd.clock.Clock`, and
the event source can be injected too, so a test needs neither a real folder nor real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from peerd.clock import SYSTEM_CLOCK, Clock
from peerd.share import TEMP_SUFFIXES

log = logging.getLogger(__name__)

DEFAULT_DELAY = 2.0
DEFAULT_RESCAN_INTERVAL = 300.0
DEFAULT_JITTER = 0.1
#: How long to wait before watching again after the watcher itself failed.
RETRY_WATCH = 5.0
#: How soon a failed sync (the index away, or busy) is tried again.
RETRY_SYNC = 10.0

#: A source of change batches: given a stop event, yields sets of changed paths until it is set.
ChangeSource = Callable[[asyncio.Event], AsyncIterator[set[str]]]


def relevant(root: Path, path: str) -> bool:
    """True for a change the share may list: no hidden part below the root, no temp file."""
    try:
        parts = Path(path).relative_to(root).parts
    except ValueError:
        return False
    if not parts:
        return True  # the share folder itself (made, removed, replaced)
    return not any(p.startswith(".") for p in parts) and not parts[-1].endswith(TEMP_SUFFIXES)


def watchfiles_source(root: Path) -> ChangeSource:
    """Batches of changed paths under ``root`` from :func:`watchfiles.awatch`."""

    async def changes(stop: asyncio.Event) -> AsyncIterator[set[str]]:
        from watchfiles import awatch  # imported here: only a watching daemon needs it

        def keep(_change: Any, path: str) -> bool:
            return relevant(root, path)

        # awatch's own debounce only groups what arrives together; the settling delay is ours.
        async for batch in awatch(root, watch_filter=keep, stop_event=stop, debounce=400):
            yield {path for _change, path in batch}

    return changes


class ShareWatcher:
    """Calls ``sync`` when the share changed (events settled for ``delay`` s) and every
    ``rescan_interval`` s (± ``jitter``); ``run()`` until cancelled or :meth:`stop`."""

    def __init__(
        self,
        root: Path,
        sync: Callable[[str], Awaitable[object]],
        *,
        delay: float = DEFAULT_DELAY,
        rescan_interval: float | None = DEFAULT_RESCAN_INTERVAL,
        jitter: float = DEFAULT_JITTER,
        clock: Clock = SYSTEM_CLOCK,
        source: ChangeSource | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.root = root
        self._sync = sync
        self.delay = delay
        self.rescan_interval = rescan_interval
        self.jitter = jitter
        self.clock = clock
        self._source = source if source is not None else watchfiles_source(root)
        self._rng = rng
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        #: Change batches received and syncs made, for status and tests.
        self.batches = 0
        self.syncs = 0

    def next_rescan_in(self) -> float | None:
        """Seconds until the next periodic rescan: the interval, ± ``jitter`` of it."""
        if self.rescan_interval is None:
            return None
        spread = (2 * self._rng() - 1) * self.jitter
        return max(0.0, self.rescan_interval * (1 + spread))

    def stop(self) -> None:
        """Ask :meth:`run` to return (the event source stops too)."""
        self._stop.set()
        self._changed.set()

    async def run(self) -> None:
        """Watch and sync until :meth:`stop` (or cancellation)."""
        pump = asyncio.create_task(self._pump(), name="share watcher events")
        try:
            await self._loop()
        finally:
            self._stop.set()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(pump), 2.0)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _pump(self) -> None:
        """Turn change batches into the ``_changed`` flag; watch again if the source fails."""
        while not self._stop.is_set():
            try:
                async for batch in self._source(self._stop):
                    if batch:
                        self.batches += 1
                        log.debug("share changed: %d path(s)", len(batch))
                        self._changed.set()
                    if self._stop.is_set():
                        return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot watch %s (%s); periodic rescans only for now", self.root, exc)
            if self._stop.is_set():
                return
            await self.clock.sleep(RETRY_WATCH)

    async def _loop(self) -> None:
        rescan_at = self._deadline()
        while not self._stop.is_set():
            wait = None if rescan_at is None else max(0.0, rescan_at - self.clock.monotonic())
            reason = await self._wait(wait)
            if self._stop.is_set():
                return
            if reason == "changes":
                # Let the burst settle: whatever else arrives meanwhile goes in this sync.
                await self.clock.sleep(self.delay)
                self._changed.clear()
                if self._stop.is_set():
                    return
            else:
                rescan_at = self._deadline()
            if not await self._run_sync(reason):
                retry_at = self.clock.monotonic() + RETRY_SYNC
                rescan_at = retry_at if rescan_at is None else min(rescan_at, retry_at)

    async def _wait(self, timeout: float | None) -> str:
        """``"changes"`` once something changed, ``"rescan"`` after ``timeout`` seconds."""
        if self._changed.is_set():
            return "changes"
        changed = asyncio.ensure_future(self._changed.wait())
        if timeout is None:
            await changed
            return "changes"
        sleeper = asyncio.ensure_future(self.clock.sleep(timeout))
        try:
            await asyncio.wait({changed, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (changed, sleeper):
                task.cancel()
            await asyncio.gather(changed, sleeper, return_exceptions=True)
        return "changes" if self._changed.is_set() else "rescan"

    def _deadline(self) -> float | None:
        wait = self.next_rescan_in()
        return None if wait is None else self.clock.monotonic() + wait

    async def _run_sync(self, reason: str) -> bool:
        """Call ``sync``; False if it failed (it is then tried again in ``RETRY_SYNC`` s)."""
        self.syncs += 1
        try:
            await self._sync(reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the index may be away or busy: retried soon
            log.warning(
                "automatic sync (%s) failed: %s; retrying in %.0f s", reason, exc, RETRY_SYNC
            )
            log.debug("automatic sync failed", exc_info=True)
            return False
        return True


__all__ = [
    "DEFAULT_DELAY",
    "DEFAULT_JITTER",
    "DEFAULT_RESCAN_INTERVAL",
    "ChangeSource",
    "ShareWatcher",
    "relevant",
    "watchfiles_source",
]
