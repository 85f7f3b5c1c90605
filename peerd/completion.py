"""Tab completion for the shell: commands, keywords, file names and peer names.

:class:`ShellCompleter` is pure: given the line typed so far and where the word being completed
starts, it lists what may go there — a command first; then, for ``search``, ``ls`` and ``2``, a
keyword (from the share and from recent searches); for ``get``, a keyword, then a file name
from the last search of that keyword, then ``--from`` with a peer name seen in a search, or
``--overwrite``. Where the words come from is injected, so a test needs no shell; the shell
hands it to ``readline`` (:class:`peerd.shell.TerminalLines`). A name that needs quotes gets
them, so the completed line reads back as the name.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Sequence

#: Commands whose first argument is a keyword.
KEYWORD_COMMANDS = frozenset({"search", "ls", "2"})
GET_OPTIONS = ("--from", "--overwrite")


def _words(text: str) -> list[str]:
    """The words of ``text`` as the shell will read them (an unclosed quote is closed)."""
    for closing in ("", '"', "'"):
        try:
            return shlex.split(text + closing)
        except ValueError:
            continue
    return text.split()


def _quoted(word: str) -> str:
    """``word`` as it must be typed (quoted if it holds a space or a quote)."""
    return word if shlex.quote(word) == word else shlex.quote(word)


class ShellCompleter:
    """What Tab offers at a point of a shell line."""

    def __init__(
        self,
        commands: Sequence[str],
        keywords: Callable[[], Iterable[str]],
        files: Callable[[str], Iterable[str]],
        peers: Callable[[], Iterable[str]],
    ) -> None:
        self.commands = sorted(c for c in set(commands) if not c.isdigit() and c != "?")
        self.keywords = keywords
        self.files = files
        self.peers = peers

    def candidates(self, line: str, begidx: int) -> list[str]:
        """Completions of the word that starts at ``begidx`` (up to the cursor at the end of
        ``line``), each with the space that ends it."""
        before, text = line[:begidx], line[begidx:]
        prefix = text.lstrip("'\"")
        words = _words(before)
        if not words:
            return self._matching(self.commands, prefix)
        command, args = words[0].lower(), words[1:]
        if command in KEYWORD_COMMANDS:
            return self._matching(self.keywords(), prefix) if not args else []
        if command != "get":
            return []
        if args and args[-1] == "--from":
            return self._matching(self.peers(), prefix)
        if prefix.startswith("-"):
            return self._matching(GET_OPTIONS, prefix)
        positional = [a for i, a in enumerate(args) if not self._option_or_value(args, i)]
        if not positional:
            return self._matching(self.keywords(), prefix)
        if len(positional) == 1:
            return self._matching(self.files(positional[0]), prefix)
        return []

    @staticmethod
    def _option_or_value(args: Sequence[str], i: int) -> bool:
        return args[i].startswith("--") or (i > 0 and args[i - 1] == "--from")

    @staticmethod
    def _matching(source: Iterable[str], prefix: str) -> list[str]:
        words = set(source)
        folded = prefix.casefold()
        found = {w for w in words if w.startswith(prefix)}
        if not found:  # keywords match case-insensitively, so may their completions
            found = {w for w in words if w.casefold().startswith(folded)}
        return [_quoted(w) + " " for w in sorted(found)]


__all__ = ["GET_OPTIONS", "KEYWORD_COMMANDS", "ShellCompleter"]
