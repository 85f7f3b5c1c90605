"""The shell's rendering (peerd/ui.py) on a Console writing to a StringIO: tables, checks,
previews, errors, and untrusted names and content that must not drive the terminal."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from rich.console import Console

from netproto.operations import ListedFile, SearchHit
from peerd.download import CHECKS, CheckOutcome, DownloadRefused, DownloadResult
from peerd.session import PeerStatus
from peerd.ui import (
    KnownPeer,
    ShellView,
    TransferCounts,
    decode_text,
    guess_type,
    make_console,
    sanitize,
)

DIGEST = hashlib.sha256(b"joey").digest()
NASTY = "\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b]8;;http://evil/\x1b\\link\x1b]8;;\x1b\\\r\u202eevil"
ESCAPES = ("\x1b", "\x07", "\x9b", "\r", "\u202e")


def plain_view(preview_lines: int = 20) -> tuple[ShellView, io.StringIO]:
    out = io.StringIO()
    console = make_console(interactive=False, file=out)
    return ShellView(console, interactive=False, preview_lines=preview_lines), out


def terminal_view() -> tuple[ShellView, io.StringIO]:
    """A colour terminal console: markup would turn into escape codes here if it were read."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="truecolor", width=120)
    return ShellView(console, interactive=True), out


def hit(name: str = "peer1", *files: str, address: str = "127.0.0.1") -> SearchHit:
    listed = tuple(ListedFile(f, 1234, DIGEST) for f in files or ("joey.txt",))
    return SearchHit(name, 7001, address, listed)


def all_checks(passed: bool | None = True) -> tuple[CheckOutcome, ...]:
    return tuple(CheckOutcome(name, passed, f"{name} detail") for name in CHECKS)


def result(tmp_path: Path, checks: tuple[CheckOutcome, ...]) -> DownloadResult:
    return DownloadResult(
        tmp_path / "koala" / "joey.txt",
        "koala",
        "joey.txt",
        4,
        DIGEST,
        "peer1",
        checks,
        received=4,
        elapsed=0.5,
    )


# --- tables ----------------------------------------------------------------------------------


def test_search_results_show_peer_address_file_size_and_digest_prefix() -> None:
    view, out = plain_view()
    view.search_results("koala", [hit("peer1", "joey.txt", "sleep.txt")], me="peer3")
    text = out.getvalue()
    for expected in ("peer1", "127.0.0.1:7001", "joey.txt", "sleep.txt", "1.2 kB"):
        assert expected in text
    assert DIGEST.hex()[:12] in text
    assert DIGEST.hex()[:13] not in text  # a prefix, not the whole digest


def test_search_results_mark_this_peers_own_hit() -> None:
    view, out = plain_view()
    view.search_results("koala", [hit("peer3")], me="peer3")
    assert "peer3 (you)" in out.getvalue()


def test_no_search_results_say_so_in_one_line() -> None:
    view, out = plain_view()
    view.search_results("koala", [], me="peer3")
    assert out.getvalue() == "no peer shares anything under 'koala'\n"


def test_the_peers_table_lists_known_peers_with_their_address_and_age() -> None:
    view, out = plain_view()
    view.peers([KnownPeer("peer1", "10.0.0.1", 7001, "koala", 2, 100.0)], "peer3", now=130.0)
    text = out.getvalue()
    assert "peer1" in text and "10.0.0.1:7001" in text and "30 s ago" in text


def test_status_shows_identity_index_token_share_and_transfers() -> None:
    view, out = plain_view()
    status = PeerStatus(
        "peer3", "peer3", 7003, "127.0.0.1:7000", True, 1600.0, 2, 1000.0, 1000.0, 1
    )
    view.status(status, 5_000_000, TransferCounts(3, 2_000_000, 1, 0), now=1000.0)
    text = out.getvalue()
    expected = ["peer3", "127.0.0.1:7000, connected", "expires in 10.0 min", "5.0 MB"]
    expected += ["1 transfer(s) now", "3 file(s), 2.0 MB", "1 refused"]
    for part in expected:
        assert part in text


def test_plain_output_has_no_colour_codes_and_no_trailing_blanks() -> None:
    view, out = plain_view()
    view.search_results("koala", [hit("peer1", "a.txt", "a-much-longer-name.txt")], me="peer3")
    view.checks(all_checks())
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue()
    assert all(line == line.rstrip() for line in lines)


