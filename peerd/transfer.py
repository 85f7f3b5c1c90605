"""The transfer: a ``fetch`` stream received into the partial file (PROTOCOL.md §7).

The network side of a download. Chunks are written and hashed in a worker thread while the
next one is decrypted; a stream cut off keeps what arrived (``partial_kept``), so the next
download resumes it; a peer that breaks the protocol or ends the stream with an error has the
download refused. Checking what arrived is :mod:`peerd.verify`'s work, staging
:mod:`peerd.staging`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from cryptography import x509

from netproto.errors import ConnectionClosed, RemoteProtocolError, RequestError, Timeout
from netproto.operations import FetchHeader, FetchTrailer
from peerd.errors import DownloadRefused
from peerd.staging import Hasher, write_hashed
from peerd.threadjob import DiskWork, ThreadJob

#: Called with ``(bytes_received_so_far, total_bytes)``, the resumed prefix included.
ProgressCallback = Callable[[int, int], None]


class FetchStream(Protocol):
    """A ``fetch`` answer in progress (what :class:`peerd.client.FetchStream` is)."""

    header: FetchHeader

    def chunks(self, timeout: float | None = None) -> AsyncIterator[bytes | memoryview]:
        """The file's bytes from the requested offset, as they arrive."""
        ...

    def trailer(self) -> FetchTrailer:
        """The trailer, once the chunks are over."""
        ...

    def close(self) -> None:
        """Stop listening to the stream."""
        ...


class FetchPeer(Protocol):
    """A connected peer to download from (what :class:`peerd.client.PeerClient` is)."""

    @property
    def domain_name(self) -> str:
        """The peer's name, as its TLS certificate carries it."""
        ...

    @property
    def requester(self) -> str:
        """This user's name, which the peer signs."""
        ...

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate the peer presented in the TLS handshake."""
        ...

    async def fetch(
        self, keyword: str, file_name: str, nonce: bytes, offset: int = 0
    ) -> FetchStream:
        """Start a fetch; returns once the (well-formed) header has arrived."""
        ...


async def receive(
    stream: FetchStream,
    fd: int,
    offset: int,
    sha256: Hasher,
    disk: DiskWork,
    progress: ProgressCallback | None = None,
) -> int:
    """Write the stream's chunks into the partial file ``fd`` from ``offset``; bytes received.

    A connection that drops or stalls raises :class:`DownloadRefused` ``"truncated"`` with the
    partial file kept; more bytes than announced, a protocol violation or an error from the
    peer raise it with the partial file to be discarded. A write that fails raises its
    :class:`OSError`.
    """
    total = stream.header.size
    remaining = total - offset
    received = 0
    pending: ThreadJob[None] | None = None
    try:
        try:
            async for chunk in stream.chunks():
                if len(chunk) > remaining - received:
                    raise DownloadRefused("size", "the peer sent more bytes than it announced")
                if pending is not None:
                    await pending
                # Write and hash this chunk while the next one is decrypted.
                pending = disk.start(write_hashed, fd, chunk, offset + received, sha256)
                received += len(chunk)
                if progress is not None:
                    progress(offset + received, total)
            if pending is not None:
                await pending  # the last write, and its error if it failed
        except BaseException as exc:
            if pending is not None and not pending.done():
                pending.future.add_done_callback(_retrieve)
                if not isinstance(exc, asyncio.CancelledError):
                    # Let the last write land before the partial file is kept or removed.
                    # (When cancelled, ``disk`` closes the file once the write is over.)
                    with contextlib.suppress(Exception):
                        await asyncio.shield(pending.future)
            raise
    except (ConnectionClosed, Timeout) as exc:
        raise DownloadRefused(
            "truncated",
            f"the connection ended after {offset + received} of {total} bytes ({exc});"
            " the partial file is kept and the next attempt resumes it",
            partial_kept=True,
        ) from exc
    except RemoteProtocolError as exc:
        raise DownloadRefused(
            "truncated", f"the peer broke the protocol mid-transfer: {exc}"
        ) from exc
    except RequestError as exc:
        raise DownloadRefused(
            "truncated", f"the peer ended the transfer with an error: {exc}"
        ) from exc
    return received


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # the transfer failed anyway: do not log it as never retrieved


def read_trailer(stream: FetchStream) -> FetchTrailer:
    """The stream's trailer; a malformed one refuses the download (check ``"trailer"``)."""
    try:
        return stream.trailer()
    except RemoteProtocolError as exc:
        raise DownloadRefused("trailer", f"the peer's trailer is malformed: {exc}") from exc


__all__ = ["FetchPeer", "FetchStream", "ProgressCallback", "read_trailer", "receive"]
