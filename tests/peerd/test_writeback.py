"""Tests for peerd.writeback: writeback started early, the running digest of the prefix."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from peerd import writeback
from peerd.writeback import PrefixDigest, start_writeback

BLOCK = 1000


def _file(tmp_path: Path, data: bytes) -> int:
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, len(data))
    return fd


def _span(size: int) -> Callable[[int], tuple[int, int]]:
    return lambda i: (i * BLOCK, min(BLOCK, size - i * BLOCK))


def test_prefix_digest_of_blocks_written_out_of_order_is_the_whole_sha256(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(10 * BLOCK + 123)
    count = 11
    fd = _file(tmp_path, data)
    try:
        digest = PrefixDigest(fd, count, _span(len(data)), ())
        for i in [*range(5, count), *range(5)]:
            off, length = _span(len(data))(i)
            os.pwrite(fd, data[off : off + length], off)
            digest.written(i, [data[off : off + length]])
        assert digest.next == count  # block 4 made the prefix reach the end by reading back
        assert digest.finish() == hashlib.sha256(data).digest()
    finally:
        os.close(fd)


def test_finish_reads_back_blocks_already_there_when_resumed(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(4 * BLOCK)
    fd = _file(tmp_path, data)
    try:
        os.pwrite(fd, data, 0)
        digest = PrefixDigest(fd, 4, _span(len(data)), {0, 1, 2, 3})
        assert digest.next == 0
        assert digest.finish() == hashlib.sha256(data).digest()
    finally:
        os.close(fd)


def test_a_block_written_while_another_job_hashes_is_hashed_by_that_job(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(2 * BLOCK)
    fd = _file(tmp_path, data)
    try:
        os.pwrite(fd, data, 0)
        digest = PrefixDigest(fd, 2, _span(len(data)), ())
        digest._running = True  # another job is hashing: this call only records the block
        digest.written(0, [data[:BLOCK]])
        assert digest.next == 0
        digest._running = False
        digest.written(1, [data[BLOCK:]])  # now the prefix moves over both, block 0 from memory
        assert digest.next == 2
        assert digest.finish() == hashlib.sha256(data).digest()
    finally:
        os.close(fd)


def test_hashing_runs_in_the_pool_and_finish_waits_for_it(tmp_path: Path) -> None:
    data = random.Random(4).randbytes(6 * BLOCK)
    fd = _file(tmp_path, data)
    os.pwrite(fd, data, 0)
    try:
        with ThreadPoolExecutor(1) as pool:
            digest = PrefixDigest(fd, 6, _span(len(data)), (), pool=pool, hold=2)
            for i in [3, 4, 5, 0, 1, 2]:  # 3 to 5 are too far ahead to be held: read back
                off, length = _span(len(data))(i)
                digest.written(i, [data[off : off + length]])
            assert digest.finish() == hashlib.sha256(data).digest()
            assert digest.next == 6
    finally:
        os.close(fd)


def test_stop_waits_for_the_hashing_job_and_schedules_no_more(tmp_path: Path) -> None:
    data = random.Random(5).randbytes(2 * BLOCK)
    fd = _file(tmp_path, data)
    os.pwrite(fd, data, 0)
    try:
        with ThreadPoolExecutor(1) as pool:
            digest = PrefixDigest(fd, 2, _span(len(data)), (), pool=pool)
            digest.written(0, [data[:BLOCK]])
            digest.stop()
            hashed = digest.next
            digest.written(1, [data[BLOCK:]])
            assert digest.next == hashed == 1
    finally:
        os.close(fd)


def test_finish_refuses_a_partial_file_shorter_than_its_blocks(tmp_path: Path) -> None:
    fd = _file(tmp_path, b"")
    try:
        digest = PrefixDigest(fd, 1, lambda i: (0, BLOCK), ())
        with pytest.raises(OSError, match="ends inside block 0"):
            digest.finish()
    finally:
        os.close(fd)


def test_start_writeback_starts_it_on_a_real_file(tmp_path: Path) -> None:
    fd = _file(tmp_path, b"")
    try:
        os.pwrite(fd, b"x" * 8192, 0)
        assert start_writeback(fd, 0, 8192) is (writeback._sync_file_range is not None)
        assert start_writeback(fd, 0, 0) is False
    finally:
        os.close(fd)


def test_start_writeback_is_false_on_a_bad_descriptor_or_without_libc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if writeback._sync_file_range is not None:
        assert start_writeback(-1, 0, 10) is False
    monkeypatch.setattr(writeback, "_sync_file_range", None)
    assert start_writeback(0, 0, 10) is False


def test_sync_file_range_is_none_where_libc_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(*args: object, **kwargs: object) -> object:
        raise OSError("no libc")

    monkeypatch.setattr("ctypes.CDLL", no_libc)
    assert writeback._load_sync_file_range() is None


def test_a_failed_hashing_job_makes_finish_raise_its_error(tmp_path: Path) -> None:
    fd = _file(tmp_path, b"")  # shorter than its one block: reading it back fails
    try:
        with ThreadPoolExecutor(1) as pool:
            digest = PrefixDigest(fd, 1, lambda i: (0, BLOCK), (), pool=pool, hold=0)
            digest.written(0, [b"x" * BLOCK])  # not held (hold=0): the job reads it back
            with pytest.raises(OSError, match="ends inside block 0"):
                digest.finish()
    finally:
        os.close(fd)
