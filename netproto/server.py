"""The asyncio server: TLS, deadlines, caps and dispatch around :class:`ServerProtocol`.

Each connection is accepted as plain TCP, counted against the connection caps, then upgraded
to TLS within the handshake timeout. Requests on one connection run concurrently (their
answers may come back in any order); a handler is an ``async`` function taking the request
context and the typed body, listed in a table of :class:`Operation`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import types
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cryptography import x509

from netproto.errors import (
    AuthRequired,
    BadFrame,
    Busy,
    ConnectionClosed,
    Internal,
    RequestError,
    Timeout,
    UnknownOp,
)
from netproto.framing import DEFAULT_MAX_FRAME
from netproto.messages import Request
from netproto.protocol import Rejected, ServerProtocol, Unreadable, encode_chunk_head
from netproto.streams import FrameWriter, map_exceptions
from netproto.tokens import Principal

log = logging.getLogger(__name__)

Req = TypeVar("Req")


@dataclass(frozen=True)
class ServerLimits:
    """Deadlines and caps of PROTOCOL.md §6; every one is configurable."""

    max_frame: int = DEFAULT_MAX_FRAME
    handshake_timeout: float = 10.0
    frame_timeout: float = 30.0
    idle_timeout: float = 300.0
    slow_reader_timeout: float = 30.0
    write_high_water: int = 4 << 20
    max_connections: int = 1024
    max_connections_per_address: int = 64
    max_in_flight: int = 512
    read_size: int = 256 << 10


@dataclass
class RequestContext:
    """What a handler may know about the connection a request came on."""

    address: str
    port: int
    peer_cert: x509.Certificate | None
    principal: Principal | None = None
    conn: ConnectionState = field(default_factory=lambda: ConnectionState())

    @property
    def subject(self) -> str:
        """The authenticated user (only for operations that require a token)."""
        assert self.principal is not None
        return self.principal.subject


@dataclass
class ConnectionState:
    """Per-connection memory: the last verified token, so a token is verified once."""

    token: str | None = None
    principal: Principal | None = None


@dataclass(frozen=True)
class StreamReply:
    """A handler's streamed answer: a header, chunks, then a trailer made after the chunks."""

    header: Any
    chunks: AsyncIterator[bytes | memoryview]
    trailer: Callable[[], Any]


@dataclass(frozen=True, slots=True)
class PackedReply:
    """A handler's reply whose body is already msgpack-encoded, e.g. a cached answer."""

    body: bytes


@dataclass(frozen=True)
class Operation(Generic[Req]):
    """One entry of a server's handler table."""

    parse: Callable[[dict[str, Any]], Req]
    handler: Callable[[RequestContext, Req], Awaitable[Any]]
    needs_token: bool = True
    #: The handler normally answers without suspending (e.g. from memory): run it in the
    #: read loop itself, so its reply leaves in the same event-loop turn as the request came.
    #: Should it suspend after all, the rest runs as a task. It must not use
    #: ``asyncio.timeout``/``current_task`` before its first suspension.
    inline: bool = False


Authenticator = Callable[[str], Principal]


def to_wire(value: Any) -> Any:
    """A handler's result as a msgpack-ready value (dataclasses expose ``to_wire``)."""
    if hasattr(value, "to_wire"):
        return value.to_wire()
    if isinstance(value, list | tuple):
        return [to_wire(v) for v in value]
    return value


