"""Answering requests from a handler table, sans I/O: authentication, parsing, and the
frames of replies and errors (PROTOCOL.md §3, §5). :mod:`netproto.server` runs it on a
connection; here it needs none.

With a :class:`~netproto.service.RequestObserver` (:meth:`Dispatcher.observe`) every request
is reported once it ends: its operation, outcome and duration, and a stream's payload bytes.
The observer brings the clock; the labels it gets are bounded — names of the handler table
and error codes, never anything the client chose.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from netproto import errors
from netproto.messages import Request
from netproto.protocol import ServerProtocol
from netproto.service import (
    Authenticator,
    Operation,
    PackedReply,
    RequestContext,
    RequestObserver,
    StreamReply,
    to_wire,
)
from netproto.tokens import Principal

log = logging.getLogger(__name__)

#: The outcome of a request answered normally.
OK = "ok"
#: The outcome of a request whose connection closed (or was cancelled) before it was answered.
CLOSED = "CLOSED"
#: The operation label of a request naming no operation of the table (what it named is the
#: client's choice, so it is not reported).
UNKNOWN_OPERATION = "unknown"


class Dispatcher:
    """One server's handler table and how its requests are checked and answered.

    ``table`` is the handler table as given; once observed, ``observed_operations`` is the
    same table with each handler wrapped to report to the observer; ``operations`` is
    whichever of the two requests are answered from.
    """

    def __init__(
        self,
        operations: Mapping[str, Operation[Any]],
        authenticate: Authenticator | None,
        max_frame: int,
        *,
        observer: RequestObserver | None = None,
    ) -> None:
        self.table = operations
        self.observed_operations: Mapping[str, Operation[Any]] | None = None
        self.authenticate = authenticate
        self.max_frame = max_frame
        self.observer: RequestObserver | None = None
        if observer is not None:
            self.observe(observer)

    def observe(self, observer: RequestObserver) -> None:
        """Report every request from now on to ``observer``: each handler of the table is
        wrapped to time it (replacing any earlier observer)."""
        self.observer = observer
        self.observed_operations = {
            name: dataclasses.replace(op, handler=_observed(name, op, observer))
            for name, op in self.table.items()
        }

    @property
    def operations(self) -> Mapping[str, Operation[Any]]:
        """The table requests are answered from: ``observed_operations`` once observed,
        else ``table``."""
        observed = self.observed_operations
        return self.table if observed is None else observed

    def prepare(
        self, req: Request, operation: Operation[Any] | None, ctx: RequestContext
    ) -> tuple[RequestContext, Any]:
        """The context and typed body for the handler, or the request's error."""
        observer = self.observer
        if observer is not None:
            ctx.started = observer.clock()
        try:
            if operation is None:
                raise errors.UnknownOp(f"unknown operation {req.op!r}")
            if operation.needs_token:
                ctx.principal = self.principal(req.token, ctx)
            return ctx, operation.parse(req.body)
        except Exception as exc:
            if observer is not None:
                name = UNKNOWN_OPERATION if operation is None else req.op
                observer.request_done(name, outcome(exc), observer.clock() - ctx.started)
            raise

    def principal(self, token: str | None, ctx: RequestContext) -> Principal:
        """Who ``token`` names, checked against the connection's client certificate; verified
        once per token per connection (the signature check costs more than a whole pipelined
        request, BENCHMARKS.md: the certificate cannot change), expiry on every use."""
        if token is None:
            raise errors.AuthRequired()
        if self.authenticate is None:
            raise errors.Internal()
        state = ctx.conn
        if token == state.token and state.principal is not None:
            state.principal.check_current()
            return state.principal
        principal = self.authenticate(token, ctx.peer_cert)
        state.token, state.principal, state.proven = token, principal, True
        return principal

    def reply_frame(self, req: Request, result: Any) -> bytes:
        """The frame of a handler's result; INTERNAL if it would exceed the frame limit."""
        if isinstance(result, PackedReply):
            frame = ServerProtocol.reply_packed(req.id, result.body)
        else:
            frame = ServerProtocol.reply(req.id, to_wire(result))
        if len(frame) - 4 > self.max_frame:
            log.error("reply to %s is %d bytes, over the frame limit", req.op, len(frame))
            raise errors.Internal()
        return frame

    def answer_inline(self, req: Request, operation: Operation[Any], ctx: RequestContext) -> bytes:
        """Run an ``inline`` operation's handler now; its reply or error frame."""
        try:
            prepared, body = self.prepare(req, operation, ctx)
            return self.reply_frame(req, operation.handler(prepared, body))
        except Exception as exc:
            return self.error_frame(req, exc)

    @staticmethod
    def error_frame(req: Request, exc: Exception) -> bytes:
        """The error frame for ``exc``: its own code, or INTERNAL with no detail (the
        traceback goes to the log)."""
        if not isinstance(exc, errors.RequestError):
            log.error("handler for %r failed", req.op, exc_info=exc)
            exc = errors.Internal()
        return ServerProtocol.error(req.id, exc)


def outcome(exc: BaseException) -> str:
    """How a request that raised ``exc`` ended, as reported: the wire code of its error frame
    (INTERNAL for anything unexpected), or CLOSED when no frame could be sent."""
    if isinstance(exc, errors.RequestError):
        # Only an error rebuilt from another server's reply could carry a code not of §5.
        return exc.code if exc.code in errors.ERRORS_BY_CODE else errors.Internal.code
    if isinstance(exc, errors.ConnectionClosed) or not isinstance(exc, Exception):
        return CLOSED  # the connection went (a cancelled task, a closed stream)
    return errors.Internal.code


def _observed(
    name: str, operation: Operation[Any], observer: RequestObserver
) -> Callable[[RequestContext, Any], Any]:
    """``operation``'s handler, reporting its request to ``observer`` when it ends."""
    handler = operation.handler
    clock, done = observer.clock, observer.request_done

    if operation.inline:

        def answer_inline(ctx: RequestContext, body: Any) -> Any:
            try:
                result = handler(ctx, body)
            except Exception as exc:
                done(name, outcome(exc), clock() - ctx.started)
                raise
            done(name, OK, clock() - ctx.started)
            return result

        return answer_inline

    async def answer(ctx: RequestContext, body: Any) -> Any:
        try:
            result = await handler(ctx, body)
        except BaseException as exc:
            done(name, outcome(exc), clock() - ctx.started)
            raise
        if isinstance(result, StreamReply):
            chunks = _observed_chunks(name, result.chunks, observer, ctx.started)
            return dataclasses.replace(result, chunks=chunks)
        done(name, OK, clock() - ctx.started)
        return result

    return answer


async def _observed_chunks(
    name: str,
    chunks: AsyncIterator[bytes | memoryview],
    observer: RequestObserver,
    started: float,
) -> AsyncIterator[bytes | memoryview]:
    """A stream's chunks, counted as they go; the request ends with the last one."""
    code = CLOSED  # unless it runs to its end or raises: the server stopped taking it
    try:
        async for chunk in chunks:
            observer.bytes_served(name, len(chunk))
            yield chunk
        code = OK
    except Exception as exc:
        code = outcome(exc)
        raise
    finally:
        observer.request_done(name, code, observer.clock() - started)
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
