"""Blocking file work in a thread, tracked by the thread's own completion.

Cancelling the task that awaits ``loop.run_in_executor(...)`` marks the asyncio future done at
once while the thread keeps running. Code that closes a file descriptor "once the read is done"
must therefore watch the thread's :class:`concurrent.futures.Future`, which :class:`ThreadJob`
keeps; otherwise the thread may read or write a descriptor number already closed and reused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="peerd-io")


class ThreadJob(Generic[T]):
    """``fn(*args)`` running in a worker thread; awaitable for its result."""

    def __init__(self, fn: Callable[..., T], *args: Any) -> None:
        self._thread_future = _EXECUTOR.submit(fn, *args)
        self.future: asyncio.Future[T] = asyncio.wrap_future(self._thread_future)

    def __await__(self) -> Generator[Any, None, T]:
        return self.future.__await__()

    def when_finished(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the thread is done with the work (at once if it is)."""
        if self._thread_future.done():
            callback()
        else:
            self._thread_future.add_done_callback(lambda _: callback())

    def wait(self) -> None:
        """Block until the thread is done (for a cleanup that must not race with it)."""
        concurrent.futures.wait([self._thread_future])
