"""``python -m peerd`` / ``peerd``: run a peer until SIGINT or SIGTERM (or until the shell quits).

Takes the original client's flags, single-dash spellings included (``-hostname peer1
-index_server_name HOST[:PORT] -peer_server_port 7001 -username peer1 -file_directory
peer1-files -certificate peer1.crt -private_key peer1.key``), plus ``--ca``. The password comes
from ``P2P_PASSWORD`` or a prompt, so it need not sit in ``argv`` (``-password`` still works).
Every other setting may come from ``~/.config/p2pshare/peerd.toml`` (``--config FILE``), so
``peerd`` alone starts a configured peer; flags override the file.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from certs.requests import parse_fingerprint
from peerd.client import DEFAULT_INDEX_PORT, MAX_INDEX_SERVERS, parse_index_addresses
from peerd.control import default_state_dir
from peerd.daemon import (
    DEFAULT_PEER_PORT,
    DEFAULT_PING_INTERVAL,
    PeerConfig,
    PeerDaemon,
)
from peerd.download import DEFAULT_MAX_DOWNLOAD_SIZE, DownloadLimits
from peerd.enrollment import StateFiles
from peerd.pacing import DEFAULT_MIN_RATE, DEFAULT_RATE_WINDOW, PacePolicy, format_rate
from peerd.server import DEFAULT_MAX_FETCHES, DEFAULT_MAX_FETCHES_PER_REQUESTER
from peerd.staging import DEFAULT_PARTIAL_MAX_AGE
from peerd.watch import DEFAULT_RESCAN_INTERVAL
from runner import (
    ExitCode,
    UsageError,
    add_daemon_flags,
    configure_logging,
    limits_from_args,
    run_command,
    run_until_signalled,
)
from runner.config import add_config_flag, parse_with_config
from runner.fdlimit import raise_open_file_limit

log = logging.getLogger("peerd")

PASSWORD_ENV = "P2P_PASSWORD"  # noqa: S105 - the variable's name, not a password


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError("must be positive")
        return value

    return parse


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """A byte count: ``1048576``, or with a binary unit ``16K``, ``512M``, ``64G``, ``1T``
    (``KiB``/``KB`` and ``/s`` spellings too); ArgumentTypeError if malformed."""
    body = text.strip().upper().removesuffix("/S").removesuffix("IB").removesuffix("B")
    unit = body[-1:] if body[-1:] in _SIZE_UNITS else ""
    number = body[: len(body) - len(unit)].strip()
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 64G)") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(value * _SIZE_UNITS[unit])


def _positive_size(text: str) -> int:
    value = parse_size(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _human(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size >= _SIZE_UNITS[unit] and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return str(size)


def add_transfer_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that bound transfers, both ways (README.md, "peerd flags")."""
    group = parser.add_argument_group("transfer limits")
    add = group.add_argument
    add(
        "--max-fetches-per-user",
        type=_positive(int),
        default=DEFAULT_MAX_FETCHES_PER_REQUESTER,
        metavar="N",
        help="of --max-fetches, the most one user may hold at once (%(default)s)",
    )
    add(
        "--max-download-size",
        type=_positive_size,
        default=DEFAULT_MAX_DOWNLOAD_SIZE,
        metavar="SIZE",
        help=f"largest file to download, e.g. 512M or 2T ({_human(DEFAULT_MAX_DOWNLOAD_SIZE)});"
        " a file must also fit the share's free space, less a margin",
    )
    add(
        "--min-transfer-rate",
        type=parse_size,
        default=DEFAULT_MIN_RATE,
        metavar="RATE",
        help="bytes/s a transfer must keep over each window, downloading or serving, else it"
        f" is abandoned; 0 turns it off ({format_rate(DEFAULT_MIN_RATE)})",
    )
    add(
        "--transfer-rate-window",
        type=_positive(float),
        default=DEFAULT_RATE_WINDOW,
        metavar="S",
        help="seconds over which --min-transfer-rate is measured (%(default)s)",
    )
    add(
        "--partial-max-age",
        type=_positive(float),
        default=DEFAULT_PARTIAL_MAX_AGE / 86400,
        metavar="DAYS",
        help="partial downloads untouched for this many days are removed at start (%(default)s)",
    )


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``peerd`` (the original client's flags, and ours)."""
    parser = argparse.ArgumentParser(
        prog="peerd",
        description="p2pshare peer: share a folder, search the index, download verified files.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("-hostname", "--hostname", required=True, help="this peer's domain name (its TLS name)")
    add(
        "-index_server_name",
        "--index-server-name",
        "--index_server_name",
        dest="index_server_name",
        required=True,
        metavar="HOST[:PORT][,HOST[:PORT]...]",
        help=f"the index to connect to (port {DEFAULT_INDEX_PORT} unless given); up to"
        f" {MAX_INDEX_SERVERS} index servers of one deployment, comma-separated ([v6]:PORT for"
        " IPv6), tried in order, a failed one left for the next; every address a name"
        " resolves to is tried too",
    )
    add(
        "-peer_server_port",
        "--peer-server-port",
        "--peer_server_port",
        dest="peer_server_port",
        type=_port,
        default=DEFAULT_PEER_PORT,
        metavar="PORT",
        help="port this peer serves on (%(default)s; 0 picks a free one)",
    )
    add("-username", "--username", required=True, help="the user to log in as")
    add(
        "-password",
        "--password",
        default=None,
        help=f"the password (visible to other users of this machine: prefer ${PASSWORD_ENV}"
        " or the prompt)",
    )
    add(
        "-file_directory",
        "--file-directory",
        "--file_directory",
        dest="file_directory",
        type=Path,
        required=True,
        metavar="DIR",
        help="the shared folder: DIR/<keyword>/<file>; downloads land there too",
    )
    add(
        "-certificate",
        "--certificate",
        type=Path,
        default=None,
        help="this peer's certificate (without it: enroll at the index, see --ca-fingerprint)",
    )
    add(
        "-private_key",
        "--private-key",
        "--private_key",
        dest="private_key",
        type=Path,
        default=None,
        help="this peer's Ed25519 private key",
    )
    add("--ca", type=Path, default=None, help="the deployment's CA certificate")
    add(
        "--ca-fingerprint",
        default=None,
        metavar="SHA256:HEX",
        help="join by enrollment: the CA the index must present (python -m certs fingerprint"
        " ca.crt); the key, certificate and CA are then kept in --state-dir",
    )
    add(
        "--index-tls-name",
        default=None,
        metavar="NAME",
        help="the DNS name the index's certificate must carry (default: HOST when it is a"
        " name, 'indexd' when HOST is an IP address; never checked against an IP address)",
    )
    add("--bind", default="0.0.0.0", metavar="HOST", help="address to listen on (%(default)s)")  # noqa: S104
    add(
        "--advertise-address",
        default=None,
        metavar="ADDR",
        help="address other peers should use (default: the one the index sees)",
    )
    add("--register", action="store_true", help="register the user first if it does not exist")
    add("--no-shell", action="store_true", help="run as a daemon only, without the shell")
    add(
        "--ping-interval",
        type=_positive(float),
        default=DEFAULT_PING_INTERVAL,
        metavar="S",
        help="seconds between liveness pings; kept under a third of the index's peer TTL"
        " (%(default)s)",
    )
    add(
        "--max-fetches",
        type=_positive(int),
        default=DEFAULT_MAX_FETCHES,
        metavar="N",
        help="transfers served at once before BUSY (%(default)s)",
    )
    add(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the control socket and an enrolled identity live (default:"
        " $XDG_STATE_HOME/p2pshare/HOSTNAME, else ~/.local/state/p2pshare/HOSTNAME)",
    )
    add(
        "--no-watch",
        action="store_true",
        help="do not watch the share: only `sync` (or SIGHUP) updates the index",
    )
    add(
        "--rescan-interval",
        type=_positive(float),
        default=DEFAULT_RESCAN_INTERVAL,
        metavar="S",
        help="seconds between full rescans of a watched share, in case an event was missed"
        " (%(default)s, ±10%%)",
    )
    add_transfer_flags(parser)
    add_daemon_flags(parser)
    add_config_flag(parser, "peerd")
    return parser


#: Settings a config file may not hold, and why.
NOT_IN_CONFIG = {
    "password": f"keep it out of files: use ${PASSWORD_ENV} (systemd: EnvironmentFile=) or the"
    " prompt",
}


def read_password(
    args: argparse.Namespace,
    environ: Mapping[str, str] = os.environ,
    prompt: Callable[[str], str] = getpass.getpass,
    interactive: bool | None = None,
) -> str:
    """The password: ``-password``, else ``$P2P_PASSWORD``, else a prompt on a terminal."""
    if args.password is not None:
        log.warning("a password in the command line is visible to others; use $%s", PASSWORD_ENV)
        return str(args.password)
    if environ.get(PASSWORD_ENV):
        return environ[PASSWORD_ENV]
    if interactive is None:
        interactive = sys.stdin.isatty()
    if not interactive:
        raise UsageError(f"no password: set ${PASSWORD_ENV} or run peerd from a terminal")
    try:
        return prompt(f"password for {args.username}: ")
    except (EOFError, KeyboardInterrupt):
        raise UsageError("no password given") from None


def pace_from_args(args: argparse.Namespace) -> PacePolicy:
    """The floor on a transfer's pace that ``--min-transfer-rate`` and its window set."""
    return PacePolicy(args.min_transfer_rate, args.transfer_rate_window)


def config_from_args(args: argparse.Namespace, password: str) -> PeerConfig:
    """The daemon's configuration from parsed flags."""
    try:
        servers = parse_index_addresses(args.index_server_name, DEFAULT_INDEX_PORT)
    except ValueError as exc:
        raise UsageError(f"-index_server_name: {exc}") from None
    state_dir = args.state_dir or default_state_dir(args.hostname)
    given = [f for f in (args.certificate, args.private_key, args.ca) if f is not None]
    if given and len(given) < 3:
        raise UsageError("-certificate, -private_key and --ca go together (or none: enroll)")
    fingerprint = None
    if args.ca_fingerprint is not None:
        if given:
            raise UsageError("--ca-fingerprint is for enrollment, without -certificate")
        try:
            fingerprint = parse_fingerprint(args.ca_fingerprint)
        except ValueError as exc:
            raise UsageError(f"--ca-fingerprint: {exc}") from None
    state = StateFiles(state_dir)
    cert, key, ca = given if given else (state.cert, state.key, state.ca)
    return PeerConfig(
        domain_name=args.hostname,
        index_host=servers[0].host,
        index_port=servers[0].port,
        index_servers=servers,
        username=args.username,
        password=password,
        file_directory=args.file_directory,
        cert=cert,
        key=key,
        ca=ca,
        port=args.peer_server_port,
        bind=args.bind,
        index_tls_name=args.index_tls_name,
        advertise_address=args.advertise_address,
        register=args.register,
        ping_interval=args.ping_interval,
        max_fetches=args.max_fetches,
        max_fetches_per_requester=args.max_fetches_per_user,
        serve_pace=pace_from_args(args),
        download_limits=DownloadLimits(args.max_download_size, pace_from_args(args)),
        partial_max_age=args.partial_max_age * 86400,
        limits=limits_from_args(args, raise_open_file_limit()),
        metrics=args.metrics,
        state_dir=state_dir,
        watch=not args.no_watch,
        rescan_interval=args.rescan_interval,
        enroll=not given,
        ca_fingerprint=fingerprint,
    )


async def run_shell(daemon: PeerDaemon) -> None:
    """Run the interactive shell until the user quits; the daemon is then stopped.

    On a terminal it is the rich shell; with stdin or stdout not a terminal it reads commands
    line by line from stdin and prints plain text (end of input = quit). SIGINT stops the
    running command (or leaves at the prompt), SIGTERM leaves.
    """
    # Imported here: a daemon started with --no-shell never loads rich.
    from peerd.shell import run_shell_session

    await run_shell_session(daemon)


async def run(config: PeerConfig, *, shell: bool) -> None:
    """Start the daemon, serve until a signal (or until the shell quits), then stop."""
    loop = asyncio.get_running_loop()
    daemon = PeerDaemon(config)

    async def start() -> None:
        await daemon.start()
        status = daemon.status()
        print(
            f"peerd: {status.domain_name} serving {status.shared_files} files on port"
            f" {status.port}",
            flush=True,
        )
        if daemon.metrics is not None:
            print(f"peerd: metrics on {daemon.metrics.url}", flush=True)

    def resync() -> None:
        task = loop.create_task(daemon.resync())
        task.add_done_callback(_log_resync)

    await run_until_signalled(
        start,
        daemon.stop,
        foreground=(lambda: run_shell(daemon)) if shell else None,
        signals={signal.SIGHUP: resync},
    )


def _log_resync(task: asyncio.Task[int]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.warning("re-sync failed: %s", exc)
    else:
        log.info("re-synced %d files", task.result())


def main(argv: Sequence[str] | None = None) -> ExitCode:
    """Entry point of ``peerd``; returns the exit status (README.md, "Exit status")."""

    def command() -> None:
        args = parse_with_config(build_parser(), argv, "peerd", forbidden=NOT_IN_CONFIG)
        configure_logging(args.verbose)
        config = config_from_args(args, read_password(args))
        asyncio.run(run(config, shell=not args.no_shell))

    return run_command("peerd", command)


if __name__ == "__main__":
    sys.exit(main())
