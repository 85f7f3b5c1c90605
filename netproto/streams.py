"""Asyncio stream plumbing shared by server and client.

This is the one place where ``OSError``, ``ssl.SSLError`` and ``IncompleteReadError`` become
the project's :class:`ConnectionClosed`, and where outgoing frames are coalesced: frames
written in one event-loop turn leave as one TLS write instead of one record each.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from types import TracebackType

from netproto.errors import ConnectionClosed

_CLOSED = (OSError, ssl.SSLError, asyncio.IncompleteReadError, EOFError)
_LARGE = 64 << 10
_LOW_GAP = 512 << 10  # two fetch chunks between the high- and low-water marks
#: Batched frames leave once this many bytes are waiting, without waiting for the end of the
#: turn: a pipelining peer then starts on the first answers while the rest are being made,
#: instead of both sides taking turns on whole batches (BENCHMARKS.md). About one TLS record.
_BATCH = 16 << 10


class map_exceptions:
    """Turn transport failures into :class:`ConnectionClosed` (sync or async ``with``)."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and isinstance(exc, _CLOSED) and not isinstance(exc, TimeoutError):
            raise ConnectionClosed(str(exc) or type(exc).__name__) from exc

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(typ, exc, tb)


class FrameWriter:
    """Writes encoded frames to a stream, batching small ones per event-loop turn."""

    def __init__(self, writer: asyncio.StreamWriter, high_water: int) -> None:
        self._writer = writer
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._scheduled = False
        self._held = False
        self._high_water = high_water
        self._closed = False
        self._close_started = False
        self.apply_limits()

    def apply_limits(self) -> None:
        """Set the high-water mark on the current transport (again after a TLS upgrade).

        The low-water mark sits just under it, so :meth:`wait_writable` returns as soon as the
        reader takes some data: a slow but steady reader is never mistaken for a stalled one
        (PROTOCOL.md §6 cuts off output that *stays* above the mark).
        """
        high = self._high_water
        self._writer.transport.set_write_buffer_limits(
            high=high, low=max(high // 2, high - _LOW_GAP)
        )

    @property
    def closed(self) -> bool:
        """True once the writer was closed or aborted."""
        return self._closed or self._writer.transport.is_closing()

    def write(self, frame: bytes) -> None:
        """Queue one encoded frame; it is sent at the end of this event-loop turn."""
        if self.closed:
            return
        if self._held:
            self._pending.append(frame)
            self._pending_bytes += len(frame)
            if self._pending_bytes >= _BATCH:
                self._send_pending()
            return
        if len(frame) >= _LARGE:
            self._flush_now()
            self._writer.write(frame)
            return
        if not self._scheduled:
            # The first frame of a turn leaves at once (one request in flight pays no extra
            # loop turn); later frames of the same turn are batched into one TLS write.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_now)
            self._writer.write(frame)
            return
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        if self._pending_bytes >= _BATCH:
            self._send_pending()

    def write_parts(self, head: bytes, payload: bytes | memoryview) -> None:
        """Send one large frame given in two parts (e.g. a chunk's head and its payload),
        without joining them: TLS encrypts the payload from where it lies."""
        if self.closed:
            return
        self._flush_now()
        self._writer.writelines((head, payload))

    def hold(self) -> None:
        """Keep the frames written from now on until :meth:`release` (e.g. the answers to one
        read's requests): they then leave as one TLS write, with no callback to flush them."""
        self._held = True

    def release(self) -> None:
        """Send what was held."""
        self._held = False
        self._flush_now()

    def _flush_now(self) -> None:
        self._scheduled = False
        if self._pending:
            self._send_pending()

    def _send_pending(self) -> None:
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if not self.closed:
            self._writer.write(data)

    def buffered(self) -> int:
        """Bytes written but not yet handed to the kernel."""
        return self._pending_bytes + self._writer.transport.get_write_buffer_size()

    def over_high_water(self) -> bool:
        """True while more than the high-water mark waits to be sent (cheap: no flush)."""
        return (
            self._pending_bytes + self._writer.transport.get_write_buffer_size() > self._high_water
        )

    async def wait_writable(self, timeout: float) -> bool:
        """Wait until the output buffer is under the high-water mark; False if it stays above
        it for ``timeout`` seconds or the connection is gone (a slow or vanished reader)."""
        self._flush_now()
        if self.closed:
            return False
        if self._writer.transport.get_write_buffer_size() <= self._high_water:
            return True
        try:
            async with asyncio.timeout(timeout), map_exceptions():
                await self._writer.drain()
        except (TimeoutError, ConnectionClosed):
            return False
        return True

    async def flush(self, timeout: float) -> None:
        """Send everything queued, waiting at most ``timeout`` for the peer to take it."""
        self._flush_now()
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            async with asyncio.timeout(timeout), map_exceptions():
                await self._writer.drain()

    async def close(self, timeout: float) -> None:
        """Flush, close gracefully within ``timeout``, else abort."""
        await self.flush(timeout)
        self._closed = True
        if not self._close_started:
            # Once only: a second close() makes asyncio's TLS transport (3.11) drop its
            # protocol, after which abort() no longer ends the connection at all.
            self._close_started = True
            self._writer.close()
        try:
            async with asyncio.timeout(timeout), map_exceptions():
                # Shielded: wait_closed() awaits the protocol's one close future, which a
                # timeout would cancel for every other task waiting on it too.
                await asyncio.shield(self._writer.wait_closed())
        except (TimeoutError, ConnectionClosed):
            self._writer.transport.abort()

    def abort(self) -> None:
        """Drop the connection now, without a TLS close_notify."""
        self._closed = True
        self._pending.clear()
        self._pending_bytes = 0
        self._writer.transport.abort()
