"""netproto.messages and the error classes: the envelope of PROTOCOL.md §3 and §5."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netproto.errors import (
    ERRORS_BY_CODE,
    BadFrame,
    BadRequest,
    FrameTooLarge,
    NotFound,
    RateLimited,
    RequestError,
    UnsupportedVersion,
)
from netproto.messages import (
    MAX_ID,
    ErrorReply,
    Reply,
    Request,
    StreamChunk,
    StreamEnd,
    StreamStart,
    error_map,
    parse_request,
    parse_server_message,
    reply_map,
    request_id,
    stream_end_map,
    stream_start_map,
)


def envelope(**changes: Any) -> dict[str, Any]:
    """A valid request map; a change to ``...`` removes that key."""
    msg: dict[str, Any] = {"v": 1, "id": 7, "op": "search", "body": {"keyword": "koala"}}
    msg.update(changes)
    return {k: v for k, v in msg.items() if v is not ...}


# --- requests ------------------------------------------------------------------------------


def test_request_round_trips_through_its_wire_map() -> None:
    request = Request(7, "search", {"keyword": "koala"}, token="t0k")
    assert parse_request(request.to_wire()) == request


def test_request_without_token_has_no_token_key() -> None:
    assert "token" not in Request(1, "ping", {}).to_wire()
    assert parse_request(envelope()).token is None


@pytest.mark.parametrize("rid", [1, MAX_ID])
def test_ids_from_1_to_2_pow_32_minus_1_are_accepted(rid: int) -> None:
    assert parse_request(envelope(id=rid)).id == rid


@pytest.mark.parametrize(
    "changes",
    [
        {"id": ...},
        {"id": 0},
        {"id": -1},
        {"id": MAX_ID + 1},
        {"id": "7"},
        {"id": True},
        {"id": 7.0},
        {"id": None},
        {"op": ...},
        {"op": ""},
        {"op": "x" * 65},
        {"op": 1},
        {"op": b"search"},
    ],
    ids=str,
)
def test_missing_or_malformed_id_or_op_is_bad_frame(changes: dict[str, Any]) -> None:
    with pytest.raises(BadFrame):
        parse_request(envelope(**changes))


@pytest.mark.parametrize(
    "changes,error,field",
    [
        ({"v": ...}, BadRequest, "v"),
        ({"v": "1"}, BadRequest, "v"),
        ({"v": 2}, UnsupportedVersion, "version 2"),
        ({"v": 0}, UnsupportedVersion, "version 0"),
        ({"body": ...}, BadRequest, "body"),
        ({"body": [1]}, BadRequest, "body"),
        ({"body": None}, BadRequest, "body"),
        ({"token": 5}, BadRequest, "token"),
        ({"token": b"bin"}, BadRequest, "token"),
        ({"extra": True}, BadRequest, "extra"),
    ],
    ids=str,
)
def test_bad_envelope_field_is_a_request_error_naming_it(
    changes: dict[str, Any], error: type[RequestError], field: str
) -> None:
    with pytest.raises(error, match=field) as caught:
        parse_request(envelope(**changes))
    assert not caught.value.closes_connection


def test_request_id_is_the_requests_own_when_valid_else_0() -> None:
    assert request_id(envelope(id=9)) == 9
    assert request_id(envelope(id=0)) == 0
    assert request_id(envelope(id="9")) == 0
    assert request_id({}) == 0


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["v", "id", "op", "body", "token", "x"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.text(max_size=5)
        | st.binary(max_size=5)
        | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )
)
def test_any_map_is_a_request_or_a_documented_error(msg: dict[str, Any]) -> None:
    try:
        request = parse_request(msg)
    except (BadFrame, BadRequest, UnsupportedVersion):
        return
    assert 1 <= request.id <= MAX_ID
    assert type(request.body) is dict


# --- server messages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "wire,parsed",
    [
        (reply_map(3, {"x": 1}), Reply(3, {"x": 1})),
        (reply_map(3, None), Reply(3, None)),
        (stream_start_map(4, {"size": 9}), StreamStart(4, {"size": 9})),
        ({"id": 4, "chunk": b"data"}, StreamChunk(4, b"data")),
        (stream_end_map(4, {"sha256": b"d"}), StreamEnd(4, {"sha256": b"d"})),
    ],
    ids=["reply", "nil reply", "stream start", "chunk", "stream end"],
)
def test_server_message_round_trips(wire: dict[str, Any], parsed: Any) -> None:
    assert parse_server_message(wire) == parsed


def test_error_reply_is_rebuilt_as_the_same_class_with_its_extras() -> None:
    message = parse_server_message(error_map(5, RateLimited("later", retry_after=3)))
    assert isinstance(message, ErrorReply)
    assert message.id == 5
    assert type(message.error) is RateLimited
    assert message.error.message == "later"
    assert message.error.retry_after == 3


@pytest.mark.parametrize(
    "wire",
    [
        {"ok": True, "body": 1},
        {"id": -1, "ok": True, "body": 1},
        {"id": "1", "ok": True, "body": 1},
        {"id": 1, "ok": True},
        {"id": 1, "chunk": "text, not bin"},
        {"id": 1, "ok": "yes", "body": 1},
        {"id": 1},
    ],
    ids=[
        "no id",
        "negative id",
        "str id",
        "reply without body",
        "str chunk",
        "ok not bool",
        "nothing",
    ],
)
def test_malformed_server_message_is_bad_frame(wire: dict[str, Any]) -> None:
    with pytest.raises(BadFrame):
        parse_server_message(wire)


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(ERRORS_BY_CODE))
def test_every_error_code_round_trips_to_its_class(code: str) -> None:
    cls = ERRORS_BY_CODE[code]
    rebuilt = RequestError.from_wire(cls("why").to_wire())
    assert type(rebuilt) is cls
    assert rebuilt.code == code
    assert rebuilt.message == "why"


def test_error_codes_are_those_of_the_protocol() -> None:
    assert set(ERRORS_BY_CODE) == {
        "BAD_FRAME", "FRAME_TOO_LARGE", "UNSUPPORTED_VERSION", "UNKNOWN_OP", "BAD_REQUEST",
        "AUTH_REQUIRED", "TOKEN_INVALID", "TOKEN_EXPIRED", "AUTH_FAILED", "USER_EXISTS",
        "PASSWORD_TOO_SHORT", "PASSWORD_TOO_LONG", "FORBIDDEN", "NOT_FOUND", "INVALID_PATH",
        "RATE_LIMITED", "BUSY", "TIMEOUT", "VERSION_MISMATCH", "INTERNAL",
    }  # fmt: skip


def test_only_unreadable_frame_errors_close_the_connection() -> None:
    closing = {code for code, cls in ERRORS_BY_CODE.items() if cls.closes_connection}
    assert closing == {BadFrame.code, FrameTooLarge.code}


def test_unknown_error_code_stays_generic_but_keeps_its_code() -> None:
    rebuilt = RequestError.from_wire({"code": "NEW_IN_V2", "message": "m", "hint": 1})
    assert type(rebuilt) is RequestError
    assert rebuilt.code == "NEW_IN_V2"
    assert rebuilt.extra == {"hint": 1}


def test_extra_key_cannot_override_the_code() -> None:
    wire = NotFound("gone", code="INTERNAL").to_wire()
    assert (wire["code"], wire["message"]) == ("NOT_FOUND", "gone")


@pytest.mark.parametrize("error", [None, "NOT_FOUND", ["NOT_FOUND"]])
def test_error_frame_without_an_error_map_is_bad_frame(error: Any) -> None:
    assert isinstance(RequestError.from_wire(error), BadFrame)


def test_error_without_message_gets_the_default_message() -> None:
    assert RequestError.from_wire({"code": "NOT_FOUND"}).message == NotFound.default_message


def test_rate_limited_without_a_usable_retry_after_defaults_to_one_second() -> None:
    assert RateLimited().retry_after == 1.0
    assert RateLimited(retry_after="soon").retry_after == 1.0


def test_error_map_with_a_self_key_is_rebuilt_without_failing() -> None:
    error = RequestError.from_wire({"code": "NOT_FOUND", "message": "gone", "self": 1})
    assert isinstance(error, NotFound)
    assert error.extra == {"self": 1}
