"""The client side: requests matched to their answers by id, streams, request deadlines.

Many requests may be in flight on one connection; answers may arrive in any order. Errors the
server sent are raised as the same typed classes it raised; a server that breaks the protocol
is a :class:`RemoteProtocolError`, and a request we cannot send a :class:`LocalProtocolError`.
Each request has its deadline (PROTOCOL.md §6).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

from cryptography import x509

from netproto import errors
from netproto.connection import FramedConnection
from netproto.deadlines import RequestDeadlines
from netproto.errors import ConnectionClosed, P2PError, RemoteProtocolError, RequestError, Timeout
from netproto.framing import DEFAULT_MAX_FRAME
from netproto.messages import ErrorReply, ServerMessage, StreamChunk, StreamEnd, StreamStart
from netproto.operations import CANCEL, CancelRequest
from netproto.protocol import ClientProtocol

Body = dict[str, Any]
Token = str | None
_STREAM_QUEUE = 16  # frames buffered per stream before the connection stops reading
_STREAM_RESUME = _STREAM_QUEUE // 2  # ... and reads again once its reader is down to this


class ResponseStream:
    """A streamed answer: ``header`` first, then ``async for chunk``, then ``trailer``."""

    def __init__(self, conn: Connection, rid: int) -> None:
        self._conn = conn
        self.id = rid
        self.queue: asyncio.Queue[ServerMessage | BaseException] = asyncio.Queue()
        self.header: Any = None
        self.trailer: Any = None

    async def _next(self, timeout: float) -> ServerMessage:
        queue = self.queue
        if queue.empty():
            try:
                async with asyncio.timeout(timeout):
                    item = await queue.get()
            except TimeoutError:
                raise Timeout("no data from the server in time") from None
        else:
            item = queue.get_nowait()  # no timer for a frame that is already here
        if self._conn.paused_by is self and queue.qsize() <= _STREAM_RESUME:
            self._conn.resume_stream()
        if isinstance(item, BaseException):
            self.queue.put_nowait(item)  # every later call fails the same way
            raise item
        if isinstance(item, ErrorReply):
            raise item.error
        return item

    async def start(self, timeout: float) -> Any:
        """Wait for the header frame (or the error that replaces it)."""
        msg = await self._next(timeout)
        if not isinstance(msg, StreamStart):
            raise RemoteProtocolError(f"expected a stream header, got {type(msg).__name__}")
        self.header = msg.body
        return self.header

    async def chunks(self, timeout: float | None = None) -> AsyncIterator[bytes | memoryview]:
        """Yield chunk payloads until the trailer arrives (then stored in ``trailer``)."""
        per_frame = timeout if timeout is not None else self._conn.request_timeout
        while True:
            msg = await self._next(per_frame)
            if isinstance(msg, StreamChunk):
                yield msg.data
            elif isinstance(msg, StreamEnd):
                self.trailer = msg.trailer
                return
            else:
                raise RemoteProtocolError("unexpected frame inside a stream")

    def cancel(self) -> None:
        """Stop this stream at both ends: drop what still arrives and, unless it already
        ended, ask the server to stop sending it (``cancel``, PROTOCOL.md §3.1; not waited
        for)."""
        running = self._conn.streams.get(self.id) is self
        self.close()
        if running and not self._conn.closed:
            self._conn.cancel_soon(self.id)

    def close(self) -> None:
        """Stop listening for this stream (frames still arriving are dropped)."""
        self._conn.streams.pop(self.id, None)
        self.queue = asyncio.Queue()  # what arrived is dropped; nothing more will
        if self._conn.paused_by is self:
            self._conn.resume_stream()


class Connection(FramedConnection):
    """One TLS connection to a server; use :meth:`open`."""

    def __init__(self, context: ssl.SSLContext, host: str, max_frame: int, timeout: float) -> None:
        self.protocol = ClientProtocol(max_frame)
        super().__init__(self.protocol, context, 4 << 20, host)
        self.request_timeout = timeout
        self._pending: RequestDeadlines[asyncio.Future[Any]] = RequestDeadlines()
        self.streams: dict[int, ResponseStream] = {}
        self.paused_by: ResponseStream | None = None
        self._cancelling: set[asyncio.Task[None]] = set()  # cancel requests in flight
        self._cancelled_ids: set[int] = set()  # ... and the ids they cancel

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        *,
        server_hostname: str,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        local_addr: tuple[str, int] | None = None,
    ) -> Connection:
        """Connect (from ``local_addr`` if given) and complete the TLS handshake, verifying
        ``server_hostname``."""
        with errors.transport_errors(f"connecting to {host}:{port}"):
            async with asyncio.timeout(connect_timeout):
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: cls(ssl_context, server_hostname, max_frame, request_timeout),
                    host,
                    port,
                    local_addr=local_addr,
                )
                try:
                    await conn.ready  # the TLS handshake
                except BaseException:
                    conn.abort()
                    raise
        return conn

    @property
    def peer_certificate(self) -> x509.Certificate:
        """The certificate the server presented in the handshake."""
        assert self.peer_cert is not None
        return self.peer_cert

    @property
    def closed(self) -> bool:
        """True once the connection has failed or been closed."""
        return self.failure is not None

    def _send(self, op: str, body: dict[str, Any], token: str | None) -> int:
        failure = self.failure
        if failure is not None:
            if isinstance(failure, RequestError):  # e.g. BUSY sent before closing
                raise type(failure)(failure.message, **failure.extra)
            raise ConnectionClosed(str(failure))
        rid = self.protocol.next_id(
            lambda rid: rid in self._pending or rid in self.streams or rid in self._cancelled_ids
        )
        self.write(self.protocol.encode_request(rid, op, body, token))
        return rid

    async def request(
        self, op: str, body: Body, token: Token = None, *, timeout: float | None = None
    ) -> Any:
        """Send one request and return its reply body, or raise its typed error."""
        future: asyncio.Future[Any] = self.loop.create_future()
        rid = self._send(op, body, token)
        when = self.loop.time() + (timeout if timeout is not None else self.request_timeout)
        self.schedule(self._pending.add(rid, future, when, op))  # re-armed only if earlier
        try:
            return await future
        finally:
            self._pending.remove(rid)

    def cancel_soon(self, rid: int) -> None:
        """Ask the server to stop answering request ``rid`` (``cancel``, PROTOCOL.md §3.1),
        without waiting: its reply, or the connection's end, settles it in the background."""
        self._cancelled_ids.add(rid)  # not reused while the server may still send for it
        task = self.loop.create_task(self._cancel(rid))
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)

    async def _cancel(self, rid: int) -> None:
        try:
            with contextlib.suppress(P2PError):  # a connection gone has stopped it anyway
                await self.request(CANCEL, CancelRequest(rid).to_wire())
        finally:
            self._cancelled_ids.discard(rid)

    def deadline(self, now: float) -> float | None:
        """Time out the requests whose deadline passed; the earliest one left, if any."""
        return self._pending.expire(now)

    async def stream(
        self, op: str, body: Body, token: Token = None, *, timeout: float | None = None
    ) -> ResponseStream:
        """Send a request answered by a stream; return it once its header has arrived."""
        rid = self._send(op, body, token)
        stream = self.streams[rid] = ResponseStream(self, rid)
        try:
            await stream.start(timeout if timeout is not None else self.request_timeout)
        except BaseException:
            stream.cancel()  # no header yet (abandoned, timed out): the server need not send it
            raise
        return stream

    def buffer_updated(self, nbytes: int) -> None:
        """Feed the core; a server that breaks the protocol loses the connection."""
        if self.failure is not None:
            return
        try:
            super().buffer_updated(nbytes)
        except RequestError as exc:
            # What the server sent cannot be read: its fault, not ours (the codec's classes
            # name the server's faults too, so they are re-raised as the remote's).
            error = RemoteProtocolError(f"malformed frame from the server: {exc.message}")
            error.__cause__ = exc
            self._lose(error)
        except P2PError as exc:
            self._lose(exc)

    def received(self, events: list[ServerMessage]) -> None:
        """Hand each answer to the request or stream waiting for it."""
        streams = self.streams
        for msg in events:
            if streams and msg.id in streams:
                self._to_stream(msg)
            elif msg.id == 0 and isinstance(msg, ErrorReply):
                # A connection-level error: the server closes after sending it.
                self._lose(msg.error)
                return
            else:
                self._pending.answer(msg)

    def _to_stream(self, msg: ServerMessage) -> None:
        stream = self.streams[msg.id]
        if isinstance(msg, ErrorReply | StreamEnd):
            del self.streams[msg.id]
        stream.queue.put_nowait(msg)
        if stream.queue.qsize() >= _STREAM_QUEUE and self.paused_by is None:
            # The stream's reader is behind: stop reading (TCP then holds the server back).
            self.paused_by = stream
            assert self.transport is not None
            self.transport.pause_reading()

    def resume_stream(self) -> None:
        """The paused stream's reader caught up: read again."""
        self.paused_by = None
        if not self.is_closing:
            assert self.transport is not None
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        """The server closed its side: nothing more will be answered."""
        self.close_notified()
        return False

    def close_notified(self) -> None:
        """The server's close_notify (or end of TCP): nothing more will be answered."""
        self._lose(ConnectionClosed("the server closed the connection"))

    def closing(self, failure: P2PError) -> None:
        """Fail every request and stream still waiting."""
        self._pending.fail(failure)
        for stream in self.streams.values():
            stream.queue.put_nowait(failure)
        self.streams.clear()
        self.paused_by = None

    async def close(self, timeout: float = 1.0) -> None:
        """Close the connection gracefully (what was written still leaves first)."""
        self.flush()
        if self.failure is None:
            self._fail(ConnectionClosed("connection closed"))
        await super().close(timeout)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
