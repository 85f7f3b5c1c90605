"""A download from every listed holder: connect to each source, then :func:`swarm_download`.

Used by the shell's ``get`` (through :class:`peerd.session.PeerSession`) and by the control
socket's ``get``; a source that cannot be reached is listed among the dropped peers with why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from netproto.errors import P2PError
from peerd.client import PeerClient
from peerd.download import DownloadLimits
from peerd.errors import DownloadRefused
from peerd.swarm import (
    Listing,
    PeerHolder,
    PeerStats,
    Source,
    SwarmProgress,
    SwarmResult,
    swarm_download,
)
from peerd.verify import CheckOutcome

log = logging.getLogger(__name__)

Connect = Callable[[Source], Awaitable[PeerClient]]


async def swarm_from_sources(
    connect: Connect,
    keyword: str,
    file_name: str,
    dest: Path,
    listing: Listing,
    *,
    overwrite: bool = False,
    on_progress: Callable[[SwarmProgress], None] | None = None,
    connect_timeout: float = 30.0,
    limits: DownloadLimits | None = None,
) -> SwarmResult:
    """Connect to every source of ``listing`` at once and download from all that answer."""

    async def one(source: Source) -> PeerClient | BaseException:
        try:
            async with asyncio.timeout(connect_timeout):
                return await connect(source)
        except (P2PError, OSError, TimeoutError) as exc:
            log.info("cannot reach %s: %s", source.domain_name, exc)
            return exc

    results = await asyncio.gather(*(one(s) for s in listing.sources))
    clients: list[PeerClient] = []
    holders: list[PeerHolder] = []
    unreachable: list[PeerStats] = []
    for source, res in zip(listing.sources, results, strict=True):
        if isinstance(res, BaseException):
            unreachable.append(PeerStats(source.domain_name, dropped=f"unreachable ({res})"))
        else:
            clients.append(res)
            holders.append(PeerHolder(res, source.keyword, source.file_name))
    try:
        if not holders:
            why = "; ".join(f"{p.name} {p.dropped}" for p in unreachable) or "none listed"
            raise DownloadRefused(
                "holders",
                f"no holder of {keyword}/{file_name} could be reached ({why})",
                (CheckOutcome("holders", False, why),),
            )
        result = await swarm_download(
            holders,
            keyword,
            file_name,
            dest,
            listing=listing,
            overwrite=overwrite,
            on_progress=on_progress,
            limits=limits,
        )
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return dataclasses.replace(result, peers=result.peers + tuple(unreachable))


__all__ = ["Connect", "swarm_from_sources"]
