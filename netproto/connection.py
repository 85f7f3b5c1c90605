"""The one asyncio connection class of server and client: an :class:`asyncio.BufferedProtocol`
whose transport decrypts into the sans-I/O core's buffers. Frames written in one event-loop
turn leave as one TLS write; flow control comes from ``pause_writing``/``resume_writing``;
deadlines are one ``loop.call_at`` timer the connection owns. The one place where ``OSError``
and ``ssl.SSLError`` become :class:`ConnectionClosed` (or :class:`Timeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from cryptography import x509

from netproto.errors import ConnectionClosed, P2PError, Timeout
from netproto.protocol import ClientProtocol, ServerProtocol

#: Frames this long or longer are written at once rather than batched.
_LARGE = 64 << 10
#: Batched frames leave once this many bytes wait, without waiting for the end of the turn:
#: a pipelining peer then starts on the first answers while the rest are made (BENCHMARKS.md).
_BATCH = 16 << 10
#: The low-water mark sits this far under the high one, so a slow but steady reader is never
#: taken for a stalled one (PROTOCOL.md §6 cuts off output that *stays* above the mark).
_LOW_GAP = 512 << 10


@contextlib.contextmanager
def transport_errors(what: str) -> Iterator[None]:
    """Transport failures in the block as :class:`ConnectionClosed` or :class:`Timeout`."""
    try:
        yield
    except TimeoutError as exc:
        raise Timeout(f"{what}: timed out") from exc
    except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
        raise ConnectionClosed(f"{what}: {exc or type(exc).__name__}") from exc


class FramedConnection(asyncio.BufferedProtocol):
    """One connection: receiving into the core, coalesced writing, flow control, one timer."""

    def __init__(self, core: ServerProtocol | ClientProtocol, high_water: int) -> None:
        self.core = core
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer_cert: x509.Certificate | None = None
        self._high_water = high_water
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._batching = False
        self._writable: asyncio.Future[None] | None = None  # while over the high-water mark
        self.paused_since: float | None = None
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.failure: P2PError | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def received(self, events: list[Any]) -> None:
        """Handle what the core completed from one read."""
        raise NotImplementedError

    def deadline(self, now: float) -> float | None:
        """Act on deadlines that passed by ``now``; return the next one (None: no timer)."""
        return None

    def closing(self, failure: P2PError) -> None:
        """The connection is gone (``failure`` says why): fail whatever still waits on it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Take a (TLS) transport: set its write limits and read the peer's certificate."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        high = self._high_water
        transport.set_write_buffer_limits(high=high, low=max(high // 2, high - _LOW_GAP))
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.peer_cert = x509.load_der_x509_certificate(der) if der else None

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the transport decrypts the next bytes into: the core's buffer."""
        return self.core.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        """Feed the core; everything written in response leaves together at the end."""
        self._batching = True
        try:
            self.received(self.core.buffer_updated(nbytes))
        finally:
            self._batching = False
            self.flush()

    def pause_writing(self) -> None:
        """The transport's buffer went over the high-water mark."""
        self.paused_since = self.loop.time()
        self._writable = self.loop.create_future()
        self.schedule(self.paused_since)  # the subclass's deadline() sets the cut-off time

    def resume_writing(self) -> None:
        """The transport's buffer went under the low-water mark."""
        self.paused_since = None
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is gone: fail every waiter, once."""
        reason = ConnectionClosed(str(exc) or type(exc).__name__ if exc else "connection closed")
        reason.__cause__ = exc
        self._fail(self.failure or reason)
        if not self.lost.done():
            self.lost.set_result(None)

    def _fail(self, failure: P2PError) -> None:
        if self.failure is None:
            self.failure = failure
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = float("inf")
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(failure)
            waiter.exception()  # retrieved: nobody need be waiting on it
        self.closing(failure)

    @property
    def is_closing(self) -> bool:
        """True once the connection failed or is closing."""
        return self.failure is not None or self.transport is None or self.transport.is_closing()

    def write(self, frame: bytes) -> None:
        """Send one encoded frame; frames written in the same turn leave as one write."""
        if self.is_closing:
            return
        if self._batching or self._flush_handle is not None or len(frame) >= _LARGE:
            self._out.append(frame)
            self._out_bytes += len(frame)
            if self._out_bytes >= _BATCH:
                self.flush()
            return
        # The first frame of a turn leaves at once (one request in flight pays no extra loop
        # turn); later frames of the same turn are batched behind it.
        self._flush_handle = self.loop.call_soon(self.flush)
        assert self.transport is not None
        self.transport.write(frame)

    def write_parts(self, head: bytes, payload: bytes | memoryview) -> None:
        """Send a frame in two parts (a chunk's head, its payload) without joining them."""
        self.flush()
        if not self.is_closing:
            assert self.transport is not None
            self.transport.writelines((head, payload))

    def flush(self) -> None:
        """Hand everything batched to the transport now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._out_bytes = 0
        if not self.is_closing:
            assert self.transport is not None
            self.transport.write(data)

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self._out_bytes + (self.transport.get_write_buffer_size() if self.transport else 0)

    async def writable(self) -> None:
        """Wait until the transport takes more output; raise once the connection is gone."""
        self.flush()
        if self.failure is not None:
            raise self.failure
        if self._writable is not None:
            await asyncio.shield(self._writable)

    def schedule(self, when: float) -> None:
        """Make sure the timer fires no later than ``when`` (loop time)."""
        if when < self._timer_at and self.failure is None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(when, self._on_timer)
            self._timer_at = when

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        if self.failure is None and (when := self.deadline(self.loop.time())) is not None:
            self.schedule(when)

    async def close(self, timeout: float = 1.0) -> None:
        """Flush, close gracefully (TLS close_notify) within ``timeout``, else abort."""
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.lost)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Drop the connection now, without a TLS close_notify."""
        self._out.clear()
        self._out_bytes = 0
        if self.transport is not None:
            self.transport.abort()
