"""How a command ends: the one exit-code table, the errors that carry a code, and the guard.

``indexd``, ``peerd`` and ``python -m certs`` all end through :func:`run_command`, so the same
outcome gives the same exit status and the same one line on stderr whichever command it is
(README.md, "Exit status").
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
from typing import ClassVar, TextIO

from netproto.errors import P2PError


class ExitCode(enum.IntEnum):
    """The exit status of every command of the project."""

    #: Done; for a daemon, drained and stopped after SIGINT or SIGTERM (or its shell quit).
    OK = 0
    #: Could not do what was asked: a daemon could not start, a ``certs`` command failed, a
    #: ``p2pshare`` command was refused or found nothing.
    FAILURE = 1
    #: The command line or the environment is wrong (argparse exits with 2 for these too).
    USAGE = 2
    #: ``p2pshare``: no running peer answers on the control socket of this user's state folder.
    NO_PEER = 3
    #: A second SIGINT while draining cut the shutdown short (128 + SIGINT, as shells report).
    INTERRUPTED = 130


class CommandError(P2PError):
    """A command cannot go on: one readable line on stderr, and the exit code of its class."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILURE


class UsageError(CommandError):
    """A problem with the command line or the environment (e.g. no password to be had)."""

    exit_code = ExitCode.USAGE


class StartupError(CommandError):
    """A daemon cannot start; the message is one readable line (no traceback is shown)."""


def run_command(
    prog: str, command: Callable[[], object], *, stderr: TextIO | None = None
) -> ExitCode:
    """Run a command's body and return its exit code; a :class:`CommandError` is one line.

    argparse's own exits are kept (``--help`` is OK, a bad flag is USAGE, its message already
    printed). Anything unexpected propagates, with its traceback.
    """
    err = stderr if stderr is not None else sys.stderr
    try:
        command()
    except CommandError as exc:
        print(f"{prog}: {exc}", file=err)
        return exc.exit_code
    except SystemExit as exc:  # raised by argparse only: --help, or a usage error it printed
        return ExitCode.OK if exc.code in (None, 0) else ExitCode.USAGE
    except KeyboardInterrupt:  # a second Ctrl-C while draining
        return ExitCode.INTERRUPTED
    return ExitCode.OK
