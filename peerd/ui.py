"""Everything the shell shows, rendered with rich on one injected :class:`Console`.

The shell (:mod:`peerd.shell`) decides *what* to show; this module decides *how*. Every string
that comes from elsewhere (peer names and addresses, file names, error messages from the wire,
file content) is passed to rich as a :class:`~rich.text.Text` built by :func:`safe_text`, never
as markup, so ``[bold]`` in a file name prints as itself; and control characters are stripped
or replaced, so a malicious file or peer cannot move the cursor, retitle the terminal, clear
the screen or reorder text with bidi overrides.

On a terminal there are colours and live progress bars; without one (a pipe, a script) the
output is plain text with one final line per download, so a session can be scripted and read.
"""

from __future__ import annotations

import contextlib
import mimetypes
import re
import shutil
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from rich import box
from rich.console import Console, RenderableType
from rich.filesize import decimal as human_size
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from netproto.operations import SearchHit, SharedFile
from peerd.download import DownloadResult, ProgressCallback
from peerd.errors import DownloadRefused
from peerd.session import PeerStatus
from peerd.swarm import SwarmProgress, SwarmResult
from peerd.verify import CheckOutcome

#: How much of a downloaded file is read to preview or classify it.
PREVIEW_BYTES = 64 << 10
PREVIEW_LINES = 20
PREVIEW_LINE_CHARS = 200

_ANSI_SEQUENCE = re.compile(
    r"""
    \x1b\[[0-?]*[ -/]*[@-~]                 # CSI: cursor moves, colours, screen clears
    | \x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?    # OSC: window titles, hyperlinks, clipboard
    | \x1b[PX^_][^\x1b]*(?:\x1b\\)?         # DCS, SOS, PM, APC strings
    | \x1b[ -/]*[0-~]?                      # any other escape (and a lone ESC)
    | \x9b[0-?]*[ -/]*[@-~]                 # 8-bit CSI
    """,
    re.VERBOSE,
)


def sanitize(text: str, replacement: str = "\ufffd") -> str:
    """``text`` made harmless for a terminal: escape sequences removed, other control and
    format characters (CR, BEL, C1, bidi overrides, zero-width) replaced; tabs and newlines kept.
    """
    text = _ANSI_SEQUENCE.sub("", text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in "\n\t" or ch.isprintable():
            out.append(ch)
        elif unicodedata.category(ch) == "Zs":  # odd spaces (e.g. U+3000) are harmless
            out.append(" ")
        else:
            out.append(replacement)
    return "".join(out)


def safe_text(text: str, style: str = "", replacement: str = "\ufffd") -> Text:
    """A rich :class:`Text` of untrusted ``text``: no markup, no emoji codes, no control codes."""
    return Text(sanitize(text, replacement), style=style)


def make_console(*, interactive: bool, file: IO[str] | None = None) -> Console:
    """The shell's console: colours on a terminal, plain text (no colour, no animation) off it."""
    if interactive:
        return Console(file=file, highlight=False, emoji=False)
    width = max(80, shutil.get_terminal_size((100, 24)).columns)
    return Console(
        file=file,
        force_terminal=False,
        force_interactive=False,
        no_color=True,
        color_system=None,
        highlight=False,
        emoji=False,
        width=width,
    )


@dataclass(frozen=True)
class KnownPeer:
    """A peer the shell has seen in a search this session."""

    domain_name: str
    address: str
    port: int
    keyword: str
    files: int
    seen_at: float


@dataclass(frozen=True)
class TransferCounts:
    """Downloads done by this shell in this session."""

    downloaded: int = 0
    downloaded_bytes: int = 0
    refused: int = 0
    failed: int = 0


@dataclass(frozen=True)
class ShareEntry:
    """One file of the own share, and whether the index has it in its current form."""

    file: SharedFile
    synced: bool


MENU = (("1", "Update index server"), ("2", "Search for file"), ("3", "Exit"))

COMMANDS = (
    ("search <keyword>", "who shares files under a keyword"),
    ("get <keyword> <file> [--from <peer>] [--overwrite]", "download one file and verify it"),
    ("ls [keyword]", "your own share (what others can download)"),
    ("peers", "the peers seen in searches this session"),
    ("sync", "rescan your share and update the index (= 1)"),
    ("status", "you, the index, your token, share, transfers"),
    ("help", "this help"),
    ("quit, exit", "leave (= 3, or Ctrl-D)"),
)

_CHECK_LABELS = {"sha256": "digest", "index-digest": "index digest"}

#: File signatures for the binary summary, checked before the file name's extension.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"%PDF-", "PDF document"),
    (b"PK\x03\x04", "ZIP archive (or docx/jar/...)"),
    (b"\x1f\x8b", "gzip data"),
    (b"BZh", "bzip2 data"),
    (b"\xfd7zXZ\x00", "xz data"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"\x7fELF", "ELF executable"),
    (b"MZ", "Windows executable"),
    (b"OggS", "Ogg media"),
    (b"ID3", "MP3 audio"),
    (b"fLaC", "FLAC audio"),
    (b"SQLite format 3\x00", "SQLite database"),
)


