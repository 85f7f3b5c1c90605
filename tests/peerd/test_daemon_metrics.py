"""peerd's ``--metrics`` (peerd/daemon.py): a real peer serving a real download over mutual
TLS, its ``/metrics`` scraped over HTTP — requests, durations and bytes served."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.support.metrics import sample, scrape

TIMEOUT = 30.0
CONTENT = bytes(range(256)) * 4000  # 1,024,000 bytes: several chunks


async def test_a_download_from_the_peer_counts_its_fetch_and_bytes_served(
    index_config: Any, running_index: Any, peer_config: Any, running_peer: Any, tmp_path: Path
) -> None:
    share = tmp_path / "peer1-files" / "koala"
    share.mkdir(parents=True)
    (share / "big.bin").write_bytes(CONTENT)
    async with (
        asyncio.timeout(TIMEOUT),
        running_index(index_config()) as index,
        running_peer(peer_config("peer1", index.port, metrics=("127.0.0.1", 0))) as peer1,
        running_peer(peer_config("peer2", index.port)) as peer2,
    ):
        assert peer1.metrics is not None and peer2.metrics is None
        hit = next(h for h in await peer2.search("koala") if h.domain_name == "peer1")
        await peer2.download(hit, "koala", "big.bin")
        assert (tmp_path / "peer2-files" / "koala" / "big.bin").read_bytes() == CONTENT
        samples = await scrape(peer1.metrics.url)

    # A one-source download is one fetch (PROTOCOL.md §7): every payload byte counted once.
    assert sample(samples, "p2pshare_bytes_served_total", operation="fetch") == len(CONTENT)
    assert sample(samples, "p2pshare_requests_total", operation="fetch", code="ok") == 1
    assert sample(samples, "p2pshare_request_duration_seconds_count", operation="fetch") == 1
    assert sample(samples, "p2pshare_connections_accepted_total") == 1
