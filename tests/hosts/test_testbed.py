"""The test bed itself (tests/support/hosts.py): hosts, addresses, links, processes, clean-up."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.hosts import (
    NETWORK,
    PREFIX,
    Backend,
    TestBed,
    _netns_names,
    _pid_alive,
    leftovers,
    unavailable_means_failure,
)

REPO = Path(__file__).resolve().parents[2]
ECHO_SERVER = textwrap.dedent(
    """
    import socket
    server = socket.create_server(("0.0.0.0", 5000))
    print("listening", flush=True)
    conn, (address, _) = server.accept()
    print("from", address, flush=True)
    conn.sendall(conn.recv(100))
    """
)
CLIENT = "import socket, sys; s = socket.create_connection((sys.argv[1], 5000), timeout=5);"
CLIENT += " s.sendall(b'hello'); print(s.recv(100).decode())"


def test_hosts_talk_across_the_bridge_each_from_its_own_198_18_address(
    testbed: Callable[..., TestBed],
) -> None:
    bed = testbed(["a", "b"])
    server = bed.start("a", [sys.executable, "-c", ECHO_SERVER])
    server.wait_for("listening")

    client = bed.start("b", [sys.executable, "-c", CLIENT, bed.address("a")])

    assert client.wait() == 0, client.describe()
    assert client.stdout.strip() == "hello"
    assert server.wait_for(r"from (\S+)")[1] == bed.address("b")
    assert {ipaddress.ip_address(h.address) in NETWORK for h in bed.hosts.values()} == {True}


def test_a_host_has_loopback_its_own_address_and_no_route_out_of_the_bed(
    testbed: Callable[..., TestBed],
) -> None:
    bed = testbed(["a"])
    addresses = bed.start("a", ["ip", "-o", "addr", "show"])
    routes = bed.start("a", ["ip", "-o", "route", "show", "table", "all"])
    assert addresses.wait() == 0 and routes.wait() == 0

    found = {line.split()[3] for line in addresses.stdout.splitlines()}
    assert found <= {"127.0.0.1/8", "::1/128", f"{bed.address('a')}/24"}, found
    assert f"{bed.address('a')}/24" in found
    assert "default" not in routes.stdout
    unicast = [r for r in routes.stdout.splitlines() if r.split()[0] not in ("local", "broadcast")]
    assert [r.split()[0] for r in unicast if "dev eth0" in r] == [f"{bed.subnet}"], unicast


def test_a_rate_limit_shapes_both_directions_of_the_link_and_can_be_lifted(
    testbed: Callable[..., TestBed],
) -> None:
    bed = testbed(["a", "b"], rates={"a": 40e6})
    assert bed.qdisc("a").count("rate 40Mbit") == 2, bed.qdisc("a")
    assert "rate" not in bed.qdisc("b")

    bed.limit("a", None)

    assert "rate" not in bed.qdisc("a")


def test_a_closed_bed_leaves_no_namespace_link_or_process(backend: Backend) -> None:
    bed = TestBed(["a", "b"], backend=backend)
    with bed:
        sleeper = bed.start("a", ["sleep", "60"])
        names = bed.netns
        assert len(names) == 3  # the switch and two hosts

    assert sleeper.returncode is not None
    assert not set(names) & set(_netns_names())  # unprivileged, they went with the holder
    assert leftovers() == []


def test_leftovers_of_a_killed_run_are_removed_when_the_next_bed_opens(
    backend: Backend, testbed: Callable[..., TestBed]
) -> None:
    if backend.mode != "root":
        pytest.skip("unprivileged, a killed run's namespaces vanish with its holder process")
    script = textwrap.dedent(
        """
        import time
        from tests.support.hosts import TestBed
        bed = TestBed(["a"])
        bed.open()
        sleeper = bed.start("a", ["sleep", "60"])
        print(bed.keeper_pid, sleeper.pid, " ".join(bed.netns), flush=True)
        time.sleep(60)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    ) as run:
        assert run.stdout is not None
        keeper, sleeper, *names = run.stdout.readline().split()
        # Killed with its watchdog, the run can clean nothing up: its namespaces stay behind.
        os.kill(int(keeper), signal.SIGKILL)
        run.kill()
    assert set(names) <= set(_netns_names())
    assert all(name.startswith(f"{PREFIX}{run.pid}-") for name in names)

    testbed(["a"])

    assert not set(names) & set(_netns_names())
    deadline = time.monotonic() + 5
    while _pid_alive(int(sleeper)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(int(sleeper))


@pytest.mark.parametrize(
    ("ci", "fails"),
    [("true", True), ("TRUE", True), ("1", True), ("", False), ("false", False), (None, False)],
)
def test_without_a_way_to_make_hosts_only_ci_fails_instead_of_skipping(
    ci: str | None, fails: bool
) -> None:
    environ = {} if ci is None else {"CI": ci}
    assert unavailable_means_failure(environ) is fails
