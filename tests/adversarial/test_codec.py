"""Adversarial decoding in the sans-I/O codec: bombs cost bounded memory and time, and the
structural pre-check (``netproto.codec.check_structure``) never refuses a valid frame."""

from __future__ import annotations

import contextlib
import hashlib
import random
import struct
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netproto.codec import STRUCTURE_CHECK_ABOVE, check_structure, pack, unpack_map
from netproto.errors import BadFrame
from netproto.operations import SharedFile, split_sync
from tests.support.adversary import BOMBS, MAX_FRAME


def _traced(data: bytes) -> tuple[int, float]:
    """Decode ``data`` (expecting BAD_FRAME); the peak bytes allocated and the seconds taken."""
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(BadFrame):
            unpack_map(data, MAX_FRAME)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, elapsed


@pytest.mark.parametrize("bomb", BOMBS.values(), ids=BOMBS.keys())
def test_a_1_mib_bomb_is_bad_frame_within_bounded_memory_and_time(bomb: bytes) -> None:
    peak, elapsed = _traced(bomb)
    # A valid 1 MiB frame may allocate ~8 bytes per entry it holds (8 MiB); a bomb no more.
    assert peak <= 16 << 20, f"decoding the bomb allocated {peak >> 20} MiB"
    assert elapsed < 2.0, f"decoding the bomb took {elapsed:.2f} s"


@pytest.mark.parametrize("size", [64, 512, STRUCTURE_CHECK_ABOVE, STRUCTURE_CHECK_ABOVE + 1])
@pytest.mark.parametrize("header", [b"\xdc", b"\xde", b"\xdd\x00\x00", b"\xdf\x00\x00"])
def test_a_small_bomb_below_or_at_the_check_size_allocates_under_4_mib(
    size: int, header: bytes
) -> None:
    # Each header claims as many entries as the frame has bytes: the most the codec lets pass.
    claim = header + size.to_bytes(2, "big")
    if header[0] in (0xDE, 0xDF):
        claim += b"\xa1k"
    data = (b"\x81\xa4body" + claim * size)[:size]
    peak, _ = _traced(data)
    assert peak <= 4 << 20, f"a {size}-byte bomb allocated {peak >> 10} KiB"


def test_a_valid_frame_claiming_exactly_as_many_entries_as_it_has_bytes_passes() -> None:
    # One array of nils: 1 byte per entry, the tightest a valid frame can be.
    n = 200_000
    body = b"\x81\xa4body\xdd" + struct.pack(">I", n) + b"\xc0" * n
    check_structure(body)
    assert unpack_map(body, MAX_FRAME) == {"body": [None] * n}


def test_a_1_mib_sync_part_passes_the_structural_check() -> None:
    files = [
        SharedFile(f"file-{i:06d}.bin", f"kw{i % 50}", i * 1000, hashlib.sha256(b"%d" % i).digest())
        for i in range(20_000)
    ]
    part = split_sync("peer1", 7001, files)[0]
    body = pack({"v": 1, "id": 1, "op": "sync", "body": part.to_wire(), "token": "t" * 300})
    assert len(body) > 512 << 10
    check_structure(body)
    assert len(unpack_map(body, MAX_FRAME)["body"]["files"]) == len(part.files)


def _random_value(rng: random.Random, depth: int, budget: list[int]) -> Any:
    """A random plain value; ``budget`` caps the number of values made in all."""
    budget[0] -= 1
    kind = rng.randrange(9 if depth < 18 and budget[0] > 0 else 7)
    if kind == 0:
        return rng.choice([None, True, False, 0, -1, 2**64 - 1, -(2**63), 0.5])
    if kind in (1, 2):
        return "s" * rng.choice([0, 1, 31, 32, 255, 256, 70_000])
    if kind in (3, 4):
        return b"b" * rng.choice([0, 1, 255, 256, 70_000])
    if kind in (5, 6):
        return rng.randrange(-(2**63), 2**64)
    size = rng.choice([0, 1, 3, 15, 16, 40])
    if kind == 7:
        return [_random_value(rng, depth + 1, budget) for _ in range(size)]
    return {f"k{i}": _random_value(rng, depth + 1, budget) for i in range(size)}


def test_the_structural_check_never_refuses_a_frame_the_decoder_accepts() -> None:
    rng = random.Random(1234)
    checked = 0
    for _ in range(400):
        data = pack({"body": _random_value(rng, 1, [60]), "v": 1})
        if len(data) > MAX_FRAME:
            continue
        try:
            unpack_map(data, MAX_FRAME)
        except BadFrame:
            continue  # too deep for the decoder: the check may refuse it too
        check_structure(data)
        checked += 1
    assert checked >= 200


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=2048))
def test_the_structural_check_only_ever_raises_bad_frame(data: bytes) -> None:
    with contextlib.suppress(BadFrame):
        check_structure(data)
