"""Time, injected: what decides when a token is renewed, a ping is sent, or a rate is measured.

Everything in :mod:`peerd` that waits or measures takes a :class:`Clock`; the default is
:data:`SYSTEM_CLOCK`. A test passes a fake one whose ``sleep`` moves time forward at once, so
an hour of token renewals and pings runs in milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time (for expiry dates), a monotonic clock (for durations), and sleep."""

    def time(self) -> float:
        """Seconds since the epoch, as tokens and the index count them."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations and rates)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (at least until the next turn of the event loop)."""
        ...


class SystemClock:
    """The real clock: :func:`time.time`, :func:`time.monotonic` and :func:`asyncio.sleep`."""

    def time(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on the monotonic clock."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on the event loop."""
        await asyncio.sleep(seconds)


#: The clock every :mod:`peerd` object uses unless it is given another.
SYSTEM_CLOCK: Clock = SystemClock()

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]
