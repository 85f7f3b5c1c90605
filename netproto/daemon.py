"""What every daemon shares: the §6 limit flags, logging set-up, and running until a signal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from netproto.errors import P2PError
from netproto.server import ServerLimits

log = logging.getLogger(__name__)


class StartupError(P2PError):
    """A daemon cannot start; the message is one readable line (no traceback is shown)."""


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--handshake-timeout``, ``--frame-timeout``, ``--idle-timeout`` and the caps."""
    d = ServerLimits()
    group = parser.add_argument_group("connection limits")
    group.add_argument(
        "--handshake-timeout",
        type=float,
        default=d.handshake_timeout,
        metavar="S",
        help="seconds to complete the TLS handshake (%(default)s)",
    )
    group.add_argument(
        "--frame-timeout",
        type=float,
        default=d.frame_timeout,
        metavar="S",
        help="seconds for a frame to arrive once started (%(default)s)",
    )
    group.add_argument(
        "--idle-timeout",
        type=float,
        default=d.idle_timeout,
        metavar="S",
        help="seconds before an idle connection is closed (%(default)s)",
    )
    group.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        metavar="N",
        help="connections in total before BUSY (%(default)s)",
    )
    group.add_argument(
        "--max-connections-per-address",
        type=int,
        default=d.max_connections_per_address,
        metavar="N",
        help="connections from one address before BUSY (%(default)s)",
    )
    group.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )


def limits_from_args(args: argparse.Namespace) -> ServerLimits:
    """The :class:`ServerLimits` the flags of :func:`add_limit_flags` describe."""
    return ServerLimits(
        handshake_timeout=args.handshake_timeout,
        frame_timeout=args.frame_timeout,
        idle_timeout=args.idle_timeout,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_connections_per_address,
    )


def configure_logging(verbosity: int) -> None:
    """Log to stderr: warnings by default, info with -v, debug with -vv."""
    level = logging.WARNING - 10 * min(verbosity, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


ACCEPT_FAILED = "socket.accept() out of system resource"


class AcceptErrorLog:
    """Loop exception handler: accept() running out of descriptors is one warning a while.

    asyncio logs each failed accept() (EMFILE, ENFILE, ENOBUFS, ENOMEM) with a traceback,
    about a hundred times a second while a client keeps the process at its descriptor
    limit, and retries by itself a second later; the daemon keeps serving its open
    connections meanwhile. Left alone that floods the log; this says it once per
    ``interval`` with a count. Everything else goes to the default handler.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.suppressed = 0
        self._next_warning = float("-inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_FAILED:
            loop.default_exception_handler(context)
            return
        self.suppressed += 1
        now = loop.time()
        if now >= self._next_warning:
            log.warning(
                "cannot accept new connections (%s); retrying (%d failures since the last warning)",
                context.get("exception"),
                self.suppressed,
            )
            self.suppressed = 0
            self._next_warning = now + self.interval


async def run_until_signalled(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    """Start, wait for SIGINT or SIGTERM, then stop (drain) and return."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptErrorLog())
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await start()
        await stopping.wait()
        log.info("signal received, draining")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await stop()
