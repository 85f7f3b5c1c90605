"""The interactive shell of a peer: the original menu plus named commands (README.md, "Shell
commands").

``1`` re-syncs, ``2`` asks for a keyword, searches, lists each peer's files, downloads and
verifies each file the index lists for that peer (never a name only the peer offers; at most
:data:`DEFAULT_MENU_MAX_FILES` files and :data:`DEFAULT_MENU_MAX_BYTES` bytes a run unless the
user confirms) and shows it, ``3`` exits; and ``search``, ``get``, ``ls``, ``peers``,
``sync``, ``status``, ``help``, ``quit``. The shell is a client like any script: it is written
against the small :class:`~peerd.session.PeerSession` protocol (which
:class:`~peerd.daemon.PeerDaemon` implements, and a test fakes), and leaves every bit of
rendering to :class:`~peerd.ui.ShellView`.

Lines are read in a separate thread, so the peer keeps serving while the shell waits for
input. On a terminal there is line editing and history (``readline``); without one, commands
are read line by line from stdin (a script), and end of input means quit. Every failure of a
command is one readable line; tracebacks go to the debug log only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
import types
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from netproto.errors import (
    AuthRequired,
    Busy,
    ConnectionClosed,
    Forbidden,
    InvalidPath,
    NotFound,
    P2PError,
    RateLimited,
    RemoteProtocolError,
    RequestError,
    Timeout,
    TokenExpired,
    TokenInvalid,
    VerificationFailed,
)
from netproto.names import check_file_name, check_keyword
from netproto.operations import ListedFile, SearchHit
from peerd.clock import SYSTEM_CLOCK, Clock
from peerd.completion import ShellCompleter
from peerd.download import DownloadResult
from peerd.errors import DownloadError, DownloadRefused, FileConflict, IndexUntrusted
from peerd.index_session import certificate_untrusted
from peerd.session import PeerSession, RemotePeer
from peerd.sources import listing_for
from peerd.ui import (
    PREVIEW_BYTES,
    KnownPeer,
    ShareEntry,
    ShellView,
    TransferCounts,
    make_console,
)

log = logging.getLogger(__name__)

PROMPT = "p2pshare> "
KEYWORD_PROMPT = "keyword: "
CONFIRM_PROMPT = "download them all? [y/N] "
#: What one run of menu 2 downloads without asking (more with ``--all`` or a ``y``).
DEFAULT_MENU_MAX_FILES = 25
DEFAULT_MENU_MAX_BYTES = 256 << 20
HISTORY_ENV = "P2P_HISTORY"
HISTORY_NAME = ".p2pshare_history"
HISTORY_LENGTH = 1000


class LineSource(Protocol):
    """Where the shell's lines come from; ``None`` means end of input."""

    async def read(self, prompt: str) -> str | None:
        """The next line (without its newline), or None at end of input."""
        ...


