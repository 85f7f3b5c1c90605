"""Partial-file staging: where a download is written before it is verified, and how it resumes.

A download is written to a hidden temp file in its keyword folder (:func:`part_names`), locked
with ``flock`` so two downloads of the same file cannot mix, made with ``O_EXCL | O_NOFOLLOW``
and mode 0600. Beside it a small sidecar (:class:`Sidecar`) says what the bytes belong to; a
later download of the same file from the same peer (and of the same index digest) resumes from
where the last one stopped. Partial files untouched for days are swept away when the peer
starts (:func:`sweep_stale_parts`); a download must fit the file system's free space with a
margin (:func:`check_room`).

Every function here blocks (``open``, ``flock``, reads, writes, ``unlink``): the caller runs
them in a worker thread (:class:`peerd.threadjob.DiskWork`), never on the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

from netproto.operations import ListedFile
from peerd.errors import DownloadError, NotEnoughRoom, UnsafeLocalFile
from peerd.share import check_private, open_private_subdir, open_regular

PART_SUFFIX = ".p2pshare-part"
META_SUFFIX = ".meta"
#: A partial file and its sidecar are this user's alone until the file is verified.
PART_MODE = 0o600
#: Folders made for downloads (the share, a keyword): nobody else may write them.
FOLDER_MODE = 0o755
#: Partial files not touched for this long are removed when the peer starts.
DEFAULT_PARTIAL_MAX_AGE = 3 * 86400.0
#: Room kept free on the share's file system: this much, or a twentieth of a smaller one.
FREE_SPACE_MARGIN = 64 << 20
_NAME_MAX = 255
_META_MAX = 64 << 10
_HASH_BLOCK = 1 << 20
#: Dirty pages of the partial file are pushed to the disk in windows of this size, so the
#: final ``fsync`` has little left to do.
_WRITEBACK = 16 << 20
_FADVISE = getattr(os, "posix_fadvise", None)
_PROBE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Hasher(Protocol):
    """A running digest (what :func:`hashlib.sha256` returns)."""

    def update(self, data: bytes | memoryview, /) -> None:
        """Feed more bytes."""
        ...

    def digest(self) -> bytes:
        """The digest of every byte fed so far."""
        ...


def part_names(file_name: str) -> tuple[str, str]:
    """The hidden temp file and sidecar names for ``file_name`` in its folder."""
    part = f".{file_name}{PART_SUFFIX}"
    if len((part + META_SUFFIX).encode("utf-8")) > _NAME_MAX:
        digest = hashlib.sha256(file_name.encode("utf-8")).hexdigest()[:40]
        part = f".p2pshare-{digest}{PART_SUFFIX}"
    return part, part + META_SUFFIX


def unlink_quietly(dir_fd: int, name: str) -> None:
    """Remove ``name`` below ``dir_fd`` if it is there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def open_share_root(root: Path) -> int:
    """Open (creating if needed) the folder downloads go into; DownloadError if impossible,
    :class:`UnsafeLocalFile` if it is not this user's own or others may write it."""
    try:
        os.makedirs(root, FOLDER_MODE, exist_ok=True)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise DownloadError(f"cannot use {root} for downloads: {exc.strerror or exc}") from exc
    try:
        check_private(os.fstat(fd), f"the share folder {root}")
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True, slots=True)
class KeywordFolder:
    """The keyword folder a download goes into: its name, an open descriptor, and whether it
    was created for this download (and is removed again if the download leaves nothing)."""

    name: str
    fd: int
    created: bool


def open_keyword_folder(root_fd: int, root: Path, keyword: str) -> KeywordFolder:
    """Open (creating if needed) the keyword folder; an existing case variant is reused."""
    try:
        return _open_keyword_folder(root_fd, root, keyword)
    except OSError as exc:
        raise DownloadError(f"cannot make the folder {root / keyword}: {exc.strerror}") from exc


def _open_keyword_folder(root_fd: int, root: Path, keyword: str) -> KeywordFolder:
    wanted = keyword.casefold()
    names = [n for n in os.listdir(root_fd) if not n.startswith(".") and n.casefold() == wanted]
    names.sort(key=lambda n: (n != keyword, n))
    for name in names:
        fd = open_private_subdir(root_fd, name, f"the share folder {root / name}")
        if fd is not None:
            return KeywordFolder(name, fd, False)
    if keyword in names:
        raise DownloadError(f"{keyword!r} in the share is not a real folder")
    created = True
    try:
        os.mkdir(keyword, FOLDER_MODE, dir_fd=root_fd)
    except FileExistsError:
        created = False
    fd = open_private_subdir(root_fd, keyword, f"the share folder {root / keyword}")
    if fd is None:
        raise DownloadError(f"cannot open the folder {keyword!r} in the share")
    return KeywordFolder(keyword, fd, created)


