"""Tests for peerd.writeback: direct writes, writeback started early."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from peerd import writeback
from peerd.writeback import (
    DIRECT_ALIGN,
    DIRECT_BUFFER,
    DirectWriter,
    open_direct,
    pwrite_all,
    start_writeback,
)


def _file(tmp_path: Path, data: bytes) -> int:
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, len(data))
    return fd


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


def test_a_block_in_more_pieces_than_one_system_call_takes_is_written_whole(
    tmp_path: Path,
) -> None:
    pieces = [bytes([i % 251]) * 7 for i in range(3000)]  # over IOV_MAX (1024)
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        pwrite_all(fd, pieces, 5)
        assert os.pread(fd, 30000, 5) == b"".join(pieces)
    finally:
        os.close(fd)


def _direct_supported(path: Path) -> bool:
    """Whether this file system takes O_DIRECT, asked of the system itself."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    except OSError as exc:
        assert exc.errno in (errno.EINVAL, errno.EOPNOTSUPP)
        return False
    os.close(fd)
    return True


def _direct_pair(tmp_path: Path, size: int) -> tuple[int, int]:
    """The partial file's ordinary descriptor and one for direct writes (O_DIRECT where the
    file system has it, else a second ordinary one: the writer's logic is the same)."""
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, size)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        direct = open_direct(dir_fd, "part")
    finally:
        os.close(dir_fd)
    if direct is None:
        direct = os.open(tmp_path / "part", os.O_WRONLY)
    return fd, direct


@contextlib.contextmanager
def _opened_writer(
    tmp_path: Path, file_size: int, *, size: int = DIRECT_BUFFER
) -> Iterator[tuple[int, int, DirectWriter]]:
    """The partial file's two descriptors (:func:`_direct_pair`) and a writer on them, all
    released after the ``with``."""
    fd, direct = _direct_pair(tmp_path, file_size)
    writer = DirectWriter(direct, fd, size=size)
    try:
        yield fd, direct, writer
    finally:
        writer.release()
        os.close(fd)
        os.close(direct)


def test_open_direct_opens_with_o_direct_where_the_file_system_has_it(tmp_path: Path) -> None:
    (tmp_path / "part").write_bytes(b"")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = open_direct(dir_fd, "part")
        if _direct_supported(tmp_path / "part"):
            assert fd is not None
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
            os.close(fd)
        else:
            assert fd is None
    finally:
        os.close(dir_fd)


def test_open_direct_does_not_follow_a_symbolic_link(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"")
    (tmp_path / "part").symlink_to(tmp_path / "target")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as raised:
            open_direct(dir_fd, "part")
        assert raised.value.errno == errno.ELOOP
    finally:
        os.close(dir_fd)


def test_direct_writer_writes_unaligned_pieces_and_the_files_unaligned_end(
    tmp_path: Path,
) -> None:
    rng = random.Random(3)
    # Pieces of odd sizes (addresses and lengths unaligned), more than the buffer holds, and
    # an end that is not a multiple of DIRECT_ALIGN.
    pieces = [rng.randbytes(rng.randrange(1, 5000)) for _ in range(40)]
    data = b"".join(pieces)
    assert len(data) % DIRECT_ALIGN and len(data) > 3 * DIRECT_ALIGN
    offset = 2 * DIRECT_ALIGN
    size = 2 * DIRECT_ALIGN
    with _opened_writer(tmp_path, offset + len(data), size=size) as (fd, _, writer):
        writer.write([memoryview(p)[0:] for p in pieces], offset)
        writer.drain()
        assert writer.direct
        assert os.pread(fd, len(data) + 1, offset) == data
        assert os.pread(fd, offset, 0) == bytes(offset)  # nothing before the run


def test_direct_writer_writes_a_run_at_an_unaligned_offset_the_ordinary_way(
    tmp_path: Path,
) -> None:
    data = random.Random(4).randbytes(3 * DIRECT_ALIGN)
    with _opened_writer(tmp_path, 100 + len(data)) as (fd, _, writer):
        writer.write([data], 100)
        assert os.pread(fd, len(data), 100) == data


def test_direct_writer_goes_on_the_ordinary_way_once_a_direct_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random.Random(5).randbytes(4 * DIRECT_ALIGN)
    with _opened_writer(tmp_path, len(data)) as (fd, direct, writer):
        refused: list[int] = []

        def pwrite(target: int, buf: memoryview, pos: int) -> int:
            assert target == direct  # the ordinary writes go through pwritev
            refused.append(pos)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

        monkeypatch.setattr(os, "pwrite", pwrite)
        writer.write([data[: 2 * DIRECT_ALIGN]], 0)
        writer.drain()  # the refusal came back from the writer's thread
        writer.write([data[2 * DIRECT_ALIGN :]], 2 * DIRECT_ALIGN)
        assert refused == [0]  # asked once; the second run went the ordinary way at once
        assert not writer.direct
        assert os.pread(fd, len(data), 0) == data


