"""The pace of a transfer, as a pure meter: a floor on its rate and a deadline for the whole.

A peer that trickles a file (a byte now and then, each frame inside the per-frame timeout)
would otherwise hold a download, or a serving slot, for ever. :class:`PaceMeter` is told the
time and the bytes moved, and says when a transfer has fallen under its floor: in every
``window`` seconds since it started at least ``min_rate × window`` bytes (or all that was left),
and the whole of it within ``grace + size / min_rate`` seconds. It reads no clock: the caller
passes the time in (peerd's injected :class:`~peerd.clock.Clock`), so tests need no sleeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The default floor (issue 12): 16 KiB/s, measured over windows of 30 s.
DEFAULT_MIN_RATE = 16 << 10
DEFAULT_RATE_WINDOW = 30.0
#: The fixed part of a whole transfer's deadline, on top of ``size / min_rate``.
DEFAULT_DEADLINE_GRACE = 60.0


def format_rate(rate: float) -> str:
    """A rate in bytes per second for a message: ``16 KiB/s``."""
    unit, scale = next(
        ((u, s) for u, s in (("MiB/s", 1 << 20), ("KiB/s", 1 << 10)) if rate >= s), ("B/s", 1)
    )
    return f"{rate / scale:.2f}".rstrip("0").rstrip(".") + f" {unit}"


@dataclass(frozen=True, slots=True)
class PacePolicy:
    """The floor a transfer must keep: ``min_rate`` bytes/s over each ``window`` seconds, and
    the whole within ``grace + size / min_rate`` seconds. A ``min_rate`` of 0 turns both off."""

    min_rate: float = DEFAULT_MIN_RATE
    window: float = DEFAULT_RATE_WINDOW
    grace: float = DEFAULT_DEADLINE_GRACE

    def __post_init__(self) -> None:
        if self.min_rate < 0 or self.window <= 0 or self.grace < 0:
            raise ValueError("min_rate and grace must be >= 0 and window > 0")

    @property
    def enabled(self) -> bool:
        """False when the floor is turned off."""
        return self.min_rate > 0

    def deadline_for(self, size: int) -> float:
        """Seconds a transfer of ``size`` bytes may take in all (infinite when turned off)."""
        if not self.enabled:
            return math.inf
        return self.grace + size / self.min_rate

    def describe(self) -> str:
        """The floor in words, for messages."""
        return f"{format_rate(self.min_rate)} over {self.window:g} s"


class PaceMeter:
    """One transfer's pace against a :class:`PacePolicy`; fed the time and the bytes moved."""

    def __init__(self, policy: PacePolicy, now: float, total: int) -> None:
        self.policy = policy
        self.total = total
        self.moved = 0
        self.started = now
        self.deadline = now + policy.deadline_for(total)
        self._window_start = now
        self._window_moved = 0
        self._left_at_window_start = total
        self.failure: str | None = None

    def _need(self) -> float:
        """Bytes the current window must move."""
        return min(self.policy.min_rate * self.policy.window, self._left_at_window_start)

    def _roll(self, now: float) -> None:
        """Close every window that ended by ``now``, failing on the first one under the floor."""
        if self.failure is not None or not self.policy.enabled:
            return
        window = self.policy.window
        while now >= self._window_start + window and self.moved < self.total:
            if self._window_moved < self._need():
                self.failure = (
                    f"under {self.policy.describe()}"
                    f" ({self._window_moved} bytes in the last {window:g} s)"
                )
                return
            self._window_start += window
            self._window_moved = 0
            self._left_at_window_start = self.total - self.moved
        if now >= self.deadline and self.moved < self.total:
            self.failure = (
                f"not done within {self.deadline - self.started:.0f} s"
                f" ({self.moved} of {self.total} bytes)"
            )

    def update(self, now: float, moved: int = 0) -> str | None:
        """Record ``moved`` more bytes at ``now``; why the transfer is too slow, or None.

        Once too slow, always too slow: the transfer is to be abandoned.
        """
        self._roll(now)
        if self.failure is None:
            self.moved += moved
            self._window_moved += moved
        return self.failure

    def next_check(self) -> float:
        """When the transfer fails if nothing more moves (infinite when it cannot fail)."""
        if not self.policy.enabled or self.moved >= self.total:
            return math.inf
        window = self.policy.window
        end = self._window_start + window
        if self._window_moved >= self._need():
            end += window  # this window is safe; the next one, empty, would not be
        return min(end, self.deadline)


__all__ = [
    "DEFAULT_DEADLINE_GRACE",
    "DEFAULT_MIN_RATE",
    "DEFAULT_RATE_WINDOW",
    "PaceMeter",
    "PacePolicy",
    "format_rate",
]
