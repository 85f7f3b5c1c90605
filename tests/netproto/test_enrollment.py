"""netproto.enrollment: the bodies of ca, enroll and revoked, validated both ways."""

from __future__ import annotations

from typing import Any

import pytest

from netproto.enrollment import (
    MAX_DER,
    CaReply,
    EnrollReply,
    EnrollRequest,
    RevokedReply,
    check_serial,
)
from netproto.errors import BadRequest


def test_each_body_goes_round_trip() -> None:
    assert CaReply.from_wire(CaReply(b"der").to_wire()) == CaReply(b"der")
    assert EnrollRequest.from_wire(EnrollRequest("laptop", b"csr").to_wire()).csr == b"csr"
    plain = EnrollReply(b"der", 10)
    assert EnrollReply.from_wire(plain.to_wire()) == plain
    renewed = EnrollReply(b"der", 10, "t", "p", 5)
    assert EnrollReply.from_wire(renewed.to_wire()) == renewed
    assert RevokedReply.from_wire({"serials": ["ab", "1"]}).serials == ("ab", "1")


@pytest.mark.parametrize(
    ("parse", "body", "field"),
    [
        (CaReply.from_wire, [], "reply"),
        (CaReply.from_wire, {"certificate": b""}, "certificate"),
        (CaReply.from_wire, {"certificate": b"x" * (MAX_DER + 1)}, "certificate"),
        (EnrollRequest.from_wire, {"domain_name": 1, "csr": b"c"}, "domain_name"),
        (EnrollRequest.from_wire, {"domain_name": "a" * 64, "csr": b"c"}, "domain_name"),
        (EnrollRequest.from_wire, {"domain_name": "a", "csr": "c"}, "csr"),
        (EnrollReply.from_wire, {"certificate": b"d", "expires_at": -1}, "expires_at"),
        (EnrollReply.from_wire, {"certificate": b"d", "expires_at": 1, "token": 5}, "token"),
        (EnrollReply.from_wire, {"certificate": b"d", "expires_at": 1, "token": "t"}, "both"),
        (RevokedReply.from_wire, {"serials": "ab"}, "serials"),
        (RevokedReply.from_wire, {"serials": ["AB"]}, "serials"),
    ],
)
def test_a_malformed_body_is_bad_request_naming_the_field(
    parse: Any, body: Any, field: str
) -> None:
    with pytest.raises(BadRequest, match=field):
        parse(body)


def test_a_serial_is_lower_case_hex_of_at_most_40_digits() -> None:
    assert check_serial("0a") == "0a"
    for bad in ("", "0x1", "a" * 41, 12):
        with pytest.raises(BadRequest):
            check_serial(bad)
