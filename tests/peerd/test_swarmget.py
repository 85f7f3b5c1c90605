"""Connecting to every source before a multi-source download (peerd/swarmget.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerd.client import PeerClient
from peerd.errors import DownloadRefused
from peerd.swarm import Listing, Source
from peerd.swarmget import swarm_from_sources


async def test_no_reachable_source_is_refused_naming_each_and_why(tmp_path: Path) -> None:
    async def unreachable(source: Source) -> PeerClient:
        raise ConnectionRefusedError(111, f"{source.domain_name} refused")

    listing = Listing(
        10,
        bytes(32),
        bytes(32),
        sources=(
            Source("peer1", "127.0.0.1", 7001, "koala", "a.bin"),
            Source("peer2", "127.0.0.1", 7002, "wombat", "b.bin"),
        ),
    )
    with pytest.raises(DownloadRefused) as info:
        await swarm_from_sources(unreachable, "koala", "a.bin", tmp_path, listing)
    assert info.value.check == "holders"
    assert "peer1 unreachable" in str(info.value) and "peer2 unreachable" in str(info.value)
    assert not (tmp_path / "koala").exists()
