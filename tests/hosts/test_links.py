"""Downloads over shaped links: a host whose link is limited to a rate, and a relay host whose
delay proxy adds latency between two peers."""

from __future__ import annotations

import os
from collections.abc import Callable

from tests.hosts.deployment import PEER_PORT, Deployment, downloads, sha256_file

RATE = 40e6  # bit/s
SIZE = 10 * 10**6  # bytes: 2 s at 40 Mbit/s
DELAY = 0.1  # seconds, each way


def test_a_download_from_a_host_limited_to_40_mbit_s_runs_within_20_percent_of_that_rate(
    deploy: Callable[..., Deployment],
) -> None:
    d = deploy(["index", "peer1", "peer2"], rates={"peer1": RATE})
    big = d.share("peer1") / "video" / "big.bin"
    big.parent.mkdir(parents=True)
    big.write_bytes(os.urandom(SIZE))
    d.index()
    d.ready(d.peer("peer1"))

    out = d.session("peer2", "get video big.bin\nquit\n")

    [done] = downloads(out)
    assert done["peer"] == "peer1"
    rate = SIZE * 8 / float(done["seconds"])
    assert 0.8 * RATE <= rate <= 1.2 * RATE, f"{rate / 1e6:.1f} Mbit/s through a 40 Mbit/s link"
    assert sha256_file(d.share("peer2") / "video" / "big.bin") == sha256_file(big)


def test_a_download_through_a_relay_adding_100_ms_each_way_takes_at_least_one_round_trip(
    deploy: Callable[..., Deployment],
) -> None:
    d = deploy(["index", "peer1", "relay", "peer2"])
    (d.share("peer1") / "koala").mkdir(parents=True)
    (d.share("peer1") / "koala" / "joey.txt").write_bytes(b"a baby koala\n")
    d.index()
    # peer1 tells the index it is at the relay's address: peer2 reaches it only through there.
    d.bed.delay_proxy("relay", (d.bed.address("peer1"), PEER_PORT), DELAY, port=PEER_PORT)
    d.ready(d.peer("peer1", extra=["--advertise-address", d.bed.address("relay")]))

    out = d.session("peer2", "search koala\nget koala joey.txt\nquit\n")

    assert f"{d.bed.address('relay')}:{PEER_PORT}" in out
    [done] = downloads(out)
    assert 2 * DELAY <= float(done["seconds"]) < 2 * DELAY + 1.0, out
    assert (d.share("peer2") / "koala" / "joey.txt").read_bytes() == b"a baby koala\n"
