"""What both daemons share: the connection-limit and ``--metrics`` flags, logging set-up, and
the signal loop.

The limits themselves are :class:`netproto.server.ServerLimits` (PROTOCOL.md §6); this module
only maps them to flags, so the wire package holds the protocol and nothing of the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from netproto.server import ServerLimits
from runner.fdlimit import MAX_DEFAULT_CONNECTIONS, connections_for

log = logging.getLogger(__name__)


def add_daemon_flags(parser: argparse.ArgumentParser) -> None:
    """Add the connection limits (``--handshake-timeout``, ... the caps) and ``-v``."""
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
        default=None,
        metavar="N",
        help="connections in total before BUSY (default: half the open-file limit less 256,"
        f" at most {MAX_DEFAULT_CONNECTIONS})",
    )
    group.add_argument(
        "--max-connections-per-address",
        type=int,
        default=d.max_connections_per_address,
        metavar="N",
        help="connections from one address (an IPv6 /64) before BUSY (%(default)s)",
    )
    group.add_argument(
        "--max-pending",
        type=int,
        default=d.max_pending,
        metavar="N",
        help="connections not yet proven by a token or login, in total (%(default)s)",
    )
    group.add_argument(
        "--max-pending-per-address",
        type=int,
        default=d.max_pending_per_address,
        metavar="N",
        help="connections not yet proven, from one address or /64 (%(default)s)",
    )
    group.add_argument(
        "--pending-timeout",
        type=float,
        default=d.pending_timeout,
        metavar="S",
        help="seconds a connection has to show a valid token or log in (%(default)s)",
    )
    parser.add_argument(
        "--metrics",
        type=metrics_address,
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics ([::1]:PORT for IPv6;"
        " port 0 picks one; default: off)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )


def metrics_address(text: str) -> tuple[str, int]:
    """``--metrics HOST:PORT`` (``[v6addr]:PORT`` for IPv6) as ``(host, port)``."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"put an IPv6 address in brackets: {text!r}")
    if not (sep and host and port.isascii() and port.isdigit() and int(port) <= 65535):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (port 0-65535), not {text!r}")
    return host, int(port)


def limits_from_args(args: argparse.Namespace, open_files: int) -> ServerLimits:
    """The :class:`ServerLimits` the flags of :func:`add_daemon_flags` describe; without
    ``--max-connections``, the cap ``open_files`` descriptors allow (:mod:`runner.fdlimit`:
    a daemon passes what :func:`runner.fdlimit.raise_open_file_limit` returned at start)."""
    return ServerLimits(
        handshake_timeout=args.handshake_timeout,
        frame_timeout=args.frame_timeout,
        idle_timeout=args.idle_timeout,
        max_connections=(
            connections_for(open_files) if args.max_connections is None else args.max_connections
        ),
        max_connections_per_address=args.max_connections_per_address,
        max_pending=args.max_pending,
        max_pending_per_address=args.max_pending_per_address,
        pending_timeout=args.pending_timeout,
        proof_required=True,
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
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    *,
    foreground: Callable[[], Awaitable[object]] | None = None,
    signals: Mapping[signal.Signals, Callable[[], None]] | None = None,
) -> None:
    """Start, wait for SIGINT or SIGTERM, then stop (drain) and return.

    ``foreground`` (the peer's shell) runs in place of the wait, and the run ends when it
    returns; it may install signal handlers of its own. ``signals`` adds handlers for other
    signals (the peer re-syncs on SIGHUP). ``stop`` runs even if ``start`` fails.
    """
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptErrorLog())
    stopping = asyncio.Event()
    handlers = {signal.SIGINT: stopping.set, signal.SIGTERM: stopping.set, **(signals or {})}
    for sig, handler in handlers.items():
        loop.add_signal_handler(sig, handler)
    try:
        await start()
        if foreground is not None:
            await foreground()
        else:
            await stopping.wait()
            log.info("signal received, draining")
    finally:
        for sig in handlers:
            loop.remove_signal_handler(sig)
        await stop()
