"""The seed flow across hosts: the index and three peers, each on a host of its own with its own
address, peers dialling the index by address with its TLS name, certificates naming no address."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable

from tests.hosts.deployment import (
    NAMES,
    PEER_PORT,
    REPO,
    START_TIMEOUT,
    Deployment,
    HostPKI,
    downloads,
    put,
)

HOSTS = ["index", "peer1", "peer2", "peer3"]


def table_row(output: str, peer: str) -> str:
    """The first row of a search table that names ``peer``."""
    return next(line for line in output.splitlines() if re.search(rf"│ {peer}\b", line))


def test_certificates_of_the_host_tests_name_no_loopback_or_other_address(
    host_pki: HostPKI,
) -> None:
    for name in NAMES:
        shown = subprocess.run(
            [sys.executable, "-m", "certs", "show", str(host_pki.cert(name))],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=True,
        ).stdout
        assert re.search(rf"^dns names: +{name}$", shown, re.M), shown
        assert re.search(r"^ip addresses: +-$", shown, re.M), shown


def test_three_peers_on_their_own_hosts_search_list_download_verify_and_share_by_address(
    deploy: Callable[..., Deployment],
) -> None:
    d = deploy(HOSTS)
    put(d.share("peer1"), "koala/eucalyptus.txt", b"koalas eat eucalyptus\n")
    put(d.share("peer1"), "koala/sleep.txt", b"20 hours a day\n")
    put(d.share("peer3"), "Koala/joey.txt", b"a baby koala\n")
    d.index()
    d.ready(d.peer("peer1"), d.peer("peer3"))

    out = d.session("peer2", "2\nkoala\nsync\nsearch koala\nquit\n")

    addr = {host: f"{d.bed.address(host)}:{PEER_PORT}" for host in HOSTS}
    assert addr["peer1"] in table_row(out, "peer1")
    assert addr["peer3"] in table_row(out, "peer3")
    assert sorted((m["peer"], m["file"]) for m in downloads(out)) == [
        ("peer1", "eucalyptus.txt"),
        ("peer1", "sleep.txt"),
        ("peer3", "joey.txt"),
    ]
    assert "✗" not in out
    mine = d.share("peer2") / "koala"
    assert (mine / "eucalyptus.txt").read_bytes() == b"koalas eat eucalyptus\n"
    assert (mine / "sleep.txt").read_bytes() == b"20 hours a day\n"
    assert (mine / "joey.txt").read_bytes() == b"a baby koala\n"
    assert "the index now lists 3 of your files" in out
    after_sync = out.rsplit("search koala", 1)[1]
    assert addr["peer2"] in table_row(after_sync, "peer2")
    assert "6 file(s) on 3 peer(s) for 'koala'" in after_sync


def test_a_peer_certificate_cannot_pose_as_the_index_dialled_by_its_address(
    deploy: Callable[..., Deployment],
) -> None:
    d = deploy(["index", "peer2"])
    d.index(cert="peer1")  # a genuine certificate of the deployment, but not the index's name

    peer = d.peer("peer2")

    assert peer.wait(START_TIMEOUT) == 1
    assert "CERTIFICATE_VERIFY_FAILED" in peer.stderr, peer.describe()
    assert "Hostname mismatch" in peer.stderr, peer.describe()
    assert "Traceback" not in peer.stderr
