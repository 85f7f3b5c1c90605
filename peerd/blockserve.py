"""The peer operations of multi-source downloads: ``manifest`` and ``fetch_range``.

``manifest`` answers the signed manifest of a file (PROTOCOL.md §4.8), computed once per file
version and cached (:class:`peerd.manifests.ManifestCache`). ``fetch_range`` streams a
block-aligned range of the version whose manifest digest the requester names (PROTOCOL.md
§7.1): a file changed since is ``NOT_FOUND`` before a byte is sent, and ``BUSY`` if it changes
during the stream. The requester checks every block against the manifest as it arrives, so
the stream carries no signature of its own. Both take a fetch slot like ``fetch`` (``manifest``
while it is computed), ``fetch_range`` is held to the same floor of pace, and their disk work
runs in the serving pool (:data:`peerd.threadjob.SERVING`), never in local downloads' one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from netproto.errors import BadRequest, Busy, NotFound, RequestError, Timeout
from netproto.manifest import ManifestReply, ManifestRequest, RangeHeader, RangeRequest
from netproto.operations import MAX_CHUNK
from netproto.server import RequestContext, StreamReply
from peerd.errors import ShareError, wire_error
from peerd.manifests import SignedManifest
from peerd.pacing import PaceMeter
from peerd.share import READ_BLOCK, OpenFile, ShareFile
from peerd.threadjob import SERVING, ThreadJob

if TYPE_CHECKING:
    from peerd.server import PeerService

log = logging.getLogger(__name__)


def _signed(service: PeerService, keyword: str, file_name: str) -> tuple[ShareFile, SignedManifest]:
    """Open the file and get its signed manifest (blocking); the file stays open."""
    opened = service.share.open_file(keyword, file_name)
    try:
        folder = opened.keyword_dir if isinstance(opened, OpenFile) else keyword
        return opened, service.manifests.signed(folder, file_name, opened)
    except BaseException:
        opened.close()
        raise


async def _open_signed(
    service: PeerService, keyword: str, file_name: str
) -> tuple[ShareFile, SignedManifest]:
    job = ThreadJob(_signed, service, keyword, file_name, pool=SERVING)
    try:
        return await asyncio.shield(job.future)
    except asyncio.CancelledError:
        job.on_result(lambda result: result[0].close())
        raise
    except ShareError as exc:
        raise wire_error(exc) from exc


async def handle_manifest(
    service: PeerService, ctx: RequestContext, req: ManifestRequest
) -> ManifestReply:
    """``manifest``: the publisher-signed manifest of one file. It may read the whole file,
    so it takes a fetch slot of the requester's for as long as that lasts, like ``fetch``."""
    requester = service.requester(ctx)
    service.slots.acquire(requester)
    try:
        opened, signed = await _open_signed(service, req.keyword, req.file_name)
    finally:
        service.slots.release(requester)
    opened.close()
    return ManifestReply(signed.manifest, signed.keyword, signed.publisher, signed.signature)


async def handle_fetch_range(
    service: PeerService, ctx: RequestContext, req: RangeRequest
) -> StreamReply:
    """``fetch_range``: a block-aligned range of the named version, as chunks."""
    requester = service.requester(ctx)
    service.slots.acquire(requester)
    try:
        opened, signed = await _open_signed(service, req.keyword, req.file_name)
    except BaseException:
        service.slots.release(requester)
        raise
    problem: RequestError | None = None
    if signed.digest != req.manifest:
        problem = NotFound("the file is no longer the version of that manifest")
    elif (why := req.alignment_error(signed.manifest)) is not None:
        problem = BadRequest(why)
    if problem is not None:
        opened.close()
        service.slots.release(requester)
        raise problem
    header = RangeHeader(req.manifest, req.offset, req.length)
    chunks = _range_chunks(service, opened, req.offset, req.length, requester)
    return StreamReply(header, chunks, dict)


async def _range_chunks(
    service: PeerService, opened: ShareFile, offset: int, length: int, requester: str
) -> AsyncIterator[bytes | memoryview]:
    clock = service.clock
    meter = PaceMeter(service.pace, clock.monotonic(), length)
    pos, end = offset, offset + length
    pending: ThreadJob[bytes] | None = ThreadJob(
        opened.read, pos, min(READ_BLOCK, end - pos), pool=SERVING
    )
    try:
        while pending is not None:
            data = await pending
            pending = None
            if not data:
                raise Busy("the file changed during the transfer; fetch it again")
            pos += len(data)
            if pos < end:
                pending = ThreadJob(opened.read, pos, min(READ_BLOCK, end - pos), pool=SERVING)
            view = memoryview(data)
            for start in range(0, len(data), MAX_CHUNK):
                chunk = view[start : start + MAX_CHUNK]
                yield chunk
                if meter.update(clock.monotonic(), len(chunk)) is not None:
                    log.info("range fetch by %s read too slowly: %s", requester, meter.failure)
                    raise Timeout(f"the transfer was read too slowly ({meter.failure})")
        if opened.current_identity() != opened.identity:
            raise Busy("the file changed during the transfer; fetch it again")
    finally:
        service.slots.release(requester)
        if pending is None:
            opened.close()
        else:
            pending.when_finished(opened.close)


__all__ = ["handle_fetch_range", "handle_manifest"]
