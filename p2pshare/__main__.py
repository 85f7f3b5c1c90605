"""``p2pshare search|get|status|sync [--json]``: one-shot commands for the running ``peerd``.

They talk to the peer over its control socket (:mod:`peerd.control`, PROTOCOL.md §9) and print
what the shell prints for the same command, or with ``--json`` one JSON document on stdout.
The peer is found by ``--state-dir``, else by ``--hostname`` (or the ``hostname`` and
``state-dir`` of ``peerd.toml``), else as the only peer with a control socket under
``$XDG_STATE_HOME/p2pshare`` (``~/.local/state/p2pshare``).

Exit status: 0 done, 1 refused or not found (a search with no hit, a download no peer
delivered), 2 usage, 3 no running peer (README.md, "Exit status").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from netproto.errors import P2PError, RemoteProtocolError, RequestError
from netproto.names import check_file_name, check_keyword
from netproto.operations import SearchHit
from peerd.control import (
    SOCKET_NAME,
    Attempt,
    ControlClient,
    NoPeer,
    StatusReply,
    default_state_dir,
    state_home,
)
from peerd.download import DownloadResult
from peerd.errors import DownloadRefused
from peerd.session import SyncReport
from peerd.ui import PREVIEW_BYTES, ShellView, TransferCounts, make_console
from peerd.verify import CheckOutcome
from runner import ExitCode, UsageError
from runner.config import default_config_path, read_config

PROG = "p2pshare"
#: Codes that mean the request itself was wrong: the usage exit status.
USAGE_CODES = frozenset({"BAD_REQUEST", "INVALID_PATH", "UNKNOWN_OP"})
#: How long a command waits for the peer (a download may take long: no limit by default).
DEFAULT_TIMEOUT = None


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``p2pshare``."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: an option given before the command is not reset by the command's parser.
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document"
    )
    common.add_argument(
        "--state-dir",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="the peer's state folder (where its control socket is)",
    )
    common.add_argument(
        "--hostname",
        default=argparse.SUPPRESS,
        metavar="NAME",
        help="the peer's name, to find its state folder",
    )
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="peerd's config file, read for hostname and state-dir (default:"
        " ~/.config/p2pshare/peerd.toml if it exists)",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description="One-shot commands for the running peer (peerd) of this user.",
        epilog="exit status: 0 done, 1 refused or not found, 2 usage, 3 no running peer",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    search = commands.add_parser(
        "search", parents=[common], help="who shares files under a keyword"
    )
    search.add_argument("keyword")
    get = commands.add_parser(
        "get", parents=[common], help="download one file into the share, verified"
    )
    get.add_argument("keyword")
    get.add_argument("file")
    get.add_argument("--from", dest="source", metavar="PEER", help="download from this peer")
    get.add_argument(
        "--overwrite", action="store_true", help="replace a different file of that name"
    )
    commands.add_parser("status", parents=[common], help="the peer, its index session, share")
    commands.add_parser("sync", parents=[common], help="send the index what changed now")
    return parser


def find_state_dir(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Path:
    """The state folder of the peer to talk to (README.md, "One-shot commands")."""
    state_dir: Path | None = getattr(args, "state_dir", None)
    if state_dir is not None:
        return state_dir
    hostname: str | None = getattr(args, "hostname", None)
    config_path: Path | None = getattr(args, "config", None)
    if config_path is None:
        default = default_config_path("peerd", environ)
        config_path = default if default.is_file() else None
    if config_path is not None:
        settings = read_config(config_path.expanduser()).settings
        configured = settings.get("state-dir")
        if isinstance(configured, str) and hostname is None:
            path = Path(configured).expanduser()
            return path if path.is_absolute() else config_path.parent / path
        if hostname is None and isinstance(settings.get("hostname"), str):
            hostname = settings["hostname"]
    if hostname is not None:
        return default_state_dir(hostname, environ)
    home = state_home(environ)
    try:
        running = sorted(d for d in home.iterdir() if (d / SOCKET_NAME).exists())
    except OSError:
        running = []
    if not running:
        raise NoPeer(f"no running peer: no control socket under {home} (is peerd running?)")
    if len(running) > 1:
        names = ", ".join(d.name for d in running)
        raise UsageError(f"several peers run here ({names}): choose one with --hostname")
    return running[0]


# --- JSON -----------------------------------------------------------------------------------


def _checks_json(checks: tuple[CheckOutcome, ...]) -> list[dict[str, Any]]:
    return [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks]


def hits_json(keyword: str, hits: Sequence[SearchHit]) -> dict[str, Any]:
    """A search's hits as JSON (digests in hex)."""
    return {
        "ok": True,
        "keyword": keyword,
        "hits": [
            {
                "domain_name": h.domain_name,
                "address": h.address,
                "port_number": h.port_number,
                "files": [
                    {"filename": f.filename, "size": f.size, "sha256": f.sha256.hex()}
                    for f in h.files
                ],
            }
            for h in hits
        ],
    }