def _in_thread(func: Callable[[], str | None]) -> asyncio.Future[str | None]:
    """Run a blocking read in a daemon thread (never the default executor: a read that never
    returns must not hold up the interpreter's exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str | None] = loop.create_future()

    def settle(value: str | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def run() -> None:
        value: str | None = None
        error: BaseException | None = None
        try:
            value = func()
        except EOFError:
            value = None
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop may be gone already
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=run, name="shell input", daemon=True).start()
    return future


class _PendingRead:
    """At most one blocking read at a time: a read whose waiter was cancelled (Ctrl-C while a
    command asked for input) is handed to the next reader, so no typed line is lost to a
    thread nobody listens to any more."""

    def __init__(self) -> None:
        self._future: asyncio.Future[str | None] | None = None

    async def read(self, func: Callable[[], str | None]) -> str | None:
        if self._future is None:
            self._future = _in_thread(func)
        future = self._future
        try:
            return await asyncio.shield(future)
        finally:
            if future.done():
                self._future = None


class TerminalLines:
    """Lines typed on a terminal, with ``readline`` editing, history and Tab completion when
    available: ``complete(line, begidx)`` lists the completions of the word starting at
    ``begidx`` (:class:`peerd.completion.ShellCompleter`); without it, the command names."""

    def __init__(
        self,
        history: Path | None = None,
        words: Sequence[str] = (),
        complete: Callable[[str, int], list[str]] | None = None,
    ) -> None:
        self.history = history
        self.words = sorted(words)
        self.complete = complete
        self._matches: list[str] = []
        self._pending = _PendingRead()
        self._readline: types.ModuleType | None = None
        try:
            import readline
        except ImportError:  # not every Python has it; input() still works
            return
        self._readline = readline
        readline.set_history_length(HISTORY_LENGTH)
        readline.set_completer(self._complete)
        # Words are split at blanks only, so a file name's dots and dashes stay in the word.
        readline.set_completer_delims(" \t\n")
        if "libedit" in (readline.__doc__ or ""):  # macOS's readline speaks another dialect
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")
        if history is not None:
            with contextlib.suppress(OSError):
                readline.read_history_file(history)

    def _complete(self, text: str, state: int) -> str | None:
        """The ``state``-th completion of the word ``text`` (readline asks 0, 1, 2, ...)."""
        rl = self._readline
        assert rl is not None
        if state == 0:
            line, begidx = rl.get_line_buffer()[: rl.get_endidx()], rl.get_begidx()
            try:
                self._matches = self._candidates(line, begidx, text)
            except Exception:  # a completion must never break the prompt
                log.debug("completion failed", exc_info=True)
                self._matches = []
        return self._matches[state] if state < len(self._matches) else None

    def _candidates(self, line: str, begidx: int, text: str) -> list[str]:
        if self.complete is not None:
            return self.complete(line, begidx)
        if line[:begidx].strip():
            return []
        return [w + " " for w in self.words if w.startswith(text) and not w.isdigit()]

    async def read(self, prompt: str) -> str | None:
        """The next line typed (``input`` in a thread); None on Ctrl-D."""
        return await self._pending.read(lambda: input(prompt))

    def save_history(self) -> None:
        """Write the history file, if there is one (silently skipped when it cannot be)."""
        if self._readline is None or self.history is None:
            return
        try:
            self._readline.write_history_file(self.history)
        except OSError as exc:
            log.debug("cannot write the history to %s: %s", self.history, exc)


class StreamLines:
    """Lines from a file descriptor that is not a terminal (a pipe or a file): a script.

    It reads the descriptor itself (``os.read``) rather than through ``sys.stdin``, so a read
    still pending at exit holds no lock the interpreter needs.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pending_input = b""
        self._eof = False
        self._pending = _PendingRead()

    def _read_line(self) -> str | None:
        while b"\n" not in self._pending_input and not self._eof:
            block = os.read(self.fd, 65536)
            if not block:
                self._eof = True
            self._pending_input += block
        if not self._pending_input:
            return None
        line, _, self._pending_input = self._pending_input.partition(b"\n")
        return line.decode("utf-8", "replace").rstrip("\r")

    async def read(self, prompt: str) -> str | None:
        """The next line of the script; None at its end."""
        return await self._pending.read(self._read_line)


class UsageError(Exception):
    """A command typed wrongly; the message is its usage."""


@dataclass(frozen=True, slots=True)
class MenuLimits:
    """How much one run of menu ``2`` downloads without asking: files, and bytes in all."""

    max_files: int = DEFAULT_MENU_MAX_FILES
    max_bytes: int = DEFAULT_MENU_MAX_BYTES


@dataclass(frozen=True, slots=True)
class MenuPlan:
    """What menu ``2`` downloads: for each other peer of a search, the files the index lists
    for it (with their size and digest) — never a name only the peer itself offers."""

    peers: tuple[tuple[SearchHit, tuple[ListedFile, ...]], ...]

    @classmethod
    def of(cls, hits: Sequence[SearchHit], me: str) -> MenuPlan:
        """Every file of every hit but this peer's own."""
        return cls(tuple((h, tuple(h.files)) for h in hits if h.domain_name != me))

    @property
    def files(self) -> int:
        """How many files in all."""
        return sum(len(listed) for _, listed in self.peers)

    @property
    def size(self) -> int:
        """How many bytes in all, as the index lists them."""
        return sum(f.size for _, listed in self.peers for f in listed)

    def over(self, limits: MenuLimits) -> bool:
        """True when the plan goes past ``limits``."""
        return self.files > limits.max_files or self.size > limits.max_bytes

    def within(self, limits: MenuLimits) -> MenuPlan:
        """The plan cut to ``limits``: files in order while they fit."""
        files, size = 0, 0
        kept: list[tuple[SearchHit, tuple[ListedFile, ...]]] = []
        for hit, listed in self.peers:
            take: list[ListedFile] = []
            for entry in listed:
                if files + 1 > limits.max_files or size + entry.size > limits.max_bytes:
                    continue
                take.append(entry)
                files, size = files + 1, size + entry.size
            if take:
                kept.append((hit, tuple(take)))
        return MenuPlan(tuple(kept))


