"""The asyncio client connection around :class:`ClientProtocol`.

Many requests may be in flight on one connection; answers are matched by id and may arrive
in any order. Errors are raised as the same typed classes the server raised.

Received bytes are handled as the transport delivers them (the connection becomes the TLS
transport's protocol), not by a reader task: an answer reaches the request waiting for it in
one event-loop turn instead of two. Request deadlines share one timer per connection instead
of a timer and a cancel scope each. A pipelined client pays these costs tens of thousands of
times a second (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from cryptography import x509

from netproto.errors import (
    BadFrame,
    ConnectionClosed,
    P2PError,
    RequestError,
    Timeout,
)
from netproto.framing import DEFAULT_MAX_FRAME
from netproto.messages import (
    ErrorReply,
    Reply,
    ServerMessage,
    StreamChunk,
    StreamEnd,
    StreamStart,
)
from netproto.protocol import ClientProtocol
from netproto.streams import FrameWriter, map_exceptions

log = logging.getLogger(__name__)

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
        self.finished = False
        #: Set when the connection fails (also queued after the frames that came before it).
        self.failure: P2PError | None = None

    async def _next(self, timeout: float) -> ServerMessage:
        queue = self.queue
        if queue.empty():
            if self.failure is not None:
                raise self.failure
            try:
                async with asyncio.timeout(timeout):
                    item = await queue.get()
            except TimeoutError:
                raise Timeout("no data from the server in time") from None
        else:
            item = queue.get_nowait()  # no timer for a frame that is already here
        if self._conn._paused_by is self and queue.qsize() <= _STREAM_RESUME:
            self._conn._resume_reading()
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, ErrorReply):
            self.finished = True
            raise item.error
        return item

    async def start(self, timeout: float) -> Any:
        """Wait for the header frame (or the error that replaces it)."""
        msg = await self._next(timeout)
        if isinstance(msg, Reply):
            raise BadFrame("expected a stream, got a single reply")
        if not isinstance(msg, StreamStart):
            raise BadFrame("stream did not start with a header")
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
                self.finished = True
                return
            else:
                raise BadFrame("unexpected frame inside a stream")

    def close(self) -> None:
        """Stop listening for this stream (frames still arriving are dropped)."""
        self._conn._streams.pop(self.id, None)
        while not self.queue.empty():
            self.queue.get_nowait()
        if self._conn._paused_by is self:
            self._conn._resume_reading()


class _Receiver(asyncio.BufferedProtocol):
    """The TLS transport's protocol once a :class:`Connection` owns it.

    TLS decrypts straight into the buffers the connection's decoder hands out (a stream
    chunk into a buffer of its own, never copied again), and the connection handles what
    arrived at once. Write flow control and the end of the connection still reach the stream
    protocol the :class:`asyncio.StreamWriter` relies on, so writing, draining and closing
    work as before.
    """

    def __init__(self, inner: asyncio.BaseProtocol, conn: Connection) -> None:
        self._inner = inner
        self._conn = conn

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._conn._protocol.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._conn._received_into(nbytes)

    def eof_received(self) -> bool | None:
        self._conn._fail(ConnectionClosed("the server closed the connection"))
        eof_received = getattr(self._inner, "eof_received", None)
        return eof_received() if eof_received is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)
        reason = "connection closed" if exc is None else (str(exc) or type(exc).__name__)
        self._conn._fail(ConnectionClosed(reason))

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class Connection:
    """One TLS connection to a server; use :meth:`open`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        request_timeout: float = 30.0,
    ) -> None:
        self._raw_writer = writer
        self._writer = FrameWriter(writer, 4 << 20)
        self._protocol = ClientProtocol(max_frame)
        self._loop = asyncio.get_running_loop()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        # Deadlines of plain requests in the order they were sent; with one timeout for all
        # they are also in time order, so one timer (for the earliest) serves them all.
        self._deadlines: deque[tuple[float, asyncio.Future[Any], str]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._streams: dict[int, ResponseStream] = {}
        self._paused_by: ResponseStream | None = None
        self._failure: P2PError | None = None
        self.request_timeout = request_timeout
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        self.peer_certificate: x509.Certificate = x509.load_der_x509_certificate(der)
        transport = cast(asyncio.Transport, writer.transport)
        self._transport = transport
        # Take the transport's input over. Bytes that reached the StreamReader first (e.g. a
        # BUSY sent right after the handshake) are handled first, in the next loop turn.
        early = bytes(getattr(reader, "_buffer", b""))
        transport.set_protocol(_Receiver(transport.get_protocol(), self))
        if early:
            self._loop.call_soon(self._received, early)
        if reader.at_eof() or transport.is_closing():
            self._loop.call_soon(self._fail, ConnectionClosed("the server closed the connection"))

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
    ) -> Connection:
        """Connect and complete the TLS handshake, verifying ``server_hostname``."""
        try:
            async with asyncio.timeout(connect_timeout), map_exceptions():
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=ssl_context,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=connect_timeout,
                    limit=256 << 10,
                )
        except TimeoutError:
            raise Timeout(f"could not connect to {host}:{port} in time") from None
        return cls(reader, writer, max_frame=max_frame, request_timeout=request_timeout)

    @property
    def closed(self) -> bool:
        """True once the connection has failed or been closed."""
        return self._failure is not None

    def _new_id(self) -> int:
        while True:
            rid = self._protocol.next_id()
            if rid not in self._pending and rid not in self._streams:
                return rid

    def _send(self, op: str, body: dict[str, Any], token: str | None) -> int:
        failure = self._failure
        if failure is not None:
            if isinstance(failure, RequestError):  # e.g. BUSY sent before closing
                raise type(failure)(failure.message, **failure.extra)
            raise ConnectionClosed(str(failure))
        rid = self._new_id()
        self._writer.write(self._protocol.encode_request(rid, op, body, token))
        return rid

    async def request(
        self,
        op: str,
        body: dict[str, Any],
        token: str | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Send one request and return its reply body, or raise its typed error."""
        loop = self._loop
        future: asyncio.Future[Any] = loop.create_future()
        rid = self._send(op, body, token)
        self._pending[rid] = future
        deadline = loop.time() + (timeout if timeout is not None else self.request_timeout)
        deadlines = self._deadlines
        if not deadlines or deadline >= deadlines[-1][0]:
            deadlines.append((deadline, future, op))
            if self._timer is None:
                self._timer = loop.call_at(deadline, self._expire)
        else:  # a shorter timeout than those queued: a timer of its own
            loop.call_at(deadline, _time_out, future, op)
        try:
            return await future
        finally:
            self._pending.pop(rid, None)
            while deadlines and deadlines[0][1].done():
                deadlines.popleft()

    def _expire(self) -> None:
        """Fail the requests whose deadline has passed; re-arm for the next one."""
        self._timer = None
        deadlines = self._deadlines
        now = self._loop.time()
        while deadlines:
            deadline, future, op = deadlines[0]
            if not future.done():
                if deadline > now:
                    self._timer = self._loop.call_at(deadline, self._expire)
                    return
                _time_out(future, op)
            deadlines.popleft()

    async def stream(
        self,
        op: str,
        body: dict[str, Any],
        token: str | None = None,
        *,
        timeout: float | None = None,
    ) -> ResponseStream:
        """Send a request answered by a stream; return it once its header has arrived."""
        rid = self._send(op, body, token)
        stream = ResponseStream(self, rid)
        self._streams[rid] = stream
        try:
            await stream.start(timeout if timeout is not None else self.request_timeout)
        except BaseException:
            stream.close()
            raise
        return stream

    # --- receiving (called by the transport) ------------------------------------------

    def _received(self, data: bytes) -> None:
        self._handle(self._protocol.receive_data, data)

    def _received_into(self, nbytes: int) -> None:
        self._handle(self._protocol.buffer_updated, nbytes)

    def _handle(self, decode: Callable[[Any], list[ServerMessage]], arg: Any) -> None:
        if self._failure is not None and self._transport.is_closing():
            return
        try:
            messages = decode(arg)
            streams = self._streams
            for msg in messages:
                if streams and msg.id in streams:
                    self._to_stream(msg)
                else:
                    self._dispatch(msg)
        except (ConnectionClosed, RequestError) as exc:
            self._fail(exc)
        except Exception as exc:  # a bug must not leave requests hanging forever
            log.exception("client receive failed")
            self._fail(ConnectionClosed(f"client failure: {type(exc).__name__}"))

    def _to_stream(self, msg: ServerMessage) -> None:
        stream = self._streams[msg.id]
        if isinstance(msg, ErrorReply | StreamEnd):
            del self._streams[msg.id]
        stream.queue.put_nowait(msg)
        if stream.queue.qsize() >= _STREAM_QUEUE and self._paused_by is None:
            # The stream's reader is behind: stop reading (TCP then holds the server back).
            self._paused_by = stream
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        self._paused_by = None
        if not self._transport.is_closing():
            self._transport.resume_reading()

    def _dispatch(self, msg: ServerMessage) -> None:
        if msg.id == 0 and isinstance(msg, ErrorReply):
            # A connection-level error: the server closes after sending it.
            raise msg.error
        future = self._pending.get(msg.id)
        if future is None or future.done():
            return  # an answer to a request that timed out or was abandoned
        if isinstance(msg, Reply):
            future.set_result(msg.body)
        elif isinstance(msg, ErrorReply):
            future.set_exception(msg.error)
        else:
            future.set_exception(BadFrame("unexpected stream frame for a plain request"))

    def _fail(self, failure: P2PError) -> None:
        if self._failure is None:
            self._failure = failure
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadlines.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(failure)
        for stream in self._streams.values():
            stream.failure = failure
            stream.queue.put_nowait(failure)
        self._streams.clear()
        self._paused_by = None
        self._writer.abort()

    async def close(self) -> None:
        """Close the connection gracefully."""
        if self._failure is None:
            self._failure = ConnectionClosed("connection closed")
        await self._writer.close(1.0)
        self._fail(self._failure)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _time_out(future: asyncio.Future[Any], op: str) -> None:
    if not future.done():
        future.set_exception(Timeout(f"no answer to {op!r} in time"))
