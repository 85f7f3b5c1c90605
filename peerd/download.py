"""Download a file from a peer into the share, and accept it only once verified (PROTOCOL.md §7).

:func:`download` ties four steps together, each in its own module:

- staging (:mod:`peerd.staging`): the hidden, locked partial file and its sidecar, resumed
  when a transfer was cut off;
- the transfer (:mod:`peerd.transfer`): the ``fetch`` stream written and hashed as it arrives;
- verification (:mod:`peerd.verify`, pure): the nonce echoes ours, the size matches, the bytes
  hash to the trailer's ``sha256``, the signer is the peer we asked, the Ed25519 signature
  verifies under the key of the certificate that peer presented, and the digest is the index's
  where it listed one;
- the install step (:mod:`peerd.install`): fsync, move into place, fsync the folder.

Any failed check deletes the partial file and raises :class:`DownloadRefused` naming it. Every
disk operation runs in a worker thread (:class:`peerd.threadjob.DiskWork`), never on the event
loop.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from netproto.errors import BadRequest, RemoteProtocolError
from netproto.names import check_file_name, check_keyword
from netproto.operations import NONCE_SIZE, FetchTrailer, ListedFile
from peerd.clock import SYSTEM_CLOCK, Clock
from peerd.errors import DownloadError, DownloadRefused, FileConflict, NotEnoughRoom
from peerd.install import conflict, existing_size, hash_existing, install
from peerd.pacing import PacePolicy
from peerd.staging import (
    Sidecar,
    StagedPart,
    Staging,
    check_room,
    hash_prefix,
    open_keyword_folder,
    open_share_root,
    part_names,
    remove_empty_folder,
)
from peerd.threadjob import DiskWork
from peerd.transfer import FetchPeer, ProgressCallback, read_trailer, receive
from peerd.verify import (
    CHECKS,
    CheckOutcome,
    FetchExpectation,
    check_header,
    check_size_limit,
    first_failure,
)
from peerd.verify import verify_fetch as verify_received

log = logging.getLogger(__name__)

#: The largest file a download accepts unless told otherwise (``--max-download-size``).
DEFAULT_MAX_DOWNLOAD_SIZE = 64 << 30


@dataclass(frozen=True, slots=True)
class DownloadLimits:
    """What a download accepts from a serving peer: the largest file, and the pace (a floor
    on the rate over a window, and a deadline for the whole, see :mod:`peerd.pacing`)."""

    max_size: int = DEFAULT_MAX_DOWNLOAD_SIZE
    pace: PacePolicy = field(default_factory=PacePolicy)


@dataclass(frozen=True, slots=True)
class DownloadResult:
    """A verified download, or a file already present with the expected digest."""

    path: Path
    keyword: str
    file_name: str
    size: int
    sha256: bytes
    signer: str
    checks: tuple[CheckOutcome, ...]
    resumed_from: int = 0
    received: int = 0
    elapsed: float = 0.0
    already_present: bool = False

    @property
    def ok(self) -> bool:
        """True when no check failed (always, for a result that was returned)."""
        return all(c.passed is not False for c in self.checks)


class _Restart(Exception):
    """The partial file cannot be resumed; start again from the beginning."""


@dataclass
class _Download:
    peer: FetchPeer
    keyword: str
    file_name: str
    folder: str
    staging: Staging
    expected: ListedFile | None
    overwrite: bool
    progress: ProgressCallback | None
    disk: DiskWork
    clock: Clock
    limits: DownloadLimits
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock.monotonic()

    @property
    def path(self) -> Path:
        return self.staging.path

    @property
    def dir_fd(self) -> int:
        return self.staging.dir_fd

    async def _discard(self) -> None:
        await self.disk.run(self.staging.discard)

    async def run(self) -> DownloadResult:
        try:
            return await self._run()
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise
            # The disk refused something (full, over quota, read-only, not permitted): one
            # readable line, and no partial file left behind to resume into.
            try:
                await self._discard()
            except OSError:
                log.debug("cannot remove the partial file of %s", self.path, exc_info=True)
            raise DownloadError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    async def _check_room(self, size: int, offset: int) -> None:
        """Refuse a file over ``max_size``, or one that would not fit on the disk."""
        failed = check_size_limit(size, self.limits.max_size)
        if failed is not None:
            raise DownloadRefused(failed.name, failed.detail)
        await self.disk.run(check_room, self.dir_fd, self.path, size - offset)

    async def _run(self) -> DownloadResult:
        if await self.disk.run(existing_size, self.dir_fd, self.file_name, self.path) is not None:
            present = await self._present_result()
            if present is not None:
                return present
        if self.expected is not None:  # refused before asking the peer anything
            await self._check_room(self.expected.size, 0)
        wanted = Sidecar(
            self.peer.domain_name,
            self.keyword,
            self.file_name,
            0,
            self.expected.sha256 if self.expected is not None else None,
        )
        for _attempt in range(2):
            part = await self.disk.run(
                self.staging.open, wanted, self.expected, unwanted=StagedPart.close
            )
            try:
                return await self._attempt(part, wanted)
            except _Restart as exc:
                log.info("cannot resume %s (%s); downloading it again", self.path, exc)
                await self._discard()
            except DownloadRefused as exc:
                if not exc.partial_kept:
                    await self._discard()
                raise
            except (FileConflict, NotEnoughRoom):
                await self._discard()
                raise
            finally:
                self.disk.close_when_idle(part.fd)
        raise DownloadError(f"could not download {self.path}: the peer's file keeps changing")

    async def _present_result(self) -> DownloadResult | None:
        """A result without download when the file is already there with the index's digest."""
        expected = self.expected
        if expected is None:
            return None  # compared after the download, before it is moved into place
        existing = await self.disk.run(hash_existing, self.dir_fd, self.file_name)
        if existing is None:
            return None
        size, digest = existing
        if size == expected.size and digest == expected.sha256:
            note = "identical file already present; nothing downloaded"
            checks = tuple(
                CheckOutcome(name, True if name == "index-digest" else None, note)
                for name in CHECKS
            )
            return DownloadResult(
                self.path, self.folder, self.file_name, size, digest, "", checks,
                already_present=True,
            )  # fmt: skip
        if not self.overwrite:
            raise conflict(self.path)
        return None

    async def _attempt(self, part: StagedPart, wanted: Sidecar) -> DownloadResult:
        offset = part.offset
        sha256 = hashlib.sha256()
        if offset:
            await self.disk.run(hash_prefix, sha256, part.fd, offset)
        nonce = secrets.token_bytes(NONCE_SIZE)
        expectation = FetchExpectation(
            self.peer.domain_name,
            self.peer.requester,
            self.keyword,
            self.file_name,
            nonce,
            self.expected,
        )
        try:
            stream = await self.peer.fetch(self.keyword, self.file_name, nonce, offset)
        except BadRequest as exc:
            # The peer says our request is wrong: with an offset, that is our resume point.
            # (A malformed answer is RemoteProtocolError, the peer's fault: never a restart.)
            if offset:
                raise _Restart(str(exc)) from exc
            await self._discard()
            raise
        except BaseException:
            if not offset:  # nothing received: leave nothing behind
                await self._discard()
            raise
        try:
            header = stream.header
            if offset and header.size != part.recorded_size:
                raise _Restart("the file changed size on the peer")
            failed = check_header(expectation, header, offset)
            if failed is not None:
                raise DownloadRefused(failed.name, failed.detail)
            await self._check_room(header.size, offset)
            existing = await self.disk.run(existing_size, self.dir_fd, self.file_name, self.path)
            if existing is not None and existing != header.size and not self.overwrite:
                raise conflict(self.path)
            if not offset:
                sidecar = dataclasses.replace(wanted, size=header.size)
                await self.disk.run(self.staging.write_sidecar, sidecar)
            if self.progress is not None:
                self.progress(offset, header.size)
            try:
                received = await receive(
                    stream,
                    part.fd,
                    offset,
                    sha256,
                    self.disk,
                    self.progress,
                    pace=self.limits.pace,
                    clock=self.clock,
                )
            except RemoteProtocolError:
                await self._discard()  # the peer broke the protocol: nothing worth resuming
                raise
            trailer = read_trailer(stream)
        finally:
            stream.close()
        digest = sha256.digest()
        return await self._verify(part, expectation, received, digest, header.size, trailer)

    async def _verify(
        self,
        part: StagedPart,
        expectation: FetchExpectation,
        received: int,
        digest: bytes,
        announced: int,
        trailer: FetchTrailer,
    ) -> DownloadResult:
        size = part.offset + received
        checks = verify_received(
            expectation,
            size=size,
            announced_size=announced,
            digest=digest,
            trailer=trailer,
            public_key=self.peer.certificate.public_key(),
        )
        failed = first_failure(checks)
        if failed is not None:
            raise DownloadRefused(failed.name, failed.detail, checks)
        present = await self.disk.run(
            functools.partial(install, overwrite=self.overwrite),
            self.staging,
            part.fd,
            self.file_name,
            digest,
        )
        return DownloadResult(
            self.path,
            self.folder,
            self.file_name,
            size,
            digest,
            trailer.signer,
            checks,
            resumed_from=part.offset,
            received=received,
            elapsed=self.clock.monotonic() - self.started,
            already_present=present,
        )