def _peer_where(hit: SearchHit) -> str:
    return f"{hit.domain_name} at {hit.address}:{hit.port_number}"


def explain(exc: BaseException, where: str = "the index") -> str:
    """One readable line for a failure of a command (``where``: whom we were talking to)."""
    if isinstance(exc, IndexUntrusted):
        return (
            "the index presented a certificate we do not trust (not from our CA, or not for"
            " its name); check --ca and --index-tls-name"
        )
    if isinstance(exc, FileConflict):
        return f"{exc.path} already exists with different content (add --overwrite to replace it)"
    if isinstance(exc, InvalidPath):
        return f"invalid name: {exc.message}"
    if isinstance(exc, Busy):
        after = exc.extra.get("retry_after")
        hint = f"; try again in {after} s" if isinstance(after, int | float) else "; try again"
        return f"{where} is busy ({exc.message}){hint}"
    if isinstance(exc, RateLimited):
        return f"{where}: too many attempts; retry in {exc.retry_after:.0f} s"
    if isinstance(exc, TokenExpired):
        return f"{where} says our token has expired; it is renewed automatically, try again"
    if isinstance(exc, TokenInvalid | AuthRequired):
        return f"{where} refused our token ({exc.message}); does it use the same index?"
    if isinstance(exc, NotFound):
        return f"{where}: not found ({exc.message})"
    if isinstance(exc, Forbidden):
        return f"{where} refused: {exc.message}"
    if isinstance(exc, Timeout):
        return f"{where} did not answer in time ({exc.message})"
    if isinstance(exc, ConnectionClosed):
        if certificate_untrusted(exc):
            return (
                f"{where} presented a certificate we do not trust (not from our CA, or not"
                " for that name)"
            )
        return f"{where} is offline or unreachable ({exc})"
    if isinstance(exc, VerificationFailed):
        return f"verification failed: {exc}"
    if isinstance(exc, RemoteProtocolError):
        return f"{where} broke the protocol ({exc})"
    if isinstance(exc, RequestError):
        return f"{where}: {exc.code}: {exc.message}"
    if isinstance(exc, DownloadError | P2PError):
        return str(exc)
    if isinstance(exc, OSError):
        name = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{name}"
    return f"unexpected error ({type(exc).__name__}: {exc}); run peerd with -vv for details"


