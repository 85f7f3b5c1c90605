"""Attempt limits (PROTOCOL.md §4.1, §4.3): back off repeated attempts, never lock out for good.

:class:`AttemptLimiter`: each key (a (username, address) pair, a username, an address) has an
attempt count that decays by one every ``decay`` seconds. An attempt is charged *before* the
password is checked, so a burst of parallel guesses is limited as surely as a sequence of
them; a success gives the charge back. Once the count reaches ``free``, the key must wait
``base_delay * 2**(count - free)`` seconds (at most ``max_delay``) before its next attempt; an
attempt inside that wait is refused with ``retry_after``. The table is bounded: only entries
that have decayed away are ever dropped to make room, so an entry that still counts or blocks
is never evicted; when the table is full of live entries a new key is refused instead.

:class:`RateBucket`: a token bucket per key (``sync`` per user). Sans-I/O: time is passed in.
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


#: How often a full table may be scanned for entries that decayed away: a flood of new keys
#: against a table full of live ones is refused without a scan each time.
PRUNE_INTERVAL = 1.0


class AttemptLimiter:
    """Attempt counts per key, bounded in memory."""

    def __init__(self, policy: BackoffPolicy | None = None, max_keys: int = 100_000) -> None:
        self.policy = policy or BackoffPolicy()
        self.max_keys = max_keys
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._pruned_at = -math.inf

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

    def admit(self, key: str, now: float) -> None:
        """Make sure ``key`` can be charged: :class:`RateLimited` if it is new and the table is
        full of live entries (no entry that still counts is ever evicted for it)."""
        if key in self._entries or len(self._entries) < self.max_keys:
            return
        if now - self._pruned_at >= PRUNE_INTERVAL:
            self._pruned_at = now
            self.prune(now)
        if len(self._entries) >= self.max_keys:
            raise RateLimited(
                "too many attempts in progress; retry later", retry_after=PRUNE_INTERVAL
            )

    def charge(self, key: str, now: float) -> None:
        """Count an attempt; from ``free`` attempts on, each one sets a longer wait.

        Raises :class:`RateLimited` (charging nothing) for a new key when the table is full.
        """
        policy = self.policy
        entry = self._current(key, now)
        if entry is None:
            self.admit(key, now)
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


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class BucketPolicy:
    """A burst of ``burst`` operations, then one more every ``interval`` seconds."""

    burst: int = 10
    interval: float = 6.0


class RateBucket:
    """A token bucket per key; buckets that have filled up again are forgotten."""

    def __init__(self, policy: BucketPolicy | None = None, max_keys: int = 100_000) -> None:
        self.policy = policy or BucketPolicy()
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, bucket: _Bucket, now: float) -> float:
        refill = max(0.0, now - bucket.updated) / self.policy.interval
        return min(float(self.policy.burst), bucket.tokens + refill)

    def take(self, key: str, now: float) -> None:
        """Spend one operation of ``key``'s bucket, or raise :class:`RateLimited`."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self.prune(now)
                if len(self._buckets) >= self.max_keys:
                    raise RateLimited(retry_after=self.policy.interval)
            bucket = self._buckets[key] = _Bucket(float(self.policy.burst), now)
        level = self._level(bucket, now)
        if level < 1.0:
            wait = (1.0 - level) * self.policy.interval
            raise RateLimited(retry_after=math.ceil(wait * 1000) / 1000)
        bucket.tokens, bucket.updated = level - 1.0, now

    def prune(self, now: float) -> None:
        """Forget buckets that are full again (they behave exactly like new ones)."""
        burst = float(self.policy.burst)
        for key in [k for k, b in self._buckets.items() if self._level(b, now) >= burst]:
            del self._buckets[key]
