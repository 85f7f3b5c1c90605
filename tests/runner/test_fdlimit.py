"""The open-file limit (runner/fdlimit.py): raised to the hard limit at start, and sizing
``--max-connections`` when it is not given. Each limit test runs in a fresh interpreter
whose limits it lowers first (lowering needs no privilege; the test process keeps its own).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from runner.fdlimit import RESERVED, connections_for

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
    """A hard limit the test may lower to: below the test process's own, above RESERVED."""
    current = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1000 if current == resource.RLIM_INFINITY else min(current, 1000)


def test_the_soft_limit_is_raised_to_the_hard_limit_and_logged(hard: int) -> None:
    result = _run(
        "from runner.fdlimit import raise_open_file_limit\n"
        "print(json.dumps([raise_open_file_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE)]))",
        100,
        hard,
    )
    assert json.loads(result.stdout) == [hard, hard, hard]
    assert f"open-file limit raised from 100 to {hard}" in result.stderr


def test_without_max_connections_the_raised_limit_sizes_it(hard: int) -> None:
    result = _run(
        "import argparse\n"
        "from runner.daemon import add_daemon_flags, limits_from_args\n"
        "parser = argparse.ArgumentParser()\n"
        "add_daemon_flags(parser)\n"
        "print(limits_from_args(parser.parse_args([])).max_connections)",
        64,
        hard,
    )
    assert int(result.stdout) == connections_for(hard) == hard - RESERVED


def test_a_given_max_connections_is_kept_and_the_limit_still_raised(hard: int) -> None:
    result = _run(
        "import argparse\n"
        "from runner.daemon import add_daemon_flags, limits_from_args\n"
        "parser = argparse.ArgumentParser()\n"
        "add_daemon_flags(parser)\n"
        "limits = limits_from_args(parser.parse_args(['--max-connections', '5000']))\n"
        "soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
        "print(json.dumps([limits.max_connections, soft]))",
        64,
        hard,
    )
    assert json.loads(result.stdout) == [5000, hard]


@pytest.mark.parametrize(
    ("open_files", "connections"),
    [(20000, 20000 - RESERVED), (2 * RESERVED, RESERVED), (300, 150), (2, 1), (1, 1)],
)
def test_connections_leave_room_for_files_the_database_and_threads(
    open_files: int, connections: int
) -> None:
    assert connections_for(open_files) == connections
