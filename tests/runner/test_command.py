"""The exit-code table and :func:`runner.run_command`, the one place outcomes become codes."""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from certs.__main__ import main as certs_main
from indexd.__main__ import main as indexd_main
from netproto.errors import P2PError
from peerd.__main__ import main as peerd_main
from runner import CommandError, ExitCode, StartupError, UsageError, run_command


def _raise(exc: BaseException) -> None:
    raise exc


def _command_name(main: object) -> str:
    return str(getattr(main, "__module__", "?")).split(".")[0]


def test_the_table_is_the_one_readme_documents() -> None:
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "FAILURE": 1,
        "USAGE": 2,
        "NO_PEER": 3,
        "INTERRUPTED": 130,
    }


@pytest.mark.parametrize("cls", [CommandError, UsageError, StartupError])
def test_command_errors_are_in_the_project_error_tree(cls: type[Exception]) -> None:
    assert issubclass(cls, P2PError)


def test_a_body_that_returns_is_ok() -> None:
    assert run_command("prog", lambda: None) is ExitCode.OK


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (StartupError("cannot listen on 127.0.0.1:7000"), ExitCode.FAILURE),
        (CommandError("cannot listen on 127.0.0.1:7000"), ExitCode.FAILURE),
        (UsageError("cannot listen on 127.0.0.1:7000"), ExitCode.USAGE),
    ],
    ids=["startup", "command", "usage"],
)
def test_a_command_error_is_one_line_with_the_program_name_and_its_code(
    exc: CommandError, code: ExitCode
) -> None:
    err = io.StringIO()
    assert run_command("prog", lambda: _raise(exc), stderr=err) is code
    assert err.getvalue() == "prog: cannot listen on 127.0.0.1:7000\n"


def test_an_argparse_usage_error_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="prog")
    parser.add_argument("--port", type=int)
    assert run_command("prog", lambda: parser.parse_args(["--port", "x"])) is ExitCode.USAGE
    assert "prog: error: argument --port" in capsys.readouterr().err


def test_help_is_ok(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="prog")
    assert run_command("prog", lambda: parser.parse_args(["--help"])) is ExitCode.OK
    assert "usage: prog" in capsys.readouterr().out


def test_a_second_ctrl_c_is_interrupted() -> None:
    assert run_command("prog", lambda: _raise(KeyboardInterrupt())) is ExitCode.INTERRUPTED


def test_an_unexpected_error_keeps_its_traceback() -> None:
    with pytest.raises(RuntimeError, match="a bug"):
        run_command("prog", lambda: _raise(RuntimeError("a bug")))


# --- every command ends through the table ------------------------------------------------

PEERD_FLAGS = [
    *("-hostname", "peer1", "-index_server_name", "indexd", "-username", "peer1"),
    *("-file_directory", "files", "-certificate", "peer1.crt", "-private_key", "peer1.key"),
    *("--ca", "ca.crt", "--no-shell"),
]


@pytest.mark.parametrize("command", [indexd_main, peerd_main, certs_main], ids=_command_name)
def test_every_command_answers_a_bad_command_line_with_usage(
    command: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert command(["--no-such-flag"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and ": error: " in err


def test_peerd_with_no_password_to_be_had_is_usage(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("P2P_PASSWORD", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # not a terminal: no prompt
    assert peerd_main(PEERD_FLAGS) == ExitCode.USAGE
    assert capsys.readouterr().err == (
        "peerd: no password: set $P2P_PASSWORD or run peerd from a terminal\n"
    )


def test_peerd_with_a_bad_index_address_is_usage(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("P2P_PASSWORD", "secret password")
    flags = [*PEERD_FLAGS]
    flags[flags.index("-index_server_name") + 1] = "indexd:99999"
    assert peerd_main(flags) == ExitCode.USAGE
    assert capsys.readouterr().err.startswith("peerd: -index_server_name: ")


def test_indexd_that_cannot_start_is_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--port", "0", "--db", str(tmp_path / "i.db")]
    flags += ["--cert", str(tmp_path / "absent.crt"), "--key", "k", "--ca", "c"]
    assert indexd_main(flags) == ExitCode.FAILURE
    assert capsys.readouterr().err.startswith("indexd: cannot read certificate")
