"""A clock for tests: time moves only when told to, or when something sleeps on it."""

from __future__ import annotations

import asyncio

#: Where a fake clock starts: a fixed wall-clock time, so expiry dates read the same each run.
START = 1_750_000_000.0


class FakeClock:
    """Implements :class:`peerd.clock.Clock`; ``sleep(s)`` moves time ``s`` forward at once."""

    def __init__(self, start: float = START) -> None:
        self.now = start
        self.mono = 0.0
        #: Every sleep asked for, in order.
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        """Move both clocks ``seconds`` forward."""
        self.now += seconds
        self.mono += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)  # let the rest of the event loop run, as a real sleep would
