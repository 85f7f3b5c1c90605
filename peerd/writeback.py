"""The way to disk of a multi-source download: direct writes, or writeback started early.

Blocks of a download are written at their offsets as they arrive and not read again by this
process. :class:`DirectWriter` writes them with ``O_DIRECT``: from one reused, page-aligned
buffer straight to the device, so no page-cache page is allocated, filled and later written
back. That copy into fresh page-cache pages was the largest cost of a download to disk: about
2.9 CPU-seconds per GiB when the kernel's free pages were cold (on a VM whose host takes freed
guest memory back, every first touch faults), 0.2 when warm, against about 0.1 for the copy
into the aligned buffer and the direct write (BENCHMARKS.md, issue 14). Where the file system
refuses ``O_DIRECT`` the writes are ordinary ones, and :func:`start_writeback` asks the kernel
to start writing a range back now (``sync_file_range`` with ``SYNC_FILE_RANGE_WRITE``, through
ctypes: Python has no binding), without waiting for it, so the final ``fsync`` has little left.

Everything here blocks: it runs in the download's worker threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
from collections.abc import Callable, Sequence
from typing import TypeAlias

log = logging.getLogger(__name__)

#: ``sync_file_range`` flag: start writeback of dirty pages in the range, do not wait.
SYNC_FILE_RANGE_WRITE = 2

_SyncFileRange = Callable[[int, int, int, int], int]
#: Bytes as a block arrives: one buffer, or the pieces of several chunks.
Buffer: TypeAlias = bytes | bytearray | memoryview
#: What ``O_DIRECT`` needs aligned (buffer address, file offset, length): the largest logical
#: block size in common use. Blocks of a manifest are whole multiples of it (PROTOCOL.md §4.8),
#: so only the end of a file is written the ordinary way.
DIRECT_ALIGN = 4096
#: The aligned buffer a direct writer copies the pieces into (and writes from), per download.
DIRECT_BUFFER = 4 << 20


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


def pwrite_all(fd: int, pieces: Sequence[Buffer], pos: int, *, max_iov: int = 512) -> None:
    """Write ``pieces`` one after the other from ``pos``, in as few system calls as may be."""
    views = [memoryview(p) for p in pieces]
    while views:
        written = os.pwritev(fd, views[:max_iov], pos)
        if written <= 0:
            raise OSError(errno.EIO, "the partial file took no bytes")
        pos += written
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


def open_direct(dir_fd: int, name: str) -> int | None:
    """A write-only descriptor with ``O_DIRECT`` on ``name`` in ``dir_fd`` (not following a
    symbolic link), or None where the system or the file system has no direct I/O."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return None
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | direct
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise


class DirectWriter:
    """Writes runs of blocks through ``fd``, opened with ``O_DIRECT`` (:func:`open_direct`):
    the pieces are copied into one page-aligned buffer and written from it; what is not a
    whole multiple of :data:`DIRECT_ALIGN` (the end of the file) goes through ``buffered``, an
    ordinary descriptor on the same file. If the file system refuses a direct write after all
    (``EINVAL``), this and every later write go through ``buffered``. One thread at a time."""

    def __init__(self, fd: int, buffered: int, *, size: int = DIRECT_BUFFER) -> None:
        if size <= 0 or size % DIRECT_ALIGN:
            raise ValueError(f"the buffer must be a positive multiple of {DIRECT_ALIGN}")
        self.fd = fd
        self._buffered = buffered
        self._map = mmap.mmap(-1, size)  # anonymous: page-aligned
        self._view = memoryview(self._map)
        #: False once the file system refused a direct write: everything goes buffered.
        self.direct = True

    def write(self, pieces: Sequence[Buffer], offset: int) -> None:
        """Write ``pieces`` one after the other from ``offset``."""
        if offset % DIRECT_ALIGN or not self.direct:
            pwrite_all(self._buffered, pieces, offset)
            return
        view, filled = self._view, 0
        for piece in pieces:
            src = memoryview(piece).cast("B")
            while src:
                n = min(len(src), len(view) - filled)
                view[filled : filled + n] = src[:n]
                filled += n
                src = src[n:]
                if filled == len(view):
                    self._flush(offset, filled)
                    offset += filled
                    filled = 0
        if filled:
            self._flush(offset, filled)

    def _flush(self, offset: int, length: int) -> None:
        """Write the buffer's first ``length`` bytes at ``offset``: the aligned part direct."""
        aligned = length - length % DIRECT_ALIGN
        done = 0
        while self.direct and done < aligned:
            try:
                n = os.pwrite(self.fd, self._view[done:aligned], offset + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                log.debug("direct write refused (%s): ordinary writes from here", exc.strerror)
                self.direct = False
                break
            if n <= 0:
                raise OSError(errno.EIO, "the partial file took no bytes")
            done += n
            if n % DIRECT_ALIGN:
                break  # a short, unaligned write: the rest the ordinary way
        if done < length:
            pwrite_all(self._buffered, [self._view[done:length]], offset + done)

    def release(self) -> None:
        """Free the buffer (the descriptors are the caller's to close)."""
        self._view.release()
        self._map.close()


__all__ = [
    "DIRECT_ALIGN",
    "DIRECT_BUFFER",
    "SYNC_FILE_RANGE_WRITE",
    "DirectWriter",
    "open_direct",
    "pwrite_all",
    "start_writeback",
]