def guess_type(name: str, head: bytes) -> str:
    """A short description of a binary file from its first bytes, else from its name."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[4:8] == b"ftyp":
        return "MP4/QuickTime media"
    if head.startswith(b"RIFF") and head[8:12] in (b"WAVE", b"AVI ", b"WEBP"):
        return f"RIFF {head[8:12].decode().strip()} media"
    guessed, _ = mimetypes.guess_type(name, strict=False)
    if guessed is None or guessed == "application/octet-stream":
        return "binary data"
    return guessed


def decode_text(head: bytes, truncated: bool) -> str | None:
    """``head`` as text if it looks like UTF-8 text, else None (binary).

    A multi-byte character cut at the end of a truncated read still counts as text.
    """
    if b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not (truncated and exc.start >= len(head) - 3 and exc.end == len(head)):
            return None
        text = head[: exc.start].decode("utf-8", "replace")
    # Escape sequences (a log with colours) are text, to be shown without them.
    bare = _ANSI_SEQUENCE.sub("", text)
    controls = sum(1 for ch in bare if not ch.isprintable() and ch not in "\n\t\r\f")
    return None if controls > max(8, len(text) // 10) else text


def _add_row(table: Table, *cells: str | Text) -> None:
    """A table row; plain strings become Text, so nothing in them is read as markup."""
    table.add_row(*(Text(c) if isinstance(c, str) else c for c in cells))


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _auto_sync(status: PeerStatus, now: float) -> str:
    """The watcher's line of ``status``: off, or watching and what it last sent."""
    if not status.watching:
        return "off (the share is synced by `sync` only)"
    report = status.last_auto_sync
    if report is None:
        return "watching the share; nothing changed since the start"
    how = (
        "full listing" if report.full else f"{report.sent} entr{'y' if report.sent == 1 else 'ies'}"
    )
    return (
        f"watching the share; last {_ago(now - report.at)}: {report.added} added,"
        f" {report.changed} changed, {report.removed} removed ({how} sent)"
    )


def _rate(size: int, elapsed: float) -> str:
    if elapsed <= 0:
        return ""
    return f" ({human_size(int(size / elapsed))}/s)"


class _LabelColumn(ProgressColumn):
    """The task's ``label`` field, a ready-made safe Text (a format string would be re-read as
    markup, and a file name is not markup)."""

    def render(self, task: Task) -> Text:
        label = task.fields.get("label")
        return label if isinstance(label, Text) else Text()