def attempts_json(attempts: Sequence[Attempt]) -> list[dict[str, Any]]:
    """The peers ``get`` tried without success, as JSON."""
    return [
        {
            "peer": a.peer,
            "message": a.message,
            "check": a.check,
            "checks": _checks_json(a.checks),
        }
        for a in attempts
    ]


def download_json(peer: str, result: DownloadResult, attempts: Sequence[Attempt]) -> dict[str, Any]:
    """A verified download as JSON."""
    return {
        "ok": True,
        "peer": peer,
        "path": str(result.path),
        "keyword": result.keyword,
        "file_name": result.file_name,
        "size": result.size,
        "sha256": result.sha256.hex(),
        "signer": result.signer,
        "checks": _checks_json(result.checks),
        "received": result.received,
        "resumed_from": result.resumed_from,
        "elapsed": result.elapsed,
        "already_present": result.already_present,
        "attempts": attempts_json(attempts),
    }


def status_json(reply: StatusReply) -> dict[str, Any]:
    """The peer's status as JSON."""
    status = asdict(reply.status)
    return {
        "ok": True,
        **status,
        "share_bytes": reply.share_bytes,
        "downloads": {
            "files": reply.downloads,
            "bytes": reply.downloaded_bytes,
            "refused": reply.refused,
            "failed": reply.failed,
        },
    }


