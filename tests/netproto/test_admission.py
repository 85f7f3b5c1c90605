"""netproto.admission: connection caps by address key, with a smaller cap for the unproven."""

from __future__ import annotations

import pytest

from netproto.admission import Admission, Admit, address_key
from netproto.service import ServerLimits


def admission(**changes: int) -> Admission[str]:
    caps = ServerLimits(
        max_connections=changes.get("max_connections", 10),
        max_connections_per_address=changes.get("max_connections_per_address", 4),
        max_pending=changes.get("max_pending", 6),
        max_pending_per_address=changes.get("max_pending_per_address", 2),
    )
    return Admission(caps)


def verdict(adm: Admission[str], conn: str, key: str) -> Admit:
    got, evicted = adm.admit(conn, key)
    assert evicted == []
    return got


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
    adm = admission(max_pending_per_address=1)
    assert verdict(adm, "a", address_key("2001:db8::1")) is Admit.SERVE
    assert verdict(adm, "b", address_key("2001:db8::2")) is Admit.DROP
    assert verdict(adm, "c", address_key("2001:db8:0:1::2")) is Admit.SERVE


def test_unproven_connections_past_the_per_address_cap_are_dropped() -> None:
    adm = admission()
    got = [verdict(adm, f"c{i}", "a") for i in range(3)]
    assert got == [Admit.SERVE, Admit.SERVE, Admit.DROP]
    assert verdict(adm, "other", "b") is Admit.SERVE  # another address has its own count
    assert adm.total == 3


def test_proven_connections_leave_the_pending_cap_but_count_against_the_address_cap() -> None:
    adm = admission()
    got = []
    for i in range(6):
        got.append(verdict(adm, f"c{i}", "a"))
        adm.proven(f"c{i}")
    assert got == [Admit.SERVE] * 4 + [Admit.BUSY] * 2
    assert adm.pending == 0 and adm.total == 6


def test_past_the_total_pending_cap_the_oldest_unproven_connection_makes_room() -> None:
    adm = admission(max_pending_per_address=100)
    for i in range(6):
        assert verdict(adm, f"s{i}", f"stranger{i}") is Admit.SERVE
    adm.proven("s0")  # proven: never pushed out
    assert verdict(adm, "s6", "stranger6") is Admit.SERVE
    got, evicted = adm.admit("client", "client")
    assert got is Admit.SERVE  # a newcomer is never refused for it ...
    assert evicted == ["s1"]  # ... the oldest unproven one goes instead
    assert adm.pending == 6
    assert "s1" not in adm.connections and "s0" in adm.connections


def test_release_frees_both_counts_and_is_idempotent() -> None:
    adm = admission()
    adm.admit("x", "a")
    adm.admit("y", "a")
    adm.proven("x")
    adm.release("x")
    adm.release("y")
    adm.release("y")
    assert (adm.total, adm.pending) == (0, 0)
    assert verdict(adm, "z", "a") is Admit.SERVE


def test_a_closing_server_answers_busy() -> None:
    assert Admission[str](ServerLimits()).admit("c", "a", closing=True)[0] is Admit.BUSY
