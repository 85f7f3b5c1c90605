"""``python -m indexd`` / ``indexd``: run the index daemon until SIGINT or SIGTERM.

Settings come from the flags, over ``~/.config/p2pshare/indexd.toml`` (``--config FILE`` for
another file; see :mod:`runner.config`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from certs.requests import DEFAULT_CERT_TTL
from indexd.app import DEFAULT_PORT, DEFAULT_TOKEN_TTL, IndexConfig, IndexDaemon
from indexd.handlers import (
    DEFAULT_MAX_DOMAINS_PER_USER,
    DEFAULT_MAX_FILES_PER_USER,
    DEFAULT_PEER_TTL,
)
from indexd.passwords import DEFAULT_COST
from indexd.ratelimit import BackoffPolicy, BucketPolicy
from indexd.store import is_postgres_url
from runner import (
    ExitCode,
    add_daemon_flags,
    configure_logging,
    limits_from_args,
    run_command,
    run_until_signalled,
)
from runner.config import add_config_flag, parse_with_config
from runner.fdlimit import raise_open_file_limit


def _number(kind: Callable[[str], float], lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo:g} and {hi:g}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``indexd``."""
    parser = argparse.ArgumentParser(
        prog="indexd",
        description="p2pshare index daemon: users, tokens, and who shares what.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument(
        "--port", type=_number(int, 0, 65535), default=DEFAULT_PORT, help="TCP port (%(default)s)"
    )
    parser.add_argument(
        "--db",
        default="indexd.db",
        metavar="DB",
        help="SQLite database file, or a postgresql://user@host:port/dbname URL shared by "
        "several index servers (%(default)s)",
    )
    parser.add_argument("--cert", type=Path, required=True, help="the index's certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="its Ed25519 private key (PEM)")
    parser.add_argument("--ca", type=Path, required=True, help="the deployment's CA certificate")
    parser.add_argument(
        "--ca-key",
        type=Path,
        default=None,
        help="the CA's private key: with it the index enrolls peers (PROTOCOL.md §10)",
    )
    parser.add_argument(
        "--cert-ttl",
        type=_number(float, 60, 90 * 86400),
        default=DEFAULT_CERT_TTL,
        metavar="S",
        help="lifetime of certificates issued at enrollment in seconds (%(default)s)",
    )
    parser.add_argument(
        "--token-ttl",
        type=_number(float, 10, 86400),
        default=DEFAULT_TOKEN_TTL,
        metavar="S",
        help="lifetime of issued tokens in seconds (%(default)s)",
    )
    parser.add_argument(
        "--peer-ttl",
        type=_number(float, 0.1, 86400),
        default=DEFAULT_PEER_TTL,
        metavar="S",
        help="a peer not seen (sync or ping) for this long drops out of search (%(default)s)",
    )
    parser.add_argument(
        "--bcrypt-cost",
        type=_number(int, 4, 31),
        default=DEFAULT_COST,
        metavar="N",
        help="bcrypt work factor for new passwords (%(default)s)",
    )
    parser.add_argument(
        "--max-domains-per-user",
        type=_number(int, 1, 10**6),
        default=DEFAULT_MAX_DOMAINS_PER_USER,
        metavar="N",
        help="domain names one user may own (%(default)s)",
    )
    parser.add_argument(
        "--max-files-per-user",
        type=_number(int, 1, 10**9),
        default=DEFAULT_MAX_FILES_PER_USER,
        metavar="N",
        help="files one user may list, staged parts of uploads included (%(default)s)",
    )
    rate = BucketPolicy()
    parser.add_argument(
        "--sync-burst",
        type=_number(int, 1, 10**6),
        default=rate.burst,
        metavar="N",
        help="syncs one user may make at once (%(default)s)",
    )
    parser.add_argument(
        "--sync-interval",
        type=_number(float, 0.001, 86400),
        default=rate.interval,
        metavar="S",
        help="after a burst, one more sync per user every S seconds (%(default)s)",
    )
    group = parser.add_argument_group("login attempt limits")
    d = BackoffPolicy()
    group.add_argument(
        "--auth-free-attempts",
        type=_number(int, 1, 10**6),
        default=d.free,
        metavar="N",
        help="attempts per username from one client address before backing off (%(default)s)",
    )
    group.add_argument(
        "--auth-user-free-attempts",
        type=_number(int, 1, 10**6),
        default=100,
        metavar="N",
        help="attempts per username from all addresses together before backing off (%(default)s)",
    )
    group.add_argument(
        "--auth-address-free-attempts",
        type=_number(int, 1, 10**6),
        default=100,
        metavar="N",
        help="attempts per client address before backing off (%(default)s)",
    )
    group.add_argument(
        "--register-free-attempts",
        type=_number(int, 1, 10**6),
        default=20,
        metavar="N",
        help="registrations per client address before backing off (%(default)s)",
    )
    group.add_argument(
        "--auth-backoff",
        type=_number(float, 0.001, 3600),
        default=d.base_delay,
        metavar="S",
        help="first wait after the free attempts; doubles with each attempt (%(default)s)",
    )
    group.add_argument(
        "--auth-max-backoff",
        type=_number(float, 0.001, 86400),
        default=d.max_delay,
        metavar="S",
        help="longest wait (%(default)s)",
    )
    add_daemon_flags(parser)
    add_config_flag(parser, "indexd")
    return parser


def config_from_args(args: argparse.Namespace) -> IndexConfig:
    """The :class:`IndexConfig` the parsed flags describe."""

    def policy(free: int) -> BackoffPolicy:
        return BackoffPolicy(
            free=free, base_delay=args.auth_backoff, max_delay=args.auth_max_backoff
        )

    return IndexConfig(
        cert=args.cert,
        key=args.key,
        ca=args.ca,
        db=args.db if is_postgres_url(args.db) else Path(args.db),
        host=args.host,
        port=args.port,
        token_ttl=args.token_ttl,
        peer_ttl=args.peer_ttl,
        bcrypt_cost=args.bcrypt_cost,
        limits=limits_from_args(args, raise_open_file_limit()),
        login_backoff=policy(args.auth_free_attempts),
        user_backoff=policy(args.auth_user_free_attempts),
        address_backoff=policy(args.auth_address_free_attempts),
        register_backoff=policy(args.register_free_attempts),
        max_domains_per_user=args.max_domains_per_user,
        max_files_per_user=args.max_files_per_user,
        sync_rate=BucketPolicy(burst=args.sync_burst, interval=args.sync_interval),
        ca_key=args.ca_key,
        cert_ttl=args.cert_ttl,
        metrics=args.metrics,
    )


async def serve(config: IndexConfig) -> None:
    """Run the daemon until SIGINT/SIGTERM; print the listening address once started."""
    daemon = IndexDaemon(config)

    async def start() -> None:
        await daemon.start()
        # Tests and scripts that pass --port 0 read the real port from this line.
        print(f"indexd listening on {config.host}:{daemon.port}", flush=True)
        assert daemon.enrollment is not None
        # What newcomers pass to peerd --ca-fingerprint (PROTOCOL.md §10).
        print(f"CA fingerprint: {daemon.enrollment.authority.fingerprint}", flush=True)
        if daemon.metrics is not None:
            print(f"metrics on {daemon.metrics.url}", flush=True)

    await run_until_signalled(start, daemon.stop)


def main(argv: Sequence[str] | None = None) -> ExitCode:
    """Entry point of ``indexd``: OK after a clean shutdown, FAILURE if it cannot start;
    ``indexd admin ...`` runs the operator's commands (:mod:`indexd.admin`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["admin"]:
        from indexd.admin import main as admin_main

        return admin_main(args[1:])

    def command() -> None:
        args = parse_with_config(build_parser(), argv, "indexd")
        configure_logging(args.verbose)
        asyncio.run(serve(config_from_args(args)))

    return run_command("indexd", command)


if __name__ == "__main__":
    sys.exit(main())