class Shell:
    """The command loop: reads lines, runs commands, shows results; ``run()`` until quit."""

    def __init__(
        self,
        session: PeerSession,
        view: ShellView,
        lines: LineSource,
        *,
        echo: bool = False,
        clock: Clock = SYSTEM_CLOCK,
        menu_limits: MenuLimits | None = None,
    ) -> None:
        self.session = session
        self.menu_limits = menu_limits or MenuLimits()
        self.view = view
        self.lines: LineSource = lines
        #: Show each line read (without a terminal nobody sees what the script typed).
        self.echo = echo
        self.clock = clock
        self.known: dict[str, KnownPeer] = {}
        #: The file names of the last search of each keyword (case-folded), for completion.
        self.searched: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.counts = TransferCounts()
        self._quit = False
        self._command: asyncio.Task[None] | None = None
        self._reading: asyncio.Future[str | None] | None = None
        self.commands: dict[str, Callable[[list[str]], Awaitable[None]]] = {
            "1": self.cmd_sync,
            "2": self.cmd_menu_search,
            "3": self.cmd_quit,
            "search": self.cmd_search,
            "get": self.cmd_get,
            "ls": self.cmd_ls,
            "peers": self.cmd_peers,
            "sync": self.cmd_sync,
            "status": self.cmd_status,
            "help": self.cmd_help,
            "?": self.cmd_help,
            "quit": self.cmd_quit,
            "exit": self.cmd_quit,
        }

    # --- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Greet, then read and run commands until quit, end of input, or a signal."""
        self.view.banner(self.session.status())
        line: str | None = ""
        while not self._quit:
            line = await self._read(PROMPT)
            if line is None:
                break
            await self.execute(line)
        self.view.goodbye(at_prompt=line is None)

    async def _read(self, prompt: str) -> str | None:
        self._reading = asyncio.ensure_future(self.lines.read(prompt))
        try:
            line = await self._reading
        except asyncio.CancelledError:
            if self._quit:  # interrupted at the prompt: leave
                return None
            raise
        except OSError as exc:
            log.debug("cannot read input", exc_info=True)
            self.view.error(f"cannot read input: {exc.strerror or exc}")
            return None
        finally:
            self._reading = None
        if line is not None and self.echo:
            self.view.echo(prompt, line)
        return line

    async def execute(self, line: str) -> None:
        """Run one command line; Ctrl-C (:meth:`interrupt`) stops it and returns."""
        task = asyncio.ensure_future(self._dispatch(line))
        self._command = task
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._command = None
        if task.cancelled():
            self.view.interrupted()
        else:
            task.result()  # _dispatch handles every Exception; this re-raises only exits

    def interrupt(self) -> None:
        """Ctrl-C: stop the running command, or leave when waiting at the prompt."""
        if self._command is not None and not self._command.done():
            self._command.cancel()
        else:
            self.terminate()

    def terminate(self) -> None:
        """Leave the shell as soon as possible (SIGTERM, or Ctrl-C at the prompt)."""
        self._quit = True
        if self._command is not None:
            self._command.cancel()
        if self._reading is not None:
            self._reading.cancel()

    async def _dispatch(self, line: str) -> None:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self.view.error(f"cannot read that line: {exc}")
            return
        if not words:
            return
        name, args = words[0], words[1:]
        command = self.commands.get(name.lower())
        if command is None:
            self.view.unknown_command(name)
            return
        try:
            await command(args)
        except UsageError as exc:
            self.view.usage(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("command %r failed", name, exc_info=True)
            self.view.error(explain(exc))

    # --- the menu and the commands ----------------------------------------------------

    async def cmd_help(self, args: list[str]) -> None:
        """``help``: every command."""
        self.view.help()

    async def cmd_quit(self, args: list[str]) -> None:
        """``quit`` / ``exit`` / ``3``."""
        self._quit = True

    async def cmd_sync(self, args: list[str]) -> None:
        """``sync`` / ``1``: scan the share and replace this peer's listing at the index."""
        self.view.synced(await self.session.resync())

    async def cmd_search(self, args: list[str]) -> None:
        """``search <keyword>``: who shares what under a keyword."""
        if len(args) != 1:
            raise UsageError("search <keyword>")
        await self._search(check_keyword(args[0]))

    async def _search(self, keyword: str) -> list[SearchHit]:
        hits = await self.session.search(keyword)
        now = self.clock.time()
        for hit in hits:
            self.known[hit.domain_name] = KnownPeer(
                hit.domain_name, hit.address, hit.port_number, keyword, len(hit.files), now
            )
        names = tuple(sorted({f.filename for h in hits for f in h.files}))
        self.searched[keyword.casefold()] = (keyword, names)
        self.view.search_results(keyword, hits, self.session.domain_name)
        return hits

    def completer(self) -> ShellCompleter:
        """Tab completion from what this shell knows: its commands, the keywords of the share
        and of recent searches, the files each search found, and the peers seen."""

        def keywords() -> set[str]:
            found = {f.keyword for f in list(self.session.shared)}
            found.update(keyword for keyword, _ in list(self.searched.values()))
            with contextlib.suppress(OSError):
                found.update(
                    n for n in os.listdir(self.session.file_directory) if not n.startswith(".")
                )
            return found

        def files(keyword: str) -> tuple[str, ...]:
            return self.searched.get(keyword.casefold(), ("", ()))[1]

        return ShellCompleter(list(self.commands), keywords, files, lambda: list(self.known))

    async def cmd_menu_search(self, args: list[str]) -> None:
        """``2 [keyword] [--all]``: search, list each peer, download and show what the index
        lists for it (checked against the index's size and digest), within the menu's bounds
        unless the user confirms more."""
        confirmed = "--all" in args
        args = [a for a in args if a != "--all"]
        if len(args) > 1:
            raise UsageError("2 [keyword] [--all]")
        if args:
            keyword = args[0]
        else:
            line = await self._read(KEYWORD_PROMPT)
            if line is None or not line.strip():
                return
            keyword = line.strip()
        keyword = check_keyword(keyword)
        hits = await self._search(keyword)
        plan = MenuPlan.of(hits, self.session.domain_name)
        if plan.over(self.menu_limits) and not confirmed:
            confirmed = await self._confirm(plan)
            if not confirmed:
                plan = plan.within(self.menu_limits)
                self.view.menu_bounded(plan.files, plan.size, keyword)
        for hit, listed in plan.peers:
            where = _peer_where(hit)
            try:
                async with await self.session.open_peer(hit) as peer:
                    names = await peer.list(keyword)
                    self.view.peer_files(hit, keyword, names)
                    await self._fetch_listed(peer, hit, keyword, listed, set(names))
            except (P2PError, OSError) as exc:
                log.debug("peer %s failed", where, exc_info=True)
                self.view.error(explain(exc, where))

    async def _confirm(self, plan: MenuPlan) -> bool:
        """Ask before a menu download over the bounds; True if the user says yes."""
        limits = self.menu_limits
        self.view.menu_over_limits(
            plan.files, plan.size, len(plan.peers), limits.max_files, limits.max_bytes
        )
        answer = await self._read(CONFIRM_PROMPT)
        return answer is not None and answer.strip().lower() in ("y", "yes")

    async def _fetch_listed(
        self,
        peer: RemotePeer,
        hit: SearchHit,
        keyword: str,
        listed: Sequence[ListedFile],
        offered: set[str],
    ) -> None:
        """Download the files the index listed for ``hit`` that the peer offers too; say what
        the peer offers beyond them (never downloaded: the index vouches for no digest)."""
        extra = len(offered - {f.filename for f in hit.files})
        if extra:
            self.view.unlisted_offered(hit, extra)
        where = _peer_where(hit)
        for entry in listed:
            if entry.filename not in offered:
                self.view.info(f"{hit.domain_name} no longer lists {entry.filename}: skipped")
                continue
            try:
                await self._fetch_and_show(peer, hit, keyword, entry.filename, overwrite=False)
            except (P2PError, OSError) as exc:
                log.debug("%s from %s failed", entry.filename, where, exc_info=True)
                self.view.error(explain(exc, where))
                if peer.closed or isinstance(exc, RemoteProtocolError):
                    break  # nothing more from a peer that is gone or broke the protocol

    async def cmd_get(self, args: list[str]) -> None:
        """``get <keyword> <file> [--from <peer>] [--overwrite]``: one file, verified."""
        usage = "get <keyword> <file> [--from <peer>] [--overwrite]"
        positional: list[str] = []
        source: str | None = None
        overwrite = False
        rest = iter(args)
        for arg in rest:
            if arg == "--from":
                source = next(rest, None)
                if source is None:
                    raise UsageError(usage)
            elif arg.startswith("--from="):
                source = arg.partition("=")[2]
            elif arg == "--overwrite":
                overwrite = True
            else:
                positional.append(arg)
        if len(positional) != 2:
            raise UsageError(usage)
        keyword, file_name = check_keyword(positional[0]), check_file_name(positional[1])
        me = self.session.domain_name
        hits = [h for h in await self.session.search(keyword) if h.domain_name != me]
        if source is not None:
            source = source.lower()
            hits = [h for h in hits if h.domain_name == source]
            if not hits:
                self.view.error(f"{source} shares nothing under {keyword!r} (search {keyword})")
                return
        else:
            hits = [h for h in hits if any(f.filename == file_name for f in h.files)]
            if not hits:
                self.view.error(
                    f"no other peer shares {keyword}/{file_name} (search {keyword} to see what"
                    " is there)"
                )
                return
        if await self._swarm_get(keyword, file_name, hits, source, overwrite):
            return
        for i, hit in enumerate(hits):
            if i:
                self.view.info(f"trying the next peer that lists it: {hit.domain_name}")
            try:
                async with await self.session.open_peer(hit) as peer:
                    if await self._fetch_and_show(peer, hit, keyword, file_name, overwrite):
                        return
            except (P2PError, OSError) as exc:
                log.debug("peer %s failed", hit.domain_name, exc_info=True)
                self.view.error(explain(exc, _peer_where(hit)))
                if isinstance(exc, FileConflict | InvalidPath):
                    return  # the same with every peer

    async def _swarm_get(
        self,
        keyword: str,
        file_name: str,
        hits: list[SearchHit],
        source: str | None,
        overwrite: bool,
    ) -> bool:
        """Download from every holder at once when the file has a signed manifest (only from
        ``source`` if given); True if that settled it, False to fetch the whole file instead
        (a peer that publishes no manifest)."""
        me = self.session.domain_name
        listing = listing_for(keyword, file_name, hits, exclude=me, only=source)
        if listing is None or not any(s.manifest for s in listing.sources):
            return False
        if source is None:
            try:
                holdings = await self.session.holders(listing.sha256)
            except P2PError as exc:  # an index without the content lookup: the hits alone
                log.debug("holders failed: %s", exc)
                holdings = []
            listing = listing_for(keyword, file_name, hits, holdings, exclude=me) or listing
        started = self.clock.monotonic()
        try:
            with self.view.swarm_transfer(keyword, file_name, len(listing.sources)) as progress:
                result = await self.session.swarm_get(
                    keyword, file_name, listing, overwrite=overwrite, on_progress=progress
                )
        except DownloadRefused as exc:
            names = ", ".join(s.domain_name for s in listing.sources)
            self.view.refused(names, keyword, file_name, exc)
            if exc.check not in ("holders", "size"):
                # a manifest refused: one publisher's manifest must not stop an honest
                # holder serving the file whole
                self.view.info("fetching the whole file from one holder instead")
                return False
            self.counts = replace(self.counts, refused=self.counts.refused + 1)
            return True
        except (P2PError, OSError) as exc:
            self.counts = replace(self.counts, failed=self.counts.failed + 1)
            self.view.error(explain(exc, f"{keyword}/{file_name}"))
            return True
        received = sum(p.received for p in result.peers)
        self.counts = replace(
            self.counts,
            downloaded=self.counts.downloaded + 1,
            downloaded_bytes=self.counts.downloaded_bytes + received,
        )
        self.view.swarm_downloaded(keyword, file_name, result, self.clock.monotonic() - started)
        try:
            head = await asyncio.to_thread(_read_head, result.path, PREVIEW_BYTES)
        except OSError as exc:
            self.view.error(f"cannot read {result.path}: {exc.strerror or exc}")
            return True
        self.view.preview(file_name, head, result.size, result.sha256)
        return True

    async def _fetch_and_show(
        self, peer: RemotePeer, hit: SearchHit, keyword: str, file_name: str, overwrite: bool
    ) -> bool:
        """Download one file from a connected peer and show the outcome; True if it landed.

        A refused verification is shown (every check) and counted; other failures propagate.
        """
        expected = next((f for f in hit.files if f.filename == file_name), None)
        try:
            with self.view.transfer(hit.domain_name, keyword, file_name) as progress:
                result = await peer.download(
                    keyword,
                    file_name,
                    expected=expected,
                    overwrite=overwrite,
                    progress=progress,
                )
        except DownloadRefused as exc:
            self.counts = replace(self.counts, refused=self.counts.refused + 1)
            self.view.refused(hit.domain_name, keyword, file_name, exc)
            return False
        except (P2PError, OSError):
            self.counts = replace(self.counts, failed=self.counts.failed + 1)
            raise
        self.counts = replace(
            self.counts,
            downloaded=self.counts.downloaded + 1,
            downloaded_bytes=self.counts.downloaded_bytes + result.received,
        )
        self.view.downloaded(hit.domain_name, result)
        await self._show(result)
        return True

    async def _show(self, result: DownloadResult) -> None:
        try:
            head = await asyncio.to_thread(_read_head, result.path, PREVIEW_BYTES)
        except OSError as exc:
            self.view.error(f"cannot read {result.path}: {exc.strerror or exc}")
            return
        self.view.preview(result.file_name, head, result.size, result.sha256)

    async def cmd_ls(self, args: list[str]) -> None:
        """``ls [keyword]``: this peer's own share, and whether the index has each file."""
        if len(args) > 1:
            raise UsageError("ls [keyword]")
        keyword = check_keyword(args[0]) if args else None
        files = await self.session.scan_share()
        if keyword is not None:
            files = [f for f in files if f.keyword.casefold() == keyword.casefold()]
        synced = set(self.session.shared)
        self.view.share([ShareEntry(f, f in synced) for f in files], keyword)

    async def cmd_peers(self, args: list[str]) -> None:
        """``peers``: the peers seen in searches this session, most recent first."""
        peers = sorted(self.known.values(), key=lambda p: -p.seen_at)
        self.view.peers(peers, self.session.domain_name, self.clock.time())

    async def cmd_status(self, args: list[str]) -> None:
        """``status``: who we are, the index session, the token, the share, transfers."""
        share_bytes = sum(f.size for f in self.session.shared)
        self.view.status(self.session.status(), share_bytes, self.counts, self.clock.time())


def _read_head(path: Path, size: int) -> bytes:
    with path.open("rb") as f:
        return f.read(size)


def history_path(share: Path, environ: dict[str, str] | None = None) -> Path | None:
    """Where the history is kept: ``$P2P_HISTORY``, else the home folder, else next to the
    share; None if none of them is writable."""
    env = os.environ if environ is None else environ
    if env.get(HISTORY_ENV):
        return Path(env[HISTORY_ENV])
    candidates = []
    with contextlib.suppress(RuntimeError, KeyError):
        candidates.append(Path.home())
    candidates.append(share.resolve().parent)
    for folder in candidates:
        if folder.is_dir() and os.access(folder, os.W_OK):
            return folder / HISTORY_NAME
    return None


@contextlib.contextmanager
def _terminal_restored(fd: int) -> Iterator[None]:
    """Put the terminal back as it was (a read left pending at exit may have changed it)."""
    try:
        import termios
    except ImportError:
        yield
        return
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_shell_session(session: PeerSession, *, stdin_fd: int = 0) -> None:
    """Run the shell on this process's stdin/stdout until the user leaves.

    On a terminal: colours, progress bars, line editing and history. Otherwise: plain text,
    commands read line by line from stdin, end of input is quit. SIGINT stops the running
    command (or leaves at the prompt); SIGTERM leaves.
    """
    interactive = os.isatty(stdin_fd) and sys.stdout.isatty()
    view = ShellView(make_console(interactive=interactive), interactive=interactive)
    lines = StreamLines(stdin_fd)
    shell = Shell(session, view, lines, echo=not interactive)
    terminal: TerminalLines | None = None
    if interactive:
        terminal = TerminalLines(
            history_path(session.file_directory),
            list(shell.commands),
            complete=shell.completer().candidates,
        )
        shell.lines = terminal
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, shell.interrupt)
    loop.add_signal_handler(signal.SIGTERM, shell.terminate)
    restore = _terminal_restored(stdin_fd) if interactive else contextlib.nullcontext()
    try:
        with restore:
            await shell.run()
    except BrokenPipeError:  # the output was closed (``peerd ... | head``): just leave
        log.debug("output closed; leaving the shell")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit's flush has somewhere to go
        os.close(devnull)
    finally:
        if terminal is not None:
            terminal.save_history()
        sys.stdout.flush()


__all__ = [
    "CONFIRM_PROMPT",
    "DEFAULT_MENU_MAX_BYTES",
    "DEFAULT_MENU_MAX_FILES",
    "KEYWORD_PROMPT",
    "PROMPT",
    "LineSource",
    "MenuLimits",
    "MenuPlan",
    "Shell",
    "StreamLines",
    "TerminalLines",
    "explain",
    "history_path",
    "run_shell_session",
]
