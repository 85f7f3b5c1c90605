"""The server side: a connection is accepted as plain TCP and counted against the caps; only
then does its TLS session start (:mod:`netproto.tlsbio`). Its requests run concurrently
(answers in any order) through the handler table; an ``inline`` handler answers as its request
is read (PROTOCOL.md §6, :mod:`netproto.dispatch`).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import ssl
from collections.abc import Coroutine, Mapping
from typing import Any

from netproto import errors
from netproto.admission import Admission, Admit, address_key
from netproto.connection import FramedConnection
from netproto.deadlines import Expired, ServerDeadlines
from netproto.dispatch import Dispatcher
from netproto.messages import Request
from netproto.operations import CANCEL, CancelRequest
from netproto.protocol import Rejected, ServerProtocol, Unreadable, encode_chunk_head
from netproto.service import (
    Authenticator,
    ConnectionState,
    Operation,
    PackedReply,
    RequestContext,
    ServerLimits,
    StreamReply,
    to_wire,
)

log = logging.getLogger(__name__)


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
        self.ssl_context = ssl_context
        self.limits = limits or ServerLimits()
        self.name = name
        self._server: asyncio.Server | None = None
        self.admission: Admission[ServerConnection] = Admission(self.limits)
        self.dispatch = Dispatcher(operations, authenticate, self.limits.max_frame)
        self.closing = False

    @property
    def port(self) -> int:
        """The bound TCP port (useful after binding port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connection_count(self) -> int:
        """Connections currently open (TLS or still handshaking)."""
        return self.admission.total

    async def start(self, host: str, port: int) -> None:
        """Bind and start accepting."""
        new = asyncio.get_running_loop().create_server
        self._server = await new(lambda: ServerConnection(self), host, port, reuse_address=True)
        log.info("%s listening on %s:%d", self.name, host, self.port)

    def admit(self, conn: ServerConnection) -> Admit:
        """Count a new connection against the caps (:mod:`netproto.admission`); the oldest
        unproven connections it pushes out are closed."""
        verdict, evicted = self.admission.admit(conn, conn.key, closing=self.closing)
        for oldest in evicted:
            log.info("dropping unproven connection from %s for a newer one", oldest.address)
            oldest.abort()
        return verdict

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish within ``grace``, then close all."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        if conns := self.admission.connections:
            await asyncio.wait([asyncio.ensure_future(c.shutdown(grace)) for c in conns])
            await asyncio.wait([c.lost for c in conns], timeout=1.0)
        log.info("%s stopped", self.name)


class ServerConnection(FramedConnection):
    """One client connection: admission, then TLS, dispatch and deadlines."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.limits = limits = server.limits
        super().__init__(
            ServerProtocol(limits.max_frame), server.ssl_context, limits.write_high_water
        )
        self.address, self.port, self.key, self.pending = "?", 0, "?", True
        self.deadlines = ServerDeadlines(limits, self.loop.time())
        self.state = ConnectionState()
        self.tasks: set[asyncio.Task[None]] = set()
        #: The task sending each stream now, by request id (what ``cancel`` stops: PROTOCOL.md
        #: §3.1).
        self._streaming: dict[int, asyncio.Task[None]] = {}
        #: The task handling each request id now, and the ids cancelled before their handler
        #: answered: if it answers with a stream, the stream stops at once.
        self._answering: dict[int, asyncio.Task[None]] = {}
        self._stop_streams: set[int] = set()
        #: Requests read but not yet started (while output or in-flight slots are full).
        self._queue: collections.deque[Request | Rejected | Unreadable] = collections.deque()
        self._ready, self._reading, self._busy = False, True, False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """TCP is up: count it against the caps; only then start a TLS session (no work is
        spent on a connection that is dropped)."""
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.address, self.port = str(peer[0]), int(peer[1])
        self.key = address_key(self.address)
        admitted = self.server.admit(self)
        if admitted is Admit.DROP:
            transport.abort()
            return
        self._busy = admitted is Admit.BUSY
        super().connection_made(transport)
        self.schedule(self.deadlines.accepted + self.limits.handshake_timeout)

    def established(self) -> None:
        """TLS is up: answer BUSY and close, or start serving."""
        if self._busy:
            self.write(ServerProtocol.error(0, errors.Busy("too many connections")))
            self._spawn(self.close())
            return
        self._ready = True
        self._prove(not self.limits.proof_required)  # else finishing TLS is proof enough
        self.schedule(self.loop.time())  # deadline() arms the idle or frame deadline

    def connection_lost(self, exc: Exception | None) -> None:
        """Uncount the connection and stop its requests."""
        self.server.admission.release(self)
        for task in list(self.tasks):
            task.cancel()
        super().connection_lost(exc)

    def received(self, events: list[Request | Rejected | Unreadable]) -> None:
        """Queue what one read completed and start what may start."""
        if not self._reading:  # stopped for good: the rest of the read is not looked at
            return
        now, in_frame = self.loop.time(), self.core.in_frame
        self.schedule(self.deadlines.received(now, in_frame=in_frame, completed=bool(events)))
        self._queue.extend(events)
        self._dispatch()

    def _dispatch(self) -> None:
        """Start queued requests while output and in-flight slots allow; else stop reading
        (TCP then holds the client back) until they do (PROTOCOL.md §6)."""
        queue, operations = self._queue, self.server.dispatch.operations
        while queue and self._ready and self._writable is None and not self.is_closing:
            if len(self.tasks) >= self.limits.max_in_flight:
                break
            event = queue.popleft()
            if isinstance(event, Rejected):
                self.write(ServerProtocol.error(event.id, event.error))
            elif isinstance(event, Unreadable):
                self._stop_reading()
                self._spawn(self._close_with(event.error))
            elif event.op == CANCEL:
                self._cancel(event)
            elif (operation := operations.get(event.op)) is not None and operation.inline:
                self.write(self.server.dispatch.answer_inline(event, operation, self.context()))
                self._prove(self.state.proven)
            else:
                task = self._spawn(self._handle(event, operation))
                self._answering[event.id] = task
                task.add_done_callback(functools.partial(self._answered, event.id))
        if self.transport is not None and self._reading and not self.is_closing:
            if queue:
                self.transport.pause_reading()
            elif not self.transport.is_reading():
                self.transport.resume_reading()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        self.tasks.add(task := self.loop.create_task(coro))
        task.add_done_callback(self._task_done)
        return task

    def _cancel(self, req: Request) -> None:
        """``cancel {id}``: stop the stream answering request ``id`` of this connection (it
        ends without its trailer), then reply ``{}``: nothing more of it follows the reply."""
        try:
            target = CancelRequest.from_wire(req.body).id
        except errors.RequestError as exc:
            self.write(ServerProtocol.error(req.id, exc))
            return
        task = self._answering.get(target)
        if task is None or task.done():
            self.write(ServerProtocol.reply(req.id, {}))
            return
        if self._streaming.get(target) is task:
            if not task.cancelling():  # a second cancel must not cut the first one's cleanup
                task.cancel()
        else:  # its handler runs on; if it answers with a stream, that stops at once
            self._stop_streams.add(target)
        self._spawn(self._cancelled(req.id, task))

    def _answered(self, rid: int, task: asyncio.Task[None]) -> None:
        if self._answering.get(rid) is task:  # not a later request reusing the id
            del self._answering[rid]
            self._stop_streams.discard(rid)

    async def _cancelled(self, rid: int, task: asyncio.Task[None]) -> None:
        await asyncio.wait([task])
        self.write(ServerProtocol.reply(rid, {}))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.deadlines.last_active = self.loop.time()
        self._prove(self.state.proven)
        if self._queue:
            self._dispatch()

    def resume_writing(self) -> None:
        """Output drained: start what was waiting for it."""
        super().resume_writing()
        self._dispatch()

    def _stop_reading(self) -> None:
        self._reading = False
        self._queue.clear()
        self.core.stop()  # what was read but not yet decrypted is not
        if not self.is_closing:
            self.transport.pause_reading()  # type: ignore[union-attr]

    def context(self) -> RequestContext:
        """A request's view of this connection."""
        return RequestContext(self.address, self.port, self.peer_cert, conn=self.state)

    def _prove(self, proven: bool = True) -> None:  # leaves the pending cap and its deadline
        if self.pending and proven:
            self.pending, self.state.proven = False, True
            self.server.admission.proven(self)

    async def _handle(self, req: Request, operation: Operation[Any] | None) -> None:
        try:
            ctx, body = self.server.dispatch.prepare(req, operation, self.context())
            assert operation is not None
            result = await operation.handler(ctx, body)
            self.state.proven |= operation.proves
            if isinstance(result, StreamReply):
                # Only a stream can be cancelled (PROTOCOL.md §3.1): a handler runs to its end.
                task = asyncio.current_task()
                assert task is not None
                self._streaming[req.id] = task
                if req.id in self._stop_streams:  # cancelled while its handler ran
                    self._stop_streams.discard(req.id)
                    task.cancel()  # the header goes, then the generator's first wait stops it
                try:
                    await self._stream(req.id, result)
                finally:
                    if self._streaming.get(req.id) is task:  # not a later stream reusing the id
                        del self._streaming[req.id]
                return
            frame = self.server.dispatch.reply_frame(req, result)
        except errors.ConnectionClosed:
            return
        except Exception as exc:
            frame = self.server.dispatch.error_frame(req, exc)
        self.write(frame)

    async def _stream(self, rid: int, reply: StreamReply) -> None:
        self.write(ServerProtocol.stream_start(rid, to_wire(reply.header)))
        try:
            async for chunk in reply.chunks:
                self.write_parts(encode_chunk_head(rid, len(chunk)), chunk)
                await self.writable()  # a stalled reader is cut off by deadline()
            trailer = reply.trailer()
        finally:
            aclose = getattr(reply.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        self.write(ServerProtocol.stream_end(rid, to_wire(trailer)))

    async def _close_with(self, error: errors.RequestError) -> None:
        """Answer the requests read before an unreadable frame, then the error; close."""
        if others := [t for t in self.tasks if t is not asyncio.current_task()]:
            await asyncio.wait(others, timeout=self.limits.slow_reader_timeout)
        self.write(ServerProtocol.error(0, error))
        await self.close()

    def deadline(self, now: float) -> float | None:
        """Act on a deadline that passed (:class:`ServerDeadlines`); return the next one."""
        due = self.deadlines.check(
            now,
            established=self.tls.established,
            paused_since=self.paused_since,
            serving=self._ready and self._reading,
            pending=self.pending,
            busy=bool(self.tasks or self._queue),
        )
        if not isinstance(due, Expired):
            return due
        log.debug("closing %s: %s", self.address, due.why)  # port scanners: not news
        if due.abort:
            self.abort()
            return None
        self._stop_reading()
        if due.error is not None:
            self.write(ServerProtocol.error(0, due.error))
        self._spawn(self.close())
        return None

    async def shutdown(self, grace: float) -> None:
        """Stop reading; let requests in flight finish within ``grace`` and their answers
        leave; then close (an idle connection is simply dropped)."""
        deadline = self.loop.time() + grace
        self._stop_reading()
        if not self.tasks and not self.buffered():
            self.abort()
            return
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=grace)
        for task in list(self.tasks):
            task.cancel()
        await self.close(max(0.0, deadline - self.loop.time()))


__all__ = ["Operation", "PackedReply", "RequestContext", "Server", "ServerLimits", "StreamReply"]
