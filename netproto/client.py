"""The asyncio client connection around :class:`ClientProtocol`.

Many requests may be in flight on one connection; answers are matched by id and may arrive
in any order. Errors are raised as the same typed classes the server raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

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
    Request,
    ServerMessage,
    StreamChunk,
    StreamEnd,
    StreamStart,
)
from netproto.protocol import ClientProtocol
from netproto.streams import FrameWriter, map_exceptions

log = logging.getLogger(__name__)

_STREAM_QUEUE = 16  # chunks buffered per stream before the reader stops reading


class ResponseStream:
    """A streamed answer: ``header`` first, then ``async for chunk``, then ``trailer``."""

    def __init__(self, conn: Connection, rid: int) -> None:
        self._conn = conn
        self.id = rid
        self.queue: asyncio.Queue[ServerMessage | BaseException] = asyncio.Queue(_STREAM_QUEUE)
        self.header: Any = None
        self.trailer: Any = None
        self.finished = False
        #: Set when the connection fails, in case the failure did not fit in a full queue.
        self.failure: P2PError | None = None

    async def _next(self, timeout: float) -> ServerMessage:
        if self.failure is not None and self.queue.empty():
            raise self.failure
        try:
            async with asyncio.timeout(timeout):
                item = await self.queue.get()
        except TimeoutError:
            raise Timeout("no data from the server in time") from None
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

    async def chunks(self, timeout: float | None = None) -> AsyncIterator[bytes]:
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
        while not self.queue.empty():  # unblock a reader waiting to put into a full queue
            self.queue.get_nowait()


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
        self._reader = reader
        self._raw_writer = writer
        self._writer = FrameWriter(writer, 4 << 20)
        self._protocol = ClientProtocol(max_frame)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, ResponseStream] = {}
        self._failure: P2PError | None = None
        self.request_timeout = request_timeout
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        self.peer_certificate: x509.Certificate = x509.load_der_x509_certificate(der)
        self._reader_task = asyncio.create_task(self._read_loop())

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
        self._writer.write(self._protocol.request(Request(rid, op, body, token)))
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
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        rid = self._send(op, body, token)
        self._pending[rid] = future
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.request_timeout):
                return await future
        except TimeoutError:
            raise Timeout(f"no answer to {op!r} in time") from None
        finally:
            self._pending.pop(rid, None)

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

    async def _read_loop(self) -> None:
        failure: P2PError
        try:
            while True:
                async with map_exceptions():
                    data = await self._reader.read(256 << 10)
                if not data:
                    failure = ConnectionClosed("the server closed the connection")
                    break
                for msg in self._protocol.receive_data(data):
                    await self._dispatch(msg)
        except (ConnectionClosed, RequestError) as exc:
            failure = exc
        except asyncio.CancelledError:
            failure = ConnectionClosed("connection closed")
        except Exception as exc:  # a bug must not leave requests hanging forever
            log.exception("client read loop failed")
            failure = ConnectionClosed(f"client failure: {type(exc).__name__}")
        self._fail(failure)

    async def _dispatch(self, msg: ServerMessage) -> None:
        if msg.id == 0 and isinstance(msg, ErrorReply):
            # A connection-level error: the server closes after sending it.
            raise msg.error
        stream = self._streams.get(msg.id)
        if stream is not None:
            if isinstance(msg, ErrorReply | StreamEnd):
                self._streams.pop(msg.id, None)
            await stream.queue.put(msg)
            return
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
        for future in self._pending.values():
            if not future.done():
                future.set_exception(failure)
        for stream in self._streams.values():
            stream.failure = failure
            with contextlib.suppress(asyncio.QueueFull):
                stream.queue.put_nowait(failure)
        self._streams.clear()
        self._writer.abort()

    async def close(self) -> None:
        """Close the connection gracefully."""
        if self._failure is None:
            self._failure = ConnectionClosed("connection closed")
        await self._writer.close(1.0)
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
