"""The deadlines of a connection (PROTOCOL.md §6), as a pure policy: times are passed in.

:meth:`ServerDeadlines.check` says when to look again or what a passed deadline calls for;
:class:`RequestDeadlines` times out a client's requests. The asyncio connections
(:mod:`netproto.server`, :mod:`netproto.client`) own the one timer that calls them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from netproto.errors import RemoteProtocolError, RequestError, Timeout
from netproto.messages import ErrorReply, Reply, ServerMessage


class Limits(Protocol):
    """The deadlines of :class:`netproto.service.ServerLimits` that :class:`ServerDeadlines`
    reads (seconds)."""

    @property
    def handshake_timeout(self) -> float: ...
    @property
    def slow_reader_timeout(self) -> float: ...
    @property
    def pending_timeout(self) -> float: ...
    @property
    def frame_timeout(self) -> float: ...
    @property
    def idle_timeout(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Expired:
    """A deadline passed: drop the connection at once (``abort``), or stop reading, send
    ``error`` (if any, with id 0) and close gracefully."""

    why: str
    abort: bool = False
    error: RequestError | None = None


_HANDSHAKE = Expired("TLS handshake not completed in time", abort=True)
_SLOW_READER = Expired("slow reader cut off", abort=True)
_UNPROVEN = Expired("not proven in time")
_IDLE = Expired("idle")
_FRAME = Expired("frame not completed in time", error=Timeout("frame not completed in time"))


class ServerDeadlines:
    """When one server connection's timer fires next, and what is due when it does."""

    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        self.accepted = self.last_active = now
        #: When the frame now arriving started (None between frames).
        self.frame_started: float | None = None

    def received(self, now: float, *, in_frame: bool, completed: bool) -> float | None:
        """Bytes arrived (``completed``: some frame ended); the frame deadline to arm, if a
        frame started: each frame within frame_timeout of its first byte, not a burst."""
        self.last_active = now
        if not in_frame:
            self.frame_started = None
        elif completed or self.frame_started is None:
            self.frame_started = now
            return now + self.limits.frame_timeout
        return None

    def check(
        self,
        now: float,
        *,
        established: bool,
        paused_since: float | None,
        serving: bool,
        pending: bool,
        busy: bool,
    ) -> float | Expired | None:
        """The next deadline (None: none), or what passed by ``now``. ``busy`` (requests
        in flight or queued) is not idle: a client receiving a fetch sends nothing. Checked in
        this order: handshake, slow reader, then (while serving) pending, frame, idle."""
        limits = self.limits
        if not established:
            return _due(now, self.accepted + limits.handshake_timeout, _HANDSHAKE)
        if paused_since is not None:
            return _due(now, paused_since + limits.slow_reader_timeout, _SLOW_READER)
        if not serving:
            return None
        frame = self.frame_started
        checks = (
            (self.accepted + limits.pending_timeout if pending else None, _UNPROVEN),
            (frame + limits.frame_timeout if frame is not None else None, _FRAME),
            (None if busy else self.last_active + limits.idle_timeout, _IDLE),
        )
        for when, expired in checks:
            if when is not None and now >= when:
                return expired
        return min((w for w, _ in checks if w is not None), default=now + limits.idle_timeout)


def _due(now: float, when: float, expired: Expired) -> float | Expired:
    return expired if now >= when else when


class Waiter(Protocol):
    """What waits for an answer (an :class:`asyncio.Future`)."""

    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


W = TypeVar("W", bound=Waiter)


class RequestDeadlines(Generic[W]):
    """A client's plain requests in flight: who waits for each answer, and until when."""

    def __init__(self) -> None:
        self._waiting: dict[int, tuple[W, float, str]] = {}  # by id: waiter, deadline, op

    def __contains__(self, rid: object) -> bool:
        return rid in self._waiting

    def add(self, rid: int, waiter: W, when: float, op: str) -> float:
        """Wait for the answer to ``rid`` until ``when``; return ``when``."""
        self._waiting[rid] = (waiter, when, op)
        return when

    def remove(self, rid: int) -> None:
        """Stop waiting for ``rid``."""
        self._waiting.pop(rid, None)

    def answer(self, msg: ServerMessage) -> None:
        """Settle the waiter of ``msg``'s id (an answer nobody waits for is dropped)."""
        waiter = self._waiting.get(msg.id, (None,))[0]
        if waiter is None or waiter.done():
            return  # a request that timed out or was abandoned
        if isinstance(msg, Reply):
            waiter.set_result(msg.body)
        elif isinstance(msg, ErrorReply):
            waiter.set_exception(msg.error)
        else:
            waiter.set_exception(RemoteProtocolError("stream frame for a plain request"))

    def expire(self, now: float) -> float | None:
        """Time out the requests whose deadline passed by ``now``; the next deadline left."""
        for waiter, when, op in self._waiting.values():
            if when <= now and not waiter.done():
                waiter.set_exception(Timeout(f"no answer to {op!r} in time"))
        return min((w for f, w, _ in self._waiting.values() if not f.done()), default=None)

    def fail(self, failure: BaseException) -> None:
        """Fail every request still waiting."""
        for waiter, _, _ in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(failure)
