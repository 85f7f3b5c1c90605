"""Adversarial framing and msgpack against a live indexd and a live peerd (PROTOCOL.md §2, §3).

Every malformed frame of §2, split and pipelined writes, container and nesting bombs (with the
server's memory and time measured), and a seeded fuzz run of mutated valid frames. Each case
asserts the documented outcome and that a healthy client is served by the same daemon after.
"""

from __future__ import annotations

import asyncio
import copy
import os
import random
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import pytest_asyncio

from netproto.codec import pack, unpack_map
from netproto.errors import BadFrame, RequestError
from netproto.framing import encode_frame
from netproto.messages import parse_request
from tests.support.adversary import (
    BOMBS,
    HEALTH_FILE,
    HEALTH_KEYWORD,
    MAX_FRAME,
    STEP,
    Live,
    assert_closed,
    assert_index_serves,
    assert_serves,
    close_writer,
    error_code,
    expect_error_and_close,
    frame_of,
    indexd_process,
    live_daemons,
    nested_map,
    open_raw,
    raw_map,
    read_message,
    request_frame,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

KINDS = ("index", "peer")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    """One live index and peer for the whole module: every attack hits the same daemons."""
    async with live_daemons(pki, tmp_path_factory.mktemp("adv-framing")) as daemons:
        yield daemons


def good_request(live: Live, kind: str, rid: int) -> bytes:
    """A valid request of the daemon's hot path (search at the index, list at the peer)."""
    op = "search" if kind == "index" else "list"
    return request_frame(rid, op, {"keyword": HEALTH_KEYWORD}, live.token_for(kind))


def assert_good_answer(kind: str, msg: dict[str, Any], rid: int) -> None:
    assert msg["id"] == rid and msg["ok"] is True, msg
    if kind == "peer":
        assert msg["body"] == [HEALTH_FILE]
    else:
        assert [hit["domain_name"] for hit in msg["body"]["hits"]] == ["peer1"]


# --- every frame §2 says cannot be read: one id-0 error, then the connection closes ----------


_ENV = {"v": 1, "id": 5, "op": "search"}

UNREADABLE: dict[str, tuple[bytes, str]] = {
    "length 0": (b"\x00\x00\x00\x00", "BAD_FRAME"),
    "length max_frame+1": (struct.pack(">I", MAX_FRAME + 1), "FRAME_TOO_LARGE"),
    "length 2^32-1": (b"\xff\xff\xff\xff", "FRAME_TOO_LARGE"),
    "never-used byte 0xc1": (encode_frame(b"\xc1"), "BAD_FRAME"),
    "truncated map": (encode_frame(b"\x84\xa1v\x01\xa2id"), "BAD_FRAME"),
    "array at the top": (encode_frame(pack([1, "id", 2])), "BAD_FRAME"),
    "int at the top": (encode_frame(pack(7)), "BAD_FRAME"),
    "str at the top": (encode_frame(pack("search")), "BAD_FRAME"),
    "nil at the top": (encode_frame(b"\xc0"), "BAD_FRAME"),
    "two maps in one frame": (encode_frame(pack(_ENV) + pack(_ENV)), "BAD_FRAME"),
    "trailing byte": (encode_frame(pack({**_ENV, "body": {}}) + b"\xc0"), "BAD_FRAME"),
    "ext type": (
        encode_frame(msgpack.packb({**_ENV, "body": {"x": msgpack.ExtType(5, b"abc")}})),
        "BAD_FRAME",
    ),
    "fixext at the top level key": (encode_frame(b"\x81\xd4\x01\x00\x01"), "BAD_FRAME"),
    "msgpack timestamp": (
        encode_frame(msgpack.packb({**_ENV, "body": {"t": msgpack.Timestamp(1, 0)}})),
        "BAD_FRAME",
    ),
    "int map key": (encode_frame(msgpack.packb({1: 2})), "BAD_FRAME"),
    "bin map key": (encode_frame(msgpack.packb({b"id": 1}, use_bin_type=True)), "BAD_FRAME"),
    "nil map key": (encode_frame(b"\x81\xc0\x01"), "BAD_FRAME"),
    "array map key": (encode_frame(b"\x81\x91\x01\x01"), "BAD_FRAME"),
    "int key deep in the body": (
        encode_frame(msgpack.packb({**_ENV, "body": {"keyword": {1: 2}}})),
        "BAD_FRAME",
    ),
    "invalid UTF-8 in a str": (encode_frame(raw_map(b"\xa2op", b"\xa1\xff")), "BAD_FRAME"),
    "lone surrogate in a str": (
        encode_frame(raw_map(b"\xa2op", b"\xa3\xed\xa0\x80")),
        "BAD_FRAME",
    ),
    "array32 claiming 2^31 entries": (
        encode_frame(raw_map(b"\xa4body", b"\xdd\x80\x00\x00\x00")),
        "BAD_FRAME",
    ),
    "map32 claiming 2^31 entries": (
        encode_frame(raw_map(b"\xa4body", b"\xdf\x80\x00\x00\x00")),
        "BAD_FRAME",
    ),
    "str32 claiming 2^31 bytes": (
        encode_frame(raw_map(b"\xa2op", b"\xdb\x80\x00\x00\x00")),
        "BAD_FRAME",
    ),
    "bin32 claiming 2^31 bytes": (
        encode_frame(raw_map(b"\xa4body", b"\xc6\x80\x00\x00\x00")),
        "BAD_FRAME",
    ),
    "array of 200,001 entries": (
        encode_frame(
            raw_map(b"\xa4body", b"\xdd" + struct.pack(">I", 200_001) + b"\xc0" * 200_001)
        ),
        "BAD_FRAME",
    ),
    "nesting 17 deep": (encode_frame(pack({**_ENV, "body": nested_map(16)})), "BAD_FRAME"),
    "nesting 5000 deep": (encode_frame(b"\x81\xa4body" + b"\x91" * 5000 + b"\xc0"), "BAD_FRAME"),
    "missing id": (frame_of({"v": 1, "op": "search", "body": {}}), "BAD_FRAME"),
    "id 0": (frame_of({**_ENV, "id": 0, "body": {}}), "BAD_FRAME"),
    "id -1": (frame_of({**_ENV, "id": -1, "body": {}}), "BAD_FRAME"),
    "id 2^32": (frame_of({**_ENV, "id": 2**32, "body": {}}), "BAD_FRAME"),
    "id 2^64-1": (frame_of({**_ENV, "id": 2**64 - 1, "body": {}}), "BAD_FRAME"),
    "id as str": (frame_of({**_ENV, "id": "5", "body": {}}), "BAD_FRAME"),
    "id as bool": (frame_of({**_ENV, "id": True, "body": {}}), "BAD_FRAME"),
    "id as float": (frame_of({**_ENV, "id": 5.0, "body": {}}), "BAD_FRAME"),
    "id as nil": (frame_of({**_ENV, "id": None, "body": {}}), "BAD_FRAME"),
    "id as bin": (frame_of({**_ENV, "id": b"\x05", "body": {}}), "BAD_FRAME"),
    "missing op": (frame_of({"v": 1, "id": 5, "body": {}}), "BAD_FRAME"),
    "op as int": (frame_of({**_ENV, "op": 3, "body": {}}), "BAD_FRAME"),
    "op as bin": (frame_of({**_ENV, "op": b"search", "body": {}}), "BAD_FRAME"),
    "empty op": (frame_of({**_ENV, "op": "", "body": {}}), "BAD_FRAME"),
    "op of 65 chars": (frame_of({**_ENV, "op": "s" * 65, "body": {}}), "BAD_FRAME"),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("frame,code", UNREADABLE.values(), ids=UNREADABLE.keys())
async def test_an_unreadable_frame_gets_one_id_0_error_then_the_connection_closes(
    live: Live, kind: str, frame: bytes, code: str
) -> None:
    reader, writer = await open_raw(*live.target(kind))
    writer.write(frame)
    await expect_error_and_close(reader, code)
    close_writer(writer)
    await assert_serves(live, kind)


@pytest.mark.parametrize("kind", KINDS)
async def test_an_oversized_prefix_is_refused_before_any_body_byte(live: Live, kind: str) -> None:
    reader, writer = await open_raw(*live.target(kind))
    writer.write(struct.pack(">I", 64 << 20))  # 64 MiB announced; not one body byte follows
    # Answered from the prefix alone: well before the frame timeout could fire.
    msg = await read_message(reader, timeout=5)
    assert (msg["id"], error_code(msg)) == (0, "FRAME_TOO_LARGE")
    await assert_closed(reader)
    close_writer(writer)
    await assert_serves(live, kind)


# --- well-framed but wrong: an error with the request's id, and the connection stays open ----

ENVELOPE_ERRORS: dict[str, tuple[dict[str, Any], str, str]] = {
    "unknown v": ({"v": 2}, "UNSUPPORTED_VERSION", "version"),
    "v 0": ({"v": 0}, "UNSUPPORTED_VERSION", "version"),
    "v missing": ({"v": None}, "BAD_REQUEST", "v"),
    "v as str": ({"v": "1"}, "BAD_REQUEST", "v"),
    "v as float": ({"v": 1.0}, "BAD_REQUEST", "v"),
    "body missing": ({"body": None}, "BAD_REQUEST", "body"),
    "body as array": ({"body": ["keyword", "koala"]}, "BAD_REQUEST", "body"),
    "body as bin": ({"body": b"koala"}, "BAD_REQUEST", "body"),
    "token as int": ({"token": 12345}, "BAD_REQUEST", "token"),
    "token as bin": ({"token": b"eyJ"}, "BAD_REQUEST", "token"),
    "unknown envelope field": ({"admin": True}, "BAD_REQUEST", "admin"),
    "unknown op": ({"op": "teleport"}, "UNKNOWN_OP", "teleport"),
    "op of the other daemon": ({"op": "__other__"}, "UNKNOWN_OP", ""),
    "op with a NUL": ({"op": "search\x00"}, "UNKNOWN_OP", ""),
    "no token": ({"token": None}, "AUTH_REQUIRED", ""),
    "garbage token": ({"token": "not.a.jwt"}, "TOKEN_INVALID", ""),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("change,code,named", ENVELOPE_ERRORS.values(), ids=ENVELOPE_ERRORS.keys())
async def test_a_bad_envelope_gets_its_error_with_its_id_and_the_connection_stays_open(
    live: Live, kind: str, change: dict[str, Any], code: str, named: str
) -> None:
    op = "search" if kind == "index" else "list"
    if change.get("op") == "__other__":
        change = {"op": "fetch" if kind == "index" else "search"}
    msg: dict[str, Any] = {"v": 1, "id": 41, "op": op, "body": {"keyword": HEALTH_KEYWORD}}
    msg["token"] = live.token_for(kind)
    msg.update(change)
    msg = {k: v for k, v in msg.items() if v is not None}
    reader, writer = await open_raw(*live.target(kind))
    writer.write(frame_of(msg))
    answer = await read_message(reader)
    assert (answer["id"], error_code(answer)) == (41, code), answer
    assert named in answer["error"]["message"]
    writer.write(good_request(live, kind, 42))
    assert_good_answer(kind, await read_message(reader), 42)
    close_writer(writer)


BODY_ERRORS: dict[str, tuple[str, str, dict[str, Any], str, str]] = {
    # kind, op, body, code, named field
    "register: username with a slash": (
        "index", "register", {"username": "a/b", "password": "x" * 12}, "BAD_REQUEST", "username"
    ),
    "register: password as bin": (
        "index", "register", {"username": "zed", "password": b"x" * 12}, "BAD_REQUEST", "password"
    ),
    "auth: username missing": ("index", "auth", {"password": "x" * 12}, "BAD_REQUEST", "username"),
    "sync: port 0": (
        "index", "sync", {"domain_name": "fz", "port_number": 0, "files": []},
        "BAD_REQUEST", "port_number",
    ),
    "sync: port as str": (
        "index", "sync", {"domain_name": "fz", "port_number": "7001", "files": []},
        "BAD_REQUEST", "port_number",
    ),
    "sync: files as map": (
        "index", "sync", {"domain_name": "fz", "port_number": 7001, "files": {}},
        "BAD_REQUEST", "files",
    ),
    "sync: sha256 of 31 bytes": (
        "index", "sync",
        {"domain_name": "fz", "port_number": 7001,
         "files": [{"filename": "a", "keyword": "k", "size": 1, "sha256": b"x" * 31}]},
        "BAD_REQUEST", "sha256",
    ),
    "sync: sha256 as str": (
        "index", "sync",
        {"domain_name": "fz", "port_number": 7001,
         "files": [{"filename": "a", "keyword": "k", "size": 1, "sha256": "x" * 32}]},
        "BAD_REQUEST", "sha256",
    ),
    "sync: negative size": (
        "index", "sync",
        {"domain_name": "fz", "port_number": 7001,
         "files": [{"filename": "a", "keyword": "k", "size": -1, "sha256": b"x" * 32}]},
        "BAD_REQUEST", "size",
    ),
    "sync: size 2^64": (
        "index", "sync",
        {"domain_name": "fz", "port_number": 7001,
         "files": [{"filename": "a", "keyword": "k", "size": 2**64 - 1, "sha256": b"x" * 32}]},
        "BAD_REQUEST", "size",
    ),
    "sync: domain with a slash": (
        "index", "sync", {"domain_name": "../fz", "port_number": 7001, "files": []},
        "BAD_REQUEST", "domain_name",
    ),
    "ping: domain as int": ("index", "ping", {"domain_name": 7}, "BAD_REQUEST", "domain_name"),
    "search: keyword as int": ("index", "search", {"keyword": 7}, "BAD_REQUEST", "keyword"),
    "list: keyword missing": ("peer", "list", {}, "BAD_REQUEST", "keyword"),
    "fetch: nonce of 31 bytes": (
        "peer", "fetch", {"keyword": "koala", "file_name": HEALTH_FILE, "nonce": b"n" * 31},
        "BAD_REQUEST", "nonce",
    ),
    "fetch: nonce as str": (
        "peer", "fetch", {"keyword": "koala", "file_name": HEALTH_FILE, "nonce": "n" * 32},
        "BAD_REQUEST", "nonce",
    ),
    "fetch: negative offset": (
        "peer", "fetch",
        {"keyword": "koala", "file_name": HEALTH_FILE, "nonce": b"n" * 32, "offset": -1},
        "BAD_REQUEST", "offset",
    ),
    "fetch: offset past the end": (
        "peer", "fetch",
        {"keyword": "koala", "file_name": HEALTH_FILE, "nonce": b"n" * 32, "offset": 10**6},
        "BAD_REQUEST", "offset",
    ),
    "fetch: offset as float": (
        "peer", "fetch",
        {"keyword": "koala", "file_name": HEALTH_FILE, "nonce": b"n" * 32, "offset": 1.0},
        "BAD_REQUEST", "offset",
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind,op,body,code,named", BODY_ERRORS.values(), ids=BODY_ERRORS.keys())
async def test_a_bad_body_gets_the_documented_code_naming_the_field(
    live: Live, kind: str, op: str, body: dict[str, Any], code: str, named: str
) -> None:
    reader, writer = await open_raw(*live.target(kind))
    writer.write(request_frame(9, op, body, live.token_for(kind)))
    answer = await read_message(reader)
    assert (answer["id"], error_code(answer)) == (9, code), answer
    assert named in answer["error"]["message"]
    writer.write(good_request(live, kind, 10))
    assert_good_answer(kind, await read_message(reader), 10)
    close_writer(writer)


# --- split and pipelined writes ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_request_written_one_byte_at_a_time_is_answered(live: Live, kind: str) -> None:
    reader, writer = await open_raw(*live.target(kind))
    frame = good_request(live, kind, 77)
    for i in range(len(frame)):
        writer.write(frame[i : i + 1])  # one TLS record per byte
        await writer.drain()
    assert_good_answer(kind, await read_message(reader), 77)
    close_writer(writer)


@pytest.mark.parametrize("kind", KINDS)
async def test_frames_split_across_writes_at_every_boundary_are_all_answered(
    live: Live, kind: str
) -> None:
    reader, writer = await open_raw(*live.target(kind))
    data = b"".join(good_request(live, kind, rid) for rid in range(1, 4))
    rng = random.Random(7)
    cuts = [*rng.sample(range(1, len(data)), 40), 3, 4, 5]  # inside the prefixes too
    pos = 0
    for cut in sorted(set(cuts)):
        writer.write(data[pos:cut])
        await writer.drain()
        await asyncio.sleep(0)
        pos = cut
    writer.write(data[pos:])
    answers = [await read_message(reader) for _ in range(3)]
    for answer in answers:
        assert_good_answer(kind, answer, answer["id"])
    assert sorted(a["id"] for a in answers) == [1, 2, 3]
    close_writer(writer)


@pytest.mark.parametrize("kind", KINDS)
async def test_500_pipelined_requests_mixed_with_bad_ones_each_get_exactly_one_answer(
    live: Live, kind: str
) -> None:
    op = "search" if kind == "index" else "list"
    token = live.token_for(kind)
    frames = []
    expected: dict[int, str | None] = {}
    for rid in range(1, 501):
        if rid % 7 == 0:
            frames.append(request_frame(rid, "teleport", {}, token))
            expected[rid] = "UNKNOWN_OP"
        elif rid % 11 == 0:
            frames.append(request_frame(rid, op, {"keyword": "../up"}, token))
            expected[rid] = "INVALID_PATH"
        elif rid % 13 == 0:
            frames.append(frame_of({"v": 9, "id": rid, "op": op, "body": {}}))
            expected[rid] = "UNSUPPORTED_VERSION"
        else:
            frames.append(request_frame(rid, op, {"keyword": HEALTH_KEYWORD}, token))
            expected[rid] = None
    reader, writer = await open_raw(*live.target(kind), limit=1 << 20)
    writer.write(b"".join(frames))  # one write: the server reads many frames at once
    seen: dict[int, dict[str, Any]] = {}
    while len(seen) < len(expected):
        msg = await read_message(reader)
        assert msg["id"] not in seen, f"two answers for id {msg['id']}"
        seen[msg["id"]] = msg
    for rid, code in expected.items():
        if code is None:
            assert_good_answer(kind, seen[rid], rid)
        else:
            assert error_code(seen[rid]) == code
    close_writer(writer)
    await assert_serves(live, kind)


@pytest.mark.parametrize("kind", KINDS)
async def test_requests_pipelined_before_an_unreadable_frame_are_answered_first(
    live: Live, kind: str
) -> None:
    reader, writer = await open_raw(*live.target(kind))
    good = b"".join(good_request(live, kind, rid) for rid in range(1, 6))
    writer.write(good + encode_frame(b"\xc1") + good_request(live, kind, 6))
    answers = [await read_message(reader) for _ in range(6)]
    assert sorted(a["id"] for a in answers[:5]) == [1, 2, 3, 4, 5]
    assert (answers[5]["id"], error_code(answers[5])) == (0, "BAD_FRAME")
    await assert_closed(reader)  # and request 6, after the bad frame, is never answered
    close_writer(writer)
    await assert_serves(live, kind)


# --- container and nesting bombs -----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bomb", BOMBS.values(), ids=BOMBS.keys())
async def test_a_bomb_sent_to_a_live_daemon_is_bad_frame_and_it_keeps_serving(
    live: Live, kind: str, bomb: bytes
) -> None:
    reader, writer = await open_raw(*live.target(kind))
    writer.write(encode_frame(bomb))
    await expect_error_and_close(reader, "BAD_FRAME")
    close_writer(writer)
    await assert_serves(live, kind)


def _wide_but_valid(kind: str, token: str) -> bytes:
    """A valid 1 MiB request whose body carries 5 arrays of 200,000 nils beside the keyword."""
    op = "search" if kind == "index" else "list"
    padding = {f"pad{i}": [None] * 200_000 for i in range(5)}
    return request_frame(3, op, {"keyword": HEALTH_KEYWORD, **padding}, token)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_valid_frame_of_a_million_entries_is_answered_and_the_daemon_keeps_serving(
    live: Live, kind: str
) -> None:
    frame = _wide_but_valid(kind, live.token_for(kind))
    assert len(frame) - 4 <= MAX_FRAME
    reader, writer = await open_raw(*live.target(kind))
    writer.write(frame)
    assert_good_answer(kind, await read_message(reader), 3)
    close_writer(writer)
    await assert_serves(live, kind)


async def _round_trip(port: int, ctx: Any, frame: bytes, expect_close: bool) -> float:
    reader, writer = await open_raw(port, "indexd", ctx)
    started = time.perf_counter()
    writer.write(frame)
    msg = await read_message(reader)
    elapsed = time.perf_counter() - started
    if expect_close:
        assert (msg["id"], error_code(msg)) == (0, "BAD_FRAME")
        await assert_closed(reader)
    close_writer(writer)
    return elapsed


async def test_bombs_cost_a_live_indexd_process_no_more_memory_or_time_than_a_plain_frame(
    pki: Any, tmp_path: Path
) -> None:
    async with indexd_process(pki, tmp_path / "index") as daemon:
        ctx = pki.client_ctx()
        # A plain 1 MiB frame: a well-framed request with a large bin, answered BAD_REQUEST.
        plain = frame_of(
            {"v": 1, "id": 1, "op": "register", "body": {"pad": b"x" * (MAX_FRAME - 64)}}
        )
        assert len(plain) - 4 <= MAX_FRAME
        plain_times = [await _round_trip(daemon.port, ctx, plain, False) for _ in range(5)]
        baseline = daemon.memory_kib("VmRSS")
        daemon.reset_peak()
        bomb_times = []
        for bomb in list(BOMBS.values()) * 2:
            bomb_times.append(await _round_trip(daemon.port, ctx, encode_frame(bomb), True))
        growth_mib = (daemon.memory_kib("VmHWM") - baseline) / 1024
        async with asyncio.timeout(STEP):
            from tests.support.adversary import open_conn

            conn = await open_conn(daemon.port, "indexd", ctx)
            with pytest.raises(RequestError) as caught:
                await conn.request("search", {"keyword": "k"})
            assert caught.value.code == "AUTH_REQUIRED"
            await conn.close()
    assert growth_mib <= 48, f"peak memory grew by {growth_mib:.0f} MiB answering bombs"
    # Generous: the cheapest bomb against the cheapest plain frame (load only adds time).
    # Generous, and by medians, so load on the machine does not make it flaky.
    median_bomb = sorted(bomb_times)[len(bomb_times) // 2]
    median_plain = sorted(plain_times)[len(plain_times) // 2]
    assert median_bomb <= 3 * median_plain + 0.02, (bomb_times, plain_times)


# --- fuzz: seeded mutations of valid frames ------------------------------------------------

_INTERESTING_BYTES = bytes.fromhex(
    "00 7f 80 8f 90 9f a0 bf c0 c1 c2 c3 c4 c5 c6 c7 c9 ca cb cf d3 d4 d8 d9 db dc dd de df ff"
)


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(14)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**63, -(2**63), 2**64 - 1])
    if choice == 3:
        return rng.random() * 10 ** rng.randrange(-5, 20)
    if choice == 4:
        return rng.choice(["", ".", "..", "../x", "a/b", "C:\\x", "con", "\x00", "é" * 70])
    if choice == 5:
        return "x" * rng.choice([1, 31, 32, 33, 64, 65, 255, 256, 4096])
    if choice == 6:
        return os.urandom(rng.choice([0, 1, 16, 31, 32, 33, 64, 65, 1000]))
    if choice == 7 and depth < 20:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if choice == 8 and depth < 20:
        return {rng.choice(["a", "keyword", "id", ""]): _random_value(rng, depth + 1)}
    if choice == 9:
        return msgpack.ExtType(rng.randrange(128), os.urandom(rng.randrange(4)))
    if choice == 10:
        return msgpack.Timestamp(rng.randrange(2**32), 0)
    if choice == 11:
        return rng.randrange(-(2**63), 2**64)
    return rng.choice(["koala", HEALTH_FILE, "peer1", "fz", "search", "list"])


class FrameMutator:
    """Valid requests of a daemon, mutated at the map or the byte level, reproducibly."""

    def __init__(self, seed: int, corpus: list[dict[str, Any]]) -> None:
        self.rng = random.Random(seed)
        self.corpus = corpus

    def _mutate_map(self, msg: dict[str, Any]) -> dict[Any, Any]:
        rng = self.rng
        target: dict[Any, Any] = msg
        if rng.random() < 0.6 and isinstance(msg.get("body"), dict) and msg["body"]:
            target = msg["body"]
            if rng.random() < 0.3 and isinstance(target.get("files"), list) and target["files"]:
                target = rng.choice(target["files"])
        action = rng.randrange(5)
        keys = list(target)
        if action == 0 and keys:
            target[rng.choice(keys)] = _random_value(rng)
        elif action == 1 and keys:
            del target[rng.choice(keys)]
        elif action == 2:
            target[rng.choice(["x", "keyword", "offset", "part", "address", "token"])] = (
                _random_value(rng)
            )
        elif action == 3:
            msg["op"] = rng.choice(
                ["search", "sync", "ping", "bye", "auth", "register", "list", "fetch", "nope"]
            )
        else:
            msg["id"] = rng.choice([0, 1, 2**32 - 1, 2**32, -5, 3.5, "1", None, True])
        return msg

    def _mutate_bytes(self, data: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            if not buf:
                buf.append(rng.randrange(256))
            pos = rng.randrange(len(buf))
            action = rng.randrange(7)
            if action == 0:
                buf[pos] ^= 1 << rng.randrange(8)
            elif action == 1:
                buf[pos] = rng.choice(_INTERESTING_BYTES)
            elif action == 2:
                buf[pos:pos] = os.urandom(rng.randrange(1, 9))
            elif action == 3:
                del buf[pos : pos + rng.randrange(1, 9)]
            elif action == 4:
                end = min(len(buf), pos + rng.randrange(1, 32))
                buf[pos:pos] = buf[pos:end] * rng.randrange(1, 4)
            elif action == 5:
                del buf[pos:]
            else:
                buf += os.urandom(rng.randrange(1, 5))
        return bytes(buf) or b"\xc1"

    def body(self) -> bytes:
        msg = copy.deepcopy(self.rng.choice(self.corpus))
        if self.rng.random() < 0.45:
            for _ in range(self.rng.randrange(1, 3)):
                msg = self._mutate_map(msg)
            try:
                return msgpack.packb(msg, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]
            except (TypeError, ValueError, OverflowError):
                return pack({"v": 1, "id": 1, "op": "nope", "body": {}})
        return self._mutate_bytes(pack(msg))


def _expected_id(body: bytes) -> int | None:
    """The id the server must answer with, as the strict core reads it (None: id 0, closed)."""
    try:
        return parse_request(unpack_map(body, MAX_FRAME)).id
    except BadFrame:
        return None
    except RequestError:
        msg = unpack_map(body, MAX_FRAME)
        return int(msg["id"])


def _corpus(live: Live, kind: str) -> list[dict[str, Any]]:
    token = live.token_for(kind, "fuzzer")
    sha = b"s" * 32
    if kind == "index":
        bodies = [
            ("search", {"keyword": HEALTH_KEYWORD}),
            ("sync", {
                "domain_name": "fz", "port_number": 7001,
                "files": [{"filename": "a.txt", "keyword": "k", "size": 3, "sha256": sha}],
            }),
            ("sync", {
                "domain_name": "fz", "port_number": 7001, "files": [],
                "part": {"upload": b"u" * 16, "seq": 0, "final": False},
            }),
            ("ping", {"domain_name": "fz"}),
            ("auth", {"username": "fuzzer", "password": "not the password"}),
            ("register", {"username": "fz-user", "password": "long enough pw"}),
        ]  # fmt: skip
    else:
        bodies = [
            ("list", {"keyword": HEALTH_KEYWORD}),
            ("fetch", {"keyword": HEALTH_KEYWORD, "file_name": HEALTH_FILE, "nonce": b"n" * 32}),
            ("fetch", {
                "keyword": HEALTH_KEYWORD, "file_name": HEALTH_FILE, "nonce": b"n" * 32, "offset": 3
            }),
        ]  # fmt: skip
    return [
        {"v": 1, "id": 1000 + i, "op": op, "body": b, "token": token}
        for i, (op, b) in enumerate(bodies)
    ]


SENTINEL = 0xFFFF0000


async def fuzz(live: Live, kind: str, count: int, seed: int) -> dict[str, int]:
    """Send ``count`` mutated frames; check each gets exactly one documented answer (never
    INTERNAL) or an id-0 BAD_FRAME and a close; count the outcomes."""
    mutator = FrameMutator(seed, _corpus(live, kind))
    outcomes: dict[str, int] = {}
    reader, writer = await open_raw(*live.target(kind))
    sentinel_op = "search" if kind == "index" else "list"
    for n in range(count):
        body = mutator.body()
        if len(body) > MAX_FRAME:
            body = body[:MAX_FRAME]
        rid = _expected_id(body)
        if rid is not None and rid >= SENTINEL:
            continue
        sid = SENTINEL + n % 0xFFFF
        sentinel = request_frame(
            sid, sentinel_op, {"keyword": HEALTH_KEYWORD}, live.token_for(kind)
        )
        writer.write(encode_frame(body) + sentinel)
        answered = sentinel_seen = False
        streaming = False
        while not (answered and sentinel_seen):
            msg = await read_message(reader)
            if msg["id"] == 0:
                code = error_code(msg)
                assert rid is None, f"seed {seed} frame {n}: id 0 {code} for a readable frame"
                assert code in ("BAD_FRAME", "FRAME_TOO_LARGE") and not answered
                await assert_closed(reader)
                close_writer(writer)
                reader, writer = await open_raw(*live.target(kind))
                outcomes[code] = outcomes.get(code, 0) + 1
                break
            if msg["id"] == sid:
                assert msg["ok"] is True, msg
                sentinel_seen = True
                continue
            assert msg["id"] == rid, f"seed {seed} frame {n}: answer {msg} for id {rid}"
            assert not answered, f"seed {seed} frame {n}: a second answer {msg}"
            if msg.get("ok") is False:
                code = error_code(msg)
                assert code != "INTERNAL", f"seed {seed} frame {n}: INTERNAL for {body!r}"
                outcomes[code] = outcomes.get(code, 0) + 1
                answered = True
                streaming = False
            elif msg.get("stream") is True:
                streaming = True
            elif "chunk" in msg:
                assert streaming
            elif "end" in msg:
                assert streaming
                outcomes["stream"] = outcomes.get("stream", 0) + 1
                answered = True
            else:
                assert msg.get("ok") is True
                outcomes["ok"] = outcomes.get("ok", 0) + 1
                answered = True
    close_writer(writer)
    return outcomes


FUZZ_SEED = int(os.environ.get("P2P_FUZZ_SEED", "20240917"))


@pytest.mark.parametrize("kind", KINDS)
async def test_500_mutated_frames_each_get_one_documented_answer_and_never_internal(
    live: Live, kind: str
) -> None:
    async with asyncio.timeout(120):
        outcomes = await fuzz(live, kind, 500, FUZZ_SEED)
    assert sum(outcomes.values()) >= 450, outcomes
    assert outcomes.get("BAD_FRAME", 0) > 0 and len(outcomes) >= 3, outcomes
    await assert_serves(live, kind)
    if kind == "index":
        await assert_index_serves(live)


@pytest.mark.long
@pytest.mark.parametrize("kind", KINDS)
async def test_10000_mutated_frames_each_get_one_documented_answer_and_never_internal(
    live: Live, kind: str
) -> None:
    async with asyncio.timeout(600):
        outcomes = await fuzz(live, kind, 10_000, FUZZ_SEED + 1)
    assert sum(outcomes.values()) >= 9_500, outcomes
    await assert_serves(live, kind)
