"""What both daemons share (runner/daemon.py): the flags, logging, and the signal loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from netproto.server import ServerLimits
from runner import (
    AcceptErrorLog,
    StartupError,
    add_daemon_flags,
    configure_logging,
    limits_from_args,
    run_until_signalled,
)
from runner.daemon import ACCEPT_FAILED
from runner.fdlimit import connections_for

TIMEOUT = 10.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daemon")
    add_daemon_flags(parser)
    return parser


# --- flags -------------------------------------------------------------------------------


def test_without_flags_the_limits_are_the_server_defaults_with_proof_required() -> None:
    args = _parser().parse_args([])
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = limits_from_args(args, 4096)
    assert limits == ServerLimits(proof_required=True, max_connections=connections_for(4096))
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == before  # mapping flags changes nothing
    assert args.verbose == 0


def test_each_limit_flag_sets_its_limit() -> None:
    args = _parser().parse_args(
        [
            *("--handshake-timeout", "1.5", "--frame-timeout", "2", "--idle-timeout", "3"),
            *("--max-connections", "40", "--max-connections-per-address", "5", "-vv"),
            *("--max-pending", "7", "--max-pending-per-address", "3", "--pending-timeout", "4"),
        ]
    )
    assert limits_from_args(args, 4096) == ServerLimits(
        handshake_timeout=1.5,
        frame_timeout=2.0,
        idle_timeout=3.0,
        max_connections=40,
        max_connections_per_address=5,
        max_pending=7,
        max_pending_per_address=3,
        pending_timeout=4.0,
        proof_required=True,
    )
    assert args.verbose == 2


# --- logging -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verbosity", "level"),
    [(0, logging.WARNING), (1, logging.INFO), (2, logging.DEBUG), (5, logging.DEBUG)],
)
def test_each_v_lowers_the_log_level_down_to_debug(
    monkeypatch: pytest.MonkeyPatch, verbosity: int, level: int
) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: seen.update(kw))
    configure_logging(verbosity)
    assert seen["level"] == level


class _Loop:
    """The two things :class:`AcceptErrorLog` asks of a loop: the time and the default."""

    def __init__(self) -> None:
        self.now = 0.0
        self.passed_on: list[dict[str, Any]] = []

    def time(self) -> float:
        return self.now

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.passed_on.append(context)


def test_failed_accepts_are_one_warning_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler, loop = AcceptErrorLog(interval=10.0), _Loop()
    context = {"message": ACCEPT_FAILED, "exception": OSError(24, "Too many open files")}
    with caplog.at_level(logging.WARNING, logger="runner.daemon"):
        for now in (0.0, 1.0, 2.0, 9.0, 10.0):
            loop.now = now
            handler(loop, context)  # type: ignore[arg-type]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "1 failures" in warnings[0] and "4 failures" in warnings[1]
    assert loop.passed_on == []


def test_other_loop_errors_go_to_the_default_handler() -> None:
    handler, loop = AcceptErrorLog(), _Loop()
    handler(loop, {"message": "Task exception was never retrieved"})  # type: ignore[arg-type]
    assert loop.passed_on == [{"message": "Task exception was never retrieved"}]


# --- the signal loop ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _bounded() -> AsyncIterator[asyncio.AbstractEventLoop]:
    """A timeout, and the loop's exception handler put back (run_until_signalled sets one)."""
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    try:
        async with asyncio.timeout(TIMEOUT):
            yield loop
    finally:
        loop.set_exception_handler(before)


class _Daemon:
    """Records what the loop asked of it."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_it_runs_until_sigint_or_sigterm_then_stops(sig: signal.Signals) -> None:
    daemon = _Daemon()

    async def start() -> None:
        await daemon.start()
        os.kill(os.getpid(), sig)

    async with _bounded() as loop:
        await run_until_signalled(start, daemon.stop)
    assert daemon.events == ["start", "stop"]
    assert not loop.remove_signal_handler(sig)  # its handler is gone


async def test_extra_signals_reach_their_handlers() -> None:
    daemon, hups = _Daemon(), asyncio.Event()

    async def start() -> None:
        await daemon.start()
        os.kill(os.getpid(), signal.SIGHUP)

    def on_hup() -> None:
        hups.set()
        os.kill(os.getpid(), signal.SIGTERM)

    async with _bounded() as loop:
        await run_until_signalled(start, daemon.stop, signals={signal.SIGHUP: on_hup})
    assert hups.is_set() and daemon.events == ["start", "stop"]
    assert not loop.remove_signal_handler(signal.SIGHUP)


async def test_the_run_ends_when_the_foreground_returns() -> None:
    daemon = _Daemon()

    async def foreground() -> None:
        daemon.events.append("shell")

    async with _bounded():
        await run_until_signalled(daemon.start, daemon.stop, foreground=foreground)
    assert daemon.events == ["start", "shell", "stop"]


async def test_a_failed_start_still_stops_and_the_error_propagates() -> None:
    daemon = _Daemon()

    async def start() -> None:
        raise StartupError("cannot listen on 127.0.0.1:7000")

    async with _bounded() as loop:
        with pytest.raises(StartupError, match="cannot listen"):
            await run_until_signalled(start, daemon.stop)
    assert daemon.events == ["stop"]
    assert not loop.remove_signal_handler(signal.SIGTERM)


async def test_failed_accepts_are_handled_while_it_runs() -> None:
    daemon, seen = _Daemon(), []

    async def start() -> None:
        seen.append(asyncio.get_running_loop().get_exception_handler())
        os.kill(os.getpid(), signal.SIGTERM)

    async with _bounded():
        await run_until_signalled(start, daemon.stop)
    assert isinstance(seen[0], AcceptErrorLog)
