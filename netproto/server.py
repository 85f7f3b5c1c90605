"""The asyncio server: TLS, deadlines, caps and dispatch around :class:`ServerProtocol`.

Each connection is accepted as plain TCP, counted against the connection caps, then upgraded
to TLS within the handshake timeout. Requests on one connection run concurrently (their
answers may come back in any order); a handler is an ``async`` function taking the request
context and the typed body, listed in a table of :class:`Operation`.
"""

from __future__ import annotations

import asyncio
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
from netproto.protocol import Rejected, ServerProtocol, Unreadable, encode_chunk
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
        self._closing = True
        if self._server is not None:
            self._server.close()
        conns = list(self._connections)
        for conn in conns:
            conn.stop_reading()
        if conns:
            await asyncio.wait([asyncio.ensure_future(c.drain(grace)) for c in conns])
        for conn in list(self._connections):
            conn.abort()
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
        self._slots = asyncio.Semaphore(self.limits.max_in_flight)

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
        try:
            await self._read_loop()
        except asyncio.CancelledError:
            # stop_reading(): let requests in flight finish; close() decides when to abort.
            await self.drain(self.limits.slow_reader_timeout)
        finally:
            self.abort()

    async def _read_loop(self) -> None:
        limits = self.limits
        loop = asyncio.get_running_loop()
        frame_deadline: float | None = None
        while True:
            if self.protocol.in_frame:
                if frame_deadline is None:
                    frame_deadline = loop.time() + limits.frame_timeout
                deadline = frame_deadline
            else:
                frame_deadline = None
                deadline = loop.time() + limits.idle_timeout
            try:
                async with asyncio.timeout_at(deadline), map_exceptions():
                    data = await self.reader.read(limits.read_size)
            except TimeoutError:
                if self.protocol.in_frame:
                    await self._close_with(Timeout("frame not completed in time"))
                    return
                if self.tasks:
                    continue  # not idle: a client receiving a long fetch has nothing to send
                log.debug("closing idle connection from %s", self.address)
                return
            except ConnectionClosed:
                return
            if not data:
                await self.drain(limits.slow_reader_timeout)
                return
            events = self.protocol.receive_data(data)
            operations = self.server.operations
            for event in events:
                if isinstance(event, Unreadable):
                    await self.drain(limits.slow_reader_timeout)
                    await self._close_with(event.error)
                    return
                if isinstance(event, Rejected):
                    self.writer.write(ServerProtocol.error(event.id, event.error))
                    continue
                await self._slots.acquire()
                operation = operations.get(event.op)
                if operation is not None and operation.inline:
                    coro = self._handle(event)
                    try:
                        suspended_on = coro.send(None)
                    except StopIteration:
                        self._slots.release()
                        continue
                    task = asyncio.create_task(_resume(coro, suspended_on))
                else:
                    task = asyncio.create_task(self._handle(event))
                self.tasks.add(task)
                task.add_done_callback(self._task_done)
            if not await self.writer.wait_writable(limits.slow_reader_timeout):
                log.info("cutting off slow reader %s", self.address)
                return

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
                self.writer.write(encode_chunk(rid, chunk))
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