class Server:
    """A TLS server of one handler table; start with :meth:`start`, stop with :meth:`close`."""

    def __init__(
        self,
        operations: Mapping[str, Operation[Any]],
        ssl_context: ssl.SSLContext,
        *,
        authenticate: Authenticator | None = None,
        limits: ServerLimits | None = None,
        name: str = "server",
    ) -> None:
        self.operations = operations
        self.ssl_context = ssl_context
        self.authenticate = authenticate
        self.limits = limits or ServerLimits()
        self.name = name
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._per_address: Counter[str] = Counter()
        self._closing = False

    @property
    def port(self) -> int:
        """The bound TCP port (useful after binding port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connection_count(self) -> int:
        """Connections currently open (TLS or still handshaking)."""
        return len(self._connections)

    async def start(self, host: str, port: int) -> None:
        """Bind and start accepting."""
        self._server = await asyncio.start_server(
            self._accept, host, port, limit=self.limits.read_size, reuse_address=True
        )
        log.info("%s listening on %s:%d", self.name, host, self.port)

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish within ``grace``, then close all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self._closing = True
        if self._server is not None:
            self._server.close()
        conns = list(self._connections)
        # Those with answers to finish or deliver; the idle rest is simply dropped.
        busy = [c for c in conns if c.tasks or c.writer.buffered()]
        for conn in conns:
            conn.stop_reading()
        if conns:
            await asyncio.wait([asyncio.ensure_future(c.drain(grace)) for c in conns])
            # Close those gracefully in what is left of the grace: an answer finished just now
            # may still sit in the buffers (up to the high-water mark, and the socket's), and
            # an abort would drop it (a finished fetch would lose its tail and trailer).
            left = max(0.0, deadline - loop.time())
            closing = [
                asyncio.ensure_future(c.writer.close(left)) for c in busy if c in self._connections
            ]
            if closing:
                await asyncio.wait(closing)
        for conn in list(self._connections):
            conn.abort()
        # Let each connection's task see its end and finish here, rather than be cancelled
        # (and logged) when the event loop shuts down.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while self._connections:  # noqa: ASYNC110 - asyncio.Server has no such event
                    await asyncio.sleep(0.01)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        log.info("%s stopped", self.name)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        address, port = str(peer[0]), int(peer[1])
        limits = self.limits
        over_cap = (
            self._closing
            or len(self._connections) >= limits.max_connections
            or self._per_address[address] >= limits.max_connections_per_address
        )
        if over_cap and (
            len(self._connections) >= 2 * limits.max_connections
            or self._per_address[address] >= 2 * limits.max_connections_per_address
        ):
            # Far past the cap, not even a TLS handshake is spent on the connection.
            writer.transport.abort()
            return
        conn = _Connection(self, reader, writer, address, port)
        self._connections.add(conn)
        self._per_address[address] += 1
        try:
            await conn.run(busy=over_cap)
        finally:
            self._connections.discard(conn)
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]


class _Connection:
    """One client connection: the read loop, request tasks, and the writer."""

    def __init__(
        self,
        server: Server,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: str,
        port: int,
    ) -> None:
        self.server = server
        self.limits = server.limits
        self.reader = reader
        self.raw_writer = writer
        self.address = address
        self.port = port
        self.protocol = ServerProtocol(self.limits.max_frame)
        self.writer = FrameWriter(writer, self.limits.write_high_water)
        self.tasks: set[asyncio.Task[None]] = set()
        self.state = ConnectionState()
        self.peer_cert: x509.Certificate | None = None
        self._read_task: asyncio.Task[Any] | None = None
        self._slots = _Slots(self.limits.max_in_flight)
        self._guard: _ReadDeadline | None = None
        #: True while the read loop waits for input with nothing left to do: input may then
        #: be answered right in the transport's callback (:meth:`_take`).
        self._parked = False

    async def run(self, *, busy: bool) -> None:
        try:
            async with map_exceptions():
                await self.raw_writer.start_tls(
                    self.server.ssl_context,
                    ssl_handshake_timeout=self.limits.handshake_timeout,
                )
        except (TimeoutError, ConnectionClosed, Timeout) as exc:
            log.debug("handshake with %s failed: %s", self.address, exc)
            self.abort()
            return
        self.writer.apply_limits()  # the TLS transport replaced the TCP one
        der = self.raw_writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        self.peer_cert = x509.load_der_x509_certificate(der) if der else None
        if busy:
            await self._close_with(Busy("too many connections"))
            return
        self._read_task = asyncio.current_task()
        transport = self.raw_writer.transport
        transport.set_protocol(_FastInput(transport.get_protocol(), self))
        try:
            await self._read_loop()
        except asyncio.CancelledError:
            # stop_reading(): let requests in flight finish and their answers leave (a
            # graceful close waits for the last byte); close() decides when to abort.
            await self.drain(self.limits.slow_reader_timeout)
            await self.writer.close(self.limits.slow_reader_timeout)
        finally:
            self.abort()

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._guard = guard = _ReadDeadline(loop, task)
        try:
            await self._read_frames(loop, task, guard)
        finally:
            guard.close()

    async def _read_frames(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], guard: _ReadDeadline
    ) -> None:
        limits = self.limits
        read = self.reader.read
        frame_deadline: float | None = None
        while True:
            if self.protocol.in_frame:
                if frame_deadline is None:
                    frame_deadline = loop.time() + limits.frame_timeout
                deadline = frame_deadline
            else:
                frame_deadline = None
                deadline = loop.time() + limits.idle_timeout
            guard.set(deadline)
            try:
                with map_exceptions():
                    self._parked = True
                    try:
                        data = await read(limits.read_size)
                    finally:
                        self._parked = False
                timed_out = False
            except asyncio.CancelledError:
                if not guard.expired:
                    raise
                guard.expired = False
                if task.uncancel():
                    raise  # stop_reading() cancelled it too
                timed_out = True
            except ConnectionClosed:
                return
            finally:
                guard.clear()
            if timed_out:
                if self.protocol.in_frame:
                    await self._close_with(Timeout("frame not completed in time"))
                    return
                if self.tasks:
                    continue  # not idle: a client receiving a long fetch has nothing to send
                log.debug("closing idle connection from %s", self.address)
                return
            if not data:
                await self.drain(limits.slow_reader_timeout)
                return
            events = self.protocol.receive_data(data)
            if events:
                # A frame completed: the deadline of the next one runs from now, not from the
                # first byte of a burst (PROTOCOL.md §6: each frame within frame_timeout).
                frame_deadline = None
            operations = self.server.operations
            # The answers inline operations give at once leave together, in one TLS write and
            # without a callback to flush them (an extra event-loop turn per read otherwise).
            self.writer.hold()
            for event in events:
                if isinstance(event, Unreadable):
                    await self.drain(limits.slow_reader_timeout)
                    await self._close_with(event.error)
                    return
                if isinstance(event, Rejected):
                    self.writer.write(ServerProtocol.error(event.id, event.error))
                    continue
                # Per request, not per read: one read may hold thousands of pipelined requests
                # whose replies (a search's up to max_frame each) would otherwise all be
                # produced before the reader is asked to keep up (PROTOCOL.md §6).
                if self.writer.over_high_water() and not await self.writer.wait_writable(
                    limits.slow_reader_timeout
                ):
                    log.info("cutting off slow reader %s", self.address)
                    return
                await self._slots.acquire()
                self._start(event, operations.get(event.op))
            self.writer.release()
            if not await self.writer.wait_writable(limits.slow_reader_timeout):
                log.info("cutting off slow reader %s", self.address)
                return

    def _start(self, req: Request, operation: Operation[Any] | None) -> None:
        """Run a request (its slot taken): an inline operation right here, until it answers
        or suspends; any other as a task."""
        if operation is not None and operation.inline:
            coro = self._handle(req)
            try:
                suspended_on = coro.send(None)
            except StopIteration:
                self._slots.release()
                return
            task = asyncio.create_task(_resume(coro, suspended_on))
        else:
            task = asyncio.create_task(self._handle(req))
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _take(self, data: bytes) -> bool:
        """Answer ``data`` in the transport's callback if it is a few whole requests that need
        no waiting (a slot for each, the writer under its high-water mark); else False, and
        the read loop gets it. One turn of the event loop fewer per request (BENCHMARKS.md).
        """
        if self.writer.over_high_water():
            return False
        events = self.protocol.receive_whole(data, _FAST_EVENTS)
        if events is None or len(events) > self._slots.free:
            return False
        operations = self.server.operations
        writer = self.writer
        writer.hold()
        for event in events:
            if isinstance(event, Rejected):
                writer.write(ServerProtocol.error(event.id, event.error))
            else:
                self._slots.take()
                self._start(event, operations.get(event.op))
        writer.release()
        guard = self._guard
        if guard is not None:
            guard.set(asyncio.get_running_loop().time() + self.limits.idle_timeout)
        if writer.over_high_water():
            # The read loop waits for the reader after each batch; here a task does it.
            task = asyncio.create_task(self._cut_off_if_slow())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return True

    async def _cut_off_if_slow(self) -> None:
        if not await self.writer.wait_writable(self.limits.slow_reader_timeout):
            log.info("cutting off slow reader %s", self.address)
            self.abort()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._slots.release()

    async def _handle(self, req: Request) -> None:
        operation = self.server.operations.get(req.op)
        try:
            if operation is None:
                raise UnknownOp(f"unknown operation {req.op!r}")
            ctx = RequestContext(self.address, self.port, self.peer_cert, conn=self.state)
            if operation.needs_token:
                ctx.principal = self._authenticate(req.token)
            body = operation.parse(req.body)
            result = await operation.handler(ctx, body)
            if isinstance(result, StreamReply):
                await self._stream(req.id, result)
                return
            if isinstance(result, PackedReply):
                frame = ServerProtocol.reply_packed(req.id, result.body)
            else:
                frame = ServerProtocol.reply(req.id, to_wire(result))
            if len(frame) - 4 > self.limits.max_frame:
                log.error("reply to %s is %d bytes, over the frame limit", req.op, len(frame))
                raise Internal()
            self.writer.write(frame)
        except RequestError as exc:
            self.writer.write(ServerProtocol.error(req.id, exc))
        except (ConnectionClosed, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("handler for %r failed", req.op)
            self.writer.write(ServerProtocol.error(req.id, Internal()))

    def _authenticate(self, token: str | None) -> Principal:
        if token is None:
            raise AuthRequired()
        authenticate = self.server.authenticate
        if authenticate is None:
            raise Internal()
        state = self.state
        # One verification per token per connection: the signature check costs more than a
        # whole pipelined request (design §6); expiry is still checked on every use.
        if token == state.token and state.principal is not None:
            state.principal.check_current()
            return state.principal
        principal = authenticate(token)
        state.token, state.principal = token, principal
        return principal

    async def _stream(self, rid: int, reply: StreamReply) -> None:
        self.writer.write(ServerProtocol.stream_start(rid, to_wire(reply.header)))
        try:
            async for chunk in reply.chunks:
                self.writer.write_parts(encode_chunk_head(rid, len(chunk)), chunk)
                if not await self.writer.wait_writable(self.limits.slow_reader_timeout):
                    log.info("cutting off slow reader %s during a stream", self.address)
                    self.abort()
                    return
            trailer = reply.trailer()
        finally:
            aclose = getattr(reply.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        self.writer.write(ServerProtocol.stream_end(rid, to_wire(trailer)))

    async def _close_with(self, error: RequestError) -> None:
        self.writer.write(ServerProtocol.error(0, error))
        await self.writer.close(1.0)

    def stop_reading(self) -> None:
        if self._read_task is not None and not self._read_task.done():
            self._read_task.cancel()

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` for the requests in flight, then flush their answers."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=grace)
        for task in list(self.tasks):
            task.cancel()
        await self.writer.flush(min(grace, 1.0))

    def abort(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        self.writer.abort()


#: Requests one received chunk may hold to be answered in the transport's callback; more go
#: to the read loop, which waits for the writer after each (bounding what one chunk buffers).
_FAST_EVENTS = 8


class _FastInput(asyncio.Protocol):
    """The TLS transport's protocol once the connection is up: input the connection can
    answer at once goes to :meth:`_Connection._take`, the rest to the stream protocol (and
    so to the read loop). Write flow control and the end of the connection go to the stream
    protocol, so the :class:`asyncio.StreamWriter` keeps working as before."""

    def __init__(self, inner: asyncio.BaseProtocol, conn: _Connection) -> None:
        self._inner = inner
        self._conn = conn

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn._parked and conn._take(data):
            return
        # From here on the read loop has input queued: later input must queue behind it.
        conn._parked = False
        self._inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()  # type: ignore[attr-defined,no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Slots:
    """How many more requests a connection may run: a semaphore with a synchronous take."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take(self) -> None:
        """Take a slot known to be free."""
        self.free -= 1

    async def acquire(self) -> None:
        """Take a slot, waiting for one if none is free."""
        while self.free <= 0:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self.free -= 1

    def release(self) -> None:
        """Give a slot back."""
        self.free += 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class _ReadDeadline:
    """The deadline of the read loop's current read, kept by one timer per connection.

    ``asyncio.timeout`` around every read costs a timer and a cancel scope per read, about a
    third of the server's CPU for a one-in-flight request (BENCHMARKS.md). Here the deadline is
    a number moved forward on each read; the one timer acts only when it fires past it (it then
    cancels the read, and :attr:`expired` tells the loop why), and re-arms itself otherwise.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        self._loop = loop
        self._task = task
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.expired = False

    def set(self, deadline: float) -> None:
        """Arm for a read that must complete by ``deadline`` (loop time)."""
        self._deadline = deadline
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._fire)
            self._timer_at = deadline

    def clear(self) -> None:
        """The read completed (or failed): no deadline until the next :meth:`set`."""
        self._deadline = None

    def close(self) -> None:
        """Stop the timer."""
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return  # not reading now; the next set() arms a new timer
        if self._loop.time() >= deadline:
            self.expired = True
            self._task.cancel()
        else:
            self.set(deadline)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], suspended_on: Any) -> Generator[Any, Any, None]:
    """Drive the rest of a coroutine that was started eagerly and then suspended.

    Wrapped in a task, this hands the task the future the coroutine is waiting on and
    forwards every value and exception to it, as ``yield from`` would (what Python 3.12's
    eager tasks do natively).
    """
    while True:
        try:
            sent = yield suspended_on
        except BaseException as exc:  # cancellation and errors go to the coroutine
            try:
                suspended_on = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                suspended_on = coro.send(sent)
            except StopIteration:
                return


__all__ = [
    "BadFrame",
    "Operation",
    "PackedReply",
    "RequestContext",
    "Server",
    "ServerLimits",
    "StreamReply",
]
