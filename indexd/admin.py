"""``indexd admin --db FILE|URL ...``: the operator's commands, run beside a live daemon.

``revoke --serial N | --user U | --domain D`` revokes certificates issued at enrollment;
``disable-user U`` stops a user from logging in, renewing and enrolling, and revokes its
certificates; ``enable-user U`` undoes the disabling (not the revocations); ``certificates``
lists what was issued; ``stats`` prints what the database holds. They write the daemon's
database (a SQLite file or a ``postgresql://`` URL); the daemon reads revocations again within
a second and peers within their next refresh (PROTOCOL.md §10).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from indexd.handlers import DEFAULT_PEER_TTL
from indexd.store import STATS, IndexDatabase, StoreError, is_postgres_url
from indexd.store import open_database as open_index_database
from runner import CommandError, ExitCode, run_command


def parse_serial(text: str) -> str:
    """A serial as ``certs show`` prints it (hex, colons and ``0x`` allowed) in stored form."""
    digits = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(digits, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a hex serial: {text!r}") from None
    return f"{value:x}"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``indexd admin``."""
    parser = argparse.ArgumentParser(
        prog="indexd admin", description="Revoke certificates and disable users of an index."
    )
    parser.add_argument(
        "--db", required=True, help="the index's SQLite database file or postgresql:// URL"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    revoke = sub.add_parser("revoke", help="revoke certificates issued at enrollment")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", type=parse_serial, help="one certificate, by serial (hex)")
    which.add_argument("--user", type=str.lower, help="every certificate of a user")
    which.add_argument("--domain", type=str.lower, help="every certificate for a domain name")
    disable = sub.add_parser("disable-user", help="no more logins, renewals or enrollments")
    disable.add_argument("user", type=str.lower)
    enable = sub.add_parser("enable-user", help="let a disabled user log in again")
    enable.add_argument("user", type=str.lower)
    sub.add_parser("certificates", help="list the certificates issued at enrollment")
    stats = sub.add_parser("stats", help="count users, peers, files and what else is stored")
    stats.add_argument(
        "--peer-ttl",
        type=float,
        default=DEFAULT_PEER_TTL,
        metavar="S",
        help="a peer seen within S seconds counts as live (%(default)s)",
    )
    return parser


def open_database(database: str) -> IndexDatabase:
    """The index's database, or :class:`CommandError` naming it (never its password); a
    SQLite file must exist (the daemon makes it)."""
    if not is_postgres_url(database) and not Path(database).is_file():
        raise CommandError(f"no database at {database}")
    try:
        return open_index_database(database)
    except StoreError as exc:
        raise CommandError(str(exc)) from None


def run(args: argparse.Namespace, out: TextIO, now: float) -> None:
    """Carry out one admin command on the database."""
    store = open_database(args.db)
    try:
        if args.command == "revoke":
            count = store.revoke_certificates(
                now, serial=args.serial, username=args.user, domain_name=args.domain
            )
            if not count and args.serial is not None:
                raise CommandError(f"no unrevoked certificate with serial {args.serial}")
            print(f"revoked {count} certificate(s)", file=out)
        elif args.command in ("disable-user", "enable-user"):
            disable = args.command == "disable-user"
            if not store.set_user_disabled(args.user, disable):
                raise CommandError(f"no user {args.user!r}")
            if disable:
                count = store.revoke_certificates(now, username=args.user)
                print(f"disabled {args.user}; revoked {count} certificate(s)", file=out)
            else:
                print(f"enabled {args.user}", file=out)
        elif args.command == "stats":
            counts = store.stats(now, args.peer_ttl)
            for name in STATS:
                print(f"{name} {counts[name]}", file=out)
        else:
            _, revoked = store.revocations(0.0)
            for cert in store.certificates():
                until = dt.datetime.fromtimestamp(cert.not_after, dt.UTC).isoformat()
                state = "revoked" if cert.serial in revoked else "valid"
                print(f"{cert.serial} {cert.username} {cert.domain_name} {until} {state}", file=out)
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> ExitCode:
    """Entry point of ``indexd admin``."""
    parser = build_parser()
    return run_command(
        "indexd admin", lambda: run(parser.parse_args(argv), sys.stdout, time.time())
    )
