"""The server connection's deadlines (netproto/deadlines.py), with times passed in."""

from __future__ import annotations

from typing import Any

import pytest

from netproto.deadlines import Expired, ServerDeadlines
from netproto.errors import Timeout
from netproto.service import ServerLimits

LIMITS = ServerLimits(
    handshake_timeout=10.0,
    frame_timeout=30.0,
    idle_timeout=300.0,
    slow_reader_timeout=20.0,
    pending_timeout=60.0,
)
SERVING: dict[str, Any] = {
    "established": True,
    "paused_since": None,
    "serving": True,
    "pending": False,
    "busy": False,
}


def test_until_the_handshake_completes_only_its_timeout_counts() -> None:
    deadlines = ServerDeadlines(LIMITS, 100.0)
    state = {**SERVING, "established": False}
    assert deadlines.check(100.0, **state) == 110.0
    expired = deadlines.check(110.0, **state)
    assert isinstance(expired, Expired) and expired.abort


def test_a_reader_paused_past_the_slow_reader_timeout_is_cut_off() -> None:
    deadlines = ServerDeadlines(LIMITS, 0.0)
    state = {**SERVING, "paused_since": 50.0}
    assert deadlines.check(60.0, **state) == 70.0
    expired = deadlines.check(70.0, **state)
    assert isinstance(expired, Expired) and expired.abort


def test_an_unproven_connection_is_closed_at_the_pending_timeout() -> None:
    deadlines = ServerDeadlines(LIMITS, 0.0)
    state = {**SERVING, "pending": True}
    assert deadlines.check(1.0, **state) == 60.0
    expired = deadlines.check(60.0, **state)
    assert isinstance(expired, Expired) and not expired.abort and expired.error is None


def test_a_frame_left_unfinished_is_answered_with_a_timeout_then_closed() -> None:
    deadlines = ServerDeadlines(LIMITS, 0.0)
    assert deadlines.received(5.0, in_frame=True, completed=False) == 35.0
    assert deadlines.received(6.0, in_frame=True, completed=False) is None  # same frame
    assert deadlines.check(6.0, **SERVING) == 35.0
    expired = deadlines.check(35.0, **SERVING)
    assert isinstance(expired, Expired) and isinstance(expired.error, Timeout)


def test_each_frame_gets_its_own_frame_timeout() -> None:
    deadlines = ServerDeadlines(LIMITS, 0.0)
    deadlines.received(5.0, in_frame=True, completed=False)
    assert deadlines.received(20.0, in_frame=True, completed=True) == 50.0  # the next frame
    assert deadlines.received(21.0, in_frame=False, completed=True) is None
    assert deadlines.frame_started is None


def test_an_idle_connection_is_closed_but_not_a_busy_one() -> None:
    deadlines = ServerDeadlines(LIMITS, 0.0)
    deadlines.received(10.0, in_frame=False, completed=True)
    assert deadlines.check(11.0, **SERVING) == 310.0
    assert isinstance(deadlines.check(310.0, **SERVING), Expired)
    assert deadlines.check(310.0, **{**SERVING, "busy": True}) == 310.0 + LIMITS.idle_timeout


@pytest.mark.parametrize("state", [{"serving": False}])
def test_a_connection_not_serving_has_no_deadline(state: dict[str, Any]) -> None:
    assert ServerDeadlines(LIMITS, 0.0).check(1e9, **{**SERVING, **state}) is None
