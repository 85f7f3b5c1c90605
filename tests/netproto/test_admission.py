"""netproto.admission: connection caps by address key, with a smaller cap for the unproven."""

from __future__ import annotations

import pytest

from netproto.admission import Admission, Admit, address_key
from netproto.service import ServerLimits


def caps(**changes: int) -> ServerLimits:
    values = {
        "max_connections": 10,
        "max_connections_per_address": 4,
        "max_pending": 6,
        "max_pending_per_address": 2,
    }
    values.update(changes)
    return ServerLimits(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("198.18.0.7", "198.18.0.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("not an address", "not an address"),
    ],
)
def test_clients_are_counted_by_ipv4_address_or_ipv6_slash_64(address: str, key: str) -> None:
    assert address_key(address) == key


def test_two_ipv6_addresses_in_one_slash_64_share_one_count() -> None:
    admission = Admission(caps(max_pending_per_address=1))
    assert admission.admit(address_key("2001:db8::1")) is Admit.SERVE
    assert admission.admit(address_key("2001:db8::2")) is Admit.DROP
    assert admission.admit(address_key("2001:db8:0:1::2")) is Admit.SERVE


def test_unproven_connections_past_their_cap_are_dropped_without_a_handshake() -> None:
    admission = Admission(caps())
    assert [admission.admit("a") for _ in range(3)] == [Admit.SERVE, Admit.SERVE, Admit.DROP]
    assert admission.admit("b") is Admit.SERVE  # another address has its own pending count


def test_proven_connections_leave_the_pending_cap_but_count_against_the_address_cap() -> None:
    admission = Admission(caps())
    verdicts = []
    for _ in range(6):
        verdicts.append(admission.admit("a"))
        admission.proven("a")
    assert verdicts == [Admit.SERVE] * 4 + [Admit.BUSY] * 2
    assert admission.pending == 0 and admission.total == 6


def test_past_the_total_pending_cap_the_caller_is_told_to_make_room() -> None:
    admission = Admission(caps(max_pending_per_address=100))
    for i in range(6):
        assert admission.admit(f"s{i}") is Admit.SERVE
    assert not admission.over_pending
    assert admission.admit("client") is Admit.SERVE  # a newcomer is never refused for it ...
    assert admission.over_pending  # ... the oldest pending connection makes room instead
    admission.release("s0", pending=True)
    assert not admission.over_pending
    assert admission.total == 6


def test_release_frees_both_counts_and_forgets_empty_keys() -> None:
    admission = Admission(caps())
    admission.admit("a")
    admission.admit("a")
    admission.proven("a")
    admission.release("a", pending=False)
    admission.release("a", pending=True)
    assert (admission.total, admission.pending) == (0, 0)
    assert admission.admit("a") is Admit.SERVE


def test_a_closing_server_answers_busy() -> None:
    assert Admission(caps()).admit("a", closing=True) is Admit.BUSY
