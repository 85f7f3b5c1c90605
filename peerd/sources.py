"""Who to download a file from: search hits and ``holders`` results made into a
:class:`~peerd.swarm.Listing` (PROTOCOL.md §4.9).

A search names the peers listing ``keyword/file_name``; the content lookup ``holders`` adds
every live peer listing the same SHA-256 under any keyword or name. Each holder keeps its own
names and its own publisher signature, so the downloader asks it for its manifest and its
ranges under those names and checks the signature the index listed for it.
"""

from __future__ import annotations

from collections.abc import Iterable

from netproto.operations import Holding, ListedFile, SearchHit
from peerd.swarm import Listing, Source


def listed_file(hits: Iterable[SearchHit], file_name: str) -> tuple[SearchHit, ListedFile] | None:
    """The first hit listing ``file_name``, and its entry, if any."""
    for hit in hits:
        for entry in hit.files:
            if entry.filename == file_name:
                return hit, entry
    return None


def listing_for(
    keyword: str,
    file_name: str,
    hits: Iterable[SearchHit],
    holdings: Iterable[Holding] = (),
    *,
    exclude: str | None = None,
    only: str | None = None,
) -> Listing | None:
    """The :class:`Listing` of ``keyword/file_name``: the content of the first hit that lists
    it, and as sources every hit and holding with that very content (size and SHA-256), each
    under its own names and with its own manifest digest and signature; ``exclude`` (this
    peer) is left out, ``only`` keeps that one peer."""
    hits = [h for h in hits if h.domain_name != exclude]
    first = listed_file(hits, file_name)
    if first is None:
        return None
    _, entry = first
    content = (entry.size, entry.sha256)
    sources: dict[str, Source] = {}
    for hit in hits:
        for f in hit.files:
            if f.filename == file_name and (f.size, f.sha256) == content:
                sources.setdefault(
                    hit.domain_name,
                    Source(
                        hit.domain_name,
                        hit.address,
                        hit.port_number,
                        keyword,
                        file_name,
                        f.signature,
                        f.manifest,
                    ),
                )
    for h in holdings:
        if h.domain_name == exclude or (h.file.size, h.file.sha256) != content:
            continue
        sources.setdefault(
            h.domain_name,
            Source(
                h.domain_name,
                h.address,
                h.port_number,
                h.keyword,
                h.file.filename,
                h.file.signature,
                h.file.manifest,
            ),
        )
    if only is not None:
        sources = {k: v for k, v in sources.items() if k == only.lower()}
    # each source keeps its own manifest digest: one publisher's is never lent to another
    return Listing(entry.size, entry.sha256, entry.manifest, sources=tuple(sources.values()))


__all__ = ["listed_file", "listing_for"]
