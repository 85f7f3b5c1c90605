"""The way to disk of a multi-source download: direct writes, or writeback started early.

Blocks of a download are written at their offsets as they arrive and not read again by this
process. :class:`DirectWriter` writes them with ``O_DIRECT``: from reused, page-aligned
buffers straight to the device, so no page-cache page is allocated, filled and later written
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

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from netproto.cbuffer import Buffer, c_buffer

log = logging.getLogger(__name__)

#: ``sync_file_range`` flag: start writeback of dirty pages in the range, do not wait.
SYNC_FILE_RANGE_WRITE = 2

_SyncFileRange = Callable[[int, int, int, int], int]
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
    """Writes runs of blocks through ``fd``, opened with ``O_DIRECT`` (:func:`open_direct`).

    The pieces are copied into one of two page-aligned buffers, and the full buffer is written
    by a thread of this writer's own while the caller goes on (hashing the next blocks, filling
    the other buffer): a direct write waits for the device, and the caller should not. What is
    not a whole multiple of :data:`DIRECT_ALIGN` (the end of the file) goes through
    ``buffered``, an ordinary descriptor on the same file. If the file system refuses a direct
    write after all (``EINVAL``), that and every later write go through ``buffered``. A
    write's error is raised by a later :meth:`write` or by :meth:`drain`, which waits for
    every write handed over: call it before an ``fsync`` that must cover them. :meth:`write`
    is called from one thread at a time; :meth:`drain` may be called from any.
    """

    def __init__(self, fd: int, buffered: int, *, size: int = DIRECT_BUFFER) -> None:
        if size <= 0 or size % DIRECT_ALIGN:
            raise ValueError(f"the buffer must be a positive multiple of {DIRECT_ALIGN}")
        self.fd = fd
        self._buffered = buffered
        self._maps = [mmap.mmap(-1, size) for _ in range(2)]  # anonymous: page-aligned
        self._views = [memoryview(m) for m in self._maps]
        # Their addresses (the c_char's export of a map ends with the temporary itself).
        self._bases = [ctypes.addressof(ctypes.c_char.from_buffer(m)) for m in self._maps]
        self._writing: list[Future[None] | None] = [None, None]
        self._current = 0
        self._lock = threading.Lock()  # guards _writing and _current against drain()
        self._io = ThreadPoolExecutor(1, thread_name_prefix="peerd-direct")
        #: False once the file system refused a direct write: everything goes buffered.
        self.direct = True

    def write(self, pieces: Sequence[Buffer], offset: int) -> None:
        """Write ``pieces`` one after the other from ``offset`` (handed over: see
        :meth:`drain`)."""
        if offset % DIRECT_ALIGN or not self.direct:
            pwrite_all(self._buffered, pieces, offset)
            return
        base: int | None = None  # the buffer being filled (taken when a byte goes in)
        filled, room = 0, len(self._views[0])
        for piece in pieces:
            with c_buffer(piece) as (source, length):
                done = 0
                while done < length:
                    if base is None:
                        base = self._bases[self._take()]
                    n = min(length - done, room - filled)
                    # The copy through ctypes lets go of the GIL (slice assignment would not):
                    # the event loop goes on decrypting meanwhile.
                    ctypes.memmove(base + filled, source + done, n)
                    filled += n
                    done += n
                    if filled == room:
                        self._hand_over(offset, filled)
                        base = None
                        offset += filled
                        filled = 0
        if filled:
            self._hand_over(offset, filled)

    def _take(self) -> int:
        """The buffer to fill next, once its last write is done (raising that write's error)."""
        index = self._current
        writing = self._writing[index]
        if writing is not None:
            writing.result()
            with self._lock:
                self._writing[index] = None
        return index

    def _hand_over(self, offset: int, length: int) -> None:
        with self._lock:
            index = self._current
            self._writing[index] = self._io.submit(self._flush, index, offset, length)
            self._current = 1 - index

    def drain(self) -> None:
        """Wait for every write handed over; raise the first one's error, if any failed."""
        with self._lock:
            writing = [w for w in self._writing if w is not None]
        for each in writing:
            each.result()

    def _flush(self, index: int, offset: int, length: int) -> None:
        """Write buffer ``index``'s first ``length`` bytes at ``offset`` (in the writer's own
        thread): the aligned part direct, the rest the ordinary way."""
        view = self._views[index]
        aligned = length - length % DIRECT_ALIGN
        done = 0
        while self.direct and done < aligned:
            try:
                n = os.pwrite(self.fd, view[done:aligned], offset + done)
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
            pwrite_all(self._buffered, [view[done:length]], offset + done)

    def release(self) -> None:
        """Wait for the writes handed over (their errors are dropped: the download ends
        anyway) and free the buffers; the descriptors are the caller's to close."""
        self._io.shutdown(wait=True)
        self._writing = [None, None]
        self._bases = []
        for view, mapped in zip(self._views, self._maps, strict=True):
            view.release()
            # A failed write's traceback may still hold a slice of it: then the map is freed
            # with the last reference instead.
            with contextlib.suppress(BufferError):
                mapped.close()


__all__ = [
    "DIRECT_ALIGN",
    "DIRECT_BUFFER",
    "SYNC_FILE_RANGE_WRITE",
    "DirectWriter",
    "open_direct",
    "pwrite_all",
    "start_writeback",
]
