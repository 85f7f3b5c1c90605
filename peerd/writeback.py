"""The way to disk of a multi-source download: writeback started early, a running digest.

Blocks of a download are written at their offsets as they arrive; left alone, the kernel
writes them back late and the final ``fsync`` waits for most of the file. :func:`start_writeback`
asks the kernel to start writing a range back now (``sync_file_range`` with
``SYNC_FILE_RANGE_WRITE``, through ctypes: Python has no binding), without waiting for it and
without dropping the pages (the running digest may still read them back).

:class:`PrefixDigest` computes the whole file's SHA-256 while the blocks arrive: over the
blocks written so far in file order from the first (the in-order prefix), hashing a block from
memory when it is the next one, reading back from the page cache the written blocks it then
reaches. What is left at the end is only the part past the prefix.

Everything here blocks: it runs in the download's worker threads (the running digest in one
job at a time of its own, so the block writes never wait for it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import mmap
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, wait
from typing import TypeAlias

log = logging.getLogger(__name__)

#: ``sync_file_range`` flag: start writeback of dirty pages in the range, do not wait.
SYNC_FILE_RANGE_WRITE = 2
_READ = 4 << 20

_SyncFileRange = Callable[[int, int, int, int], int]
#: Bytes as a block arrives: one buffer, or the pieces of several chunks.
Buffer: TypeAlias = bytes | bytearray | memoryview


def _load_sync_file_range() -> _SyncFileRange | None:
    """libc's ``sync_file_range``, or None where there is none (not Linux, no libc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Start writing ``length`` bytes at ``offset`` of ``fd`` back to disk, without waiting;
    False where the system cannot (the final ``fsync`` then does it all)."""
    if _sync_file_range is None or length <= 0:
        return False
    if _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) != 0:
        log.debug("sync_file_range: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


class PrefixDigest:
    """SHA-256 over a file's blocks written so far, from the first, in file order (thread-safe).

    ``span(i)`` gives block ``i``'s (offset, length). :meth:`written` is called once a block is
    on disk, with its bytes (the pieces they arrived in); the digest then moves over every
    block that is next in order, hashing from memory a block written no further than ``hold``
    blocks past the prefix, reading back (through a read-only map of the file, no copy) one
    written further ahead. With a ``pool`` the hashing runs there, one job at a time, so the
    caller never waits for it; without one it runs in the caller's thread.
    """

    def __init__(
        self,
        fd: int,
        count: int,
        span: Callable[[int], tuple[int, int]],
        have: Iterable[int],
        *,
        pool: Executor | None = None,
        hold: int = 32,
    ) -> None:
        self._fd = fd
        self._count = count
        self._span = span
        self._pool = pool
        self._hold = hold
        self._written = set(have)
        self._held: dict[int, Sequence[Buffer]] = {}
        self._hash = hashlib.sha256()
        self._map: mmap.mmap | None = None
        #: The first block not yet hashed.
        self.next = 0
        self._lock = threading.Lock()  # guards everything above but the hash and the map
        self._running = False  # a hashing job is on (at most one: the order matters)
        self._job: Future[None] | None = None
        self._stopped = False
        self._failed: BaseException | None = None

    def written(self, index: int, pieces: Sequence[Buffer] | None = None) -> None:
        """Block ``index`` is on disk; hash it (and what follows it) once it is next in order."""
        with self._lock:
            self._written.add(index)
            if pieces is not None and self.next <= index < self.next + self._hold:
                self._held[index] = pieces
            if self._running or self._stopped or self.next not in self._written:
                return
            self._running = True
        if self._pool is None:
            self._advance()
        else:
            self._job = self._pool.submit(self._advance)

    def _advance(self) -> None:
        """Hash every written block next in order (the one job that may: ``_running``)."""
        while True:
            with self._lock:
                block = self.next
                if self._stopped or block >= self._count or block not in self._written:
                    self._running = False
                    return
                pieces = self._held.pop(block, None)
            try:
                if pieces is not None:
                    for piece in pieces:
                        self._hash.update(piece)
                else:
                    self._read_into_hash(block)
            except BaseException as exc:
                # The digest may hold part of the block: it cannot go on; finish() says why.
                with self._lock:
                    self._failed = exc
                    self._stopped = True
                    self._running = False
                raise
            with self._lock:
                self.next = block + 1

    def _read_into_hash(self, block: int) -> None:
        offset, length = self._span(block)
        end = offset + length
        if self._map is None:
            size = os.fstat(self._fd).st_size
            if size < end:
                raise OSError(f"the partial file ends inside block {block}")
            self._map = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ)
            self._map.madvise(mmap.MADV_SEQUENTIAL)
        if len(self._map) < end:
            raise OSError(f"the partial file ends inside block {block}")
        view = memoryview(self._map)
        try:
            for start in range(offset, end, _READ):
                self._hash.update(view[start : min(start + _READ, end)])
        finally:
            view.release()

    def _wait(self) -> None:
        """Stop scheduling hashing jobs and wait for the one running, if any."""
        with self._lock:
            self._stopped = True
            job = self._job
        if job is not None:
            wait([job])

    def finish(self) -> bytes:
        """The whole file's SHA-256, hashing every block past the prefix (from memory if it is
        held, else read back)."""
        self._wait()
        if self._failed is not None:
            self._unmap()
            raise self._failed
        try:
            while self.next < self._count:
                with self._lock:
                    pieces = self._held.pop(self.next, None)
                if pieces is not None:
                    for piece in pieces:
                        self._hash.update(piece)
                else:
                    self._read_into_hash(self.next)
                self.next += 1
            return self._hash.digest()
        finally:
            self._held.clear()
            self._unmap()

    def stop(self) -> None:
        """Stop hashing (the download ends unfinished): wait for the running job, unmap."""
        self._wait()
        with self._lock:
            self._held.clear()
        self._unmap()

    def _unmap(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


__all__ = ["SYNC_FILE_RANGE_WRITE", "PrefixDigest", "start_writeback"]
