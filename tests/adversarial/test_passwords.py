"""Passwords against a live indexd (PROTOCOL.md §4.1, docs/design.md §4): length limits,
enumeration by timing, brute force against the per-(user, address), per-user and per-address
limits, strangers trying to lock a user out, a full table of back-offs, registration floods,
and a login storm against the event loop."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from indexd.ratelimit import BackoffPolicy
from netproto.client import Connection
from netproto.errors import (
    AuthFailed,
    BadRequest,
    Busy,
    PasswordTooLong,
    PasswordTooShort,
    RateLimited,
    RequestError,
)
from tests.support.adversary import (
    Live,
    assert_index_serves,
    live_daemons,
    open_conn,
)

LOOSE = BackoffPolicy(free=100_000)


async def _conn(live: Live, local: str | None = None) -> Connection:
    return await open_conn(
        live.index_port,
        "indexd",
        live.pki.client_ctx(),
        local_addr=(local, 0) if local is not None else None,
    )


# --- length limits ---------------------------------------------------------------------------

LENGTHS: dict[str, tuple[str, type[RequestError] | None]] = {
    "7 ASCII bytes": ("a" * 7, PasswordTooShort),
    "8 ASCII bytes": ("a" * 8, None),
    "4 two-byte characters (8 bytes)": ("é" * 4, None),
    "2 four-byte characters (8 bytes)": ("🦘" * 2, None),
    "7 bytes of 3 characters": ("é€" + "a" * 2, PasswordTooShort),
    "72 ASCII bytes": ("a" * 72, None),
    "73 ASCII bytes": ("a" * 73, PasswordTooLong),
    "36 two-byte characters (72 bytes)": ("é" * 36, None),
    "37 two-byte characters (74 bytes, 37 characters)": ("é" * 37, PasswordTooLong),
    "19 four-byte characters (76 bytes)": ("🦘" * 19, PasswordTooLong),
    "4096 characters": ("a" * 4096, BadRequest),
    "an embedded NUL": ("abcd\x00efgh", BadRequest),
    "empty": ("", PasswordTooShort),
}


@pytest.mark.parametrize("password,error", LENGTHS.values(), ids=LENGTHS.keys())
async def test_register_applies_the_password_length_rules_in_utf8_bytes(
    pki: Any, tmp_path: Path, password: str, error: type[RequestError] | None
) -> None:
    async with live_daemons(pki, tmp_path) as live:
        conn = await _conn(live)
        if error is None:
            assert await conn.request("register", {"username": "len", "password": password})
            reply = await conn.request("auth", {"username": "len", "password": password})
            assert reply["token"]
        else:
            with pytest.raises(error):
                await conn.request("register", {"username": "len", "password": password})
        await conn.close()
        await assert_index_serves(live)


async def test_a_72_byte_password_is_never_truncated_at_login(pki: Any, tmp_path: Path) -> None:
    # bcrypt itself ignores bytes past 72: a longer "password" must not log in as its prefix.
    password = "p" * 72
    overrides = {"login_backoff": LOOSE, "user_backoff": LOOSE}
    async with live_daemons(pki, tmp_path, index_overrides=overrides) as live:
        conn = await _conn(live)
        await conn.request("register", {"username": "trunc", "password": password})
        for longer in (password + "x", password + "é", password + "p" * 100):
            with pytest.raises(AuthFailed):
                await conn.request("auth", {"username": "trunc", "password": longer})
        assert (await conn.request("auth", {"username": "trunc", "password": password}))["token"]
        await conn.close()
        await assert_index_serves(live)


# --- enumeration by timing ------------------------------------------------------------------


def _separability(a: list[float], b: list[float]) -> float:
    """P(x < y) for x from ``a``, y from ``b`` (0.5: indistinguishable; 0 or 1: separable)."""
    wins = sum((x < y) + 0.5 * (x == y) for x in a for y in b)
    return wins / (len(a) * len(b))


async def test_unknown_user_and_wrong_password_are_not_separable_by_timing(
    pki: Any, tmp_path: Path
) -> None:
    # bcrypt ~12 ms: it dominates
    overrides = {"bcrypt_cost": 8, "login_backoff": LOOSE, "user_backoff": LOOSE}
    async with live_daemons(pki, tmp_path, index_overrides=overrides) as live:
        conn = await _conn(live)
        await conn.request("register", {"username": "alice", "password": "alice's password"})
        unknown: list[float] = []
        wrong: list[float] = []
        for i in range(36):  # interleaved, so drift in the machine's load hits both alike
            for name, sink in (("alice", wrong), (f"nobody{i}", unknown)):
                started = time.perf_counter()
                with pytest.raises(AuthFailed) as caught:
                    await conn.request("auth", {"username": name, "password": "not it, sorry"})
                sink.append(time.perf_counter() - started)
                assert caught.value.message == "wrong username or password"
        await conn.close()
        await assert_index_serves(live)
    # Generous bounds: a real difference (skipping bcrypt for unknown users) gives ~0 or ~1
    # and a ratio of ~10; noise on a loaded 2-core machine stays well inside these.
    p = _separability(unknown, wrong)
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.15 <= p <= 0.85, (p, sorted(unknown), sorted(wrong))
    assert 0.6 <= ratio <= 1.6, (ratio, sorted(unknown), sorted(wrong))


# --- brute force ----------------------------------------------------------------------------


async def _burst(
    live: Live, attempts: list[tuple[str, str]], local: str = "127.0.0.1"
) -> list[Any]:
    """Send every (username, password) at once, each on its own connection."""
    conns = [await _conn(live, local) for _ in attempts]
    try:
        return await asyncio.gather(
            *(
                c.request("auth", {"username": u, "password": p})
                for c, (u, p) in zip(conns, attempts, strict=True)
            ),
            return_exceptions=True,
        )
    finally:
        for c in conns:
            await c.close()


async def test_a_parallel_burst_of_guesses_for_one_user_gets_only_the_free_attempts(
    pki: Any, tmp_path: Path
) -> None:
    overrides = {"login_backoff": BackoffPolicy(free=5, base_delay=1.0)}
    async with live_daemons(pki, tmp_path, index_overrides=overrides) as live:
        conn = await _conn(live)
        await conn.request("register", {"username": "victim", "password": "victim's secret"})
        results = await _burst(live, [("victim", f"guess number {i}") for i in range(30)])
        failed = [r for r in results if isinstance(r, AuthFailed)]
        limited = [r for r in results if isinstance(r, RateLimited)]
        # Charged before the check: 30 guesses in parallel get no more tries than 30 in a row.
        assert len(failed) == 5 and len(limited) == 25, results
        assert all(0 < r.retry_after <= 1.0 for r in limited)
        # Limited, not locked out: the right password works once retry_after has passed.
        with pytest.raises(RateLimited) as caught:
            await conn.request("auth", {"username": "victim", "password": "victim's secret"})
        await asyncio.sleep(caught.value.retry_after)
        assert (await conn.request("auth", {"username": "victim", "password": "victim's secret"}))[
            "token"
        ]
        await conn.close()
        await assert_index_serves(live)


async def test_a_parallel_burst_across_usernames_is_limited_per_address_only(
    pki: Any, tmp_path: Path
) -> None:
    overrides = {
        "login_backoff": LOOSE,
        "user_backoff": LOOSE,
        "address_backoff": BackoffPolicy(free=4, base_delay=30.0),
    }
    async with live_daemons(pki, tmp_path, index_overrides=overrides) as live:
        conn = await _conn(live, "127.0.0.9")
        await conn.request("register", {"username": "carol", "password": "carol's secret"})
        await conn.close()
        attempts = [(f"user{i}", "password guess") for i in range(20)]
        results = await _burst(live, attempts, local="127.0.0.8")
        failed = [r for r in results if isinstance(r, AuthFailed)]
        limited = [r for r in results if isinstance(r, RateLimited)]
        assert len(failed) == 4 and len(limited) == 16, results
        assert all(0 < r.retry_after <= 30 for r in limited)
        # Another address (another user behind another NAT) logs in as usual meanwhile.
        other = await _conn(live, "127.0.0.9")
        assert (await other.request("auth", {"username": "carol", "password": "carol's secret"}))[
            "token"
        ]
        await other.close()
        await assert_index_serves(live)  # from 127.0.0.1 too


# --- a login storm and the event loop --------------------------------------------------------


async def test_a_login_storm_never_delays_a_search_behind_the_password_hashing(
    pki: Any, tmp_path: Path
) -> None:
    overrides = {
        "bcrypt_cost": 8,
        "login_backoff": LOOSE,
        "user_backoff": LOOSE,
        "register_backoff": LOOSE,  # every register of the storm hashes
    }
    async with live_daemons(pki, tmp_path, index_overrides=overrides) as live:
        setup = await _conn(live)
        for i in range(4):
            await setup.request("register", {"username": f"storm{i}", "password": "storm password"})
        await setup.close()
        storm_conns = [await _conn(live, f"127.0.3.{i + 1}") for i in range(4)]
        searcher = await _conn(live)
        order: list[str] = []

        async def login(c: Connection, i: int) -> None:
            try:
                body = {"username": f"storm{i % 4}", "password": "storm password"}
                await c.request("auth" if i % 2 else "register", body)
            except (Busy, RequestError):
                pass  # USER_EXISTS for the registers; BUSY if the hash queue is full
            order.append("login")

        async def search() -> None:
            await searcher.request("search", {"keyword": "koala"}, live.token())
            order.append("search")

        async with asyncio.timeout(60):
            storm = [asyncio.ensure_future(login(storm_conns[i % 4], i)) for i in range(160)]
            await asyncio.sleep(0)  # the storm's requests are written first
            probes = [asyncio.ensure_future(search()) for _ in range(5)]
            await asyncio.gather(*probes)
            during = order.count("login")
            await asyncio.gather(*storm)
        for c in [*storm_conns, searcher]:
            await c.close()
        # Every search came back while (nearly) the whole storm was still hashing: 160 hashes
        # on at most a few threads cannot have finished in a search's round trip.
        assert order.count("search") == 5
        assert during <= 20, order
        await assert_index_serves(live)


# --- a stranger cannot lock a user out; many addresses together cannot guess ------------------


async def test_a_strangers_guesses_do_not_lock_the_user_out_from_another_address(
    pki: Any, tmp_path: Path
) -> None:
    overrides = {"login_backoff": BackoffPolicy(free=5, base_delay=60.0)}
    async with live_daemons(pki, tmp_path, index_overrides=overrides) as live:
        conn = await _conn(live, "127.0.0.9")
        await conn.request("register", {"username": "victim", "password": "victim's secret"})
        results = await _burst(live, [("victim", f"guess {i}") for i in range(30)], "127.0.0.8")
        assert sum(isinstance(r, AuthFailed) for r in results) == 5
        assert sum(isinstance(r, RateLimited) for r in results) == 25
        # The stranger waits a minute; the user, at its own address, logs in right away.
        reply = await conn.request("auth", {"username": "victim", "password": "victim's secret"})
        assert reply["token"]
        await conn.close()
        await assert_index_serves(live)


async def test_guesses_from_many_addresses_together_reach_the_per_user_ceiling(
    pki: Any, tmp_path: Path
) -> None:
    overrides = {
        "login_backoff": BackoffPolicy(free=5, base_delay=60.0),
        "user_backoff": BackoffPolicy(free=12, base_delay=60.0),
    }
    async with live_daemons(pki, tmp_path, index_overrides=overrides) as live:
        conn = await _conn(live, "127.0.0.9")
        await conn.request("register", {"username": "victim", "password": "victim's secret"})
        await conn.request("register", {"username": "bystander", "password": "bystander's pw"})
        failed = 0
        for i in range(4):  # three guesses from each of four addresses: none limited alone
            results = await _burst(
                live, [("victim", f"guess {i}.{j}") for j in range(3)], f"127.0.4.{i + 1}"
            )
            failed += sum(isinstance(r, AuthFailed) for r in results)
        assert failed == 12
        fresh = await _burst(live, [("victim", "one more guess")], "127.0.4.99")
        assert isinstance(fresh[0], RateLimited), fresh
        # Another user is not affected by the ceiling.
        reply = await conn.request("auth", {"username": "bystander", "password": "bystander's pw"})
        assert reply["token"]
        await conn.close()
        await assert_index_serves(live)


async def test_a_table_full_of_blocking_back_offs_refuses_new_keys_and_evicts_none(
    pki: Any, tmp_path: Path
) -> None:
    overrides = {
        "login_backoff": BackoffPolicy(free=1, base_delay=3.0, decay=0.5),
        "user_backoff": LOOSE,
        "address_backoff": LOOSE,
    }
    async with live_daemons(pki, tmp_path, index_overrides=overrides) as live:
        service = live.index.service
        assert service is not None
        service.login_attempts.max_keys = 3  # a small table, filled by a stranger
        stranger = await _conn(live, "127.0.0.8")
        for name in ("a", "b", "c"):
            with pytest.raises(AuthFailed):
                await stranger.request("auth", {"username": name, "password": "guess one"})
        with pytest.raises(RateLimited, match="in progress"):  # a new key: nothing evicted
            await stranger.request("auth", {"username": "d", "password": "guess one"})
        for name in ("a", "b", "c"):  # every back-off still blocks
            with pytest.raises(RateLimited) as held:
                await stranger.request("auth", {"username": name, "password": "guess two"})
            assert 0 < held.value.retry_after <= 3.0
        await stranger.close()
        # Once the stranger's back-offs have run out, a newcomer is served again.
        await asyncio.sleep(3.5)
        conn = await _conn(live, "127.0.0.9")
        await conn.request("register", {"username": "newcomer", "password": "newcomer's pw"})
        assert (await conn.request("auth", {"username": "newcomer", "password": "newcomer's pw"}))[
            "token"
        ]
        await conn.close()
        await assert_index_serves(live)


# --- registrations: rate-limited per address, hashed apart from logins -------------------------


async def test_a_registration_flood_is_rate_limited_and_never_delays_a_login(
    pki: Any, tmp_path: Path
) -> None:
    overrides = {"bcrypt_cost": 10, "register_backoff": BackoffPolicy(free=12, base_delay=60.0)}
    async with live_daemons(pki, tmp_path, index_overrides=overrides) as live:
        setup = await _conn(live, "127.0.0.9")
        await setup.request("register", {"username": "regular", "password": "regular's pw"})
        flood_conns = [await _conn(live, "127.0.0.7") for _ in range(4)]
        order: list[str] = []

        async def register(i: int) -> Any:
            try:
                body = {"username": f"sybil{i}", "password": "sybil password"}
                return await flood_conns[i % 4].request("register", body)
            except RequestError as exc:
                return exc
            finally:
                order.append("register")

        async with asyncio.timeout(60):
            flood = [asyncio.ensure_future(register(i)) for i in range(40)]
            await asyncio.sleep(0.05)  # the flood is queued first
            reply = await setup.request("auth", {"username": "regular", "password": "regular's pw"})
            order.append("login")
            results = await asyncio.gather(*flood)
        for c in [*flood_conns, setup]:
            await c.close()
        assert reply["token"]
        # 12 free registrations from the address, the rest refused without hashing...
        assert sum(isinstance(r, dict) for r in results) == 12
        assert sum(isinstance(r, RateLimited) for r in results) == 28
        # ...and the login, hashed on its own threads, did not wait for the registrations'.
        hashed_before_login = order.index("login") - 28
        assert hashed_before_login <= 6, order
        await assert_index_serves(live)