def remove_empty_folder(root_fd: int, name: str) -> None:
    """Remove the folder ``name`` if it is empty (a kept partial file keeps it)."""
    with contextlib.suppress(OSError):
        os.rmdir(name, dir_fd=root_fd)


@dataclass(frozen=True, slots=True)
class Sidecar:
    """What a partial file belongs to, kept beside it so that a later download can resume it."""

    peer: str
    keyword: str
    file_name: str
    size: int
    sha256: bytes | None = None  # the index's digest of the file, when it listed one

    def to_json(self) -> bytes:
        """The sidecar's file content."""
        return json.dumps(
            {
                "peer": self.peer,
                "keyword": self.keyword,
                "file_name": self.file_name,
                "size": self.size,
                "sha256": self.sha256.hex() if self.sha256 is not None else None,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Self | None:
        """The sidecar read back, or None if it is damaged or of another shape."""
        try:
            doc: Any = json.loads(data)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        peer, keyword, file_name = doc.get("peer"), doc.get("keyword"), doc.get("file_name")
        size, digest = doc.get("size"), doc.get("sha256")
        if not (isinstance(peer, str) and isinstance(keyword, str) and isinstance(file_name, str)):
            return None
        if type(size) is not int or not (digest is None or isinstance(digest, str)):
            return None
        try:
            sha256 = bytes.fromhex(digest) if digest is not None else None
        except ValueError:
            return None
        return cls(peer, keyword, file_name, size, sha256)

    def resumable_as(self, wanted: Sidecar) -> bool:
        """True when the partial file may be resumed by the download ``wanted`` describes
        (``wanted.size`` is ignored: the size is only known once the peer answers).

        Only from the peer that served the prefix: another peer's signature would cover
        bytes it never sent, so a peer that served a poisoned prefix could make the honest
        peer's download fail. And only for the same index digest, when both know one.
        """
        if (self.peer, self.keyword, self.file_name) != (
            wanted.peer,
            wanted.keyword,
            wanted.file_name,
        ):
            return False
        return wanted.sha256 is None or self.sha256 is None or self.sha256 == wanted.sha256


@dataclass(slots=True)
class StagedPart:
    """The partial file opened and locked for one attempt: where to resume, and how big the
    file was when the bytes already there were received (None for a fresh start)."""

    fd: int
    offset: int
    recorded_size: int | None

    def close(self) -> None:
        """Close the descriptor (which also releases the lock)."""
        os.close(self.fd)


class Staging:
    """The partial file and sidecar of one file name in one keyword folder (blocking)."""

    def __init__(self, dir_fd: int, file_name: str, path: Path) -> None:
        self.dir_fd = dir_fd
        self.path = path  # the final file, for messages
        self.part, self.meta = part_names(file_name)

    def open(self, wanted: Sidecar, listed: ListedFile | None) -> StagedPart:
        """Open (or create) the partial file, locked, and decide whether it can be resumed.

        An existing partial file must be a regular file of this user's, with no other link
        and writable by nobody else (:class:`UnsafeLocalFile` otherwise); a new one is made
        with ``O_EXCL | O_NOFOLLOW`` and mode 0600, and gets its final mode only once
        verified (:func:`peerd.install.install`).
        """
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.part, flags, dir_fd=self.dir_fd)
        except FileNotFoundError:
            fd = self._create()
        except OSError:  # not a regular file we can open (a symlink, say): start afresh
            self.discard()
            fd = self._create()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise DownloadError(f"{self.part} in {self.path.parent} is not a regular file")
            check_private(st, f"the partial file {self.path.parent / self.part}")
            if st.st_nlink != 1:
                raise UnsafeLocalFile(
                    f"the partial file {self.path.parent / self.part} has other links;"
                    " remove it to download afresh"
                )
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DownloadError(f"{self.path} is already being downloaded") from exc
            raise
        except BaseException:
            os.close(fd)
            raise
        sidecar = self.read_sidecar()
        if (
            sidecar is not None
            and sidecar.resumable_as(wanted)
            and (listed is None or sidecar.size == listed.size)
            and st.st_size <= sidecar.size
        ):
            return StagedPart(fd, st.st_size, sidecar.size)
        try:
            os.ftruncate(fd, 0)
            unlink_quietly(self.dir_fd, self.meta)
        except BaseException:
            os.close(fd)
            raise
        return StagedPart(fd, 0, None)

    def _create(self) -> int:
        """A new, empty partial file: ours alone (0600), never through a link."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(self.part, flags, PART_MODE, dir_fd=self.dir_fd)

    def read_sidecar(self) -> Sidecar | None:
        """The sidecar, if there is a readable one of this user's that nobody else may write."""
        opened = open_regular(self.dir_fd, self.meta)
        if opened is None:
            return None
        fd, st = opened
        try:
            if st.st_size > _META_MAX or not _private(st):
                return None
            return Sidecar.from_json(os.pread(fd, _META_MAX, 0))
        except OSError:
            return None
        finally:
            os.close(fd)

    def write_sidecar(self, sidecar: Sidecar) -> None:
        """Record what the partial file belongs to (once its size is known), in a new file."""
        unlink_quietly(self.dir_fd, self.meta)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.meta, flags, PART_MODE, dir_fd=self.dir_fd)
        try:
            os.write(fd, sidecar.to_json())
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Remove the partial file and its sidecar."""
        unlink_quietly(self.dir_fd, self.part)
        unlink_quietly(self.dir_fd, self.meta)


def _private(st: os.stat_result) -> bool:
    try:
        check_private(st, "")
    except UnsafeLocalFile:
        return False
    return True


def check_room(dir_fd: int, path: Path, needed: int) -> None:
    """Raise :class:`NotEnoughRoom` unless ``needed`` more bytes fit on the file system of
    ``dir_fd`` with :data:`FREE_SPACE_MARGIN` (or a twentieth of a smaller one) to spare."""
    fs = os.fstatvfs(dir_fd)
    free = fs.f_bavail * fs.f_frsize
    margin = min(FREE_SPACE_MARGIN, fs.f_blocks * fs.f_frsize // 20)
    if needed + margin > free:
        raise NotEnoughRoom(
            f"not enough free space for {path}: it needs {needed} bytes, the file system has"
            f" {free} free and {margin} are kept in reserve"
        )


def sweep_stale_parts(root: Path, now: float, max_age: float) -> list[str]:
    """Remove partial files (and sidecars) in the share's keyword folders untouched for
    ``max_age`` seconds before ``now``; the ``keyword/name`` of each one removed.

    A partial file locked by a download in progress is left alone, and so is every folder
    that is not this user's own (blocking).
    """
    removed: list[str] = []
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return removed
    try:
        for keyword in sorted(os.listdir(root_fd)):
            if keyword.startswith("."):
                continue
            try:
                dir_fd = open_private_subdir(root_fd, keyword, keyword)
            except UnsafeLocalFile:
                continue
            if dir_fd is None:
                continue
            try:
                removed.extend(f"{keyword}/{name}" for name in _sweep_folder(dir_fd, now - max_age))
            finally:
                os.close(dir_fd)
    finally:
        os.close(root_fd)
    return removed


def _sweep_folder(dir_fd: int, cutoff: float) -> list[str]:
    removed: list[str] = []
    names = set(os.listdir(dir_fd))
    for name in sorted(names):
        if name.startswith(".") and name.endswith(PART_SUFFIX):
            meta = name + META_SUFFIX
        elif name.startswith(".") and name.endswith(PART_SUFFIX + META_SUFFIX):
            if name.removesuffix(META_SUFFIX) in names:
                continue  # goes with its partial file
            meta = None
        else:
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_mtime >= cutoff:
            continue
        if meta is not None and _locked(dir_fd, name):
            continue  # a download in progress (another process's)
        for victim in (name, meta):
            if victim is not None and (victim == name or victim in names):
                with contextlib.suppress(OSError):
                    os.unlink(victim, dir_fd=dir_fd)
                    removed.append(victim)
    return removed


def _locked(dir_fd: int, name: str) -> bool:
    """True when a download holds the partial file's lock (or it cannot be opened)."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases the lock
    return False


def hash_prefix(sha256: Hasher, fd: int, length: int) -> None:
    """Feed the first ``length`` bytes of the partial file to ``sha256`` and cut it there."""
    pos = 0
    while pos < length:
        block = os.pread(fd, min(_HASH_BLOCK, length - pos), pos)
        if not block:
            raise OSError(errno.EIO, "partial file shorter than expected")
        sha256.update(block)
        pos += len(block)
    os.ftruncate(fd, length)


def write_hashed(fd: int, data: bytes | memoryview, pos: int, sha256: Hasher) -> None:
    """Write ``data`` at ``pos`` in the partial file and feed it to ``sha256``."""
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


__all__ = [
    "DEFAULT_PARTIAL_MAX_AGE",
    "FOLDER_MODE",
    "FREE_SPACE_MARGIN",
    "META_SUFFIX",
    "PART_MODE",
    "PART_SUFFIX",
    "Hasher",
    "KeywordFolder",
    "Sidecar",
    "StagedPart",
    "Staging",
    "check_room",
    "hash_prefix",
    "open_keyword_folder",
    "open_share_root",
    "part_names",
    "remove_empty_folder",
    "sweep_stale_parts",
    "unlink_quietly",
    "write_hashed",
]
