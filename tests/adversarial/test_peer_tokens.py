"""Peer tokens at a live peer (issue 12, item 1, the peers' side; PROTOCOL.md §8): a peer
accepts only a token for peers, bound to the client certificate presented on the connection.
A token a serving peer captured from a download is useless at every other peer; after each
refusal the rightful holder is still served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from certs import load_cert
from netproto.errors import TokenInvalid
from netproto.operations import ListedFile, SearchHit
from netproto.tokens import INDEX_AUDIENCE, PEER_AUDIENCE, certificate_thumbprint
from peerd.client import PeerClient
from peerd.daemon import PeerDaemon
from tests.support.adversary import (
    HEALTH_CONTENT,
    HEALTH_FILE,
    HEALTH_KEYWORD,
    HOST,
    STEP,
    HostilePeer,
    Live,
    assert_peer_serves,
    live_daemons,
    peer_config,
    sha256,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    async with live_daemons(pki, tmp_path_factory.mktemp("adv-peer-tokens")) as daemons:
        yield daemons


def issue(live: Live, *, audience: str = PEER_AUDIENCE, bound_to: str | None = "peer2") -> str:
    """A token for peer2 from the live index, for ``audience``, bound to a leaf (or not)."""
    assert live.index.service is not None
    thumbprint = None
    if bound_to is not None:
        thumbprint = certificate_thumbprint(load_cert(live.pki.cert(bound_to)))
    return live.index.service.issuer.issue("peer2", audience=audience, thumbprint=thumbprint)[0]


async def list_at_peer1(live: Live, token: str, cert: str) -> list[str]:
    """``list`` at the live peer1 with ``token``, presenting the leaf ``cert``."""
    peer = await PeerClient.connect(
        HOST, live.peer_port, "peer1", live.pki.client_ctx(cert),
        token=token, requester="peer2", connect_timeout=STEP, request_timeout=STEP,
    )  # fmt: skip
    try:
        return await peer.list(HEALTH_KEYWORD)
    finally:
        await peer.close()


async def fetch_at_peer1(live: Live, token: str, cert: str) -> bytes:
    """``fetch`` of the health file at the live peer1, as :func:`list_at_peer1`."""
    peer = await PeerClient.connect(
        HOST, live.peer_port, "peer1", live.pki.client_ctx(cert),
        token=token, requester="peer2", connect_timeout=STEP, request_timeout=STEP,
    )  # fmt: skip
    try:
        stream = await peer.fetch(HEALTH_KEYWORD, HEALTH_FILE, bytes(32))
        return b"".join([bytes(c) async for c in stream.chunks()])
    finally:
        await peer.close()


REFUSED = {
    "bound to another certificate": ({"bound_to": "peer3"}, "peer2"),
    "presented with another certificate": ({"bound_to": "peer2"}, "mallory"),
    "not bound at all": ({"bound_to": None}, "peer2"),
    "for the index's audience": ({"audience": INDEX_AUDIENCE}, "peer2"),
}


@pytest.mark.parametrize("change, cert", REFUSED.values(), ids=REFUSED.keys())
async def test_a_token_not_bound_to_the_presented_certificate_is_token_invalid(
    live: Live, change: dict[str, Any], cert: str
) -> None:
    token = issue(live, **change)
    with pytest.raises(TokenInvalid):
        await list_at_peer1(live, token, cert)
    with pytest.raises(TokenInvalid):
        await fetch_at_peer1(live, token, cert)
    # The rightful holder: the token bound to peer2, on a connection presenting peer2's.
    assert await list_at_peer1(live, issue(live), "peer2") == [HEALTH_FILE]
    assert await fetch_at_peer1(live, issue(live), "peer2") == HEALTH_CONTENT


@dataclass
class TokenCollector(HostilePeer):
    """A serving peer that keeps the token of every fetch it is asked for."""

    tokens: list[str] = field(default_factory=list)

    async def _fetch(self, ctx: Any, req: Any) -> Any:
        self.tokens.append(ctx.conn.token)
        return await super()._fetch(ctx, req)


async def test_a_token_a_serving_peer_captured_from_a_download_is_useless_at_another_peer(
    live: Live, pki: Any, tmp_path: Path
) -> None:
    collector = TokenCollector(pki, content=b"bait\n", names=["bait.txt"])
    port = await collector.start()
    downloader = PeerDaemon(peer_config(pki, "peer2", live.index_port, tmp_path / "peer2-files"))
    await asyncio.wait_for(downloader.start(), STEP)
    try:
        bait = SearchHit(
            "peer1", port, HOST, (ListedFile("bait.txt", 5, sha256(b"bait\n")),)
        )  # the collector poses as peer1 (it holds peer1's certificate)
        result = await downloader.download(bait, "koala", "bait.txt")
        assert result.path.read_bytes() == b"bait\n"
        [captured] = collector.tokens
        # Replayed by the collector at the real peer1, with the only certificate it may hold.
        with pytest.raises(TokenInvalid):
            await list_at_peer1(live, captured, "mallory")
        # The downloader itself is still served by peer1 with the same token.
        hit = SearchHit("peer1", live.peer_port, HOST, ())
        async with await downloader.open_peer(hit) as peer:
            assert await peer.list(HEALTH_KEYWORD) == [HEALTH_FILE]
    finally:
        await asyncio.wait_for(downloader.stop(grace=0.5), STEP)
        await collector.stop()
    await assert_peer_serves(live)
