"""indexd.passwords: bcrypt off the event loop, a concurrency cap, and unknown users checked too."""

from __future__ import annotations

import asyncio
from typing import Any

import bcrypt
import pytest

from indexd.passwords import PasswordHasher
from netproto.errors import Busy


async def test_hash_then_verify_accepts_only_the_same_password() -> None:
    hasher = PasswordHasher(4, concurrency=1)
    try:
        hashed = await hasher.hash(b"correct horse")
        assert hashed.startswith(b"$2b$04$")
        assert await hasher.verify(b"correct horse", hashed)
        assert not await hasher.verify(b"wrong horse!", hashed)
    finally:
        hasher.close()


async def test_unknown_user_is_checked_against_a_dummy_hash_of_the_same_cost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked: list[bytes] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> Any:
        checked.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    hasher = PasswordHasher(5, concurrency=1)
    try:
        await hasher.start()
        assert not await hasher.verify(b"correct horse", None)
        assert not await hasher.verify(b"x" * 73, None)  # too long: still one full check
    finally:
        hasher.close()
    assert len(checked) == 2 and all(h.startswith(b"$2b$05$") for h in checked)


async def test_a_corrupt_stored_hash_fails_like_a_wrong_password() -> None:
    hasher = PasswordHasher(4, concurrency=1)
    try:
        assert not await hasher.verify(b"correct horse", b"not a bcrypt hash")
    finally:
        hasher.close()


async def test_callers_past_the_waiting_cap_get_busy() -> None:
    hasher = PasswordHasher(4, concurrency=1, max_waiting=1)
    try:
        results = await asyncio.gather(
            *(hasher.hash(b"correct horse") for _ in range(3)), return_exceptions=True
        )
    finally:
        hasher.close()
    assert [isinstance(r, Busy) for r in results] == [False, False, True]


def test_costs_outside_bcrypts_range_are_refused() -> None:
    with pytest.raises(ValueError):
        PasswordHasher(3)
