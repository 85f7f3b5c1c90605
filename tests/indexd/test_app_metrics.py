"""indexd's ``--metrics`` (indexd/app.py): a real daemon on 127.0.0.1, driven over TLS, and
its ``/metrics`` scraped over HTTP — requests by operation and code, durations, connections,
and the index's own gauges."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from netproto.errors import AuthFailed, AuthRequired, UnknownOp
from netproto.operations import SharedFile
from tests.support.metrics import sample, scrape

PASSWORD = "correct horse"
TIMEOUT = 30.0


def _files(count: int) -> list[SharedFile]:
    return [
        SharedFile(f"f{i}.txt", "koala", 1, hashlib.sha256(str(i).encode()).digest())
        for i in range(count)
    ]


async def test_requests_connections_and_the_index_gauges_are_served(
    index_config: Any, running_index: Any, index_client: Any
) -> None:
    config = index_config(metrics=("127.0.0.1", 0))
    async with asyncio.timeout(TIMEOUT), running_index(config) as index:
        assert index.metrics is not None and index.metrics.port > 0
        async with index_client(index.port, cert="peer1") as client:
            await client.register("alice", PASSWORD)
            with pytest.raises(AuthFailed):
                await client.login("alice", "wrong password")
            await client.login("alice", PASSWORD)
            assert await client.sync("peer1", _files(3)) == 3
            assert len(await client.search("koala")) == 1
            with pytest.raises(AuthRequired):
                await client.call("search", {"keyword": "koala"})
            samples = await scrape(index.metrics.url)

    requests = "p2pshare_requests_total"
    assert sample(samples, requests, operation="register", code="ok") == 1
    assert sample(samples, requests, operation="auth", code="AUTH_FAILED") == 1
    assert sample(samples, requests, operation="auth", code="ok") == 1
    assert sample(samples, requests, operation="sync", code="ok") == 1
    assert sample(samples, requests, operation="search", code="ok") == 1
    assert sample(samples, requests, operation="search", code="AUTH_REQUIRED") == 1
    duration = "p2pshare_request_duration_seconds"
    assert sample(samples, f"{duration}_count", operation="search") == 2
    assert sample(samples, f"{duration}_count", operation="auth") == 2
    assert sample(samples, "p2pshare_connections_open") == 1
    assert sample(samples, "p2pshare_connections_accepted_total") == 1
    assert sample(samples, "p2pshare_index_peers") == 1
    assert sample(samples, "p2pshare_index_live_peers") == 1
    assert sample(samples, "p2pshare_index_files") == 3
    assert sample(samples, "p2pshare_index_peer_owners") == 1
    assert sample(samples, "p2pshare_index_revoked_sessions") == 0


async def test_no_label_carries_a_username_file_name_or_address(
    index_config: Any, running_index: Any, index_client: Any
) -> None:
    config = index_config(metrics=("127.0.0.1", 0))
    async with (
        asyncio.timeout(TIMEOUT),
        running_index(config) as index,
        index_client(index.port, cert="peer1") as client,
    ):
        await client.register("alice", PASSWORD)
        await client.login("alice", PASSWORD)
        await client.sync("peer1", _files(2))
        await client.search("koala")
        with pytest.raises(UnknownOp):
            await client.call("koala-f0.txt", {}, client.token)
        assert index.metrics is not None
        samples = await scrape(index.metrics.url)
    values = {value for _, labels in samples for _, value in labels}
    assert values.isdisjoint({"alice", "koala", "f0.txt", "koala-f0.txt", "peer1", "127.0.0.1"})
    assert sample(samples, "p2pshare_requests_total", operation="unknown", code="UNKNOWN_OP") == 1


async def test_without_the_flag_nothing_is_served(index_config: Any, running_index: Any) -> None:
    async with asyncio.timeout(TIMEOUT), running_index(index_config()) as index:
        assert index.metrics is None


async def test_stopping_the_daemon_closes_the_metrics_endpoint(
    index_config: Any, running_index: Any
) -> None:
    async with (
        asyncio.timeout(TIMEOUT),
        running_index(index_config(metrics=("127.0.0.1", 0))) as index,
    ):
        assert index.metrics is not None
        port = index.metrics.port
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