def error_json(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """A failure as JSON."""
    return {"ok": False, "error": {"code": code, "message": message}, **extra}


# --- the commands ---------------------------------------------------------------------------


class Output:
    """Where results go: the shell's view on stdout, or JSON."""

    def __init__(self, as_json: bool, stdout: TextIO) -> None:
        self.as_json = as_json
        self.stdout = stdout
        interactive = not as_json and stdout.isatty()
        self.view = ShellView(
            make_console(interactive=interactive, file=stdout), interactive=interactive
        )

    def json(self, document: Mapping[str, Any]) -> None:
        """Print one JSON document."""
        json.dump(document, self.stdout, indent=2, ensure_ascii=False)
        self.stdout.write("\n")
        self.stdout.flush()


def _show_attempts(
    view: ShellView, keyword: str, file_name: str, attempts: Sequence[Attempt]
) -> None:
    for i, attempt in enumerate(attempts):
        if i:
            view.info(f"trying the next peer that lists it: {attempt.peer}")
        if attempt.check is not None:
            refused = DownloadRefused(
                attempt.check, attempt.message, attempt.checks, partial_kept=attempt.partial_kept
            )
            view.refused(attempt.peer, keyword, file_name, refused)
        else:
            view.error(attempt.message)


def _read_head(path: Path, size: int) -> bytes:
    with path.open("rb") as f:
        return f.read(size)


async def run(args: argparse.Namespace, out: Output, environ: Mapping[str, str]) -> ExitCode:
    """Run the parsed command against the peer; its exit status."""
    client = ControlClient(find_state_dir(args, environ), timeout=DEFAULT_TIMEOUT)
    view = out.view
    command = args.command
    if command == "search":
        keyword = _checked(check_keyword, args.keyword)
        hits = await client.search(keyword)
        if out.as_json:
            out.json(hits_json(keyword, hits))
        else:
            status = await client.status()
            view.search_results(keyword, hits, status.status.domain_name)
        return ExitCode.OK if hits else ExitCode.FAILURE
    if command == "get":
        keyword = _checked(check_keyword, args.keyword)
        file_name = _checked(check_file_name, args.file)
        try:
            peer, result, attempts = await client.get(
                keyword, file_name, args.source, args.overwrite
            )
        except RequestError as exc:
            attempts = [Attempt.from_wire(a) for a in exc.extra.get("attempts", [])]
            if out.as_json:
                out.json(error_json(exc.code, exc.message, attempts=attempts_json(attempts)))
            else:
                _show_attempts(view, keyword, file_name, attempts)
                if not attempts:
                    view.error(exc.message)
            return ExitCode.USAGE if exc.code in USAGE_CODES else ExitCode.FAILURE
        if out.as_json:
            out.json(download_json(peer, result, attempts))
            return ExitCode.OK
        _show_attempts(view, keyword, file_name, attempts)
        if attempts:
            view.info(f"trying the next peer that lists it: {peer}")
        view.downloaded(peer, result)
        try:
            head = await asyncio.to_thread(_read_head, result.path, PREVIEW_BYTES)
        except OSError as exc:
            view.error(f"cannot read {result.path}: {exc.strerror or exc}")
        else:
            view.preview(result.file_name, head, result.size, result.sha256)
        return ExitCode.OK
    if command == "status":
        reply = await client.status()
        if out.as_json:
            out.json(status_json(reply))
        else:
            counts = TransferCounts(
                reply.downloads, reply.downloaded_bytes, reply.refused, reply.failed
            )
            view.status(reply.status, reply.share_bytes, counts, time.time())
        return ExitCode.OK
    assert command == "sync"
    report = await client.sync()
    if out.as_json:
        out.json({"ok": True, **asdict(report)})
    else:
        view.synced(report.files)
        view.info(_sync_line(report))
    return ExitCode.OK


def _sync_line(report: SyncReport) -> str:
    if not report.sent:
        return "nothing changed since the last sync; nothing sent"
    what = "the whole listing" if report.full else "only the changes"
    return (
        f"{report.added} added, {report.changed} changed, {report.removed} removed:"
        f" {report.sent} entr{'y' if report.sent == 1 else 'ies'} sent ({what})"
    )


def _checked(check: Any, value: str) -> str:
    try:
        return str(check(value))
    except RequestError as exc:
        raise UsageError(f"invalid name: {exc.message}") from None


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> ExitCode:
    """Entry point of ``p2pshare``; returns the exit status."""
    out_stream = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return ExitCode.OK if exc.code in (None, 0) else ExitCode.USAGE
    out = Output(getattr(args, "json", False), out_stream)

    def fail(code: ExitCode, wire_code: str, message: str) -> ExitCode:
        print(f"{PROG}: {message}", file=err)
        if out.as_json:
            out.json(error_json(wire_code, message))
        return code

    try:
        return asyncio.run(run(args, out, environ))
    except NoPeer as exc:
        return fail(ExitCode.NO_PEER, "NO_PEER", str(exc))
    except UsageError as exc:
        return fail(ExitCode.USAGE, "USAGE", str(exc))
    except RemoteProtocolError as exc:
        return fail(ExitCode.FAILURE, "PROTOCOL", f"the peer broke the protocol ({exc})")
    except RequestError as exc:
        status = ExitCode.USAGE if exc.code in USAGE_CODES else ExitCode.FAILURE
        if not out.as_json:
            out.view.error(exc.message)
            return status
        return fail(status, exc.code, exc.message)
    except P2PError as exc:
        return fail(ExitCode.FAILURE, "FAILED", str(exc))
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
