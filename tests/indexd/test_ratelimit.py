"""indexd.ratelimit: free attempts, exponential waits, decay, and no permanent lockout."""

from __future__ import annotations

import contextlib

import pytest

from indexd.ratelimit import AttemptLimiter, BackoffPolicy, BucketPolicy, RateBucket
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
        with contextlib.suppress(RateLimited):
            limiter.charge(f"k{i}", 0.0)
    assert len(limiter) <= 100


def test_a_full_table_of_live_entries_refuses_a_new_key_and_evicts_none() -> None:
    limiter = AttemptLimiter(BackoffPolicy(free=1, base_delay=100.0, decay=1e9), max_keys=3)
    for key in ("a", "b", "c"):
        _attempt(limiter, key, 0.0)  # each now blocked for 100 s
    with pytest.raises(RateLimited) as refused:
        limiter.charge("stranger", 1.0)
    assert refused.value.retry_after > 0
    assert len(limiter) == 3
    for key in ("a", "b", "c"):  # every back-off still holds
        assert limiter.retry_after(key, 1.0) == pytest.approx(99.0)
    limiter.charge("a", 100.0)  # a key already in the table is still served


def test_a_full_table_makes_room_only_from_entries_that_decayed_away() -> None:
    limiter = AttemptLimiter(BackoffPolicy(free=5, decay=10.0), max_keys=2)
    limiter.charge("old", 0.0)  # decays away by t = 10
    limiter.charge("live", 9.0)
    limiter.charge("new", 11.0)
    assert limiter.retry_after("live", 11.0) == 0.0
    with pytest.raises(RateLimited):
        limiter.charge("newer", 11.5)  # "live" and "new" still count: nothing is evicted
    limiter.charge("live", 11.5)


def test_a_flood_of_new_keys_against_a_full_table_scans_it_at_most_once_a_second() -> None:
    limiter = AttemptLimiter(BackoffPolicy(free=5, decay=1e9), max_keys=10)
    for i in range(10):
        limiter.charge(f"k{i}", 0.0)
    scans = 0
    real = limiter.prune

    def counting(now: float) -> None:
        nonlocal scans
        scans += 1
        real(now)

    limiter.prune = counting  # type: ignore[method-assign]
    for i in range(1000):
        with contextlib.suppress(RateLimited):
            limiter.charge(f"flood{i}", 5.0 + i / 10_000)
    assert scans == 1


# --- the sync token bucket -------------------------------------------------------------------


def test_a_bucket_allows_a_burst_then_one_per_interval() -> None:
    bucket = RateBucket(BucketPolicy(burst=3, interval=6.0))
    for _ in range(3):
        bucket.take("alice", 0.0)
    with pytest.raises(RateLimited) as limited:
        bucket.take("alice", 1.0)
    assert limited.value.retry_after == pytest.approx(5.0)
    bucket.take("bob", 1.0)  # another user has a bucket of its own
    bucket.take("alice", 6.0)
    with pytest.raises(RateLimited):
        bucket.take("alice", 7.0)


def test_full_buckets_are_forgotten() -> None:
    bucket = RateBucket(BucketPolicy(burst=2, interval=1.0))
    bucket.take("alice", 0.0)
    bucket.prune(0.5)
    assert len(bucket) == 1
    bucket.prune(1.0)
    assert len(bucket) == 0


def test_prune_drops_decayed_keys() -> None:
    limiter = AttemptLimiter(BackoffPolicy(free=5, decay=1.0))
    limiter.charge("k", 0.0)
    limiter.prune(10.0)
    assert len(limiter) == 0
