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

Everything here blocks: it runs in the download's worker threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

#: ``sync_file_range`` flag: start writeback of dirty pages in the range, do not wait.
SYNC_FILE_RANGE_WRITE = 2
_READ = 4 << 20

_SyncFileRange = Callable[[int, int, int, int], int]


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
    on disk (with its bytes); the digest then moves over every block that is next in order.
    """

    def __init__(
        self, fd: int, count: int, span: Callable[[int], tuple[int, int]], have: Iterable[int]
    ) -> None:
        self._fd = fd
        self._count = count
        self._span = span
        self._written = set(have)
        self._hash = hashlib.sha256()
        #: The first block not yet hashed.
        self.next = 0
        self._lock = threading.Lock()  # guards _written and the hashing
        self._hashing = threading.Lock()

    def written(self, index: int, data: bytes | None = None) -> None:
        """Block ``index`` is on disk; hash it (and what follows it) if it is next in order."""
        with self._lock:
            self._written.add(index)
        # One thread hashes at a time; a block that arrives meanwhile is picked up by the
        # hashing thread's next look, or by finish().
        if not self._hashing.acquire(blocking=False):
            return
        try:
            self._advance(index, data)
        finally:
            self._hashing.release()

    def _advance(self, index: int, data: bytes | None) -> None:
        while True:
            with self._lock:
                if self.next >= self._count or self.next not in self._written:
                    return
                block = self.next
            if block == index and data is not None:
                self._hash.update(data)
            else:
                self._read_into_hash(block)
            self.next = block + 1

    def _read_into_hash(self, block: int) -> None:
        offset, length = self._span(block)
        end = offset + length
        while offset < end:
            chunk = os.pread(self._fd, min(_READ, end - offset), offset)
            if not chunk:
                raise OSError(f"the partial file ends inside block {block}")
            self._hash.update(chunk)
            offset += len(chunk)

    def finish(self) -> bytes:
        """The whole file's SHA-256, hashing (read back) every block past the prefix."""
        with self._hashing:
            while self.next < self._count:
                self._read_into_hash(self.next)
                self.next += 1
            return self._hash.digest()


__all__ = ["SYNC_FILE_RANGE_WRITE", "PrefixDigest", "start_writeback"]
