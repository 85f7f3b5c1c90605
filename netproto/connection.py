"""The one asyncio connection class of server and client: a :class:`asyncio.BufferedProtocol`
on plain TCP running TLS itself (:mod:`netproto.tlsbio`), decrypting from a buffer its thread's
connections share into the core's (PROTOCOL.md §6, "Memory per connection"). Frames written in
one turn leave as one write; flow control is ``pause_writing``/``resume_writing``; deadlines are
one ``loop.call_at`` timer per connection. Where ``OSError`` and ``ssl.SSLError`` become
:class:`ConnectionClosed` (here, and by :func:`netproto.errors.transport_errors` when connecting).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from typing import Any

from cryptography import x509

from netproto.errors import ConnectionClosed, P2PError
from netproto.protocol import ClientProtocol, HeldFrames, ServerProtocol
from netproto.tlsbio import TLSSession

log = logging.getLogger(__name__)

#: Frames this long or longer are written at once rather than batched.
_LARGE = 64 << 10
#: Batched frames leave once this many bytes wait, without waiting for the end of the turn:
#: a pipelining peer then starts on the first answers while the rest are made (BENCHMARKS.md).
_BATCH = 16 << 10
#: The low-water mark sits this far under the high one, so a slow but steady reader is never
#: taken for a stalled one (PROTOCOL.md §6 cuts off output that *stays* above the mark).
_LOW_GAP = 512 << 10
#: Ciphertext is read into one buffer per thread: a read is decrypted before the next one.
_received = threading.local()
_RECEIVE = 256 << 10


class FramedConnection(asyncio.BufferedProtocol):
    """One connection: TLS, receiving into the core, coalesced writing, flow control, a timer.

    Its :class:`TLSSession` is made in :meth:`connection_made` (a server drops some sockets
    before then); a client passes the ``server_hostname`` to verify.
    """

    tls: TLSSession

    def __init__(
        self,
        core: ServerProtocol | ClientProtocol,
        context: ssl.SSLContext,
        high: int,
        server_hostname: str | None = None,
    ) -> None:
        self.core, self._context, self._high_water = core, context, high
        self._server_hostname = server_hostname
        self._held = HeldFrames()  # frames of this turn, encrypted and sent together
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = self.loop.create_future()  # the handshake's end
        self.peer_cert: x509.Certificate | None = None
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

    def established(self) -> None:
        """The TLS handshake completed; the peer's certificate is in :attr:`peer_cert`."""

    def deadline(self, now: float) -> float | None:
        """Act on deadlines that passed by ``now``; return the next one (None: no timer)."""
        return None

    def closing(self, failure: P2PError) -> None:
        """The connection is gone (``failure`` says why): fail whatever still waits on it."""

    def close_notified(self) -> None:
        """The peer's close_notify arrived: answer it (after what is written) and close."""
        self._shutdown()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """TCP is up: set its write limits and start the TLS handshake."""
        assert isinstance(transport, asyncio.Transport)
        self.transport, host = transport, self._server_hostname
        self.tls = TLSSession(self._context, server_side=host is None, server_hostname=host)
        high = self._high_water
        transport.set_write_buffer_limits(high=high, low=max(high // 2, high - _LOW_GAP))
        self.buffer_updated(0)  # starts the handshake: a client's hello leaves

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the transport reads ciphertext into: the thread's one receive buffer."""
        view: memoryview | None = getattr(_received, "view", None)
        if view is None:
            view = _received.view = memoryview(bytearray(_RECEIVE))
        return view

    def buffer_updated(self, nbytes: int) -> None:
        """Decrypt into the core; everything written in response leaves together at the end."""
        tls, was_up = self.tls, self.tls.established
        self._batching = True
        try:
            events, plaintext = tls.receive_data(self.get_buffer(0)[:nbytes], self.core)
            if tls.established and not was_up:
                self.peer_cert = tls.peer_certificate()
                self.ready.set_result(None)
                self.established()
            if plaintext and self.failure is None:  # tickets, key updates: not activity
                self.received(events)
            if tls.peer_closed and self.failure is None:
                self.close_notified()
        except ssl.SSLError as exc:  # a failed handshake, a forged record
            log.debug(
                "TLS failed (%s): %s",
                self.transport and self.transport.get_extra_info("peername"),
                exc,
            )
            if not self.ready.done():
                self.ready.set_exception(exc)  # what a client's open() raises
                self.ready.exception()  # retrieved: a server awaits nothing
            self._fail(ConnectionClosed(f"TLS: {exc}"))
            self._held.discard()
            self._put()  # the alert saying why, then close (no close_notify: TLS failed)
            if self.transport is not None:
                self.transport.close()
        finally:
            self._batching = False
            self.core.release()  # an idle connection keeps no receive buffer
            self.flush()  # and what TLS itself has to send

    def _lose(self, failure: P2PError) -> None:
        """Fail every waiter and drop the connection."""
        self._fail(failure)
        self.abort()

    def _put(self, parts: tuple[bytes | memoryview, ...] = ()) -> None:
        """Encrypt what is held and ``parts``; hand the ciphertext to the transport."""
        self.tls.send((*self._held.take(), *parts))
        out, transport = self.tls.data_to_send(), self.transport
        if out and transport is not None and not transport.is_closing():
            transport.writelines(out)

    def _shutdown(self) -> None:
        """Send what is written, then close_notify; close TCP once all of it left."""
        self._put()
        self.tls.close()
        self._put()
        if self.transport is not None:
            self.transport.close()

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
        for waiter in (self._writable, self.ready):
            if waiter is not None and not waiter.done():
                waiter.set_exception(failure)
                waiter.exception()  # retrieved: nobody need be waiting on it
        self._writable = None
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
            if self._held.hold(frame) >= _BATCH:
                self.flush()
            return
        # The first frame of a turn leaves at once (one request in flight pays no extra loop
        # turn); later frames of the same turn are batched behind it.
        self._flush_handle = self.loop.call_soon(self.flush)
        self._put((frame,))

    def write_parts(self, head: bytes, payload: bytes | memoryview) -> None:
        """Send a frame in two parts (a chunk's head, its payload) without joining them."""
        if not self.is_closing:
            self._put((head, payload))  # after what is held

    def flush(self) -> None:
        """Hand everything batched to the transport now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self.is_closing:
            self._put()

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self._held.nbytes + (self.transport.get_write_buffer_size() if self.transport else 0)

    async def writable(self) -> None:
        """Wait until the transport takes more output; raise once the connection is gone."""
        self.flush()
        if self.failure is not None:
            raise self.failure
        if self._writable is not None:
            await asyncio.shield(self._writable)

    def schedule(self, when: float | None) -> None:
        """Make sure the timer fires no later than ``when`` (loop time; None: no matter)."""
        if when is not None and when < self._timer_at and self.failure is None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(when, self._on_timer)
            self._timer_at = when

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        if self.failure is None:
            self.schedule(self.deadline(self.loop.time()))

    async def close(self, timeout: float = 1.0) -> None:
        """Flush, close gracefully (TLS close_notify) within ``timeout``, else abort."""
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self._shutdown()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.lost)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Drop the connection now, without a TLS close_notify."""
        self._held.discard()
        if self.transport is not None:
            self.transport.abort()
