"""The transfer (peerd/transfer.py): a fetch stream written into the partial file, and what
each way of ending early means."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from netproto.errors import ConnectionClosed, RemoteProtocolError, Timeout
from netproto.operations import FetchHeader, FetchTrailer
from peerd.errors import DownloadRefused
from peerd.threadjob import DiskWork
from peerd.transfer import read_trailer, receive


class Stream:
    """A fetch stream of ``chunks``, then ``failure`` (if any) instead of the end."""

    def __init__(
        self, size: int, chunks: list[bytes], failure: BaseException | None = None
    ) -> None:
        self.header = FetchHeader("koala", "joey.txt", size, 0)
        self._chunks = chunks
        self._failure = failure

    async def _iterate(self) -> AsyncIterator[bytes | memoryview]:
        for chunk in self._chunks:
            yield chunk
        if self._failure is not None:
            raise self._failure

    def chunks(self, timeout: float | None = None) -> AsyncIterator[bytes | memoryview]:
        return self._iterate()

    def trailer(self) -> FetchTrailer:
        raise RemoteProtocolError("the peer's trailer is malformed: sha256: expected 32 bytes")

    def close(self) -> None:
        pass


@pytest.fixture
def part(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT)
    yield fd
    os.close(fd)


async def test_the_chunks_are_written_hashed_and_reported(part: int, tmp_path: Path) -> None:
    sha256 = hashlib.sha256()
    seen: list[tuple[int, int]] = []
    stream = Stream(10, [b"01234", b"56789"])
    received = await receive(stream, part, 0, sha256, DiskWork(), lambda r, t: seen.append((r, t)))
    assert received == 10
    assert (tmp_path / "part").read_bytes() == b"0123456789"
    assert sha256.digest() == hashlib.sha256(b"0123456789").digest()
    assert seen == [(5, 10), (10, 10)]


async def test_more_bytes_than_announced_fail_the_size_check(part: int) -> None:
    with pytest.raises(DownloadRefused) as info:
        await receive(Stream(6, [b"01234", b"56789"]), part, 0, hashlib.sha256(), DiskWork())
    assert info.value.check == "size" and not info.value.partial_kept


@pytest.mark.parametrize(
    "failure, partial_kept",
    [(ConnectionClosed("reset"), True), (Timeout("no data"), True)],
)
async def test_a_connection_that_drops_or_stalls_keeps_the_partial_file(
    part: int, failure: BaseException, partial_kept: bool
) -> None:
    with pytest.raises(DownloadRefused) as info:
        await receive(Stream(10, [b"01234"], failure), part, 0, hashlib.sha256(), DiskWork())
    assert (info.value.check, info.value.partial_kept) == ("truncated", partial_kept)
    assert "after 5 of 10 bytes" in str(info.value)


def test_a_malformed_trailer_fails_the_trailer_check() -> None:
    with pytest.raises(DownloadRefused) as info:
        read_trailer(Stream(0, []))
    assert info.value.check == "trailer"
    assert isinstance(info.value.__cause__, RemoteProtocolError)