class ShellView:
    """The shell's output: tables, checks, progress, previews and one-line errors."""

    def __init__(
        self,
        console: Console,
        *,
        interactive: bool,
        preview_lines: int = PREVIEW_LINES,
    ) -> None:
        self.console = console
        self.interactive = interactive
        self.preview_lines = preview_lines
        utf = (console.encoding or "").lower().replace("-", "").startswith("utf")
        self.ok_mark, self.bad_mark, self.na_mark = ("✓", "✗", "–") if utf else ("+", "x", "-")
        self.replacement = "\ufffd" if utf else "?"
        self.ellipsis = "…" if utf else "..."
        self.box = box.ROUNDED if utf else box.ASCII

    # --- building blocks --------------------------------------------------------------

    def _emit(self, renderable: RenderableType, *, one_line: bool = False) -> None:
        """Print; without a terminal, lines lose the trailing blanks tables pad them with.

        ``one_line``: a message is not wrapped by us (the terminal folds it if it must), so a
        script reading the output finds it on one line.
        """
        if self.interactive:
            self.console.print(renderable, soft_wrap=one_line)
            return
        with self.console.capture() as capture:
            self.console.print(renderable, soft_wrap=one_line)
        text = capture.get()
        self.console.file.write("".join(line.rstrip() + "\n" for line in text.splitlines()))
        self.console.file.flush()

    def _safe(self, text: str, style: str = "") -> Text:
        return safe_text(text, style, self.replacement)

    def _table(self, title: str | Text | None = None) -> Table:
        return Table(
            title=Text(title) if isinstance(title, str) else title,
            title_justify="left",
            box=self.box,
            header_style="bold",
            show_edge=True,
        )

    def print(self, *parts: str | Text) -> None:
        """One line from trusted text (our own wording) and already safe Text pieces."""
        line = Text()
        for part in parts:
            line.append(part if isinstance(part, Text) else Text(part))
        self._emit(line, one_line=True)

    # --- session ----------------------------------------------------------------------

    def banner(self, status: PeerStatus) -> None:
        """The greeting: who we are, where the index is, what we share."""
        self.print(
            Text("p2pshare", style="bold cyan"),
            " shell: ",
            self._safe(status.domain_name, "bold"),
            " (user ",
            self._safe(status.username),
            f") shares {status.shared_files} file(s) on port {status.port}; index ",
            self._safe(status.index),
        )
        self.menu()

    def menu(self) -> None:
        """The original menu, and a pointer to the named commands."""
        for key, label in MENU:
            self.print(Text(f"{key}.", style="bold"), f" {label}")
        self.print(Text("  or a command: search, get, ls, peers, sync, status, help, quit", "dim"))

    def help(self) -> None:
        """Every command, with the original menu."""
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for key, label in MENU:
            if key == "2":
                label += (
                    ": asks a keyword, downloads and shows the files the index lists"
                    " (a bounded number unless you confirm, or: 2 KEYWORD --all)"
                )
            _add_row(table, key, label)
        for usage, what in COMMANDS:
            _add_row(table, usage, what)
        self._emit(table)
        self.print(
            Text(
                "Names with spaces go in quotes. Ctrl-C stops a running command"
                " (a download resumes next time); at the prompt it leaves.",
                "dim",
            )
        )

    def echo(self, prompt: str, line: str) -> None:
        """Without a terminal, show the command read from the script (so output reads well)."""
        self.print(Text(prompt, "bold"), self._safe(line))

    def unknown_command(self, name: str) -> None:
        """An unknown command: one line, then the help."""
        self.error_line(Text("unknown command ").append(self._safe(repr(name))))
        self.help()

    def usage(self, usage: str) -> None:
        """A command used wrongly: its usage."""
        self.error(f"usage: {usage}")

    def info(self, message: str) -> None:
        """A neutral one-line message (the text may come from elsewhere: it is made safe)."""
        self._emit(self._safe(message), one_line=True)

    def success(self, message: str) -> None:
        """A one-line success message."""
        self.print(Text(self.ok_mark + " ", "green"), self._safe(message))

    def error(self, message: str) -> None:
        """A one-line error (never a traceback); the text is made safe and kept on one line."""
        self.error_line(self._safe(" ".join(message.splitlines())))

    def error_line(self, text: Text) -> None:
        """A one-line error from an already safe Text."""
        self._emit(Text(f"{self.bad_mark} ", "bold red").append(text), one_line=True)

    def interrupted(self) -> None:
        """A command stopped by Ctrl-C."""
        self.print(Text("interrupted (an unfinished download resumes on the next get)", "yellow"))

    def goodbye(self, *, at_prompt: bool = False) -> None:
        """Leaving the shell (``at_prompt``: by Ctrl-D or Ctrl-C, the cursor after the prompt)."""
        if at_prompt and self.interactive:
            self.console.line()
        self.print(Text("bye", "dim"))

    # --- the index --------------------------------------------------------------------

    def synced(self, count: int) -> None:
        """The share was synced to the index."""
        self.success(f"the index now lists {count} of your files")

    def search_results(self, keyword: str, hits: Sequence[SearchHit], me: str) -> None:
        """Search hits as a table: peer, address, file, size, digest prefix."""
        if not hits:
            self.print("no peer shares anything under ", self._safe(repr(keyword)))
            return
        files = sum(len(h.files) for h in hits)
        title = Text(f"{files} file(s) on {len(hits)} peer(s) for ").append(
            self._safe(repr(keyword))
        )
        table = self._table(title)
        table.add_column("peer", style="cyan", no_wrap=True)
        table.add_column("address", no_wrap=True)
        table.add_column("file", overflow="fold")
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("sha256", style="dim", no_wrap=True)
        for hit in hits:
            name = self._safe(hit.domain_name)
            if hit.domain_name == me:
                name.append(" (you)", "dim")
            address = self._safe(f"{hit.address}:{hit.port_number}")
            if not hit.files:
                _add_row(table, name, address, Text("(no files)", "dim"), "", "")
            for i, listed in enumerate(hit.files):
                _add_row(
                    table,
                    name if i == 0 else "",
                    address if i == 0 else "",
                    self._safe(listed.filename),
                    human_size(listed.size),
                    listed.sha256.hex()[:12] + self.ellipsis,
                )
        self._emit(table)

    def peer_files(self, hit: SearchHit, keyword: str, names: Sequence[str]) -> None:
        """A peer's own answer to ``list``."""
        head = Text().append(self._safe(hit.domain_name, "cyan"))
        head.append(" lists ").append(self._safe(repr(keyword))).append(f": {len(names)} file(s)")
        self._emit(head, one_line=True)
        for name in names:
            self._emit(Text("  ").append(self._safe(name)), one_line=True)

    def menu_over_limits(
        self, files: int, size: int, peers: int, max_files: int, max_bytes: int
    ) -> None:
        """Menu 2 would download more than it does without asking (a question follows)."""
        self.print(
            f"the index lists {files} file(s), {human_size(size)}, on {peers} peer(s): more"
            f" than menu 2 downloads without asking ({max_files} files, {human_size(max_bytes)})"
        )

    def menu_bounded(self, files: int, size: int, keyword: str) -> None:
        """Menu 2 downloads only what fits its bounds."""
        self.print(
            f"downloading {files} of them ({human_size(size)}); ",
            Text("2 ", "bold").append(self._safe(keyword, "bold")).append(" --all", "bold"),
            " downloads every one",
        )

    def unlisted_offered(self, hit: SearchHit, count: int) -> None:
        """A peer offers names the index does not list for it: never downloaded."""
        self._emit(
            self._safe(hit.domain_name, "cyan").append(
                f" offers {count} file(s) the index does not list for it: not downloaded"
                " (no listed size and digest to check them against)"
            ),
            one_line=True,
        )

    def peers(self, peers: Sequence[KnownPeer], me: str, now: float) -> None:
        """The peers seen in searches this session."""
        if not peers:
            self.print("no peers known yet: ", Text("search <keyword>", "bold"), " finds some")
            return
        table = self._table("peers seen in searches this session")
        table.add_column("peer", style="cyan", no_wrap=True)
        table.add_column("address", no_wrap=True)
        table.add_column("last keyword")
        table.add_column("files", justify="right")
        table.add_column("seen", justify="right", no_wrap=True)
        for peer in peers:
            name = self._safe(peer.domain_name)
            if peer.domain_name == me:
                name.append(" (you)", "dim")
            _add_row(
                table,
                name,
                self._safe(f"{peer.address}:{peer.port}"),
                self._safe(peer.keyword),
                str(peer.files),
                _ago(now - peer.seen_at),
            )
        self._emit(table)

    def share(self, entries: Sequence[ShareEntry], keyword: str | None) -> None:
        """The own share: keyword, file, size, digest, and whether the index has it."""
        if not entries:
            where = f" under {keyword!r}" if keyword else ""
            self.print(f"your share has no files{where}")
            return
        total = sum(e.file.size for e in entries)
        title = f"your share: {len(entries)} file(s), {human_size(total)}"
        table = self._table(title)
        table.add_column("keyword", style="cyan")
        table.add_column("file", overflow="fold")
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("sha256", style="dim", no_wrap=True)
        table.add_column("at the index", no_wrap=True)
        for entry in entries:
            f = entry.file
            _add_row(
                table,
                self._safe(f.keyword),
                self._safe(f.filename),
                human_size(f.size),
                f.sha256.hex()[:12],
                Text(self.ok_mark, "green") if entry.synced else Text("not yet (sync)", "yellow"),
            )
        self._emit(table)

    def status(
        self, status: PeerStatus, share_bytes: int, transfers: TransferCounts, now: float
    ) -> None:
        """Who this peer is, its index session, its share and its transfers."""
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        _add_row(table, "user", self._safe(status.username))
        _add_row(table, "peer", self._safe(f"{status.domain_name}, serving on port {status.port}"))
        state = "connected" if status.index_connected else "disconnected (reconnecting)"
        _add_row(table, "index", self._safe(f"{status.index}, {state}"))
        if status.token_expires_at is None:
            expiry = "not logged in"
        else:
            left = status.token_expires_at - now
            at = time.strftime("%H:%M:%S", time.localtime(status.token_expires_at))
            expiry = (
                f"expires in {left / 60:.1f} min (at {at}); renewed automatically"
                if left > 0
                else f"expired at {at}; renewing"
            )
        _add_row(table, "token", expiry)
        _add_row(
            table,
            "share",
            f"{status.shared_files} file(s), {human_size(share_bytes)} listed at the index",
        )
        synced = "never" if status.last_sync is None else _ago(now - status.last_sync)
        _add_row(table, "last sync", synced)
        _add_row(table, "auto sync", _auto_sync(status, now))
        if status.last_ping is not None:
            _add_row(table, "last ping", _ago(now - status.last_ping))
        _add_row(table, "serving", f"{status.active_fetches} transfer(s) now")
        _add_row(
            table,
            "downloads",
            f"{transfers.downloaded} file(s), {human_size(transfers.downloaded_bytes)} this"
            f" session; {transfers.refused} refused, {transfers.failed} failed",
        )
        self._emit(table)

    # --- downloads --------------------------------------------------------------------

    @contextlib.contextmanager
    def transfer(self, peer: str, keyword: str, file_name: str) -> Iterator[ProgressCallback]:
        """A progress callback for one download: a live bar on a terminal, silent off it."""
        label = Text().append(self._safe(peer, "cyan")).append(" → ")
        label.append(self._safe(f"{keyword}/{file_name}"))
        if not self.interactive:
            yield lambda received, total: None
            return
        progress = Progress(
            _LabelColumn(),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        task = progress.add_task("", total=None, label=label)
        started = False

        def update(received: int, total: int) -> None:
            nonlocal started
            if not started:  # a resumed download starts at its offset, not at a burst of speed
                started = True
                progress.reset(task, total=total, completed=received)
            else:
                progress.update(task, completed=received, total=total)

        with progress:
            yield update

    def downloaded(self, peer: str, result: DownloadResult) -> None:
        """The outcome line of a verified download, then each check."""
        where = self._safe(f"{result.keyword}/{result.file_name}")
        if result.already_present and not result.received:
            self.print(
                Text(f"{self.ok_mark} ", "green"),
                where,
                " is already in your share with the listed digest; nothing downloaded",
            )
        else:
            line = Text(f"{self.ok_mark} ", "green").append("downloaded ").append(where)
            line.append(" from ").append(self._safe(peer, "cyan"))
            line.append(f": {human_size(result.size)}")
            if result.resumed_from:
                line.append(f" (resumed at {human_size(result.resumed_from)})")
            line.append(f" in {result.elapsed:.2f} s{_rate(result.received, result.elapsed)}")
            self._emit(line, one_line=True)
        self.checks(result.checks)

    @contextlib.contextmanager
    def swarm_transfer(
        self, keyword: str, file_name: str, sources: int
    ) -> Iterator[Callable[[SwarmProgress], None]]:
        """A progress callback for a multi-source download: the total's bar, then one line
        per peer with its bytes and rate (dropped peers struck through); silent off a terminal."""
        if not self.interactive:
            yield lambda progress: None
            return
        label = Text().append(self._safe(f"{keyword}/{file_name}"))
        label.append(f" from {sources} peer{'s' if sources != 1 else ''}")
        progress = Progress(
            _LabelColumn(),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        total = progress.add_task("", total=None, label=label)
        rows: dict[str, TaskID] = {}

        def update(state: SwarmProgress) -> None:
            progress.update(total, completed=state.done, total=state.total)
            for peer in state.peers:
                row = rows.get(peer.name)
                if row is None:
                    row = rows[peer.name] = progress.add_task("", total=None)
                name = Text("  ").append(self._safe(peer.name, "cyan"))
                if peer.dropped is not None:
                    name.append(" dropped", "red")
                elif peer.rate:
                    name.append(f" {human_size(int(peer.rate))}/s", "dim")
                progress.update(row, completed=peer.received, label=name)

        with progress:
            yield update

    def swarm_downloaded(
        self, keyword: str, file_name: str, result: SwarmResult, elapsed: float
    ) -> None:
        """The outcome of a multi-source download, then the checks panel: every check, blocks
        verified, each peer used with its share, and each peer dropped with why."""
        where = self._safe(f"{keyword}/{file_name}")
        used = [p for p in result.peers if p.blocks and p.dropped is None]
        if result.already_present:
            self.print(
                Text(f"{self.ok_mark} ", "green"),
                where,
                " is already in your share with the listed digest; nothing downloaded",
            )
        else:
            line = Text(f"{self.ok_mark} ", "green").append("downloaded ").append(where)
            names = ", ".join(p.name for p in used) if len(used) <= 3 else f"{len(used)} peers"
            line.append(" from ").append(self._safe(names, "cyan"))
            line.append(f": {human_size(result.size)}")
            if result.resumed_blocks:
                line.append(f" ({result.resumed_blocks} blocks resumed)")
            received = sum(p.received for p in result.peers)
            line.append(f" in {elapsed:.2f} s{_rate(received, elapsed)}")
            self._emit(line, one_line=True)
        checks = [c for c in result.checks if c.name != "blocks"]
        fetched = result.blocks - result.resumed_blocks
        checks.append(
            CheckOutcome(
                "blocks",
                True,
                f"{fetched} of {result.blocks} blocks verified as they arrived"
                + (f", {result.resumed_blocks} already verified" if result.resumed_blocks else ""),
            )
        )
        for peer in result.peers:
            if peer.dropped is not None:
                checks.append(CheckOutcome("peer", False, f"{peer.name} dropped: {peer.dropped}"))
            elif peer.blocks:
                checks.append(
                    CheckOutcome(
                        "peer",
                        True,
                        f"{peer.name}: {peer.blocks} blocks, {human_size(peer.received)}"
                        + (f" at {human_size(int(peer.rate))}/s" if peer.rate else ""),
                    )
                )
        self.checks(checks)

    def checks(self, checks: Sequence[CheckOutcome]) -> None:
        """One line per check: ✓ passed, ✗ failed, – not applicable, with what it means."""
        table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True)
        table.add_column(overflow="fold")
        for check in checks:
            if check.passed is True:
                mark = Text(self.ok_mark, "bold green")
            elif check.passed is False:
                mark = Text(self.bad_mark, "bold red")
            else:
                mark = Text(self.na_mark, "dim")
            label = _CHECK_LABELS.get(check.name, check.name)
            style = "red" if check.passed is False else ""
            _add_row(table, Text(" ").append(mark), label, self._safe(check.detail, style))
        self._emit(table)

    def refused(self, peer: str, keyword: str, file_name: str, exc: DownloadRefused) -> None:
        """A download refused by a check: every check's outcome, then one line saying why."""
        if exc.checks:
            self.checks(exc.checks)
        else:
            self.checks((CheckOutcome(exc.check, False, str(exc).partition(": ")[2]),))
        line = Text("refused ").append(self._safe(f"{keyword}/{file_name}"))
        line.append(" from ").append(self._safe(peer, "cyan"))
        label = _CHECK_LABELS.get(exc.check, exc.check)
        if exc.check == "truncated":
            line.append(": the transfer did not complete — ")
        else:
            line.append(f": the {label} check failed — ")
        if exc.partial_kept:
            line.append("the partial file is kept and the next get resumes it")
        else:
            line.append("the file was discarded")
        self.error_line(line)

    def preview(self, name: str, head: bytes, size: int, sha256: bytes) -> None:
        """Show a downloaded file: text as its first lines (made safe), binary as a summary."""
        text = decode_text(head, truncated=len(head) < size)
        if text is None:
            kind = guess_type(name, head)
            self.print(
                "  ",
                self._safe(name, "bold"),
                f": {kind}, {human_size(size)} ({size} bytes),"
                f" sha256 {sha256.hex()[:16]}{self.ellipsis}",
            )
            return
        lines = text.splitlines()
        shown = lines[: self.preview_lines]
        body = Text()
        for i, line in enumerate(shown):
            if i:
                body.append("\n")
            clean = sanitize(line.expandtabs(4), self.replacement)
            if len(clean) > PREVIEW_LINE_CHARS:
                clean = clean[:PREVIEW_LINE_CHARS] + self.ellipsis
            body.append(clean)
        more = []
        if len(lines) > len(shown):
            more.append(f"{len(lines) - len(shown)} more line(s)")
        if len(head) < size:
            more.append(f"{human_size(size - len(head))} more")
        self._emit(
            Panel(body, title=self._safe(name), title_align="left", box=self.box, expand=False)
        )
        if more:
            self.print(Text(f"  {self.ellipsis} {', '.join(more)} not shown", "dim"))


__all__ = [
    "COMMANDS",
    "MENU",
    "KnownPeer",
    "ShareEntry",
    "ShellView",
    "TransferCounts",
    "decode_text",
    "guess_type",
    "make_console",
    "safe_text",
    "sanitize",
]
