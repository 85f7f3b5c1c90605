"""The pace meter (peerd/pacing.py): a floor on a transfer's rate over windows, and a deadline
for the whole, fed the time by hand (no clock, no sleeping)."""

from __future__ import annotations

import math

import pytest

from peerd.pacing import PaceMeter, PacePolicy, format_rate

POLICY = PacePolicy(min_rate=1000, window=10, grace=5)  # 10,000 bytes per 10 s window


def test_a_transfer_at_the_floor_never_fails() -> None:
    meter = PaceMeter(POLICY, 0.0, 100_000)
    for second in range(100):
        assert meter.update(second + 0.5, 1000) is None


def test_a_window_under_the_floor_fails_as_soon_as_it_is_over() -> None:
    meter = PaceMeter(POLICY, 0.0, 100_000)
    assert meter.update(9.9, 9_999) is None  # the window is not over yet
    reason = meter.update(10.0)
    assert reason is not None and "9999 bytes in the last 10 s" in reason


def test_once_too_slow_always_too_slow() -> None:
    meter = PaceMeter(POLICY, 0.0, 100_000)
    assert meter.update(25.0, 1) is not None
    assert meter.update(26.0, 50_000) is not None


def test_a_long_silence_after_a_good_window_fails_at_the_end_of_the_next_one() -> None:
    meter = PaceMeter(POLICY, 0.0, 100_000)
    meter.update(1.0, 20_000)
    assert meter.next_check() == 20.0  # this window is safe; an empty next one would not be
    assert meter.update(19.9) is None
    assert meter.update(20.0) is not None


def test_the_last_window_needs_only_what_is_left() -> None:
    meter = PaceMeter(PacePolicy(min_rate=1000, window=10, grace=60), 0.0, 12_000)
    assert meter.update(9.0, 10_000) is None
    assert meter.update(19.0, 2_000) is None  # 2,000 bytes were all that was left
    assert meter.next_check() == math.inf  # done: nothing can fail any more


def test_the_whole_transfer_has_a_deadline_proportional_to_its_size() -> None:
    meter = PaceMeter(PacePolicy(min_rate=1000, window=100, grace=5), 0.0, 10_000)
    assert meter.deadline == 15.0  # 5 s of grace + 10,000 bytes at 1,000 B/s
    assert meter.next_check() == 15.0
    assert meter.update(14.9, 9_999) is None
    reason = meter.update(15.0)
    assert reason is not None and "not done within 15 s (9999 of 10000 bytes)" in reason


def test_a_floor_of_zero_turns_the_meter_off() -> None:
    meter = PaceMeter(PacePolicy(min_rate=0), 0.0, 10_000)
    assert meter.update(1e9, 1) is None
    assert meter.next_check() == math.inf


@pytest.mark.parametrize("kwargs", [{"min_rate": -1}, {"window": 0}, {"grace": -1}])
def test_a_policy_out_of_range_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PacePolicy(**kwargs)


@pytest.mark.parametrize(
    "rate, text",
    [(16 << 10, "16 KiB/s"), (3 << 20, "3 MiB/s"), (1000, "1000 B/s"), (10_000, "9.77 KiB/s")],
)
def test_rates_read_as_people_write_them(rate: float, text: str) -> None:
    assert format_rate(rate) == text
