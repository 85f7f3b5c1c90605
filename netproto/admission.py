"""Connection caps (PROTOCOL.md §6): who may hold how many connections, sans I/O.

Every connection counts against a total and a per-address cap; an IPv6 client is counted by
its /64, since one host holds a whole /64. A connection is *pending* until the other side has
proved something (a valid token, or a login; or where that is not required, finishing TLS).
Pending connections also count against much smaller caps of their own: past the per-address
one a new connection is dropped, and past the total one the *oldest* pending connection makes
room, so strangers who never finish a handshake or never authenticate can neither fill the
caps authenticated clients need nor keep a new client from proving itself.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from enum import Enum
from typing import Generic, TypeVar

from netproto.service import ServerLimits

C = TypeVar("C")


class Admit(Enum):
    """What to do with a new connection."""

    SERVE = "serve"
    BUSY = "busy"  # answer BUSY after the handshake, then close
    DROP = "drop"  # close at once: no handshake is spent on it


def address_key(address: str) -> str:
    """The key a client is counted under: its IPv4 address, or its IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Admission(Generic[C]):
    """Counts connections (any hashable handle) by address key, pending or not, against a
    server's caps; remembers the order they came in, to pick the oldest pending one."""

    def __init__(self, caps: ServerLimits) -> None:
        self.caps = caps
        self._keys: dict[C, str] = {}  # every counted connection, in the order admitted
        self._pending: dict[C, str] = {}  # those not yet proven, in the order admitted
        self._by_key: Counter[str] = Counter()
        self._pending_by_key: Counter[str] = Counter()
        #: Connections offered to :meth:`admit` so far, served or not (for metrics).
        self.accepted = 0

    @property
    def connections(self) -> list[C]:
        """The connections counted now, oldest first."""
        return list(self._keys)

    def __contains__(self, conn: object) -> bool:
        return conn in self._keys

    @property
    def total(self) -> int:
        """How many connections are counted."""
        return len(self._keys)

    @property
    def pending(self) -> int:
        """How many of them are not yet proven."""
        return len(self._pending)

    def admit(self, conn: C, key: str, *, closing: bool = False) -> tuple[Admit, list[C]]:
        """Count a new (pending) connection from ``key``, or say why not to serve it; also
        return the oldest pending connections it pushed out (the caller closes them)."""
        self.accepted += 1
        caps, mine = self.caps, self._by_key[key]
        if (
            self._pending_by_key[key] >= caps.max_pending_per_address
            or self.total >= 2 * caps.max_connections
            or mine >= 2 * caps.max_connections_per_address
        ):
            return Admit.DROP, []
        over = closing or self.total >= caps.max_connections
        self._keys[conn] = self._pending[conn] = key
        self._by_key[key] += 1
        self._pending_by_key[key] += 1
        evicted = []
        while self.pending > caps.max_pending:
            oldest = next(iter(self._pending))
            self.release(oldest)
            evicted.append(oldest)
        busy = over or mine >= caps.max_connections_per_address
        return (Admit.BUSY if busy else Admit.SERVE), evicted

    def proven(self, conn: C) -> None:
        """A pending connection proved itself: it leaves the pending cap."""
        key = self._pending.pop(conn, None)
        if key is not None:
            _decrement(self._pending_by_key, key)

    def release(self, conn: C) -> None:
        """A connection ended (idempotent)."""
        self.proven(conn)
        key = self._keys.pop(conn, None)
        if key is not None:
            _decrement(self._by_key, key)


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
