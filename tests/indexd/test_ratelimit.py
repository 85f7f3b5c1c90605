"""indexd.ratelimit: free attempts, exponential waits, decay, and no permanent lockout."""

from __future__ import annotations

import pytest

from indexd.ratelimit import AttemptLimiter, BackoffPolicy
from netproto.errors import RateLimited


def _attempt(limiter: AttemptLimiter, key: str, now: float) -> None:
    limiter.check(key, now)
    limiter.charge(key, now)


def test_free_attempts_pass_then_the_next_must_wait() -> None:
    limiter = AttemptLimiter(BackoffPolicy(free=3, base_delay=2.0))
    _attempt(limiter, "alice", 0.0)
    _attempt(limiter, "alice", 0.0)
    _attempt(limiter, "alice", 0.0)  # the third reaches `free`: a wait starts
    with pytest.raises(RateLimited) as info:
        _attempt(limiter, "alice", 0.5)
    assert info.value.retry_after == pytest.approx(1.5)


def test_waits_double_with_each_attempt_past_the_free_ones() -> None:
    limiter = AttemptLimiter(BackoffPolicy(free=1, base_delay=1.0, max_delay=1000, decay=1e9))
    now = 0.0
    waits = []
    for _ in range(5):
        _attempt(limiter, "k", now)
        wait = limiter.retry_after("k", now)
        waits.append(wait)
        now += wait
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_waits_are_capped_so_nothing_locks_out_for_good() -> None:
    limiter = AttemptLimiter(BackoffPolicy(free=1, base_delay=1.0, max_delay=30.0, decay=1e9))
    now = 0.0
    for _ in range(200):
        _attempt(limiter, "k", now)
        now += limiter.retry_after("k", now)
    assert limiter.retry_after("k", now - 0.001) <= 30.0
    limiter.check("k", now)  # after the capped wait, an attempt is allowed again


def test_counts_decay_so_old_failures_stop_counting() -> None:
    limiter = AttemptLimiter(BackoffPolicy(free=2, base_delay=1.0, decay=10.0))
    _attempt(limiter, "k", 0.0)
    _attempt(limiter, "k", 0.0)
    # 20 s later both attempts have decayed: two more are free again before a wait.
    _attempt(limiter, "k", 20.0)
    assert limiter.retry_after("k", 20.0) == 0.0


def test_reset_forgets_a_key_and_refund_returns_one_charge() -> None:
    limiter = AttemptLimiter(BackoffPolicy(free=2, base_delay=5.0, decay=1e9))
    _attempt(limiter, "user", 0.0)
    limiter.reset("user")
    _attempt(limiter, "user", 0.0)
    assert limiter.retry_after("user", 0.0) == 0.0
    _attempt(limiter, "addr", 0.0)
    limiter.refund("addr", 0.0)
    _attempt(limiter, "addr", 0.0)
    assert limiter.retry_after("addr", 0.0) == 0.0


def test_keys_are_independent() -> None:
    limiter = AttemptLimiter(BackoffPolicy(free=1, base_delay=5.0))
    _attempt(limiter, "alice", 0.0)
    with pytest.raises(RateLimited):
        limiter.check("alice", 1.0)
    limiter.check("bob", 1.0)


def test_memory_stays_bounded_by_max_keys() -> None:
    limiter = AttemptLimiter(BackoffPolicy(free=5), max_keys=100)
    for i in range(1000):
        limiter.charge(f"k{i}", 0.0)
    assert len(limiter) <= 100


def test_prune_drops_decayed_keys() -> None:
    limiter = AttemptLimiter(BackoffPolicy(free=5, decay=1.0))
    limiter.charge("k", 0.0)
    limiter.prune(10.0)
    assert len(limiter) == 0
