"""The shell (peerd/shell.py) against a fake session (tests/support/fake_session.py): its
commands, its one-line failures, its input and its Ctrl-C — no index, no peers, no TLS.

The same shell over real daemons, in-process and as ``python -m peerd`` in a pseudo-terminal,
is in test_shell_e2e.py."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import io
import logging
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from netproto.errors import (
    AuthRequired,
    Busy,
    ConnectionClosed,
    Forbidden,
    Internal,
    NotFound,
    RateLimited,
    RemoteProtocolError,
    Timeout,
    TokenExpired,
    TokenInvalid,
    VerificationFailed,
)
from netproto.operations import SearchHit
from peerd.download import CheckOutcome
from peerd.errors import DownloadRefused, IndexUnavailable, IndexUntrusted
from peerd.shell import MenuLimits, Shell, StreamLines, explain
from peerd.ui import ShellView, make_console
from tests.support.fake_clock import FakeClock
from tests.support.fake_session import FakePeer, FakeSession

TIMEOUT = 10.0
CHECKED = (r"✓\s+nonce", r"✓\s+digest", r"✓\s+signature")


def put(root: Path, rel: str, content: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


class ScriptLines:
    """Input lines given in advance; None (end of input) after the last one."""

    def __init__(self, *lines: str) -> None:
        self.lines = list(lines)

    async def read(self, prompt: str) -> str | None:
        return self.lines.pop(0) if self.lines else None


def plain_shell(session: FakeSession, lines: Any) -> tuple[Shell, io.StringIO]:
    out = io.StringIO()
    view = ShellView(make_console(interactive=False, file=out), interactive=False)
    return Shell(session, view, lines, echo=True, clock=session.clock), out


async def run_script(session: FakeSession, *lines: str) -> str:
    """Run the shell over ``lines`` until they end; everything it printed."""
    shell, out = plain_shell(session, ScriptLines(*lines))
    await asyncio.wait_for(shell.run(), TIMEOUT)
    return out.getvalue()


def untrusted_certificate() -> ConnectionClosed:
    """The error a TLS handshake with a certificate we do not trust ends in."""
    error = ConnectionClosed("TLS handshake failed")
    error.__cause__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
    return error


@pytest.fixture
def share(tmp_path: Path) -> Path:
    folder = tmp_path / "peer3-files"
    put(folder, "wombat/burrow.txt", b"30 metres\n")
    return folder


@pytest.fixture
def session(share: Path) -> FakeSession:
    """peer3 (sharing wombat/burrow.txt), and peer1 and peer2 sharing koala files."""
    return FakeSession(
        share,
        [
            FakePeer("peer1", {"koala": {"sleep.txt": b"20 hours a day\n"}}, port=7101),
            FakePeer("peer2", {"koala": {"joey.txt": b"a baby koala\n"}}, port=7102),
        ],
    )


# --- the commands ----------------------------------------------------------------------------


async def test_get_downloads_verifies_shows_the_content_and_lands_in_the_share(
    session: FakeSession, share: Path
) -> None:
    out = await run_script(session, "get koala joey.txt")
    assert "✓ downloaded koala/joey.txt from peer2" in out
    for check in CHECKED:
        assert re.search(check, out)
    assert "a baby koala" in out
    assert (share / "koala" / "joey.txt").read_bytes() == b"a baby koala\n"
    assert session.downloads == ["peer2:koala/joey.txt"]


async def test_search_shows_every_peer_and_file_in_a_table(session: FakeSession) -> None:
    out = await run_script(session, "search KOALA")
    assert session.searches == ["KOALA"]
    assert "2 file(s) on 2 peer(s)" in out
    assert re.search(r"│ peer1 +│ 127\.0\.0\.1:7101 +│ sleep\.txt", out)
    assert re.search(r"│ peer2 +│ 127\.0\.0\.1:7102 +│ joey\.txt", out)


async def test_get_from_downloads_from_the_named_peer_only(session: FakeSession) -> None:
    out = await run_script(
        session, "get koala joey.txt --from peer1", "get koala joey.txt --from PEER2"
    )
    assert re.search(r"✗ peer1 at 127\.0\.0\.1:7101: not found", out)
    assert "✓ downloaded koala/joey.txt from peer2" in out
    assert session.downloads == ["peer1:koala/joey.txt", "peer2:koala/joey.txt"]


async def test_get_from_a_peer_that_shares_nothing_there_says_so(session: FakeSession) -> None:
    out = await run_script(session, "get koala joey.txt --from nobody")
    assert "✗ nobody shares nothing under 'koala' (search koala)" in out
    assert session.downloads == []


async def test_get_tries_the_next_peer_that_lists_the_file(session: FakeSession) -> None:
    session.peers["peer1"].files["koala"]["joey.txt"] = b"a baby koala\n"
    session.peers["peer1"].download_errors["joey.txt"] = Busy("too many transfers", retry_after=1)
    out = await run_script(session, "get koala joey.txt")
    assert re.search(r"✗ peer1 at 127\.0\.0\.1:7101 is busy \(too many transfers\)", out)
    assert "trying the next peer that lists it: peer2" in out
    assert "✓ downloaded koala/joey.txt from peer2" in out


async def test_menu_2_lists_each_peer_then_downloads_and_shows_every_file(
    session: FakeSession, share: Path
) -> None:
    out = await run_script(session, "2", "koala")
    assert "keyword: koala" in out
    assert "peer1 lists 'koala': 1 file(s)" in out and "peer2 lists 'koala': 1 file(s)" in out
    assert "20 hours a day" in out and "a baby koala" in out
    assert len(re.findall(r"✓\s+signature", out)) == 2
    assert sorted(p.name for p in (share / "koala").iterdir()) == ["joey.txt", "sleep.txt"]


@dataclass
class LyingPeer(FakePeer):
    """A peer whose ``list`` offers names it never listed at the index."""

    unlisted: frozenset[str] = frozenset()

    def hit(self, keyword: str) -> SearchHit | None:
        hit = super().hit(keyword)
        if hit is None:
            return None
        listed = tuple(f for f in hit.files if f.filename not in self.unlisted)
        return dataclasses.replace(hit, files=listed)


async def test_menu_2_downloads_only_the_files_the_index_lists_for_each_peer(
    share: Path,
) -> None:
    extra = {f"extra-{i:03d}.txt": b"never listed\n" for i in range(300)}
    liar = LyingPeer(
        "peer1",
        {"koala": {"sleep.txt": b"20 hours a day\n", **extra}},
        port=7101,
        unlisted=frozenset(extra),
    )
    session = FakeSession(share, [liar])
    out = await run_script(session, "2 koala")
    assert "peer1 offers 300 file(s) the index does not list for it: not downloaded" in out
    assert session.downloads == ["peer1:koala/sleep.txt"]
    assert sorted(p.name for p in (share / "koala").iterdir()) == ["sleep.txt"]


def _many(session: FakeSession, count: int) -> None:
    session.peers["peer1"].files["koala"] = {f"f{i:02d}.txt": b"x" * 100 for i in range(count)}


async def test_menu_2_past_its_bounds_asks_and_without_a_yes_downloads_only_what_fits(
    session: FakeSession,
) -> None:
    _many(session, 30)
    out = await run_script(session, "2 koala", "n")
    assert "the index lists 31 file(s), 3.0 kB, on 2 peer(s)" in out
    assert "download them all? [y/N] n" in out
    assert "downloading 25 of them (2.5 kB); 2 koala --all downloads every one" in out
    assert len(session.downloads) == 25


async def test_menu_2_past_its_bounds_downloads_everything_after_a_yes(
    session: FakeSession,
) -> None:
    _many(session, 30)
    await run_script(session, "2 koala", "y")
    assert len(session.downloads) == 31


async def test_menu_2_with_all_does_not_ask(session: FakeSession) -> None:
    _many(session, 30)
    out = await run_script(session, "2 koala --all")
    assert "download them all" not in out
    assert len(session.downloads) == 31


async def test_menu_2_bounds_the_bytes_too(share: Path) -> None:
    big = FakePeer("peer1", {"koala": {"a.bin": b"a" * 600, "b.bin": b"b" * 600}}, port=7101)
    session = FakeSession(share, [big])
    shell, out = plain_shell(session, ScriptLines("2 koala", ""))
    shell.menu_limits = MenuLimits(max_files=10, max_bytes=1000)
    await asyncio.wait_for(shell.run(), TIMEOUT)
    assert "downloading 1 of them" in out.getvalue()
    assert session.downloads == ["peer1:koala/a.bin"]


async def test_menu_2_stops_asking_a_peer_that_broke_the_protocol(session: FakeSession) -> None:
    _many(session, 3)
    broken = RemoteProtocolError("the peer sent a chunk of 0 bytes (1 to 262144 allowed)")
    session.peers["peer1"].download_errors["f00.txt"] = broken
    out = await run_script(session, "2 koala")
    assert "✗ peer1 at 127.0.0.1:7101 broke the protocol (the peer sent a chunk of 0" in out
    assert [d for d in session.downloads if d.startswith("peer1:")] == ["peer1:koala/f00.txt"]
    assert "peer2:koala/joey.txt" in session.downloads  # the other peer is still asked


async def test_menu_2_skips_this_peers_own_hit(session: FakeSession) -> None:
    out = await run_script(session, "2 wombat")
    assert "peer3 (you)" in out
    assert session.connections == []


async def test_menu_1_publishes_files_added_to_the_share(session: FakeSession, share: Path) -> None:
    put(share, "wombat/new.txt", b"new")
    out = await run_script(session, "1", "search wombat")
    assert "✓ the index now lists 2 of your files" in out
    assert "new.txt" in out


async def test_ls_shows_the_own_share_and_what_the_index_does_not_have_yet(
    session: FakeSession, share: Path
) -> None:
    put(share, "wombat/new.txt", b"new")
    out = await run_script(session, "ls wombat")
    assert re.search(r"burrow\.txt .*✓", out)
    assert re.search(r"new\.txt .*not yet \(sync\)", out)


async def test_peers_lists_the_peers_seen_in_the_last_searches(session: FakeSession) -> None:
    out = await run_script(session, "peers", "search koala", "peers")
    assert "no peers known yet" in out
    assert re.search(r"│ peer1 +│ 127\.0\.0\.1:7101 +│ koala", out)


async def test_status_shows_who_i_am_the_token_expiry_and_the_transfers(
    session: FakeSession,
) -> None:
    out = await run_script(session, "get koala joey.txt", "status")
    assert re.search(r"user +peer3", out)
    assert re.search(r"token +expires in 10\.0 min", out)
    assert re.search(r"downloads +1 file\(s\), 13 bytes", out)


async def test_status_counts_time_on_the_injected_clock(share: Path) -> None:
    clock = FakeClock()
    session = FakeSession(share, clock=clock)
    clock.advance(540)
    out = await run_script(session, "status")
    assert re.search(r"token +expires in 1\.0 min", out)
    assert re.search(r"last sync +9 min ago", out)


async def test_an_unknown_command_is_answered_with_the_help(session: FakeSession) -> None:
    out = await run_script(session, "frobnicate now")
    assert "✗ unknown command 'frobnicate'" in out
    assert "get <keyword> <file> [--from <peer>]" in out


async def test_a_command_used_wrongly_shows_its_usage(session: FakeSession) -> None:
    out = await run_script(session, "search", "get koala")
    assert "✗ usage: search <keyword>" in out
    assert "✗ usage: get <keyword> <file> [--from <peer>] [--overwrite]" in out
    assert session.searches == []


async def test_end_of_input_leaves_the_shell(session: FakeSession) -> None:
    out = await run_script(session)
    assert out.rstrip().endswith("bye")


async def test_quit_leaves_without_reading_further(session: FakeSession) -> None:
    lines = ScriptLines("quit", "search koala")
    shell, _ = plain_shell(session, lines)
    await asyncio.wait_for(shell.run(), TIMEOUT)
    assert lines.lines == ["search koala"]
    assert session.searches == []


# --- failures are one readable line ----------------------------------------------------------


async def test_an_invalid_name_is_refused_before_anything_is_sent(session: FakeSession) -> None:
    out = await run_script(session, "get koala ../../etc/passwd", "search a/b")
    assert "✗ invalid name: file_name must not start with '.'" in out
    assert "✗ invalid name: keyword contains a forbidden character '/'" in out
    assert session.searches == [] and session.downloads == []


async def test_a_different_existing_file_is_a_conflict_until_overwrite(
    session: FakeSession, share: Path
) -> None:
    mine = put(share, "koala/joey.txt", b"my own joey\n")
    out = await run_script(session, "get koala joey.txt")
    assert re.search(r"✗ .*joey\.txt already exists with different content \(add --overwrite", out)
    assert mine.read_bytes() == b"my own joey\n"
    out = await run_script(session, "get koala joey.txt --overwrite")
    assert "✓ downloaded koala/joey.txt" in out
    assert mine.read_bytes() == b"a baby koala\n"


async def test_a_peer_listed_but_offline_is_one_readable_line(session: FakeSession) -> None:
    session.peers["mallory"] = FakePeer(
        "mallory",
        {"ghost": {"gone.txt": b"boo"}},
        connect_error=ConnectionClosed("Connect call failed ('127.0.0.1', 7666)"),
    )
    out = await run_script(session, "get ghost gone.txt")
    assert re.search(r"✗ mallory at 127\.0\.0\.1:\d+ is offline or unreachable", out)
    assert "Traceback" not in out


async def test_a_peer_with_a_certificate_we_do_not_trust_is_said_so(
    session: FakeSession,
) -> None:
    session.peers["mallory"] = FakePeer(
        "mallory", {"koala": {"sleep.txt": b"x"}}, connect_error=untrusted_certificate()
    )
    out = await run_script(session, "get koala sleep.txt --from mallory")
    assert re.search(r"✗ mallory at 127\.0\.0\.1:\d+ presented a certificate we do not trust", out)


async def test_an_index_with_a_certificate_we_do_not_trust_is_said_so(
    session: FakeSession,
) -> None:
    async def untrusted(keyword: str) -> list[SearchHit]:
        cause = untrusted_certificate()
        raise IndexUntrusted("the index at 127.0.0.1:7000 presented ...") from cause

    session.search_hook = untrusted
    out = await run_script(session, "search koala", "get koala joey.txt")
    line = "✗ the index presented a certificate we do not trust (not from our CA, or not for its"
    assert out.count(line) == 2
    assert session.downloads == []


async def test_an_unreachable_index_is_one_readable_line(session: FakeSession) -> None:
    async def unreachable(keyword: str) -> list[SearchHit]:
        cause = ConnectionClosed("Connect call failed")
        raise IndexUnavailable("cannot reach the index at 127.0.0.1:7000: refused") from cause

    session.search_hook = unreachable
    out = await run_script(session, "search koala")
    assert "✗ cannot reach the index at 127.0.0.1:7000: refused" in out


async def test_a_busy_peer_is_one_readable_line(session: FakeSession) -> None:
    busy = Busy("too many transfers in progress", retry_after=1)
    session.peers["peer1"].download_errors["sleep.txt"] = busy
    out = await run_script(session, "get koala sleep.txt")
    assert re.search(
        r"✗ peer1 at 127\.0\.0\.1:\d+ is busy \(too many transfers in progress\); try again in 1",
        out,
    )


async def test_a_forged_signature_is_shown_as_a_cross_and_the_file_is_discarded(
    session: FakeSession, share: Path
) -> None:
    checks = (
        CheckOutcome("nonce", True, "the trailer echoes our fresh nonce"),
        CheckOutcome("sha256", True, "the bytes hash to 3f2a…"),
        CheckOutcome(
            "signature", False, "the signature does not verify under peer1's certificate key"
        ),
    )
    refused = DownloadRefused("signature", checks[2].detail, checks)
    session.peers["peer1"] = FakePeer(
        "peer1", {"horse": {"fake.txt": b"fake"}}, download_errors={"fake.txt": refused}
    )
    out = await run_script(session, "get horse fake.txt", "status")
    assert re.search(r"✓\s+digest", out)
    assert re.search(r"✗\s+signature\s+the signature does not verify under peer1's", out)
    assert "✗ refused horse/fake.txt from peer1: the signature check failed — the file was" in out
    assert re.search(r"downloads +0 file\(s\), 0 bytes this session; 1 refused, 0 failed", out)
    assert not (share / "horse").exists()


async def test_a_failed_download_is_counted(session: FakeSession) -> None:
    session.peers["peer1"].download_errors["sleep.txt"] = Timeout("no data in time")
    out = await run_script(session, "get koala sleep.txt", "status")
    assert re.search(r"✗ peer1 at 127\.0\.0\.1:7101 did not answer in time", out)
    assert re.search(r"0 refused, 1 failed", out)


async def test_an_unexpected_failure_is_one_line_and_its_traceback_goes_to_the_debug_log(
    session: FakeSession, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(keyword: str) -> list[SearchHit]:
        raise RuntimeError("boom")

    session.search_hook = broken
    with caplog.at_level(logging.DEBUG, logger="peerd.shell"):
        out = await run_script(session, "search koala", "status")
    assert "✗ unexpected error (RuntimeError: boom); run peerd with -vv for details" in out
    assert "Traceback" not in out
    assert "user" in out  # the shell went on
    assert any(r.exc_info and r.levelno == logging.DEBUG for r in caplog.records)


EXPIRED = "peer1 says our token has expired; it is renewed automatically, try again"


@pytest.mark.parametrize(
    "error, message",
    [
        (RateLimited("x", retry_after=7), "peer1: too many attempts; retry in 7 s"),
        (TokenExpired(), EXPIRED),
        (Timeout("no answer"), "peer1 did not answer in time (no answer)"),
        (NotFound("no such file"), "peer1: not found (no such file)"),
        (ConnectionClosed("reset"), "peer1 is offline or unreachable (reset)"),
        (
            RemoteProtocolError("the peer's stream header is malformed: size: expected an int"),
            "peer1 broke the protocol (the peer's stream header is malformed: size: expected an"
            " int)",
        ),
        (
            untrusted_certificate(),
            "peer1 presented a certificate we do not trust (not from our CA, or not for that name)",
        ),
    ],
)
def test_each_wire_error_reads_as_a_sentence(error: Exception, message: str) -> None:
    assert explain(error, "peer1") == message


def test_an_untrusted_index_reads_as_such_wherever_it_is_raised() -> None:
    error = IndexUntrusted("the index at x:1 presented a certificate we do not trust")
    assert explain(error, "peer1").startswith("the index presented a certificate we do not trust")


@pytest.mark.parametrize(
    "error, message",
    [
        (
            TokenInvalid("bad signature"),
            "peer1 refused our token (bad signature); does it use the same index?",
        ),
        (
            AuthRequired("no token"),
            "peer1 refused our token (no token); does it use the same index?",
        ),
        (Forbidden("not your file"), "peer1 refused: not your file"),
        (Busy("full"), "peer1 is busy (full); try again"),
        (Internal(), "peer1: INTERNAL: internal error"),
        (
            VerificationFailed("digest", "SHA-256 differs"),
            "verification failed: digest: SHA-256 differs",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "/share/x"),
            "No space left on device: /share/x",
        ),
        (OSError("no detail"), "no detail"),
    ],
)
def test_other_failures_read_as_a_sentence_too(error: Exception, message: str) -> None:
    assert explain(error, "peer1") == message


async def test_input_that_cannot_be_read_ends_the_shell_with_the_reason(
    session: FakeSession, tmp_path: Path
) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # read() fails: EISDIR
    try:
        shell, out = plain_shell(session, StreamLines(fd))
        await asyncio.wait_for(shell.run(), TIMEOUT)
    finally:
        os.close(fd)
    assert "cannot read input: Is a directory" in out.getvalue()


# --- input, signals ------------------------------------------------------------------------


async def test_the_event_loop_runs_while_the_shell_waits_for_input(session: FakeSession) -> None:
    read_fd, write_fd = os.pipe()
    try:
        shell, out = plain_shell(session, StreamLines(read_fd))
        running = asyncio.ensure_future(shell.run())
        served = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, served.set)  # e.g. a peer being served
        await asyncio.wait_for(served.wait(), TIMEOUT)
        assert not running.done()  # still waiting for a line that has not come
        os.write(write_fd, b"search koala\nquit\n")
        await asyncio.wait_for(running, TIMEOUT)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert session.searches == ["koala"]
    assert "p2pshare> search koala" in out.getvalue()


async def test_interrupt_stops_the_running_command_and_the_shell_goes_on(
    session: FakeSession,
) -> None:
    started = asyncio.Event()

    async def hangs(keyword: str) -> list[SearchHit]:
        started.set()
        await asyncio.sleep(3600)
        return []

    session.search_hook = hangs
    shell, out = plain_shell(session, ScriptLines("search koala", "status"))
    running = asyncio.ensure_future(shell.run())
    await asyncio.wait_for(started.wait(), TIMEOUT)
    shell.interrupt()
    await asyncio.wait_for(running, TIMEOUT)
    text = out.getvalue()
    assert "interrupted" in text
    assert re.search(r"user +peer3", text)


async def test_interrupt_at_the_prompt_leaves_the_shell(session: FakeSession) -> None:
    read_fd, write_fd = os.pipe()
    try:
        shell, out = plain_shell(session, StreamLines(read_fd))
        running = asyncio.ensure_future(shell.run())
        await asyncio.sleep(0.1)
        shell.interrupt()
        await asyncio.wait_for(running, TIMEOUT)
    finally:
        os.close(write_fd)
        os.close(read_fd)
    assert out.getvalue().rstrip().endswith("bye")


async def test_terminate_leaves_even_while_a_command_runs(session: FakeSession) -> None:
    started = asyncio.Event()

    async def hangs(keyword: str) -> list[SearchHit]:
        started.set()
        await asyncio.sleep(3600)
        return []

    session.search_hook = hangs
    lines = ScriptLines("search koala", "status")
    shell, out = plain_shell(session, lines)
    running = asyncio.ensure_future(shell.run())
    await asyncio.wait_for(started.wait(), TIMEOUT)
    shell.terminate()
    await asyncio.wait_for(running, TIMEOUT)
    assert lines.lines == ["status"]
    assert out.getvalue().rstrip().endswith("bye")
