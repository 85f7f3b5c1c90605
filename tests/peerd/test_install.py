"""The install step (peerd/install.py): a verified partial file becomes the file, never over a
different one unless asked, and never leaves the partial file behind."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import peerd.install
from peerd.errors import DownloadError, FileConflict
from peerd.install import FINAL_MODE, existing_size, hash_existing, install
from peerd.staging import Staging

CONTENT = b"a baby koala\n"
DIGEST = hashlib.sha256(CONTENT).digest()


@pytest.fixture
def staging(tmp_path: Path) -> Iterator[tuple[Staging, int]]:
    """A verified partial file of CONTENT (open as the second item) and its sidecar."""
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    staging = Staging(dir_fd, "joey.txt", tmp_path / "joey.txt")
    (tmp_path / staging.part).write_bytes(CONTENT)
    (tmp_path / staging.meta).write_bytes(b"{}")
    fd = os.open(tmp_path / staging.part, os.O_RDWR)
    yield staging, fd
    os.close(fd)
    os.close(dir_fd)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_the_partial_file_becomes_the_file_and_nothing_else_is_left(
    staging: tuple[Staging, int], tmp_path: Path
) -> None:
    assert install(staging[0], staging[1], "joey.txt", DIGEST, overwrite=False) is False
    assert (tmp_path / "joey.txt").read_bytes() == CONTENT
    assert names(tmp_path) == ["joey.txt"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_the_file_gets_its_final_mode_as_it_moves_in(
    staging: tuple[Staging, int], tmp_path: Path, overwrite: bool
) -> None:
    os.fchmod(staging[1], 0o600)  # as staging made it
    install(staging[0], staging[1], "joey.txt", DIGEST, overwrite=overwrite)
    assert stat.S_IMODE((tmp_path / "joey.txt").stat().st_mode) == FINAL_MODE
    assert 0o644 & ~_process_umask() == FINAL_MODE


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_identical_file_already_there_is_success_and_the_partial_is_dropped(
    staging: tuple[Staging, int], tmp_path: Path
) -> None:
    (tmp_path / "joey.txt").write_bytes(CONTENT)
    assert install(staging[0], staging[1], "joey.txt", DIGEST, overwrite=False) is True
    assert names(tmp_path) == ["joey.txt"]


def test_a_different_file_that_appeared_meanwhile_is_a_conflict_and_kept(
    staging: tuple[Staging, int], tmp_path: Path
) -> None:
    (tmp_path / "joey.txt").write_bytes(b"mine")
    with pytest.raises(FileConflict):
        install(staging[0], staging[1], "joey.txt", DIGEST, overwrite=False)
    assert (tmp_path / "joey.txt").read_bytes() == b"mine"
    assert names(tmp_path) == ["joey.txt"]


def test_overwrite_replaces_a_different_file(staging: tuple[Staging, int], tmp_path: Path) -> None:
    (tmp_path / "joey.txt").write_bytes(b"mine")
    install(staging[0], staging[1], "joey.txt", DIGEST, overwrite=True)
    assert (tmp_path / "joey.txt").read_bytes() == CONTENT
    assert names(tmp_path) == ["joey.txt"]


def test_a_failed_fsync_is_a_download_error_and_removes_the_partial(
    staging: tuple[Staging, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DownloadError, match="No space left on device"):
        install(staging[0], staging[1], "joey.txt", DIGEST, overwrite=False)
    assert names(tmp_path) == []


def test_a_symlink_under_the_name_is_a_conflict(tmp_path: Path) -> None:
    os.symlink("/etc/passwd", tmp_path / "joey.txt")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileConflict, match="not a regular file"):
            existing_size(dir_fd, "joey.txt", tmp_path / "joey.txt")
        assert existing_size(dir_fd, "absent.txt", tmp_path / "absent.txt") is None
    finally:
        os.close(dir_fd)


# --- file systems without hard links; failures moving into place --------------------------


def _link_fails(code: int) -> Callable[..., None]:
    def link(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    return link


@pytest.mark.parametrize("code", [errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EXDEV])
def test_without_hard_links_the_partial_file_is_renamed_into_place(
    staging: tuple[Staging, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    monkeypatch.setattr(os, "link", _link_fails(code))
    assert install(staging[0], staging[1], "joey.txt", DIGEST, overwrite=False) is False
    assert (tmp_path / "joey.txt").read_bytes() == CONTENT
    assert names(tmp_path) == ["joey.txt"]


def test_without_hard_links_a_file_that_appeared_meanwhile_is_a_conflict_and_kept(
    staging: tuple[Staging, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "link", _link_fails(errno.EPERM))
    (tmp_path / "joey.txt").write_bytes(b"mine")
    with pytest.raises(FileConflict, match="appeared meanwhile"):
        install(staging[0], staging[1], "joey.txt", DIGEST, overwrite=False)
    assert (tmp_path / "joey.txt").read_bytes() == b"mine"
    assert names(tmp_path) == ["joey.txt"]


def test_a_failure_moving_into_place_is_a_download_error_and_removes_the_partial(
    staging: tuple[Staging, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "link", _link_fails(errno.EIO))
    with pytest.raises(DownloadError, match="cannot move the download into"):
        install(staging[0], staging[1], "joey.txt", DIGEST, overwrite=False)
    assert names(tmp_path) == []


def test_an_existing_file_is_hashed_and_an_absent_one_is_none(tmp_path: Path) -> None:
    (tmp_path / "joey.txt").write_bytes(CONTENT)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert hash_existing(dir_fd, "joey.txt") == (len(CONTENT), DIGEST)
        assert hash_existing(dir_fd, "absent.txt") is None
    finally:
        os.close(dir_fd)


def test_the_umask_is_found_without_proc_too(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_proc(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(peerd.install, "open", no_proc, raising=False)
    assert peerd.install._umask() == _process_umask()
