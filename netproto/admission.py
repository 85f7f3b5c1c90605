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

from netproto.service import ServerLimits


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


class Admission:
    """Counts connections by address key, pending or not, against a server's caps."""

    def __init__(self, caps: ServerLimits) -> None:
        self.caps = caps
        self.total = 0
        self.pending = 0
        self._by_key: Counter[str] = Counter()
        self._pending_by_key: Counter[str] = Counter()

    def admit(self, key: str, *, closing: bool = False) -> Admit:
        """Count a new (pending) connection from ``key``, or say why not to serve it."""
        caps, mine = self.caps, self._by_key[key]
        if (
            self._pending_by_key[key] >= caps.max_pending_per_address
            or self.total >= 2 * caps.max_connections
            or mine >= 2 * caps.max_connections_per_address
        ):
            return Admit.DROP
        over = (
            closing
            or self.total >= caps.max_connections
            or mine >= caps.max_connections_per_address
        )
        self.total += 1
        self._by_key[key] += 1
        self.pending += 1
        self._pending_by_key[key] += 1
        return Admit.BUSY if over else Admit.SERVE

    @property
    def over_pending(self) -> bool:
        """True while more connections are pending than the total pending cap: the caller
        closes its oldest pending connection."""
        return self.pending > self.caps.max_pending

    def proven(self, key: str) -> None:
        """A pending connection from ``key`` proved itself: it leaves the pending cap."""
        self.pending -= 1
        _decrement(self._pending_by_key, key)

    def release(self, key: str, *, pending: bool) -> None:
        """A counted connection from ``key`` ended."""
        self.total -= 1
        _decrement(self._by_key, key)
        if pending:
            self.proven(key)


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
