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
import math
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from cryptography import x509

from netproto.errors import ConnectionClosed, RemoteProtocolError, RequestError, Timeout
from netproto.operations import FetchHeader, FetchTrailer
from peerd.clock import SYSTEM_CLOCK, Clock
from peerd.errors import DownloadRefused
from peerd.pacing import PaceMeter, PacePolicy
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
    *,
    pace: PacePolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> int:
    """Write the stream's chunks into the partial file ``fd`` from ``offset``; bytes received.

    A connection that drops or stalls raises :class:`DownloadRefused` ``"truncated"`` with the
    partial file kept, and so does a transfer that falls under ``pace`` (measured on
    ``clock``); more bytes than announced or an error from the peer raise it with the partial
    file to be discarded. A peer that breaks the protocol (an empty chunk, say) raises
    :class:`RemoteProtocolError`. A write that fails raises its :class:`OSError`.
    """
    total = stream.header.size
    remaining = total - offset
    received = 0
    pending: ThreadJob[None] | None = None
    meter = PaceMeter(pace, clock.monotonic(), remaining) if pace is not None else None
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(None) as scope:
            watch = _PaceWatch(meter, scope, loop, clock)
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
                    watch.moved(len(chunk))
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
    except TimeoutError as exc:
        if not scope.expired():
            raise
        raise watch.too_slow(offset + received, total) from exc
    except _TooSlow as exc:
        raise watch.too_slow(offset + received, total) from exc
    except (ConnectionClosed, Timeout) as exc:
        raise DownloadRefused(
            "truncated",
            f"the connection ended after {offset + received} of {total} bytes ({exc});"
            " the partial file is kept and the next attempt resumes it",
            partial_kept=True,
        ) from exc
    except RequestError as exc:
        raise DownloadRefused(
            "truncated", f"the peer ended the transfer with an error: {exc}"
        ) from exc
    return received


class _TooSlow(Exception):
    """The transfer fell under its floor (seen as a chunk arrived)."""


class _PaceWatch:
    """Keeps a transfer's timeout at the moment its :class:`PaceMeter` would fail."""

    def __init__(
        self,
        meter: PaceMeter | None,
        scope: asyncio.Timeout,
        loop: asyncio.AbstractEventLoop,
        clock: Clock,
    ) -> None:
        self.meter = meter
        self.scope = scope
        self.loop = loop
        self.clock = clock
        self._scheduled = math.inf
        self._arm()

    def _arm(self) -> None:
        assert self.meter is not None or self._scheduled == math.inf
        when = self.meter.next_check() if self.meter is not None else math.inf
        if when != self._scheduled:  # it moves once per window, not with every chunk
            self._scheduled = when
            delay = when - self.clock.monotonic()
            self.scope.reschedule(None if when == math.inf else self.loop.time() + delay)

    def moved(self, nbytes: int) -> None:
        """Count a chunk; raise :class:`_TooSlow` if the transfer is under its floor."""
        if self.meter is None:
            return
        if self.meter.update(self.clock.monotonic(), nbytes) is not None:
            raise _TooSlow()
        self._arm()

    def too_slow(self, done: int, total: int) -> DownloadRefused:
        """The refusal of a transfer abandoned for its pace (the partial file is kept)."""
        reason = "too slow"
        if self.meter is not None:
            reason = self.meter.update(self.clock.monotonic()) or reason
        return DownloadRefused(
            "truncated",
            f"the transfer was abandoned after {done} of {total} bytes: {reason};"
            " the partial file is kept and the next attempt from the same peer resumes it",
            partial_kept=True,
        )


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