def test_the_plain_console_is_not_a_terminal_and_has_no_colour() -> None:
    console = make_console(interactive=False, file=io.StringIO())
    assert not console.is_terminal
    assert console.no_color


# --- checks ----------------------------------------------------------------------------------


def test_passed_checks_are_ticked_with_readable_labels() -> None:
    view, out = plain_view()
    view.checks(all_checks(True))
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == [
        "nonce",
        "size",
        "digest",
        "signer",
        "signature",
        "index",
    ]
    assert all(line.split()[0] == "✓" for line in lines)
    assert "index digest" in out.getvalue()


def test_a_failed_check_is_crossed_and_a_not_applicable_one_dashed() -> None:
    view, out = plain_view()
    view.checks(
        (
            CheckOutcome("signature", False, "the signature does not verify"),
            CheckOutcome("index-digest", None, "the index listed no digest"),
        )
    )
    first, second = out.getvalue().splitlines()
    assert first.split()[:2] == ["✗", "signature"] and "does not verify" in first
    assert second.split()[:3] == ["–", "index", "digest"]


def test_a_download_shows_its_size_time_and_every_check(tmp_path: Path) -> None:
    view, out = plain_view()
    view.downloaded("peer1", result(tmp_path, all_checks()))
    first, *rest = out.getvalue().splitlines()
    assert first == "✓ downloaded koala/joey.txt from peer1: 4 bytes in 0.50 s (8 bytes/s)"
    assert len(rest) == len(CHECKS)


def test_a_refused_download_shows_the_checks_and_says_the_file_was_discarded() -> None:
    view, out = plain_view()
    checks = (
        CheckOutcome("nonce", True, "echoed"),
        CheckOutcome("signature", False, "does not verify under peer1's certificate key"),
    )
    view.refused("peer1", "koala", "joey.txt", DownloadRefused("signature", "bad", checks))
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:2] == ["✓", "nonce"]
    assert lines[1].split()[:2] == ["✗", "signature"]
    assert lines[2] == (
        "✗ refused koala/joey.txt from peer1: the signature check failed — the file was discarded"
    )


def test_a_refusal_without_outcomes_still_names_the_failed_check() -> None:
    view, out = plain_view()
    error = DownloadRefused("truncated", "the connection ended", partial_kept=True)
    view.refused("peer1", "koala", "joey.txt", error)
    first, second = out.getvalue().splitlines()
    assert first.split()[:2] == ["✗", "truncated"] and "the connection ended" in first
    assert "the partial file is kept" in second


# --- untrusted names and content -------------------------------------------------------------


def test_markup_in_file_and_peer_names_is_printed_literally_not_styled() -> None:
    view, out = terminal_view()
    name = "[bold red]x[/bold red][link=http://evil]y[/link]:smile:.txt"
    view.search_results("koala", [hit("peer1", name, address="[blink]1.2.3.4")], me="peer3")
    view.peer_files(hit("peer1", name), "koala", [name])
    text = out.getvalue()
    assert text.count(name) == 2
    assert "[blink]1.2.3.4:7001" in text
    assert "\x1b]8;" not in text  # no hyperlink escape was produced
    assert "\x1b[5m" not in text and "\x1b[1;31m" not in text  # no blink, no bold red
    assert "😄" not in text


def test_escape_sequences_in_text_content_are_removed_and_the_text_kept() -> None:
    view, out = terminal_view()
    content = f"hello {NASTY} world\nsecond\x00line".replace("\x00", "")
    view.preview("notes.txt", content.encode(), len(content.encode()), DIGEST)
    text = out.getvalue()
    assert "hello" in text and "world" in text and "second" in text and "evil" in text
    assert "pwned" not in text  # the window-title payload is gone with its sequence
    for bad in ESCAPES[1:]:
        assert bad not in text
    assert "\x1b[2J" not in text and "\x1b]" not in text  # no clear screen, no OSC at all


def test_markup_and_emoji_codes_in_text_content_are_shown_as_written() -> None:
    view, out = terminal_view()
    content = b"[bold]not bold[/bold] :smile: [link=http://evil]x[/link]\n"
    view.preview("notes.txt", content, len(content), DIGEST)
    text = out.getvalue()
    assert "[bold]not bold[/bold] :smile: [link=http://evil]x[/link]" in text
    assert "\x1b]8;" not in text and "😄" not in text