def test_direct_writer_buffer_must_be_whole_aligned_blocks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple"):
        DirectWriter(-1, -1, size=DIRECT_ALIGN + 1)


def test_a_failed_direct_write_is_raised_by_drain_and_by_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random.Random(6).randbytes(2 * DIRECT_ALIGN)
    with _opened_writer(tmp_path, 4 * len(data), size=len(data)) as (_, _, writer):

        def pwrite(target: int, buf: memoryview, pos: int) -> int:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "pwrite", pwrite)
        writer.write([data], 0)  # handed over: the error comes back later
        with pytest.raises(OSError) as raised:
            writer.drain()
        assert raised.value.errno == errno.EIO
        writer.write([data], len(data))  # the other buffer
        with pytest.raises(OSError):
            writer.write([data], 2 * len(data))  # needs the first buffer: its write failed


def test_drain_waits_for_every_write_handed_over(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(8 * DIRECT_ALIGN)
    # Eight hand-overs, two buffers.
    with _opened_writer(tmp_path, len(data), size=DIRECT_ALIGN) as (fd, _, writer):
        writer.write([data], 0)
        writer.drain()
        assert os.pread(fd, len(data), 0) == data


def _count_ordinary(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Where and how much the writer writes the ordinary way (through ``pwrite_all``)."""
    writes: list[tuple[int, int]] = []
    real = writeback.pwrite_all

    def counted(fd: int, pieces: Sequence[memoryview | bytes], pos: int, **kwargs: int) -> None:
        writes.append((pos, sum(len(p) for p in pieces)))
        real(fd, pieces, pos, **kwargs)

    monkeypatch.setattr(writeback, "pwrite_all", counted)
    return writes


def test_a_direct_write_refused_midway_leaves_the_rest_and_later_runs_to_ordinary_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random.Random(8).randbytes(4 * DIRECT_ALIGN)
    later = random.Random(9).randbytes(DIRECT_ALIGN + 99)
    with _opened_writer(tmp_path, len(data) + len(later), size=len(data)) as (fd, direct, writer):
        half = len(data) // 2 // DIRECT_ALIGN * DIRECT_ALIGN
        real_pwrite = os.pwrite
        asked: list[tuple[int, int]] = []

        def pwrite(target: int, buf: memoryview, pos: int) -> int:
            assert target == direct
            asked.append((pos, len(buf)))
            if len(asked) > 1:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            return real_pwrite(target, buf[:half], pos)  # a short write, on the device

        monkeypatch.setattr(os, "pwrite", pwrite)
        ordinary = _count_ordinary(monkeypatch)
        writer.write([data], 0)
        writer.drain()
        writer.write([later], len(data))
        writer.drain()
        assert asked == [(0, len(data)), (half, len(data) - half)]
        assert not writer.direct
        assert ordinary == [(half, len(data) - half), (len(data), len(later))]
        assert os.pread(fd, len(data) + len(later) + 1, 0) == data + later


def test_a_short_unaligned_direct_write_leaves_the_rest_of_its_buffer_to_an_ordinary_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random.Random(10).randbytes(4 * DIRECT_ALIGN)
    more = random.Random(11).randbytes(2 * DIRECT_ALIGN)
    with _opened_writer(tmp_path, len(data) + len(more), size=len(data)) as (fd, direct, writer):
        short = DIRECT_ALIGN + 100
        real_pwrite = os.pwrite
        asked: list[tuple[int, int]] = []

        def pwrite(target: int, buf: memoryview, pos: int) -> int:
            assert target == direct
            asked.append((pos, len(buf)))
            if len(asked) == 1:
                # Stands for a device that took part of it; through the ordinary descriptor, as
                # O_DIRECT refuses a write of an unaligned length.
                return real_pwrite(fd, buf[:short], pos)
            return real_pwrite(target, buf, pos)

        monkeypatch.setattr(os, "pwrite", pwrite)
        ordinary = _count_ordinary(monkeypatch)
        writer.write([data], 0)
        writer.drain()
        assert ordinary == [(short, len(data) - short)]
        writer.write([more], len(data))  # not a refusal: the next run goes direct again
        writer.drain()
        assert writer.direct
        assert asked == [(0, len(data)), (len(data), len(more))]
        assert ordinary == [(short, len(data) - short)]
        assert os.pread(fd, len(data) + len(more) + 1, 0) == data + more