async def download(
    peer: FetchPeer,
    keyword: str,
    file_name: str,
    file_directory: Path,
    *,
    expected: ListedFile | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    clock: Clock = SYSTEM_CLOCK,
    limits: DownloadLimits | None = None,
) -> DownloadResult:
    """Fetch ``keyword/file_name`` from ``peer`` into ``file_directory/<keyword>/<file_name>``.

    ``expected`` is the index's listing of the file (its size and digest are then checked
    too). An existing identical file is success without a download; an existing different
    one raises :class:`FileConflict` unless ``overwrite``. A failed check raises
    :class:`DownloadRefused` (a :class:`VerificationFailed`) naming it; so does a file over
    ``limits.max_size`` (check ``"size"``), and a file that would not fit on the disk raises
    :class:`NotEnoughRoom`. A dropped connection, or a transfer under ``limits.pace`` on
    ``clock``, raises it with check ``"truncated"`` and keeps a partial file the next call
    resumes from the same peer. A peer that breaks the protocol (an empty chunk, say) raises
    :class:`~netproto.errors.RemoteProtocolError`, and what it sent is discarded.
    """
    check_keyword(keyword)
    check_file_name(file_name)
    if expected is not None and expected.filename != file_name:
        raise ValueError("expected describes another file")
    root = Path(file_directory)
    disk = DiskWork()
    root_fd = await disk.run(open_share_root, root, unwanted=os.close)
    try:
        folder = await disk.run(
            open_keyword_folder, root_fd, root, keyword, unwanted=lambda f: os.close(f.fd)
        )
        try:
            job = _Download(
                peer,
                keyword,
                file_name,
                folder.name,
                Staging(folder.fd, file_name, root / folder.name / file_name),
                expected,
                overwrite,
                progress,
                disk,
                clock,
                limits or DownloadLimits(),
            )
            return await job.run()
        except BaseException:
            if folder.created:  # leave no empty folder behind (a kept partial keeps it)
                await disk.run(remove_empty_folder, root_fd, folder.name)
            raise
        finally:
            disk.close_when_idle(folder.fd)
    finally:
        disk.close_when_idle(root_fd)


def verify_fetch(
    *,
    peer: FetchPeer,
    keyword: str,
    file_name: str,
    nonce: bytes,
    size: int,
    announced_size: int,
    digest: bytes,
    trailer: FetchTrailer,
    expected: ListedFile | None,
) -> tuple[CheckOutcome, ...]:
    """:func:`peerd.verify.verify_fetch` for a fetch from a connected ``peer``."""
    expectation = FetchExpectation(
        peer.domain_name, peer.requester, keyword, file_name, nonce, expected
    )
    return verify_received(
        expectation,
        size=size,
        announced_size=announced_size,
        digest=digest,
        trailer=trailer,
        public_key=peer.certificate.public_key(),
    )


__all__ = [
    "CHECKS",
    "DEFAULT_MAX_DOWNLOAD_SIZE",
    "CheckOutcome",
    "DownloadError",
    "DownloadLimits",
    "DownloadRefused",
    "DownloadResult",
    "FileConflict",
    "NotEnoughRoom",
    "PacePolicy",
    "ProgressCallback",
    "download",
    "part_names",
    "verify_fetch",
]
