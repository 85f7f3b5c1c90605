"""The shared folder ``file_directory/<keyword>/<file_name>`` (PROTOCOL.md §4.6, §4.7).

:class:`ShareStore` is what the peer server and the daemon are written against; :class:`Share`
is the folder on disk. The store raises its own errors (:class:`~peerd.errors.ShareError`:
:class:`~peerd.errors.InvalidName`, :class:`~peerd.errors.NotShared`,
:class:`~peerd.errors.ShareUnavailable`, :class:`~peerd.errors.UnsafeLocalFile`), never wire
errors; the server's handlers translate.

The share and its keyword folders must be this user's own and writable by nobody else
(:func:`check_private`): a folder another user may write could have a file swapped under this
peer's signature. An unsafe keyword folder is left out (with a warning), an unsafe share is
refused.

Only regular files inside the share are listed or served. Every path below the share root is
opened relative to a directory file descriptor with ``O_NOFOLLOW``, so a symlink (to a file or
to a keyword folder) never leads outside the share, and there is no window between checking a
path and opening it. Files are opened with ``O_NONBLOCK`` and checked with ``fstat`` so a FIFO or
a device is refused without hanging. Hidden names and temporary files are never listed.

Digests are cached by ``(size, mtime_ns, inode)`` in a hidden file in the share root, written
atomically, so restarting a peer does not re-hash a large share.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

from netproto.errors import InvalidPath
from netproto.names import check_file_name, check_keyword
from netproto.operations import MAX_FILE_SIZE, SharedFile
from peerd.errors import InvalidName, NotShared, ShareError, ShareUnavailable, UnsafeLocalFile

log = logging.getLogger(__name__)

CACHE_FILE_NAME = ".p2pshare-digests"
CACHE_VERSION = 1
#: Suffixes of files still being written (ours and common tools'); never listed or served.
TEMP_SUFFIXES = ("~", ".tmp", ".swp", ".part", ".partial", ".crdownload", ".p2pshare-part")
#: A digest is trusted from the cache only when the file's mtime is this much older than the
#: moment it was hashed; a change within the same timestamp tick could otherwise go unseen.
RACY_WINDOW_NS = 2_000_000_000
_MAX_CACHE_BYTES = 256 << 20
_HASH_BLOCK = 1 << 20
#: File bytes a server reads (and hashes) per trip to a worker thread: four chunks, so the
#: hand-off to and from the thread is paid once per MiB, not per chunk (BENCHMARKS.md).
READ_BLOCK = 1 << 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What tells a file's version apart without reading it: size, mtime and inode."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Self:
        """The identity of a stat result."""
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    identity: FileIdentity
    sha256: bytes
    hashed_at_ns: int

    def trusted_for(self, identity: FileIdentity) -> bool:
        return self.identity == identity and identity.mtime_ns + RACY_WINDOW_NS <= self.hashed_at_ns


class DigestCache:
    """SHA-256 digests keyed by ``(keyword folder, file name)`` and the file's identity."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], _CacheEntry] = {}
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()  # one writer of the temp file at a time
        self.dirty = False

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str], identity: FileIdentity) -> bytes | None:
        """The cached digest, if it was taken of exactly this version of the file."""
        with self._lock:
            entry = self._entries.get(key)
        return entry.sha256 if entry is not None and entry.trusted_for(identity) else None

    def put(self, key: tuple[str, str], identity: FileIdentity, sha256: bytes) -> None:
        """Remember the digest of this version of the file, hashed just now."""
        entry = _CacheEntry(identity, sha256, time.time_ns())
        with self._lock:
            old = self._entries.get(key)
            if old is not None and old.sha256 == sha256 and old.trusted_for(identity):
                return
            self._entries[key] = entry
            self.dirty = True

    def retain(self, keys: set[tuple[str, str]]) -> None:
        """Forget every file not in ``keys`` (those gone from the share)."""
        with self._lock:
            gone = self._entries.keys() - keys
            for key in gone:
                del self._entries[key]
            if gone:
                self.dirty = True

    def load(self, root_fd: int, name: str = CACHE_FILE_NAME) -> None:
        """Read the cache file from the share root; a missing or damaged file is an empty cache."""
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=root_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("digest cache not readable (%s); the share will be hashed again", exc)
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_CACHE_BYTES:
                log.warning("digest cache is not a regular file of sane size; ignoring it")
                return
            with os.fdopen(os.dup(fd), "rb") as f:
                document = json.loads(f.read())
        except (OSError, ValueError) as exc:
            log.warning("digest cache unreadable (%s); the share will be hashed again", exc)
            return
        finally:
            os.close(fd)
        entries = self._parse(document)
        with self._lock:
            self._entries = entries
            self.dirty = False

    @staticmethod
    def _parse(document: Any) -> dict[tuple[str, str], _CacheEntry]:
        entries: dict[tuple[str, str], _CacheEntry] = {}
        if not isinstance(document, dict) or document.get("version") != CACHE_VERSION:
            return entries
        files = document.get("files")
        if not isinstance(files, dict):
            return entries
        for key, value in files.items():
            keyword, _, file_name = key.partition("/")
            if (
                not isinstance(value, list)
                or len(value) != 5
                or not all(type(v) is int for v in value[:4])
                or not isinstance(value[4], str)
            ):
                continue
            try:
                digest = bytes.fromhex(value[4])
            except ValueError:
                continue
            if len(digest) == 32:
                size, mtime_ns, inode, hashed_at = value[:4]
                identity = FileIdentity(size, mtime_ns, inode)
                entries[keyword, file_name] = _CacheEntry(identity, digest, hashed_at)
        return entries

    def save(self, root_fd: int, name: str = CACHE_FILE_NAME) -> None:
        """Write the cache atomically (temp file, fsync, rename, fsync the folder)."""
        with self._lock:
            files = {
                f"{k}/{n}": [
                    e.identity.size,
                    e.identity.mtime_ns,
                    e.identity.inode,
                    e.hashed_at_ns,
                    e.sha256.hex(),
                ]
                for (k, n), e in self._entries.items()
            }
            self.dirty = False
        data = json.dumps({"version": CACHE_VERSION, "files": files}).encode()
        with self._save_lock:
            self._write(root_fd, name, data)

    def _write(self, root_fd: int, name: str, data: bytes) -> None:
        tmp = f"{name}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600, dir_fd=root_fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=root_fd, dst_dir_fd=root_fd)
            os.fsync(root_fd)
        except OSError as exc:
            self.dirty = True
            log.warning("could not save the digest cache: %s", exc)


