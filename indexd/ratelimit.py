"""Login attempt limits (PROTOCOL.md §4.1): back off repeated failures, never lock out for good.

Each key (a username, or a client address) has an attempt count that decays by one every
``decay`` seconds. An attempt is charged *before* the password is checked, so a burst of
parallel guesses is limited as surely as a sequence of them; a success gives the charge back.
Once the count reaches ``free``, the key must wait ``base_delay * 2**(count - free)`` seconds
(at most ``max_delay``) before its next attempt; an attempt inside that wait is refused with
``retry_after``. Sans-I/O: time is passed in.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from netproto.errors import RateLimited


@dataclass(frozen=True)
class BackoffPolicy:
    """Free attempts, then exponential waits; the count decays over time."""

    free: int = 5
    base_delay: float = 1.0
    max_delay: float = 300.0
    decay: float = 60.0


@dataclass(slots=True)
class _Entry:
    count: float
    updated: float
    blocked_until: float


class AttemptLimiter:
    """Attempt counts per key, bounded in memory."""

    def __init__(self, policy: BackoffPolicy | None = None, max_keys: int = 100_000) -> None:
        self.policy = policy or BackoffPolicy()
        self.max_keys = max_keys
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _current(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        elapsed = max(0.0, now - entry.updated)
        entry.count = max(0.0, entry.count - elapsed / self.policy.decay)
        entry.updated = now
        return entry

    def retry_after(self, key: str, now: float) -> float:
        """Seconds ``key`` must still wait (0 if it may try now)."""
        entry = self._current(key, now)
        return 0.0 if entry is None else max(0.0, entry.blocked_until - now)

    def check(self, key: str, now: float) -> None:
        """Raise :class:`RateLimited` with ``retry_after`` while ``key`` must wait."""
        wait = self.retry_after(key, now)
        if wait > 0:
            # Rounded up to the millisecond, so waiting exactly retry_after is always enough.
            raise RateLimited(retry_after=math.ceil(wait * 1000) / 1000)

    def charge(self, key: str, now: float) -> None:
        """Count an attempt; from ``free`` attempts on, each one sets a longer wait."""
        policy = self.policy
        entry = self._current(key, now)
        if entry is None:
            self._make_room(now)
            entry = self._entries[key] = _Entry(0.0, now, 0.0)
        else:
            self._entries.move_to_end(key)
        entry.count += 1
        excess = math.ceil(entry.count - 1e-9) - policy.free
        if excess >= 0:
            delay = policy.max_delay if excess > 60 else policy.base_delay * 2.0**excess
            entry.blocked_until = max(entry.blocked_until, now + min(policy.max_delay, delay))

    def refund(self, key: str, now: float) -> None:
        """Give back one attempt's charge (a success counted against a shared address)."""
        entry = self._current(key, now)
        if entry is not None:
            entry.count = max(0.0, entry.count - 1)

    def reset(self, key: str) -> None:
        """Forget ``key`` entirely (a user's successful login)."""
        self._entries.pop(key, None)

    def prune(self, now: float) -> None:
        """Drop keys whose count has decayed away and that are not waiting."""
        for key in list(self._entries):
            entry = self._current(key, now)
            if entry is not None and entry.count <= 0 and entry.blocked_until <= now:
                del self._entries[key]

    def _make_room(self, now: float) -> None:
        if len(self._entries) < self.max_keys:
            return
        self.prune(now)
        # Still full of active keys: forget the least recently charged tenth at once, so the
        # full scan above is paid once per max_keys/10 new keys, not on every one.
        while len(self._entries) >= self.max_keys * 9 // 10:
            self._entries.popitem(last=False)
