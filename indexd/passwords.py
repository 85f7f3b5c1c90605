"""bcrypt hashing off the event loop, with a concurrency cap (PROTOCOL.md §4.1).

bcrypt releases the GIL, so a pool of about one thread per core hashes in parallel while the
event loop keeps answering other requests. A bounded number of callers may wait for a
thread; past that the index answers ``BUSY`` instead of queueing without end. Checking a
password of an unknown user runs bcrypt against a dummy hash of the same cost, so it takes
about as long as a wrong password.

The index runs two hashers: one for logins, and a smaller one at a lower priority still for
``register``, with its own threads and its own queue, so a flood of registrations can neither
take the login threads nor queue in front of a login (:data:`REGISTER_NICENESS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import bcrypt

from netproto.errors import Busy
from netproto.names import MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES

DEFAULT_COST = 12
#: How much lower the hashing threads' priority is than the event loop's (Linux nice steps).
#: bcrypt keeps every core busy during a burst of logins; at a lower priority the event loop
#: still gets a core the moment a request arrives, so searches answer in about the same time
#: (docs/design.md §6: within 10 ms during a burst; BENCHMARKS.md). Without contention it costs
#: bcrypt nothing.
HASH_THREAD_NICENESS = 10
#: Registration hashing runs below the login threads: when both are busy, logins get the cores.
REGISTER_NICENESS = 19


def _lower_priority(niceness: int = HASH_THREAD_NICENESS) -> None:
    """Run this (hashing) thread at a lower priority: Linux only, where nice is per thread."""
    if sys.platform.startswith("linux"):
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):
            target = os.getpriority(os.PRIO_PROCESS, tid) + niceness
            os.setpriority(os.PRIO_PROCESS, tid, min(19, target))


T = TypeVar("T")


class PasswordHasher:
    """Hashes and checks passwords on a small thread pool; :meth:`start` before use."""

    def __init__(
        self,
        cost: int = DEFAULT_COST,
        *,
        concurrency: int | None = None,
        max_waiting: int = 256,
        niceness: int = HASH_THREAD_NICENESS,
        name: str = "indexd-bcrypt",
    ) -> None:
        if not 4 <= cost <= 31:
            raise ValueError("bcrypt cost must be between 4 and 31")
        self.cost = cost
        self.concurrency = concurrency or os.cpu_count() or 1
        self.max_waiting = max_waiting
        self._pool = ThreadPoolExecutor(
            self.concurrency,
            thread_name_prefix=name,
            initializer=_lower_priority,
            initargs=(niceness,),
        )
        self._slots = asyncio.Semaphore(self.concurrency)
        self._waiting = 0
        self._dummy: bytes | None = None

    async def start(self) -> None:
        """Make the dummy hash that unknown users are checked against."""
        if self._dummy is None:
            self._dummy = await self._run(bcrypt.hashpw, secrets.token_bytes(16), self._salt())

    def close(self) -> None:
        """Stop the pool (waiting for hashes in progress)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _salt(self) -> bytes:
        return bcrypt.gensalt(self.cost)

    async def _run(self, fn: Callable[..., T], *args: bytes) -> T:
        if self._waiting >= self.max_waiting + self.concurrency:
            raise Busy("too many password checks in progress; retry shortly")
        self._waiting += 1
        try:
            async with self._slots:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._pool, fn, *args)
        finally:
            self._waiting -= 1

    async def hash(self, password: bytes) -> bytes:
        """The bcrypt hash of an already length-checked password."""
        return await self._run(bcrypt.hashpw, password, self._salt())

    async def verify(self, password: bytes, hashed: bytes | None) -> bool:
        """True if ``password`` matches ``hashed``; None (unknown user) is checked and fails."""
        if self._dummy is None:
            await self.start()
        assert self._dummy is not None
        usable = MIN_PASSWORD_BYTES <= len(password) <= MAX_PASSWORD_BYTES
        candidate = password if usable else b"\x00" * MIN_PASSWORD_BYTES
        target = hashed if hashed is not None else self._dummy
        try:
            ok = await self._run(bcrypt.checkpw, candidate, target)
        except ValueError:  # a corrupt stored hash: fail like a wrong password
            return False
        return ok and usable and hashed is not None