@dataclass(slots=True)
class OpenFile:
    """A shared file opened for reading: its descriptor, where it is, and its identity."""

    fd: int
    keyword_dir: str
    file_name: str
    identity: FileIdentity

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def read(self, pos: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``pos`` (blocking; fewer at the end of the file)."""
        return os.pread(self.fd, length, pos)

    def current_identity(self) -> FileIdentity:
        """The identity of the file as it is now (the same inode, re-stat'ed)."""
        return FileIdentity.of(os.fstat(self.fd))


class ShareFile(Protocol):
    """A shared file opened for serving, as the peer server reads it."""

    @property
    def identity(self) -> FileIdentity:
        """The file's identity when it was opened (its size is what is served)."""
        ...

    def read(self, pos: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``pos`` (blocking)."""
        ...

    def current_identity(self) -> FileIdentity:
        """The file's identity now, to tell whether it changed while it was served."""
        ...

    def close(self) -> None:
        """Release the file (idempotent)."""
        ...


class ShareStore(Protocol):
    """What the peer server and daemon need from a share. Every method may block.

    Errors are :class:`~peerd.errors.ShareError` subclasses: :class:`InvalidName` for a
    keyword or file name that is not one safe segment, :class:`NotShared` for one that is not
    there, :class:`ShareUnavailable` when the share itself cannot be opened.
    """

    def scan(self) -> list[SharedFile]:
        """Every shared file with its size and digest (a missing share is empty)."""
        ...

    def list_files(self, keyword: str) -> list[str]:
        """The names of the files under ``keyword``, matched case-insensitively, sorted."""
        ...

    def open_file(self, keyword: str, file_name: str) -> ShareFile:
        """Open one shared file for serving."""
        ...

    def remember(self, opened: ShareFile, identity: FileIdentity, sha256: bytes) -> None:
        """Record the digest of a file computed while it was served."""
        ...

    def cached_digest(self, opened: ShareFile) -> bytes | None:
        """The digest of this very version of an opened file, if the store holds one it trusts
        (so a resumed fetch need not read the file again); never blocks."""
        ...

    def save_cache(self) -> None:
        """Persist what the store remembers (digests), if anything changed."""
        ...


def _valid_name(check: Callable[[object], str], name: str) -> str:
    """``check(name)`` with the wire's :class:`InvalidPath` turned into the store's error."""
    try:
        return check(name)
    except InvalidPath as exc:
        raise InvalidName(exc.message) from exc


def listable_name(name: str) -> bool:
    """True for a file name the share may list: a safe segment, not hidden, not a temp file."""
    if name.startswith(".") or name.endswith(TEMP_SUFFIXES):
        return False
    try:
        check_file_name(name)
    except InvalidPath:
        return False
    return True


def _valid_keyword(name: str) -> bool:
    try:
        check_keyword(name)
    except InvalidPath:
        return False
    return True


def open_subdir(dir_fd: int, name: str) -> int | None:
    """Open ``name`` below ``dir_fd`` as a real directory (never through a symlink)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None


#: Permission bits that let someone else change a folder or file: group and other write.
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def check_private(st: os.stat_result, what: str) -> None:
    """Raise :class:`UnsafeLocalFile` unless ``st`` is this user's own and nobody else may
    write it (``what`` names it in the message: "the share folder peer1-files", ...)."""
    uid = os.geteuid()
    if st.st_uid != uid:
        raise UnsafeLocalFile(
            f"{what} belongs to uid {st.st_uid}, not to this user (uid {uid}); peerd uses only"
            " folders and files that are its user's own"
        )
    if st.st_mode & _WRITABLE_BY_OTHERS:
        mode = stat.S_IMODE(st.st_mode)
        raise UnsafeLocalFile(
            f"{what} may be written by other users (mode {mode:04o}); make it yours alone"
            " with chmod go-w"
        )


def open_private_subdir(dir_fd: int, name: str, what: str) -> int | None:
    """:func:`open_subdir`, then :func:`check_private` on the folder (closed if it fails)."""
    fd = open_subdir(dir_fd, name)
    if fd is None:
        return None
    try:
        check_private(os.fstat(fd), what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(dir_fd: int, name: str) -> tuple[int, os.stat_result] | None:
    """Open ``name`` below ``dir_fd`` for reading if it is a regular file, else None.

    ``lstat`` first, so a device node or FIFO is never even opened; then open with
    ``O_NOFOLLOW | O_NONBLOCK`` and check the descriptor again, in case the name was swapped
    between the two calls.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


def hash_fd(fd: int, length: int | None = None) -> bytes:
    """SHA-256 of the first ``length`` bytes (or all) of ``fd``, read from offset 0."""
    h = hashlib.sha256()
    pos = 0
    while length is None or pos < length:
        want = _HASH_BLOCK if length is None else min(_HASH_BLOCK, length - pos)
        block = os.pread(fd, want, pos)
        if not block:
            break
        h.update(block)
        pos += len(block)
    return h.digest()


class Share:
    """The folder a peer shares: scans it, lists a keyword, opens a file to serve."""

    def __init__(self, root: Path, *, cache_file: str | None = CACHE_FILE_NAME) -> None:
        self.root = Path(root)
        self.cache = DigestCache()
        self._cache_file = cache_file
        #: Files hashed in full since this object was made (the digest cache avoids most).
        self.hash_count = 0
        self._loaded = False

    @contextlib.contextmanager
    def _root_fd(self) -> Iterator[int]:
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ShareUnavailable(f"the share folder is not available: {exc.strerror}") from exc
        try:
            check_private(os.fstat(fd), f"the share folder {self.root}")
            yield fd
        finally:
            os.close(fd)

    def check(self) -> None:
        """Raise :class:`UnsafeLocalFile` unless the share and every keyword folder in it are
        this user's own and nobody else may write them; :class:`ShareUnavailable` if the share
        cannot be opened (blocking)."""
        with self._root_fd() as root_fd:
            for name in sorted(os.listdir(root_fd)):
                if name.startswith(".") or not _valid_keyword(name):
                    continue
                fd = open_private_subdir(root_fd, name, self._folder_name(name))
                if fd is not None:
                    os.close(fd)

    def _folder_name(self, keyword: str) -> str:
        return f"the share folder {self.root / keyword}"

    def _keyword_fd(self, root_fd: int, keyword: str) -> int | None:
        """A keyword folder opened for reading; None (and a warning) if it is not safe."""
        try:
            return open_private_subdir(root_fd, keyword, self._folder_name(keyword))
        except UnsafeLocalFile as exc:
            log.warning("%s; not shared", exc)
            return None

    def _ensure_loaded(self, root_fd: int) -> None:
        if not self._loaded:
            self._loaded = True
            if self._cache_file is not None:
                self.cache.load(root_fd, self._cache_file)

    def save_cache(self) -> None:
        """Write the digest cache if it changed since the last save."""
        if self._cache_file is None or not self.cache.dirty:
            return
        with contextlib.suppress(ShareUnavailable), self._root_fd() as root_fd:
            self.cache.save(root_fd, self._cache_file)

    def scan(self) -> list[SharedFile]:
        """Every shared file with its size and digest (blocking: run it in a thread).

        Files changed while being hashed are left out of this scan; they are picked up by
        the next one.
        """
        try:
            with self._root_fd() as root_fd:
                return self._scan(root_fd)
        except ShareUnavailable:
            log.warning("share folder %s is missing", self.root)
            return []

    def _scan(self, root_fd: int) -> list[SharedFile]:
        files: list[SharedFile] = []
        seen: set[tuple[str, str]] = set()
        self._ensure_loaded(root_fd)
        for keyword in sorted(os.listdir(root_fd)):
            if keyword.startswith(".") or not _valid_keyword(keyword):
                continue
            dir_fd = self._keyword_fd(root_fd, keyword)
            if dir_fd is None:
                continue
            try:
                for name in sorted(os.listdir(dir_fd)):
                    if not listable_name(name):
                        continue
                    entry = self._hashed(dir_fd, keyword, name)
                    if entry is not None:
                        files.append(entry)
                        seen.add((keyword, name))
            finally:
                os.close(dir_fd)
        self.cache.retain(seen)
        if self._cache_file is not None and self.cache.dirty:
            self.cache.save(root_fd, self._cache_file)
        return files

    def _hashed(self, dir_fd: int, keyword: str, name: str) -> SharedFile | None:
        opened = open_regular(dir_fd, name)
        if opened is None:
            return None
        fd, st = opened
        try:
            identity = FileIdentity.of(st)
            if identity.size > MAX_FILE_SIZE:
                return None
            digest = self.cache.get((keyword, name), identity)
            if digest is None:
                digest = hash_fd(fd)
                self.hash_count += 1
                if FileIdentity.of(os.fstat(fd)) != identity:
                    log.info("%s/%s changed while being hashed; skipped this time", keyword, name)
                    return None
                self.cache.put((keyword, name), identity, digest)
            return SharedFile(name, keyword, identity.size, digest)
        finally:
            os.close(fd)

    def keyword_dirs(self, root_fd: int, keyword: str) -> list[str]:
        """Folders answering ``keyword`` case-insensitively, the exact spelling first."""
        wanted = keyword.casefold()
        names = [
            n
            for n in os.listdir(root_fd)
            if not n.startswith(".") and n.casefold() == wanted and _valid_keyword(n)
        ]
        names.sort(key=lambda n: (n != keyword, n))
        return names

    def list_files(self, keyword: str) -> list[str]:
        """Names of the regular files under ``keyword`` (blocking; NotShared if no folder)."""
        _valid_name(check_keyword, keyword)
        names: set[str] = set()
        found = False
        with self._root_fd() as root_fd:
            for folder in self.keyword_dirs(root_fd, keyword):
                dir_fd = self._keyword_fd(root_fd, folder)
                if dir_fd is None:
                    continue
                found = True
                try:
                    for name in os.listdir(dir_fd):
                        if name in names or not listable_name(name):
                            continue
                        with contextlib.suppress(OSError):
                            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                            if stat.S_ISREG(st.st_mode):
                                names.add(name)
                finally:
                    os.close(dir_fd)
        if not found:
            raise NotShared(f"no keyword {keyword!r} here")
        return sorted(names)

    def open_file(self, keyword: str, file_name: str) -> OpenFile:
        """Open a shared file for serving, or raise InvalidName / NotShared (blocking)."""
        _valid_name(check_keyword, keyword)
        _valid_name(check_file_name, file_name)
        if not listable_name(file_name):
            raise NotShared("no such file")
        with self._root_fd() as root_fd:
            for folder in self.keyword_dirs(root_fd, keyword):
                dir_fd = self._keyword_fd(root_fd, folder)
                if dir_fd is None:
                    continue
                try:
                    opened = open_regular(dir_fd, file_name)
                finally:
                    os.close(dir_fd)
                if opened is not None:
                    fd, st = opened
                    return OpenFile(fd, folder, file_name, FileIdentity.of(st))
        raise NotShared("no such file")

    def remember(self, opened: ShareFile, identity: FileIdentity, sha256: bytes) -> None:
        """Record a digest computed while serving (the cache is saved with the next scan)."""
        if isinstance(opened, OpenFile):
            self.cache.put((opened.keyword_dir, opened.file_name), identity, sha256)

    def cached_digest(self, opened: ShareFile) -> bytes | None:
        """The cached digest of exactly this version (size, mtime, inode) of the file."""
        if not isinstance(opened, OpenFile):
            return None
        return self.cache.get((opened.keyword_dir, opened.file_name), opened.identity)


__all__ = [
    "CACHE_FILE_NAME",
    "RACY_WINDOW_NS",
    "DigestCache",
    "FileIdentity",
    "InvalidName",
    "NotShared",
    "OpenFile",
    "Share",
    "ShareError",
    "ShareFile",
    "ShareStore",
    "ShareUnavailable",
    "UnsafeLocalFile",
    "check_private",
    "hash_fd",
    "listable_name",
    "open_private_subdir",
    "open_regular",
    "open_subdir",
]
