"""A download from every listed holder: connect to each source, then :func:`swarm_download`.

Used by the shell's ``get`` (through :class:`peerd.session.PeerSession`) and by the control
socket's ``get`` (:func:`get_from_holders`: ``p2pshare get``); a source that cannot be reached
is listed among the dropped peers with why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from netproto.errors import P2PError
from netproto.operations import Holding, SearchHit
from peerd.client import PeerClient
from peerd.download import DownloadLimits, DownloadResult
from peerd.errors import DownloadRefused
from peerd.sources import listing_for
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


class SwarmSession(Protocol):
    """What :func:`get_from_holders` needs of the peer (a :class:`peerd.session.PeerSession`)."""

    @property
    def domain_name(self) -> str:
        """This peer's name (never one of the holders)."""
        ...

    async def holders(self, sha256: bytes) -> list[Holding]:
        """The live peers holding this content, each under its own names."""
        ...

    async def swarm_get(
        self,
        keyword: str,
        file_name: str,
        listing: Listing,
        *,
        overwrite: bool = False,
        on_progress: Callable[[SwarmProgress], None] | None = None,
    ) -> SwarmResult:
        """Download from every source of ``listing`` at once."""
        ...


async def get_from_holders(
    session: SwarmSession,
    keyword: str,
    file_name: str,
    hits: Sequence[SearchHit],
    *,
    source: str | None = None,
    overwrite: bool = False,
    on_progress: Callable[[SwarmProgress], None] | None = None,
) -> SwarmResult | None:
    """Download ``keyword/file_name`` from every holder the search ``hits`` and the content
    lookup name (only ``source`` if given), as the shell's ``get`` does; None when no holder
    lists a signed manifest (the caller then fetches the whole file, PROTOCOL.md §7.1)."""
    me = session.domain_name
    listing = listing_for(keyword, file_name, hits, exclude=me, only=source)
    if listing is None or not any(s.manifest for s in listing.sources):
        return None
    if source is None:
        try:
            holdings = await session.holders(listing.sha256)
        except P2PError as exc:  # an index without the content lookup: the hits alone
            log.debug("holders failed: %s", exc)
            holdings = []
        listing = listing_for(keyword, file_name, hits, holdings, exclude=me) or listing
    return await session.swarm_get(
        keyword, file_name, listing, overwrite=overwrite, on_progress=on_progress
    )


def as_download_result(
    result: SwarmResult, keyword: str, file_name: str, elapsed: float
) -> DownloadResult:
    """A multi-source download as the one-holder result ``p2pshare get`` reports: the holders
    that sent blocks as its ``signer``, the bytes they sent as ``received``."""
    senders = ", ".join(p.name for p in result.peers if p.blocks)
    return DownloadResult(
        result.path,
        keyword,
        file_name,
        result.size,
        result.sha256,
        senders or ", ".join(p.name for p in result.peers if p.dropped is None),
        result.checks,
        received=sum(p.received for p in result.peers),
        elapsed=elapsed,
        already_present=result.already_present,
    )


__all__ = [
    "Connect",
    "SwarmSession",
    "as_download_result",
    "get_from_holders",
    "swarm_from_sources",
]
