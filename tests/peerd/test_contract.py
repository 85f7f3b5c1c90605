"""A live peer server answers bodies as PROTOCOL.md states, read by a client that has only it.

A ``keyword`` or ``file_name`` that is missing or not a string is a malformed body:
``BAD_REQUEST`` naming the field, on a connection that stays open (PROTOCOL.md §4, §4.7). A
string that is not one safe path segment stays ``INVALID_PATH``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from netproto.client import Connection
from netproto.errors import BadRequest, InvalidPath

TIMEOUT = 10.0
NONCE = bytes(range(32))
# None stands for the field being left out of the body.
NOT_STRINGS = {"missing": None, "int": 7, "bin": b"koala", "array": ["koala"]}


def _present(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


@contextlib.asynccontextmanager
async def raw_peer(peer_rig: Any, tmp_path: Path) -> AsyncIterator[tuple[Connection, str]]:
    """A peer serving koala/joey.txt, and a bare netproto connection to it with a token."""
    share = tmp_path / "share"
    (share / "koala").mkdir(parents=True)
    (share / "koala" / "joey.txt").write_bytes(b"a baby koala")
    server = await peer_rig.serve(share)
    conn = await Connection.open(
        "127.0.0.1",
        server.port,
        peer_rig.pki.client_ctx("peer2"),
        server_hostname="peer1",
        request_timeout=TIMEOUT,
    )
    try:
        yield conn, peer_rig.token()
    finally:
        await conn.close()


@pytest.mark.parametrize("value", NOT_STRINGS.values(), ids=NOT_STRINGS.keys())
async def test_list_with_a_keyword_that_is_not_a_string_is_bad_request_naming_it(
    peer_rig: Any, tmp_path: Path, value: Any
) -> None:
    async with asyncio.timeout(TIMEOUT), raw_peer(peer_rig, tmp_path) as (conn, token):
        with pytest.raises(BadRequest, match=r"^keyword: expected a string$"):
            await conn.request("list", _present({"keyword": value}), token)
        assert await conn.request("list", {"keyword": "koala"}, token) == ["joey.txt"]


@pytest.mark.parametrize("field", ["keyword", "file_name"])
@pytest.mark.parametrize("value", NOT_STRINGS.values(), ids=NOT_STRINGS.keys())
async def test_fetch_with_a_name_that_is_not_a_string_is_bad_request_naming_it(
    peer_rig: Any, tmp_path: Path, field: str, value: Any
) -> None:
    body = _present({"keyword": "koala", "file_name": "joey.txt", "nonce": NONCE, field: value})
    async with asyncio.timeout(TIMEOUT), raw_peer(peer_rig, tmp_path) as (conn, token):
        with pytest.raises(BadRequest, match=rf"^{field}: expected a string$"):
            await conn.request("fetch", body, token)
        assert await conn.request("list", {"keyword": "koala"}, token) == ["joey.txt"]


@pytest.mark.parametrize("field", ["keyword", "file_name"])
async def test_fetch_with_a_name_that_is_no_safe_segment_stays_invalid_path(
    peer_rig: Any, tmp_path: Path, field: str
) -> None:
    body = {"keyword": "koala", "file_name": "joey.txt", "nonce": NONCE, field: "../joey.txt"}
    async with asyncio.timeout(TIMEOUT), raw_peer(peer_rig, tmp_path) as (conn, token):
        with pytest.raises(InvalidPath, match=field):
            await conn.request("fetch", body, token)
