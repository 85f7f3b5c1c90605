"""Blocking file work in a thread, tracked by the thread's own completion.

Cancelling the task that awaits ``loop.run_in_executor(...)`` marks the asyncio future done at
once while the thread keeps running. Code that closes a file descriptor "once the read is done"
must therefore watch the thread's :class:`concurrent.futures.Future`, which :class:`ThreadJob`
keeps; otherwise the thread may read or write a descriptor number already closed and reused.
:class:`DiskWork` keeps the jobs of one task together, so its descriptors are closed only once
none of them is in use.

Two pools: :data:`LOCAL` for this peer's own downloads and :data:`SERVING` for the disk work
of what others ask (``fetch``, ``manifest``, ``fetch_range``), so that requesters, however many
and however slow, can never occupy every thread a local download needs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: This peer's own downloads (the default).
LOCAL = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="peerd-io")
#: Threads of :data:`SERVING`.
SERVING_THREADS = 8
#: Disk work serving other peers' requests.
SERVING = concurrent.futures.ThreadPoolExecutor(SERVING_THREADS, thread_name_prefix="peerd-serve")


class ThreadJob(Generic[T]):
    """``fn(*args)`` running in a worker thread; awaitable for its result."""

    def __init__(
        self,
        fn: Callable[..., T],
        *args: Any,
        pool: concurrent.futures.ThreadPoolExecutor = LOCAL,
    ) -> None:
        self._thread_future = pool.submit(fn, *args)
        self.future: asyncio.Future[T] = asyncio.wrap_future(self._thread_future)

    def __await__(self) -> Generator[Any, None, T]:
        return self.future.__await__()

    def done(self) -> bool:
        """True once the thread is done with the work (whatever the awaiting task did)."""
        return self._thread_future.done()

    def when_finished(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the thread is done with the work (at once if it is)."""
        if self._thread_future.done():
            callback()
        else:
            self._thread_future.add_done_callback(lambda _: callback())

    def on_result(self, callback: Callable[[T], None]) -> None:
        """Call ``callback(result)`` once the work succeeds (to release what nobody awaits)."""

        def settled(future: concurrent.futures.Future[T]) -> None:
            if not future.cancelled() and future.exception() is None:
                callback(future.result())

        self._thread_future.add_done_callback(settled)

    def wait(self) -> None:
        """Block until the thread is done (for a cleanup that must not race with it)."""
        concurrent.futures.wait([self._thread_future])


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # nobody awaits it any more: do not log it as never retrieved


class DiskWork:
    """The blocking file work of one task, each step in a worker thread, off the event loop.

    A step whose awaiting task is cancelled still runs to its end in its thread;
    :meth:`close_when_idle` closes a descriptor only once every step is done with it.
    """

    def __init__(self) -> None:
        self._jobs: list[ThreadJob[Any]] = []
        self._lock = threading.Lock()

    def start(self, fn: Callable[..., T], *args: Any) -> ThreadJob[T]:
        """Start ``fn(*args)`` in a thread and track it; await the job for its result."""
        job = ThreadJob(fn, *args)
        self._jobs = [j for j in self._jobs if not j.done()]
        self._jobs.append(job)
        return job

    async def run(
        self, fn: Callable[..., T], *args: Any, unwanted: Callable[[T], None] | None = None
    ) -> T:
        """``fn(*args)`` in a thread; ``unwanted(result)`` releases it if we are cancelled."""
        job = self.start(fn, *args)
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            job.future.add_done_callback(_retrieve)
            if unwanted is not None:
                job.on_result(unwanted)
            raise

    def close_when_idle(self, fd: int) -> None:
        """Close ``fd`` now if no step is running, else once the running ones are done."""
        busy = [j for j in self._jobs if not j.done()]
        self._jobs = busy
        if not busy:
            os.close(fd)
            return
        left = len(busy)

        def one_done() -> None:
            nonlocal left
            with self._lock:
                left -= 1
                last = left == 0
            if last:
                os.close(fd)

        for job in busy:
            job.when_finished(one_done)


__all__ = ["LOCAL", "SERVING", "SERVING_THREADS", "DiskWork", "ThreadJob"]
