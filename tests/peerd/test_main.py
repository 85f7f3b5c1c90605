"""peerd's command line (peerd/__main__.py): sizes and rates, the checks on each flag, the
password's sources, and what a re-sync on SIGHUP logs. The daemon it starts is tested in
tests/peerd/test_daemon.py."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import pytest

from peerd.__main__ import _log_resync, build_parser, parse_size, read_password
from peerd.download import DEFAULT_MAX_DOWNLOAD_SIZE
from runner.command import UsageError

FLAGS = [
    "-hostname", "peer1", "-index_server_name", "indexd:7000", "-username", "alice",
    "-file_directory", "share", "-certificate", "peer1.crt", "-private_key", "peer1.key",
    "--ca", "ca.crt",
]  # fmt: skip


def parse(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args([*FLAGS, *extra])


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1048576),
        ("0", 0),
        ("16K", 16 << 10),
        ("16k", 16 << 10),
        ("16KiB", 16 << 10),
        ("16KB", 16 << 10),
        ("512M", 512 << 20),
        ("1M/s", 1 << 20),
        ("64G", 64 << 30),
        ("2T", 2 << 40),
        ("1.5K", 1536),
        (" 3 M ", 3 << 20),
    ],
)
def test_a_size_is_bytes_or_a_number_with_a_binary_unit(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "abc", "12X", "-1", "-1K", "inf", "nan", "1e400"])
def test_a_malformed_or_negative_size_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        parse_size(text)


def test_size_flags_take_units() -> None:
    args = parse("--max-download-size", "2G", "--min-transfer-rate", "64K/s")
    assert (args.max_download_size, args.min_transfer_rate) == (2 << 30, 64 << 10)


def test_the_defaults_are_used_without_the_transfer_flags() -> None:
    assert parse().max_download_size == DEFAULT_MAX_DOWNLOAD_SIZE


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-download-size", "0"], "must be positive"),
        (["--max-download-size", "lots"], "not a size"),
        (["--max-fetches", "0"], "must be positive"),
        (["--max-fetches", "many"], "not a number"),
        (["--transfer-rate-window", "-2"], "must be positive"),
        (["--ping-interval", "soon"], "not a number"),
        (["-peer_server_port", "70000"], "not a TCP port"),
        (["-peer_server_port", "-1"], "not a TCP port"),
    ],
)
def test_a_bad_flag_value_is_a_usage_error_naming_the_problem(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*flags)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_help_gives_the_default_download_size_in_its_largest_whole_unit() -> None:
    assert DEFAULT_MAX_DOWNLOAD_SIZE == 64 << 30
    assert "e.g. 512M or 2T (64G)" in " ".join(build_parser().format_help().split())


def test_a_password_on_the_command_line_is_used_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="peerd"):
        password = read_password(parse("-password", "hunter2"), {"P2P_PASSWORD": "env"})
    assert password == "hunter2"
    assert "visible to others" in caplog.text
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize("interrupt", [EOFError, KeyboardInterrupt])
def test_a_prompt_left_without_an_answer_is_a_usage_error(
    interrupt: type[BaseException],
) -> None:
    def prompt(text: str) -> str:
        raise interrupt

    with pytest.raises(UsageError, match="no password given"):
        read_password(parse(), {}, prompt, interactive=True)


async def _finished(result: int = 0, error: Exception | None = None, wait: float = 0) -> int:
    await asyncio.sleep(wait)
    if error is not None:
        raise error
    return result


async def test_a_resync_logs_how_many_files_it_sent(caplog: pytest.LogCaptureFixture) -> None:
    task = asyncio.create_task(_finished(result=7))
    await task
    with caplog.at_level(logging.INFO, logger="peerd"):
        _log_resync(task)
    assert "re-synced 7 files" in caplog.text


async def test_a_failed_resync_is_a_warning_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = asyncio.create_task(_finished(error=ConnectionError("index unavailable")))
    await asyncio.wait([task])
    with caplog.at_level(logging.INFO, logger="peerd"):
        _log_resync(task)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "re-sync failed: index unavailable")
    ]


async def test_a_cancelled_resync_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    task = asyncio.create_task(_finished(result=7, wait=10))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait([task])
    with caplog.at_level(logging.DEBUG, logger="peerd"):
        _log_resync(task)
    assert caplog.records == []


def test_the_file_directory_flag_is_a_path() -> None:
    assert parse().file_directory == Path("share")
