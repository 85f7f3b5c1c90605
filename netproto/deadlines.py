"""The deadlines of a server connection (PROTOCOL.md §6), as a pure policy: times are passed
in, and :meth:`ServerDeadlines.check` says when to look again or what a passed deadline calls
for. The asyncio connection (:mod:`netproto.server`) owns the one timer that calls it.
"""

from __future__ import annotations

from dataclasses import dataclass

from netproto.errors import RequestError, Timeout
from netproto.service import ServerLimits


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


class ServerDeadlines:
    """When one server connection's timer fires next, and what is due when it does."""

    def __init__(self, limits: ServerLimits, now: float) -> None:
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
        in flight or queued) is not idle: a client receiving a fetch sends nothing."""
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
            (
                frame + limits.frame_timeout if frame is not None else None,
                Expired(
                    "frame not completed in time", error=Timeout("frame not completed in time")
                ),
            ),
            (None if busy else self.last_active + limits.idle_timeout, _IDLE),
        )
        for when, expired in checks:
            if when is not None and now >= when:
                return expired
        return min((w for w, _ in checks if w is not None), default=now + limits.idle_timeout)


def _due(now: float, when: float, expired: Expired) -> float | Expired:
    return expired if now >= when else when
