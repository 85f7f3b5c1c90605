"""Download a file from a peer into the share, and accept it only once verified (PROTOCOL.md §7).

The file is written to a hidden temp file in its keyword folder, hashed while it arrives, and
checked: the nonce echoes ours, the size matches, the bytes hash to the trailer's ``sha256``,
the signer is the peer we asked for, the Ed25519 signature verifies under the public key of the
certificate that peer presented in the TLS handshake, and the digest matches the index's where
it listed one. Only then is it fsynced and renamed into place. Any failure deletes the temp
file and raises :class:`DownloadRefused` naming the check.

A transfer cut off by a dropped connection keeps its temp file and a small sidecar (what it
belongs to), and the next download of the same file resumes from where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from netproto.errors import (
    BadFrame,
    BadRequest,
    ConnectionClosed,
    P2PError,
    RequestError,
    Timeout,
    VerificationFailed,
)
from netproto.names import check_file_name, check_keyword
from netproto.operations import NONCE_SIZE, FetchTrailer, ListedFile
from netproto.signing import fetch_signature_valid, fetch_signing_payload
from peerd.client import FetchStream, PeerClient
from peerd.share import hash_fd, open_regular, open_subdir
from peerd.threadjob import ThreadJob

log = logging.getLogger(__name__)

PART_SUFFIX = ".p2pshare-part"
META_SUFFIX = ".meta"
#: The checks of PROTOCOL.md §7, in the order they are reported (and the first failed one
#: names the error).
CHECKS = ("nonce", "size", "sha256", "signer", "signature", "index-digest")
_NAME_MAX = 255
_META_MAX = 64 << 10

#: Called with ``(bytes_received_so_far, total_bytes)``, the resumed prefix included.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """One verification check: passed (True), failed (False) or not applicable (None)."""

    name: str
    passed: bool | None
    detail: str


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


class DownloadError(P2PError):
    """A download that could not be done (not a verification failure)."""


class FileConflict(DownloadError):
    """A different file already exists under the name; ``overwrite=True`` replaces it."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(message)


class DownloadRefused(VerificationFailed):
    """A download refused by a check; carries every check's outcome for display."""

    def __init__(
        self,
        check: str,
        message: str,
        checks: tuple[CheckOutcome, ...] = (),
        *,
        partial_kept: bool = False,
    ) -> None:
        super().__init__(check, message)
        self.checks = checks
        #: True when a resumable partial file was kept (the connection dropped mid-transfer).
        self.partial_kept = partial_kept


def part_names(file_name: str) -> tuple[str, str]:
    """The hidden temp file and sidecar names for ``file_name`` in its folder."""
    part = f".{file_name}{PART_SUFFIX}"
    if len((part + META_SUFFIX).encode("utf-8")) > _NAME_MAX:
        digest = hashlib.sha256(file_name.encode("utf-8")).hexdigest()[:40]
        part = f".p2pshare-{digest}{PART_SUFFIX}"
    return part, part + META_SUFFIX


