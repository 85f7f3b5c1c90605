"""The open-file limit (runner/fdlimit.py): raised to the hard limit at start, and sizing
``--max-connections`` when it is not given. Each test that changes the limit runs in a fresh
interpreter whose limits it lowers first (lowering needs no privilege; the test process keeps
its own); the branches no unprivileged process can reach (an unlimited hard limit, a refused
raise) see ``resource`` replaced.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys

import pytest

from runner.daemon import add_daemon_flags, limits_from_args
from runner.fdlimit import (
    MAX_DEFAULT_CONNECTIONS,
    RESERVED,
    connections_for,
    raise_open_file_limit,
)

#: Lowers the limits to (soft, hard) from argv, then runs what the test appends.
_PRELUDE = """
import json, logging, resource, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
"""


def _run(program: str, soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    return subprocess.run(
        [sys.executable, "-c", _PRELUDE + program, str(soft), str(hard)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )


@pytest.fixture
def hard() -> int:
    """A hard limit the test may lower to: at most the test process's own, and at least twice
    RESERVED (else connections_for takes half the limit, which these tests do not test)."""
    current = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = 1000 if current == resource.RLIM_INFINITY else min(current, 1000)
    assert hard >= 2 * RESERVED, f"the hard open-file limit {current} is under {2 * RESERVED}"
    return hard


def test_the_soft_limit_is_raised_to_the_hard_limit_and_logged(hard: int) -> None:
    result = _run(
        "from runner.fdlimit import raise_open_file_limit\n"
        "print(json.dumps([raise_open_file_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE)]))",
        100,
        hard,
    )
    assert json.loads(result.stdout) == [hard, hard, hard]
    assert f"open-file limit raised from 100 to {hard}" in result.stderr


def test_what_the_daemon_raised_sizes_max_connections_when_not_given(hard: int) -> None:
    result = _run(
        "import argparse\n"
        "from runner.daemon import add_daemon_flags, limits_from_args\n"
        "from runner.fdlimit import raise_open_file_limit\n"
        "parser = argparse.ArgumentParser()\n"
        "add_daemon_flags(parser)\n"
        "print(limits_from_args(parser.parse_args([]), raise_open_file_limit()).max_connections)",
        64,
        hard,
    )
    assert int(result.stdout) == connections_for(hard) == (hard - RESERVED) // 2


def test_a_given_max_connections_is_kept_whatever_the_limit() -> None:
    parser = argparse.ArgumentParser()
    add_daemon_flags(parser)
    limits = limits_from_args(parser.parse_args(["--max-connections", "5000"]), 300)
    assert limits.max_connections == 5000


def test_an_unlimited_hard_limit_leaves_the_soft_limit_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[object] = []
    monkeypatch.setattr(resource, "getrlimit", lambda which: (4096, resource.RLIM_INFINITY))
    monkeypatch.setattr(resource, "setrlimit", lambda which, limits: calls.append(limits))
    with caplog.at_level(logging.INFO, logger="runner.fdlimit"):
        assert raise_open_file_limit() == 4096
    assert calls == []
    assert "open-file limit: 4096" in caplog.text


def test_a_refused_raise_keeps_the_soft_limit_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(which: int, limits: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 65536))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    with caplog.at_level(logging.WARNING, logger="runner.fdlimit"):
        assert raise_open_file_limit() == 1024
    assert "cannot raise the open-file limit from 1024 to 65536" in caplog.text


@pytest.mark.parametrize(
    ("open_files", "connections"),
    [
        (10000, (10000 - RESERVED) // 2),
        (2 * RESERVED, RESERVED // 2),
        (300, 75),
        (2, 1),
        (1, 1),
        (1 << 20, MAX_DEFAULT_CONNECTIONS),
        (1 << 19, MAX_DEFAULT_CONNECTIONS),
    ],
)
def test_connections_up_to_twice_the_cap_leave_room_for_files_and_stay_under_the_ceiling(
    open_files: int, connections: int
) -> None:
    # Admission answers BUSY up to twice the cap (netproto/admission.py): each takes an fd.
    assert connections_for(open_files) == connections
    assert 2 * connections <= max(open_files - RESERVED, open_files // 2) or connections == 1
