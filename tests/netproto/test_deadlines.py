"""The connections' deadlines (netproto/deadlines.py), with times passed in."""

from __future__ import annotations

from typing import Any

import pytest

from netproto.deadlines import Expired, RequestDeadlines, ServerDeadlines
from netproto.errors import ConnectionClosed, NotFound, Timeout
from netproto.messages import ErrorReply, Reply
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


@pytest.mark.parametrize(
    "state", [{"serving": False}, {"serving": False, "pending": True, "busy": True}]
)
def test_a_connection_not_serving_has_no_deadline(state: dict[str, Any]) -> None:
    assert ServerDeadlines(LIMITS, 0.0).check(1e9, **{**SERVING, **state}) is None


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ({"established": False, "paused_since": 0.0, "pending": True}, "TLS handshake"),
        ({"paused_since": 0.0, "pending": True}, "slow reader"),
        ({"pending": True}, "not proven"),
        ({}, "frame not completed"),
    ],
)
def test_when_several_deadlines_passed_the_first_in_order_is_acted_on(
    state: dict[str, Any], why: str
) -> None:
    # Order: handshake, slow reader, pending, frame, idle; every one of them passed by now.
    deadlines = ServerDeadlines(LIMITS, 0.0)
    deadlines.received(0.0, in_frame=True, completed=False)
    expired = deadlines.check(1e6, **{**SERVING, **state})
    assert isinstance(expired, Expired) and expired.why.startswith(why)


def test_idle_is_acted_on_only_when_nothing_else_passed() -> None:
    deadlines = ServerDeadlines(LIMITS, 0.0)
    expired = deadlines.check(1e6, **SERVING)
    assert isinstance(expired, Expired) and expired.why == "idle"


def test_a_request_past_its_deadline_times_out_and_the_next_deadline_is_returned() -> None:
    early, late = FakeWaiter(), FakeWaiter()
    requests: RequestDeadlines[FakeWaiter] = RequestDeadlines()
    requests.add(1, early, 10.0, "search")
    requests.add(2, late, 20.0, "sync")
    assert requests.expire(5.0) == 10.0
    assert requests.expire(10.0) == 20.0
    assert isinstance(early.exception, Timeout) and "search" in early.exception.message
    assert late.exception is None
    requests.answer(Reply(2, {"ok": 1}))
    assert late.result == {"ok": 1}
    assert requests.expire(30.0) is None


def test_answers_settle_their_request_and_a_failure_the_rest() -> None:
    waiters = [FakeWaiter() for _ in range(3)]
    requests: RequestDeadlines[FakeWaiter] = RequestDeadlines()
    for rid, waiter in enumerate(waiters, 1):
        requests.add(rid, waiter, 100.0, "op")
    requests.answer(ErrorReply(1, NotFound("no such file")))
    requests.answer(Reply(99, {}))  # nobody waits for it
    requests.remove(3)
    requests.fail(ConnectionClosed("gone"))
    assert isinstance(waiters[0].exception, NotFound)
    assert isinstance(waiters[1].exception, ConnectionClosed)
    assert waiters[2].exception is None and 3 not in requests


class FakeWaiter:
    """An :class:`asyncio.Future` as far as :class:`RequestDeadlines` cares."""

    def __init__(self) -> None:
        self.result: Any = None
        self.exception: BaseException | None = None

    def done(self) -> bool:
        return self.result is not None or self.exception is not None

    def set_result(self, result: Any, /) -> None:
        self.result = result

    def set_exception(self, exception: BaseException, /) -> None:
        self.exception = exception
