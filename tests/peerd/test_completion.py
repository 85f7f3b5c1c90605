"""Tab completion (peerd/completion.py, and the shell's sources of words): commands, keywords,
file names of the last search of a keyword, peer names, and names that need quotes."""

from __future__ import annotations

from pathlib import Path

from peerd.completion import ShellCompleter
from peerd.shell import Shell
from peerd.ui import ShellView, make_console
from tests.support.fake_session import FakePeer, FakeSession

COMMANDS = ["1", "2", "3", "search", "get", "ls", "peers", "sync", "status", "help", "?", "quit"]


def completer() -> ShellCompleter:
    files = {"koala": ["joey.txt", "joey-2.txt", "sleep.txt"], "music": ["slow song.mp3"]}
    return ShellCompleter(
        COMMANDS,
        lambda: ["koala", "Kangaroo", "music", "wombat"],
        lambda keyword: files.get(keyword, []),
        lambda: ["peer1", "peer2", "mallory"],
    )


def test_the_first_word_completes_to_a_command() -> None:
    assert completer().candidates("se", 0) == ["search "]
    assert completer().candidates("s", 0) == ["search ", "status ", "sync "]
    assert "1 " not in completer().candidates("", 0)


def test_search_ls_and_2_complete_a_keyword() -> None:
    for command in ("search ", "ls ", "2 "):
        assert completer().candidates(command + "ko", len(command)) == ["koala "]


def test_keywords_match_regardless_of_case_when_nothing_matches_exactly() -> None:
    assert completer().candidates("search k", 7) == ["koala "]
    assert completer().candidates("search K", 7) == ["Kangaroo "]
    assert completer().candidates("search KO", 7) == ["koala "]


def test_get_completes_a_keyword_then_a_file_of_its_last_search() -> None:
    c = completer()
    assert c.candidates("get wo", 4) == ["wombat "]
    assert c.candidates("get koala jo", 10) == ["joey-2.txt ", "joey.txt "]
    assert c.candidates("get koala joey.txt ", 19) == []


def test_a_file_name_with_a_space_is_quoted() -> None:
    assert completer().candidates("get music sl", 10) == ["'slow song.mp3' "]
    assert completer().candidates("get music 'sl", 10) == ["'slow song.mp3' "]


def test_from_completes_a_peer_name_and_dashes_an_option() -> None:
    c = completer()
    assert c.candidates("get koala joey.txt --from pe", 26) == ["peer1 ", "peer2 "]
    assert c.candidates("get koala joey.txt --o", 19) == ["--overwrite "]
    assert c.candidates("get --from peer1 koala jo", 23) == ["joey-2.txt ", "joey.txt "]


def test_other_commands_complete_nothing_after_their_name() -> None:
    assert completer().candidates("status x", 7) == []
    assert completer().candidates("search koala ", 13) == []


async def test_the_shell_completes_what_its_searches_found(tmp_path: Path) -> None:
    share = tmp_path / "peer3-files"
    (share / "wombat").mkdir(parents=True)
    (share / "wombat" / "burrow.txt").write_bytes(b"30 metres\n")
    peers = [FakePeer("peer2", {"koala": {"joey.txt": b"a baby koala\n"}})]
    session = FakeSession(share, peers)
    view = ShellView(make_console(interactive=False), interactive=False)
    shell = Shell(session, view, lines=None)  # type: ignore[arg-type]
    c = shell.completer()
    assert c.candidates("search wo", 7) == ["wombat "]  # a folder of the share
    assert c.candidates("get koala j", 10) == []  # not searched yet
    await shell.execute("search koala")
    assert c.candidates("search ko", 7) == ["koala "]
    assert c.candidates("get koala j", 10) == ["joey.txt "]
    assert c.candidates("get koala joey.txt --from p", 26) == ["peer2 "]
