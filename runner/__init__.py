"""How the project's commands run: ``indexd``, ``peerd`` and ``python -m certs``.

``runner.command`` holds the one exit-code table and the errors that carry a code;
``runner.daemon`` what both daemons share (connection-limit flags, logging, the signal loop).
The wire protocol itself is ``netproto``'s; nothing here is part of it.
"""

from runner.command import CommandError, ExitCode, StartupError, UsageError, run_command
from runner.daemon import (
    AcceptErrorLog,
    add_daemon_flags,
    configure_logging,
    limits_from_args,
    run_until_signalled,
)

__all__ = [
    "AcceptErrorLog",
    "CommandError",
    "ExitCode",
    "StartupError",
    "UsageError",
    "add_daemon_flags",
    "configure_logging",
    "limits_from_args",
    "run_command",
    "run_until_signalled",
]
