"""What a server's handler table is made of: operations, the request context, replies.

Pure data, no I/O: handlers are written and tested against these alone (a handler test needs
no server); :mod:`netproto.server` runs them on a connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from cryptography import x509

from netproto.framing import DEFAULT_MAX_FRAME
from netproto.tokens import Principal

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
    #: Connections not yet proven (see :mod:`netproto.admission`): their own caps, and the
    #: time they have to prove themselves before they are closed.
    max_pending: int = 256
    max_pending_per_address: int = 16
    pending_timeout: float = 30.0
    #: Whether a connection must prove itself by a valid token or a successful answer to an
    #: operation that ``proves`` (a login), as the daemons require; else finishing TLS is.
    proof_required: bool = False


@dataclass
class ConnectionState:
    """Per-connection memory: the last verified token, so a token is verified once; and
    whether the client proved itself (a valid token, or a successful login)."""

    token: str | None = None
    principal: Principal | None = None
    proven: bool = False


@dataclass
class RequestContext:
    """What a handler may know about the connection a request came on."""

    address: str
    port: int
    peer_cert: x509.Certificate | None
    principal: Principal | None = None
    conn: ConnectionState = field(default_factory=ConnectionState)
    #: When the request started, on the clock of the server's :class:`RequestObserver`
    #: (set only when there is one).
    started: float = 0.0

    @property
    def subject(self) -> str:
        """The authenticated user (only for operations that require a token)."""
        assert self.principal is not None
        return self.principal.subject


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
    """One entry of a server's handler table.

    ``handler`` is an ``async`` function, or with ``inline`` a plain one that answers at once
    (from memory): it runs as the request is read, with no task and no extra loop turn.
    """

    parse: Callable[[dict[str, Any]], Req]
    handler: Callable[[RequestContext, Req], Any]
    needs_token: bool = True
    inline: bool = False
    #: A successful answer proves the client (a login): see ``ServerLimits.proof_required``.
    proves: bool = False


#: Verifies a request's token against the client certificate of its connection (RFC 8705
#: binding, PROTOCOL.md §8) and returns who it names; raises the token's wire error.
Authenticator = Callable[[str, x509.Certificate | None], Principal]


class RequestObserver(Protocol):
    """Told of every request a server answers, for an operator's metrics (README.md,
    "Operating"). Called on the event loop, on the hot path: each call must be cheap and must
    not raise. The core keeps no clock, so the observer brings its own."""

    def clock(self) -> float:
        """Now, in seconds, on a monotonic clock."""
        ...

    def request_done(self, operation: str, code: str, seconds: float) -> None:
        """A request ended: its operation (a name of the handler table, or ``unknown``),
        ``ok`` or its error code (PROTOCOL.md §5; ``CLOSED`` if the connection went first),
        and the seconds from its parsing to its answer (a stream's last chunk)."""
        ...

    def bytes_served(self, operation: str, count: int) -> None:
        """``count`` payload bytes of a streamed answer went to the connection."""
        ...


def to_wire(value: Any) -> Any:
    """A handler's result as a msgpack-ready value (dataclasses expose ``to_wire``)."""
    if hasattr(value, "to_wire"):
        return value.to_wire()
    if isinstance(value, list | tuple):
        return [to_wire(v) for v in value]
    return value
