"""The demo orchestrator (peerd/demo.py, what ``make demo`` runs): scripted as
``printf ... | make demo`` does, in a terminal, stopped by a signal, run again, run twice."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from peerd.demo import Background, Demo, DemoError

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 40.0
SCRIPT = "search koala\nget koala joey.txt\nquit\n"


def demo_argv(folder: Path) -> list[str]:
    return [sys.executable, "-m", "peerd.demo", "--dir", str(folder), "--small"]


def env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "P2P_HISTORY": os.devnull}


def run_script(folder: Path, script: str = SCRIPT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        demo_argv(folder),
        input=script,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env(),
        cwd=REPO,
    )


def pids(output: str) -> set[int]:
    """Every process the demo says it started (it prints each one's pid)."""
    found = {int(p) for p in re.findall(r"pid (\d+)", output)}
    assert len(found) == 4, output  # indexd, peer1, peer2 and the shell as peer3
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone in all but name
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def assert_all_stopped_cleanly(output: str) -> None:
    """The demo stopped each process itself (exit status 0: drained on SIGTERM, not killed)."""
    statuses = re.findall(r"\(pid \d+, exit (-?\d+)\)", output)
    assert statuses == ["0"] * 4, output


def assert_all_gone(output: str) -> None:
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids(output)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in pids(output) if alive(p)] == []


def test_the_scripted_demo_searches_downloads_verifies_and_exits_0(tmp_path: Path) -> None:
    done = run_script(tmp_path / "demo")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"│ peer2 +│ 127\.0\.0\.1:\d+ +│ joey\.txt", out)
    assert "✓ downloaded koala/joey.txt from peer2" in out
    assert re.search(
        r"peer3 joins with no certificate .* --ca-fingerprint SHA256:[0-9a-f]{64}", out
    )
    for check in ("manifest", "publisher-signature", "index-manifest", "digest", "blocks"):
        assert re.search(rf"✓\s+{check}\s", out), check
    assert "Traceback" not in out + done.stderr
    assert (tmp_path / "demo" / "peer3-files" / "koala" / "joey.txt").exists()


def test_every_process_the_demo_started_is_gone_after_it(tmp_path: Path) -> None:
    done = run_script(tmp_path / "demo")
    assert done.returncode == 0, done.stderr
    assert_all_stopped_cleanly(done.stdout)
    assert_all_gone(done.stdout)


def test_the_demo_generates_its_large_file_and_keeps_its_keys_private(tmp_path: Path) -> None:
    done = run_script(tmp_path / "demo", "ls\nquit\n")
    assert done.returncode == 0, done.stderr
    big = tmp_path / "demo" / "peer2-files" / "video" / "big-random.bin"
    assert big.stat().st_size == 2 << 20
    assert (tmp_path / "demo" / "pki" / "peer1.key").stat().st_mode & 0o077 == 0
    # peer3 joined by enrollment: its key is in its state folder, made there.
    assert not (tmp_path / "demo" / "pki" / "peer3.key").exists()
    assert (tmp_path / "demo" / "state" / "peer3" / "peer.key").stat().st_mode & 0o077 == 0
    assert "P2P_PASSWORD" not in done.stdout


def test_the_demo_runs_again_in_the_same_folder(tmp_path: Path) -> None:
    first = run_script(tmp_path / "demo")
    second = run_script(tmp_path / "demo")
    assert (first.returncode, second.returncode) == (0, 0), second.stderr
    assert "✓ downloaded koala/joey.txt from peer2" in second.stdout  # a fresh share again


def test_sigterm_to_the_demo_stops_every_process_it_started(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        demo_argv(tmp_path / "demo"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
        cwd=REPO,
    )
    assert proc.stdin is not None and proc.stdout is not None
    output = ""
    deadline = time.monotonic() + TIMEOUT
    try:
        while "p2pshare shell" not in output:  # the shell is up and waiting for input
            assert time.monotonic() < deadline, output
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:
                output += proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    output += rest
    assert proc.returncode == 0, output
    assert "Traceback" not in output
    assert_all_stopped_cleanly(output)
    assert_all_gone(output)


def test_a_second_demo_beside_a_running_one_gets_its_own_folder_and_ports(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "demo"
    first = subprocess.Popen(
        demo_argv(folder),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
        cwd=REPO,
    )
    try:
        assert first.stdout is not None
        while "opening the shell" not in first.stdout.readline():
            assert first.poll() is None
        second = run_script(folder)
        first.communicate("quit\n", timeout=TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "another demo uses" in second.stdout
    assert "✓ downloaded koala/joey.txt from peer2" in second.stdout
    assert first.returncode == 0
    assert [p.name for p in folder.iterdir() if p.name.startswith("run-")] == []


def test_the_demo_in_a_terminal_opens_the_rich_shell_and_quits_cleanly(tmp_path: Path) -> None:
    child = pexpect.spawn(
        demo_argv(tmp_path / "demo")[0],
        demo_argv(tmp_path / "demo")[1:],
        env=env(),
        cwd=str(REPO),
        encoding="utf-8",
        timeout=TIMEOUT,
        dimensions=(50, 140),
    )
    try:
        child.expect_exact("p2pshare> ")
        child.sendline("search horse")
        child.expect(r"│[^\n]*peer2[^\n]*breeds\.txt")
        child.expect_exact("p2pshare> ")
        child.sendline("quit")
        child.expect(pexpect.EOF)
        child.close()
    finally:
        if child.isalive():
            child.terminate(force=True)
    assert child.exitstatus == 0
    assert "Traceback" not in (child.before or "")


# --- the pieces: a background daemon's ready line, its early exit, the narration ------------


def _background(tmp_path: Path, program: str) -> Background:
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", program], stdout=out, stderr=out)
    return Background("indexd", proc, log)


def test_a_background_daemon_is_ready_when_its_log_shows_the_ready_line(tmp_path: Path) -> None:
    bg = _background(
        tmp_path, "import time; print('listening on 7123', flush=True); time.sleep(30)"
    )
    try:
        assert bg.wait_ready(r"listening on (\d+)", timeout=TIMEOUT).group(1) == "7123"
    finally:
        bg.proc.kill()
        bg.proc.wait()


def test_a_background_daemon_that_exits_first_is_a_demo_error_with_its_log(
    tmp_path: Path,
) -> None:
    bg = _background(tmp_path, "print('cannot read the certificate'); raise SystemExit(3)")
    with pytest.raises(DemoError, match="indexd exited with status 3:\ncannot read the cert"):
        bg.wait_ready("listening", timeout=TIMEOUT)


def test_a_background_daemon_that_never_gets_ready_is_a_demo_error(tmp_path: Path) -> None:
    bg = _background(tmp_path, "import time; print('starting', flush=True); time.sleep(30)")
    try:
        with pytest.raises(DemoError, match="indexd did not start in 0 s:\nstarting"):
            bg.wait_ready("listening", timeout=0.3)
    finally:
        bg.proc.kill()
        bg.proc.wait()


def test_the_log_tail_of_a_missing_log_is_empty(tmp_path: Path) -> None:
    bg = _background(tmp_path, "pass")
    bg.proc.wait()
    bg.log.unlink()
    assert bg.log_tail() == ""


def test_the_narration_carries_on_after_its_reader_went_away(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `make demo | head -1` does after one line
    with os.fdopen(write_end, "w") as out:
        demo = Demo(tmp_path, 1, out)
        demo.say("first")  # EPIPE: the output now goes nowhere
        demo.say("second")
        assert os.readlink(f"/proc/self/fd/{out.fileno()}") == os.devnull