def _unlink(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _open_keyword_dir(root_fd: int, keyword: str) -> tuple[str, int, bool]:
    """Open (creating if needed) the keyword folder; an existing case variant is reused.

    Returns the folder's name, its descriptor, and whether it was created just now.
    """
    wanted = keyword.casefold()
    names = [n for n in os.listdir(root_fd) if not n.startswith(".") and n.casefold() == wanted]
    names.sort(key=lambda n: (n != keyword, n))
    for name in names:
        fd = open_subdir(root_fd, name)
        if fd is not None:
            return name, fd, False
    if keyword in names:
        raise DownloadError(f"{keyword!r} in the share is not a real folder")
    created = True
    try:
        os.mkdir(keyword, 0o755, dir_fd=root_fd)
    except FileExistsError:
        created = False
    fd = open_subdir(root_fd, keyword)
    if fd is None:
        raise DownloadError(f"cannot open the folder {keyword!r} in the share")
    return keyword, fd, created


def _hash_existing(dir_fd: int, name: str) -> tuple[int, bytes] | None:
    opened = open_regular(dir_fd, name)
    if opened is None:
        return None
    fd, st = opened
    try:
        return st.st_size, hash_fd(fd)
    finally:
        os.close(fd)


class _Restart(Exception):
    """The partial file cannot be resumed; start again from the beginning."""


@dataclass
class _Download:
    peer: PeerClient
    keyword: str
    file_name: str
    folder: str
    dir_fd: int
    path: Path
    expected: ListedFile | None
    overwrite: bool
    progress: ProgressCallback | None
    part: str = ""
    meta: str = ""
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.part, self.meta = part_names(self.file_name)

    # --- the existing file ----------------------------------------------------------

    def _existing_size(self) -> int | None:
        try:
            st = os.stat(self.file_name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise FileConflict(self.path, f"{self.path} exists and is not a regular file")
        return st.st_size

    async def _present_result(self) -> DownloadResult | None:
        """A result without download when the file is already there with the index's digest."""
        expected = self.expected
        if expected is None:
            return None  # compared after the download, before it is moved into place
        existing = await asyncio.to_thread(_hash_existing, self.dir_fd, self.file_name)
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
            raise FileConflict(
                self.path, f"{self.path} exists with different content (overwrite to replace it)"
            )
        return None

    # --- the partial file -----------------------------------------------------------

    def _read_meta(self) -> dict[str, Any] | None:
        opened = open_regular(self.dir_fd, self.meta)
        if opened is None:
            return None
        fd, st = opened
        try:
            if st.st_size > _META_MAX:
                return None
            meta = json.loads(os.pread(fd, _META_MAX, 0))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
        return meta if isinstance(meta, dict) else None

    def _meta_matches(self, meta: dict[str, Any]) -> bool:
        if meta.get("keyword") != self.keyword or meta.get("file_name") != self.file_name:
            return False
        size = meta.get("size")
        if type(size) is not int:
            return False
        expected = self.expected
        if expected is not None:
            if size != expected.size:
                return False
            recorded = meta.get("sha256")
            if recorded is not None and recorded != expected.sha256.hex():
                return False
            if recorded == expected.sha256.hex():
                return True  # the same content, whichever peer it came from
        return meta.get("peer") == self.peer.domain_name

    def _write_meta(self, size: int) -> None:
        meta = {
            "peer": self.peer.domain_name,
            "keyword": self.keyword,
            "file_name": self.file_name,
            "size": size,
            "sha256": self.expected.sha256.hex() if self.expected is not None else None,
        }
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.meta, flags, 0o644, dir_fd=self.dir_fd)
        try:
            os.write(fd, json.dumps(meta).encode())
        finally:
            os.close(fd)

    def _discard_partial(self) -> None:
        _unlink(self.dir_fd, self.part)
        _unlink(self.dir_fd, self.meta)

    def _open_part(self) -> tuple[int, int, int | None]:
        """Open (or create) the temp file, locked: (fd, offset to resume from, its size)."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.part, flags, 0o644, dir_fd=self.dir_fd)
        except OSError:  # not a regular file we can open (a symlink, say): start afresh
            self._discard_partial()
            fd = os.open(self.part, flags | os.O_EXCL, 0o644, dir_fd=self.dir_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise DownloadError(f"{self.part} in {self.path.parent} is not a regular file")
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DownloadError(f"{self.path} is already being downloaded") from None
            raise
        except BaseException:
            os.close(fd)
            raise
        meta = self._read_meta()
        if meta is not None and self._meta_matches(meta) and st.st_size <= meta["size"]:
            return fd, st.st_size, int(meta["size"])
        os.ftruncate(fd, 0)
        _unlink(self.dir_fd, self.meta)
        return fd, 0, None

    # --- the transfer ---------------------------------------------------------------

    async def run(self) -> DownloadResult:
        try:
            return await self._run()
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise
            # The disk refused something (full, over quota, read-only, not permitted): one
            # readable line, and no partial file left behind to resume into.
            with contextlib.suppress(OSError):
                self._discard_partial()
            raise DownloadError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    async def _run(self) -> DownloadResult:
        if self._existing_size() is not None:
            present = await self._present_result()
            if present is not None:
                return present
        for _attempt in range(2):
            fd, offset, recorded = self._open_part()
            try:
                return await self._transfer(fd, offset, recorded)
            except _Restart as exc:
                log.info("cannot resume %s (%s); downloading it again", self.path, exc)
                self._discard_partial()
            finally:
                os.close(fd)
        raise DownloadError(f"could not download {self.path}: the peer's file keeps changing")

    async def _transfer(self, fd: int, offset: int, recorded: int | None) -> DownloadResult:
        sha256 = hashlib.sha256()
        if offset:
            await asyncio.to_thread(_hash_into, sha256, fd, offset)
        nonce = secrets.token_bytes(NONCE_SIZE)
        try:
            stream = await self.peer.fetch(self.keyword, self.file_name, nonce, offset)
        except BadRequest as exc:
            if offset:
                raise _Restart(str(exc)) from exc
            self._discard_partial()
            raise
        except BaseException:
            if not offset:  # nothing received: leave nothing behind
                self._discard_partial()
            raise
        try:
            header = stream.header
            if offset and header.size != recorded:
                raise _Restart("the file changed size on the peer")
            self._check_header(stream, offset)
            if not offset:
                self._write_meta(header.size)
            if self.progress is not None:
                self.progress(offset, header.size)
            received = await self._receive(stream, fd, offset, sha256)
            trailer = self._trailer(stream)
        finally:
            stream.close()
        digest = sha256.digest()
        return await self._verify(fd, nonce, offset, received, digest, header.size, trailer)

    def _refuse(self, check: str, message: str, checks: tuple[CheckOutcome, ...] = ()) -> NoReturn:
        self._discard_partial()
        raise DownloadRefused(check, message, checks)

    def _check_header(self, stream: FetchStream, offset: int) -> None:
        header = stream.header
        if (
            header.offset != offset
            or header.keyword != self.keyword
            or header.file_name != self.file_name
            or header.size < offset
        ):
            self._refuse("header", "the peer's stream header does not answer our request")
        expected = self.expected
        if expected is not None and header.size != expected.size:
            self._refuse(
                "size", f"the peer offers {header.size} bytes, the index listed {expected.size}"
            )
        existing = self._existing_size()
        if existing is not None and existing != header.size and not self.overwrite:
            self._discard_partial()
            raise FileConflict(
                self.path, f"{self.path} exists with different content (overwrite to replace it)"
            )

    async def _receive(self, stream: FetchStream, fd: int, offset: int, sha256: Any) -> int:
        total = stream.header.size
        remaining = total - offset
        received = 0
        pending: ThreadJob[None] | None = None
        try:
            try:
                async for chunk in stream.chunks():
                    if len(chunk) > remaining - received:
                        self._refuse("size", "the peer sent more bytes than it announced")
                    if pending is not None:
                        await pending
                    # Write and hash this chunk while the next one is decrypted.
                    pending = ThreadJob(_write_hashed, fd, chunk, offset + received, sha256)
                    received += len(chunk)
                    if self.progress is not None:
                        self.progress(offset + received, total)
            finally:
                if pending is not None:
                    try:
                        await asyncio.shield(pending.future)
                    except asyncio.CancelledError:
                        # The caller closes fd next: the write must be over first (one chunk).
                        pending.wait()
                        raise
        except (ConnectionClosed, Timeout) as exc:
            raise DownloadRefused(
                "truncated",
                f"the connection ended after {offset + received} of {total} bytes ({exc});"
                " the partial file is kept and the next attempt resumes it",
                partial_kept=True,
            ) from exc
        except BadFrame as exc:
            self._refuse("truncated", f"the peer broke the protocol mid-transfer: {exc}")
        except RequestError as exc:
            self._refuse("truncated", f"the peer ended the transfer with an error: {exc}")
        except OSError as exc:
            self._discard_partial()
            raise DownloadError(f"cannot write {self.path}: {exc.strerror}") from exc
        return received

    def _trailer(self, stream: FetchStream) -> FetchTrailer:
        try:
            return stream.trailer()
        except (BadRequest, BadFrame) as exc:
            self._refuse("trailer", f"the peer's trailer is malformed: {exc}")

    async def _verify(
        self,
        fd: int,
        nonce: bytes,
        offset: int,
        received: int,
        digest: bytes,
        announced: int,
        trailer: FetchTrailer,
    ) -> DownloadResult:
        size = offset + received
        checks = verify_fetch(
            peer=self.peer,
            keyword=self.keyword,
            file_name=self.file_name,
            nonce=nonce,
            size=size,
            announced_size=announced,
            digest=digest,
            trailer=trailer,
            expected=self.expected,
        )
        failed = next((c for c in checks if c.passed is False), None)
        if failed is not None:
            self._refuse(failed.name, failed.detail, checks)
        try:
            await asyncio.to_thread(os.fsync, fd)
        except OSError as exc:
            self._discard_partial()
            raise DownloadError(f"cannot write {self.path}: {exc.strerror}") from exc
        present = await self._install(digest)
        return DownloadResult(
            self.path,
            self.folder,
            self.file_name,
            size,
            digest,
            trailer.signer,
            checks,
            resumed_from=offset,
            received=received,
            elapsed=time.monotonic() - self.started,
            already_present=present,
        )

    async def _install(self, digest: bytes) -> bool:
        """Move the verified temp file into place; True if an identical file was there."""
        d = self.dir_fd
        try:
            if self.overwrite:
                os.replace(self.part, self.file_name, src_dir_fd=d, dst_dir_fd=d)
            else:
                try:
                    # link() never replaces an existing name: no window for a silent overwrite.
                    os.link(self.part, self.file_name, src_dir_fd=d, dst_dir_fd=d)
                except FileExistsError:
                    existing = await asyncio.to_thread(_hash_existing, d, self.file_name)
                    self._discard_partial()
                    if existing is not None and existing[1] == digest:
                        return True
                    raise FileConflict(
                        self.path,
                        f"{self.path} exists with different content (overwrite to replace it)",
                    ) from None
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
                        raise
                    if self._existing_size() is not None:
                        self._discard_partial()
                        raise FileConflict(self.path, f"{self.path} appeared meanwhile") from None
                    os.rename(self.part, self.file_name, src_dir_fd=d, dst_dir_fd=d)
                else:
                    _unlink(d, self.part)
            _unlink(d, self.meta)
            os.fsync(d)
        except OSError as exc:
            self._discard_partial()
            raise DownloadError(f"cannot move the download into {self.path}: {exc}") from exc
        return False


def _hash_into(sha256: Any, fd: int, length: int) -> None:
    pos = 0
    while pos < length:
        block = os.pread(fd, min(1 << 20, length - pos), pos)
        if not block:
            raise OSError(errno.EIO, "partial file shorter than expected")
        sha256.update(block)
        pos += len(block)
    os.ftruncate(fd, length)


_WRITEBACK = 16 << 20
_FADVISE = getattr(os, "posix_fadvise", None)


def _write_hashed(fd: int, data: bytes, pos: int, sha256: Any) -> None:
    sha256.update(data)
    view = memoryview(data)
    start = pos
    while view:
        written = os.pwrite(fd, view, pos)
        view = view[written:]
        pos += written
    if _FADVISE is not None and start // _WRITEBACK != pos // _WRITEBACK:
        # Start the write-back of the last full window now (DONTNEED on dirty pages starts
        # it without waiting), so the final fsync has little left to do.
        window = (pos // _WRITEBACK - 1) * _WRITEBACK
        _FADVISE(fd, window, _WRITEBACK, os.POSIX_FADV_DONTNEED)


def verify_fetch(
    *,
    peer: PeerClient,
    keyword: str,
    file_name: str,
    nonce: bytes,
    size: int,
    announced_size: int,
    digest: bytes,
    trailer: FetchTrailer,
    expected: ListedFile | None,
) -> tuple[CheckOutcome, ...]:
    """Every check of PROTOCOL.md §7 on a received file, in :data:`CHECKS` order."""
    outcomes: list[CheckOutcome] = []

    def check(name: str, passed: bool | None, ok: str, bad: str) -> None:
        outcomes.append(CheckOutcome(name, passed, ok if passed is not False else bad))

    check(
        "nonce",
        secrets.compare_digest(trailer.nonce, nonce),
        "the trailer echoes our fresh nonce",
        "the trailer's nonce is not the one we sent (a replayed or misdirected answer)",
    )
    sizes_agree = trailer.size == size == announced_size
    if expected is not None:
        sizes_agree = sizes_agree and size == expected.size
    check(
        "size",
        sizes_agree,
        f"{size} bytes, as announced",
        f"received {size} bytes, header said {announced_size}, trailer says {trailer.size}",
    )
    check(
        "sha256",
        secrets.compare_digest(digest, trailer.sha256),
        f"the bytes hash to {digest.hex()[:16]}…",
        "the bytes received do not hash to the trailer's sha256",
    )
    check(
        "signer",
        trailer.signer == peer.domain_name,
        f"signed as {trailer.signer}",
        f"the trailer is signed as {trailer.signer!r}, we asked {peer.domain_name!r}",
    )
    key = peer.certificate.public_key()
    payload = fetch_signing_payload(
        signer=peer.domain_name,
        requester=peer.requester,
        keyword=keyword,
        file_name=file_name,
        size=trailer.size,
        sha256=trailer.sha256,
        nonce=nonce,
    )
    valid = isinstance(key, Ed25519PublicKey) and fetch_signature_valid(
        key, trailer.digital_signature, payload
    )
    check(
        "signature",
        valid,
        f"Ed25519 signature by {peer.domain_name}'s certificate key",
        f"the signature does not verify under {peer.domain_name}'s certificate key",
    )
    if expected is None:
        check("index-digest", None, "the index listed no digest", "")
    else:
        check(
            "index-digest",
            secrets.compare_digest(expected.sha256, trailer.sha256),
            "matches the digest the index listed",
            "the file's digest is not the one the index listed",
        )
    return tuple(outcomes)


async def download(
    peer: PeerClient,
    keyword: str,
    file_name: str,
    file_directory: Path,
    *,
    expected: ListedFile | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> DownloadResult:
    """Fetch ``keyword/file_name`` from ``peer`` into ``file_directory/<keyword>/<file_name>``.

    ``expected`` is the index's listing of the file (its size and digest are then checked
    too). An existing identical file is success without a download; an existing different
    one raises :class:`FileConflict` unless ``overwrite``. A failed check raises
    :class:`DownloadRefused` (a :class:`VerificationFailed`) naming it; a dropped connection
    raises it with check ``"truncated"`` and keeps a partial file the next call resumes.
    """
    check_keyword(keyword)
    check_file_name(file_name)
    if expected is not None and expected.filename != file_name:
        raise ValueError("expected describes another file")
    root = Path(file_directory)
    try:
        os.makedirs(root, exist_ok=True)
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise DownloadError(f"cannot use {root} for downloads: {exc.strerror or exc}") from exc
    try:
        try:
            folder, dir_fd, created = _open_keyword_dir(root_fd, keyword)
        except OSError as exc:
            raise DownloadError(f"cannot make the folder {root / keyword}: {exc.strerror}") from exc
        try:
            job = _Download(
                peer,
                keyword,
                file_name,
                folder,
                dir_fd,
                root / folder / file_name,
                expected,
                overwrite,
                progress,
            )
            return await job.run()
        except BaseException:
            if created:  # leave no empty folder behind (a kept partial keeps it)
                with contextlib.suppress(OSError):
                    os.rmdir(folder, dir_fd=root_fd)
            raise
        finally:
            os.close(dir_fd)
    finally:
        os.close(root_fd)


__all__ = [
    "CHECKS",
    "CheckOutcome",
    "DownloadError",
    "DownloadRefused",
    "DownloadResult",
    "FileConflict",
    "ProgressCallback",
    "download",
    "part_names",
    "verify_fetch",
]