def test_an_error_message_from_a_peer_is_one_line_with_its_escapes_removed() -> None:
    view, out = terminal_view()
    view.error(f"peer1 refused: {NASTY}\nsecond line")
    text = out.getvalue()
    for bad in ESCAPES:
        assert bad not in text.replace("\x1b[", "")  # rich's own styling aside
    assert "pwned" not in text and "[2J" not in text
    assert text.count("\n") == 1 and "second line" in text


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("tab\there\nnext", "tab\there\nnext"),
        ("café ☕ 日本", "café ☕ 日本"),
        ("a\x1b[31mred\x1b[0m", "ared"),
        ("bell\x07", "bell\ufffd"),
        ("over\rwrite", "over\ufffdwrite"),
        ("\u202eevil", "\ufffdevil"),
        ("c1\x85x", "c1\ufffdx"),
        ("zero\u200bwidth", "zero\ufffdwidth"),
    ],
)
def test_sanitize_keeps_text_and_neutralises_control_characters(raw: str, clean: str) -> None:
    assert sanitize(raw) == clean


# --- previews --------------------------------------------------------------------------------


def test_a_long_text_file_shows_its_first_lines_and_how_many_more() -> None:
    view, out = plain_view(preview_lines=3)
    content = "".join(f"line {i}\n" for i in range(1, 11)).encode()
    view.preview("list.txt", content, len(content), DIGEST)
    text = out.getvalue()
    assert "line 3" in text and "line 4" not in text
    assert "7 more line(s) not shown" in text


def test_a_binary_file_is_summarised_by_type_size_and_digest_prefix() -> None:
    view, out = plain_view()
    head = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    view.preview("koala.png", head, 50_000, DIGEST)
    summary = f"koala.png: PNG image, 50.0 kB (50000 bytes), sha256 {DIGEST.hex()[:16]}…"
    assert out.getvalue().strip() == summary


def test_a_text_preview_cut_inside_a_utf8_character_is_still_text() -> None:
    data = "koala ☕".encode()
    assert decode_text(data[:-1], truncated=True) == "koala "
    assert decode_text(data[:-1], truncated=False) is None


@pytest.mark.parametrize(
    "head, name, kind",
    [
        (b"%PDF-1.7", "x", "PDF document"),
        (b"\x7fELF\x02", "x", "ELF executable"),
        (b"\x00\x01\x02", "song.mp3", "audio/mpeg"),
        (b"\x00\x01\x02", "x.bin", "binary data"),
    ],
)
def test_binary_types_are_guessed_from_content_then_name(head: bytes, name: str, kind: str) -> None:
    assert guess_type(name, head) == kind


def test_bytes_with_nul_are_binary() -> None:
    assert decode_text(b"abc\x00def", truncated=False) is None


# --- progress and help -----------------------------------------------------------------------


def test_a_terminal_download_shows_a_bar_with_bytes_and_rate() -> None:
    view, out = terminal_view()
    with view.transfer("peer1", "video", "big.bin") as progress:
        progress(0, 2_000_000)
        progress(1_000_000, 2_000_000)
        progress(2_000_000, 2_000_000)
    text = out.getvalue()
    assert "2.0/2.0 MB" in text
    assert "/s" in text
    assert "peer1" in text and "video/big.bin" in text


def test_without_a_terminal_a_download_prints_nothing_until_it_ends() -> None:
    view, out = plain_view()
    with view.transfer("peer1", "video", "big.bin") as progress:
        progress(1_000_000, 2_000_000)
    assert out.getvalue() == ""


def test_an_unknown_command_gets_one_line_then_the_help() -> None:
    view, out = plain_view()
    view.unknown_command("[red]frob")
    first, *rest = out.getvalue().splitlines()
    assert first == "✗ unknown command '[red]frob'"
    help_text = "\n".join(rest)
    commands = ["search <keyword>", "get <keyword> <file>", "ls [keyword]", "peers", "sync"]
    commands += ["status", "quit", "Update index server", "Search for file", "Exit"]
    for command in commands:
        assert command in help_text
