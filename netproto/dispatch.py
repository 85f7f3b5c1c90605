"""Answering requests from a handler table, sans I/O: authentication, parsing, and the
frames of replies and errors (PROTOCOL.md §3, §5). :mod:`netproto.server` runs it on a
connection; here it needs none.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from netproto import errors
from netproto.messages import Request
from netproto.protocol import ServerProtocol
from netproto.service import (
    Authenticator,
    Operation,
    PackedReply,
    RequestContext,
    to_wire,
)
from netproto.tokens import Principal

log = logging.getLogger(__name__)


class Dispatcher:
    """One server's handler table and how its requests are checked and answered."""

    def __init__(
        self,
        operations: Mapping[str, Operation[Any]],
        authenticate: Authenticator | None,
        max_frame: int,
    ) -> None:
        self.operations = operations
        self.authenticate = authenticate
        self.max_frame = max_frame

    def prepare(
        self, req: Request, operation: Operation[Any] | None, ctx: RequestContext
    ) -> tuple[RequestContext, Any]:
        """The context and typed body for the handler, or the request's error."""
        if operation is None:
            raise errors.UnknownOp(f"unknown operation {req.op!r}")
        if operation.needs_token:
            ctx.principal = self.principal(req.token, ctx)
        return ctx, operation.parse(req.body)

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

    @staticmethod
    def error_frame(req: Request, exc: Exception) -> bytes:
        """The error frame for ``exc``: its own code, or INTERNAL with no detail (the
        traceback goes to the log)."""
        if not isinstance(exc, errors.RequestError):
            log.error("handler for %r failed", req.op, exc_info=exc)
            exc = errors.Internal()
        return ServerProtocol.error(req.id, exc)
