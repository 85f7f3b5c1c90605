"""The install step: a verified partial file becomes the shared file, durably.

Give the file its final mode (:data:`FINAL_MODE`: it was 0600 while unverified), ``fsync``
the bytes, move the file into place — with ``link`` (which never replaces a name)
unless overwriting was asked for, so a file that appeared meanwhile is never overwritten
silently — drop the sidecar, and ``fsync`` the folder so the new name survives a crash.
Also here: what is already under the final name. Every function blocks; the caller runs them
in a worker thread (:class:`peerd.threadjob.DiskWork`).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from peerd.errors import DownloadError, FileConflict
from peerd.share import hash_fd, open_regular
from peerd.staging import Staging, unlink_quietly


def _umask() -> int:
    """The process's umask: read from ``/proc`` where there is one (setting it to read it
    would change it for every thread for a moment)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The mode a verified download gets as it moves into place: what a new file would get
#: (0644 under the usual umask), never more.
FINAL_MODE = 0o644 & ~_umask()


def conflict(path: Path) -> FileConflict:
    """The error for a different file already under the final name."""
    return FileConflict(path, f"{path} exists with different content (overwrite to replace it)")


def existing_size(dir_fd: int, file_name: str, path: Path) -> int | None:
    """The size of the file already under the name, None if there is none.

    Anything but a regular file there (a symlink, a folder) is a :class:`FileConflict`.
    """
    try:
        st = os.stat(file_name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise FileConflict(path, f"{path} exists and is not a regular file")
    return st.st_size


def hash_existing(dir_fd: int, file_name: str) -> tuple[int, bytes] | None:
    """Size and SHA-256 of the regular file under the name, None if there is none."""
    opened = open_regular(dir_fd, file_name)
    if opened is None:
        return None
    fd, st = opened
    try:
        return st.st_size, hash_fd(fd)
    finally:
        os.close(fd)


def install(staging: Staging, fd: int, file_name: str, digest: bytes, *, overwrite: bool) -> bool:
    """Make the verified partial file (open as ``fd``) the file ``file_name``; True if an
    identical file was already there (the partial file is then dropped).

    Any failure removes the partial file and raises :class:`DownloadError` (or
    :class:`FileConflict` for a different file that appeared meanwhile).
    """
    path, d = staging.path, staging.dir_fd
    try:
        os.fchmod(fd, FINAL_MODE)  # 0600 while unverified; the final mode as it moves in
        os.fsync(fd)
    except OSError as exc:
        staging.discard()
        raise DownloadError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        present = _move_into_place(staging, file_name, digest, overwrite=overwrite)
        unlink_quietly(d, staging.meta)
        os.fsync(d)
    except OSError as exc:
        staging.discard()
        raise DownloadError(f"cannot move the download into {path}: {exc}") from exc
    return present


def _move_into_place(staging: Staging, file_name: str, digest: bytes, *, overwrite: bool) -> bool:
    d, part = staging.dir_fd, staging.part
    if overwrite:
        os.replace(part, file_name, src_dir_fd=d, dst_dir_fd=d)
        return False
    try:
        # link() never replaces an existing name: no window for a silent overwrite.
        os.link(part, file_name, src_dir_fd=d, dst_dir_fd=d)
    except FileExistsError as exc:
        existing = hash_existing(d, file_name)
        staging.discard()
        if existing is not None and existing[1] == digest:
            return True
        raise conflict(staging.path) from exc
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
            raise
        # A file system without hard links: rename, after checking nothing is there.
        if existing_size(d, file_name, staging.path) is not None:
            staging.discard()
            raise FileConflict(staging.path, f"{staging.path} appeared meanwhile") from exc
        os.rename(part, file_name, src_dir_fd=d, dst_dir_fd=d)
    else:
        unlink_quietly(d, part)
    return False


__all__ = ["FINAL_MODE", "conflict", "existing_size", "hash_existing", "install"]
