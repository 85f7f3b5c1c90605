"""The dispatcher's observer hook (netproto/dispatch.py): every request it answers is reported
once, with its operation, outcome and duration, and a stream's bytes — driven directly, as
:mod:`netproto.server` drives it; the observer's clock is a counter, so durations are exact."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from netproto import errors
from netproto.dispatch import CLOSED, OK, UNKNOWN_OPERATION, Dispatcher, outcome
from netproto.messages import Request
from netproto.service import Operation, RequestContext, StreamReply


class RecordingObserver:
    """Records what it is told; its clock advances by one second per reading."""

    def __init__(self) -> None:
        self.now = 0.0
        self.done: list[tuple[str, str, float]] = []
        self.served: list[tuple[str, int]] = []

    def clock(self) -> float:
        self.now += 1.0
        return self.now

    def request_done(self, operation: str, code: str, seconds: float) -> None:
        self.done.append((operation, code, seconds))

    def bytes_served(self, operation: str, count: int) -> None:
        self.served.append((operation, count))


def _echo(ctx: RequestContext, body: Any) -> Any:
    if body.get("fail") == "not found":
        raise errors.NotFound("no such thing")
    if body.get("fail") == "bug":
        raise ValueError("a bug")
    return body


async def _echo_async(ctx: RequestContext, body: Any) -> Any:
    return _echo(ctx, body)


async def _chunks(parts: list[bytes], error: Exception | None = None) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    if error is not None:
        raise error


async def _stream(ctx: RequestContext, body: Any) -> StreamReply:
    error = errors.Busy("changed") if body.get("fail") else None
    return StreamReply({"size": 5}, _chunks([b"abc", b"de"], error), dict)


def _bad_body(body: dict[str, Any]) -> Any:
    if "x" in body:
        raise errors.BadRequest("x: not allowed")
    return body


OPERATIONS = {
    "echo": Operation(_bad_body, _echo, needs_token=False, inline=True),
    "slow": Operation(_bad_body, _echo_async, needs_token=False),
    "stream": Operation(_bad_body, _stream, needs_token=False),
    "private": Operation(_bad_body, _echo_async),
}


def _observed() -> tuple[Dispatcher, RecordingObserver]:
    observer = RecordingObserver()
    return Dispatcher(OPERATIONS, None, 1 << 20, observer=observer), observer


def _ctx() -> RequestContext:
    return RequestContext("127.0.0.1", 4000, None)


def _answer_inline(dispatch: Dispatcher, op: str, body: dict[str, Any]) -> Any:
    """What the server does for an inline operation."""
    req = Request(1, op, body)
    operation = dispatch.operations[op]
    ctx, parsed = dispatch.prepare(req, operation, _ctx())
    return operation.handler(ctx, parsed)


async def _answer(dispatch: Dispatcher, op: str, body: dict[str, Any]) -> Any:
    """What the server does for a task-run operation (None: the op is not in the table)."""
    req = Request(1, op, body)
    operation = dispatch.operations.get(op)
    ctx, parsed = dispatch.prepare(req, operation, _ctx())
    assert operation is not None
    return await operation.handler(ctx, parsed)


def test_an_inline_answer_is_reported_ok_with_its_duration() -> None:
    dispatch, observer = _observed()
    assert _answer_inline(dispatch, "echo", {"a": 1}) == {"a": 1}
    assert observer.done == [("echo", OK, 1.0)]  # clock read at prepare (1) and at the end (2)


def test_an_inline_handlers_error_is_reported_with_its_wire_code() -> None:
    dispatch, observer = _observed()
    with pytest.raises(errors.NotFound):
        _answer_inline(dispatch, "echo", {"fail": "not found"})
    with pytest.raises(ValueError, match="a bug"):
        _answer_inline(dispatch, "echo", {"fail": "bug"})
    assert [(op, code) for op, code, _ in observer.done] == [
        ("echo", "NOT_FOUND"),
        ("echo", "INTERNAL"),
    ]


def test_a_body_refused_by_its_parser_is_reported_as_bad_request() -> None:
    dispatch, observer = _observed()
    with pytest.raises(errors.BadRequest):
        _answer_inline(dispatch, "echo", {"x": 1})
    assert observer.done == [("echo", "BAD_REQUEST", 1.0)]


def test_an_unknown_operation_is_reported_under_unknown_not_its_name() -> None:
    dispatch, observer = _observed()
    with pytest.raises(errors.UnknownOp):
        asyncio.run(_answer(dispatch, "alice-secret-file.txt", {}))
    assert observer.done == [(UNKNOWN_OPERATION, "UNKNOWN_OP", 1.0)]


def test_a_missing_token_is_reported_as_auth_required() -> None:
    dispatch, observer = _observed()
    with pytest.raises(errors.AuthRequired):
        asyncio.run(_answer(dispatch, "private", {}))
    assert observer.done == [("private", "AUTH_REQUIRED", 1.0)]


def test_an_async_answer_is_reported_once_it_is_returned() -> None:
    dispatch, observer = _observed()
    assert asyncio.run(_answer(dispatch, "slow", {"b": 2})) == {"b": 2}
    assert observer.done == [("slow", OK, 1.0)]


def test_a_cancelled_request_is_reported_closed() -> None:
    async def never(ctx: RequestContext, body: Any) -> Any:
        await asyncio.Event().wait()

    observer = RecordingObserver()
    dispatch = Dispatcher(
        {"never": Operation(dict, never, needs_token=False)}, None, 1 << 20, observer=observer
    )

    async def run() -> None:
        task = asyncio.create_task(_answer(dispatch, "never", {}))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert [(op, code) for op, code, _ in observer.done] == [("never", CLOSED)]


async def _drain(reply: StreamReply) -> list[bytes]:
    return [bytes(chunk) async for chunk in reply.chunks]


def test_a_stream_counts_its_bytes_and_ends_with_its_last_chunk() -> None:
    dispatch, observer = _observed()

    async def run() -> list[bytes]:
        reply = await _answer(dispatch, "stream", {})
        assert observer.done == []  # not over before its chunks are
        return await _drain(reply)

    assert asyncio.run(run()) == [b"abc", b"de"]
    assert observer.served == [("stream", 3), ("stream", 2)]
    assert observer.done == [("stream", OK, 1.0)]


def test_a_stream_that_fails_midway_is_reported_with_its_error_code() -> None:
    dispatch, observer = _observed()

    async def run() -> None:
        reply = await _answer(dispatch, "stream", {"fail": True})
        with pytest.raises(errors.Busy):
            await _drain(reply)

    asyncio.run(run())
    assert observer.served == [("stream", 3), ("stream", 2)]
    assert [(op, code) for op, code, _ in observer.done] == [("stream", "BUSY")]


def test_a_stream_the_server_stops_taking_is_closed_and_closes_the_handlers_chunks() -> None:
    dispatch, observer = _observed()
    closed: list[bool] = []

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b"abc"
            yield b"de"
        finally:
            closed.append(True)

    async def stream(ctx: RequestContext, body: Any) -> StreamReply:
        return StreamReply({}, chunks(), dict)

    dispatch = Dispatcher(
        {"stream": Operation(dict, stream, needs_token=False)}, None, 1 << 20, observer=observer
    )

    async def run() -> None:
        reply = await _answer(dispatch, "stream", {})
        iterator = aiter(reply.chunks)
        assert await anext(iterator) == b"abc"
        await iterator.aclose()  # as the server does when cut off

    asyncio.run(run())
    assert closed == [True]
    assert observer.served == [("stream", 3)]
    assert [(op, code) for op, code, _ in observer.done] == [("stream", CLOSED)]


def test_without_an_observer_the_handlers_are_the_tables_own() -> None:
    dispatch = Dispatcher(OPERATIONS, None, 1 << 20)
    assert dispatch.observed_operations is None
    assert dispatch.operations is dispatch.table
    assert dispatch.operations["echo"].handler is _echo
    assert _answer_inline(dispatch, "echo", {"a": 1}) == {"a": 1}


def test_an_observed_dispatcher_answers_from_the_wrapped_table_and_keeps_the_one_given() -> None:
    dispatch, _ = _observed()
    assert dispatch.table is OPERATIONS and dispatch.table["echo"].handler is _echo
    assert dispatch.observed_operations is not None
    assert dispatch.operations is dispatch.observed_operations
    assert dispatch.operations["echo"].handler is not _echo


def test_observing_twice_wraps_the_handlers_once() -> None:
    dispatch, first = _observed()
    second = RecordingObserver()
    dispatch.observe(second)
    _answer_inline(dispatch, "echo", {})
    assert (first.done, len(second.done)) == ([], 1)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.RateLimited("slow down"), "RATE_LIMITED"),
        (errors.RequestError.from_wire({"code": "MADE_UP", "message": ""}), "INTERNAL"),
        (errors.ConnectionClosed(), CLOSED),
        (asyncio.CancelledError(), CLOSED),
        (KeyError("x"), "INTERNAL"),
    ],
)
def test_outcome_is_a_wire_code_or_closed_from_a_bounded_set(exc: BaseException, code: str) -> None:
    assert outcome(exc) == code
