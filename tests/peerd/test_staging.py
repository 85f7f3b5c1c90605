"""Partial-file staging (peerd/staging.py): temp names, the sidecar, when a partial file is
resumed (only from the peer that served it), the lock that keeps two downloads of one file
apart, whose partial files are trusted, the sweep of stale ones, and the room check."""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netproto.operations import ListedFile
from peerd.errors import DownloadError, NotEnoughRoom, UnsafeLocalFile
from peerd.staging import (
    PART_MODE,
    Sidecar,
    Staging,
    check_room,
    hash_prefix,
    open_keyword_folder,
    open_share_root,
    part_names,
    sweep_stale_parts,
    write_hashed,
)

WANTED = Sidecar("peer1", "koala", "joey.txt", 0)
DIGEST = hashlib.sha256(b"a baby koala\n").digest()


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    path = tmp_path / "koala"
    path.mkdir()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    yield path, fd
    os.close(fd)


def staged(folder: tuple[Path, int], content: bytes, sidecar: Sidecar | None) -> Staging:
    """A partial file holding ``content``, with ``sidecar`` beside it."""
    path, fd = folder
    staging = Staging(fd, "joey.txt", path / "joey.txt")
    (path / staging.part).write_bytes(content)
    if sidecar is not None:
        staging.write_sidecar(sidecar)
    return staging


def test_temp_names_are_hidden_and_fit_a_file_name() -> None:
    part, meta = part_names("file.bin")
    assert part.startswith(".") and meta.startswith(part)
    long_part, long_meta = part_names("x" * 255)
    assert long_part.startswith(".") and len(long_meta) <= 255


def test_a_sidecar_reads_back_as_written() -> None:
    sidecar = Sidecar("peer1", "koala", "joey.txt", 13, DIGEST)
    assert Sidecar.from_json(sidecar.to_json()) == sidecar


@pytest.mark.parametrize(
    "data",
    [b"{not json", b"[]", b'{"peer": 1}', b'{"peer":"p","keyword":"k","file_name":"f","size":"1"}'],
)
def test_a_damaged_sidecar_is_none(data: bytes) -> None:
    assert Sidecar.from_json(data) is None


def test_a_partial_from_the_same_peer_is_resumed_from_its_end(
    folder: tuple[Path, int],
) -> None:
    staging = staged(folder, b"a baby", Sidecar("peer1", "koala", "joey.txt", 13))
    part = staging.open(WANTED, None)
    try:
        assert (part.offset, part.recorded_size) == (6, 13)
    finally:
        part.close()


def test_a_partial_from_another_peer_starts_afresh_without_a_common_digest(
    folder: tuple[Path, int],
) -> None:
    path, _ = folder
    staging = staged(folder, b"a baby", Sidecar("peer3", "koala", "joey.txt", 13, DIGEST))
    part = staging.open(WANTED, None)
    try:
        assert (part.offset, part.recorded_size) == (0, None)
        assert (path / staging.part).stat().st_size == 0
        assert not (path / staging.meta).exists()
    finally:
        part.close()


def test_a_partial_from_another_peer_starts_afresh_even_with_the_listed_digest(
    folder: tuple[Path, int],
) -> None:
    staging = staged(folder, b"a baby", Sidecar("peer3", "koala", "joey.txt", 13, DIGEST))
    wanted = Sidecar("peer1", "koala", "joey.txt", 0, DIGEST)
    part = staging.open(wanted, ListedFile("joey.txt", 13, DIGEST))
    try:
        assert part.offset == 0  # only peer3, which served the prefix, may continue it
    finally:
        part.close()


def test_a_partial_of_the_same_peer_and_listed_digest_is_resumed(
    folder: tuple[Path, int],
) -> None:
    staging = staged(folder, b"a baby", Sidecar("peer1", "koala", "joey.txt", 13, DIGEST))
    wanted = Sidecar("peer1", "koala", "joey.txt", 0, DIGEST)
    part = staging.open(wanted, ListedFile("joey.txt", 13, DIGEST))
    try:
        assert part.offset == 6
    finally:
        part.close()


def test_a_new_partial_file_and_its_sidecar_are_the_users_alone(
    folder: tuple[Path, int],
) -> None:
    path, fd = folder
    staging = Staging(fd, "joey.txt", path / "joey.txt")
    part = staging.open(WANTED, None)
    try:
        staging.write_sidecar(WANTED)
        assert stat.S_IMODE((path / staging.part).stat().st_mode) == PART_MODE == 0o600
        assert stat.S_IMODE((path / staging.meta).stat().st_mode) == 0o600
    finally:
        part.close()


def test_a_symlink_in_place_of_the_partial_file_is_replaced_never_followed(
    folder: tuple[Path, int], tmp_path: Path
) -> None:
    path, fd = folder
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    staging = Staging(fd, "joey.txt", path / "joey.txt")
    (path / staging.part).symlink_to(victim)
    (path / staging.meta).symlink_to(victim)
    part = staging.open(WANTED, None)
    try:
        os.write(part.fd, b"downloaded")
        staging.write_sidecar(WANTED)
    finally:
        part.close()
    assert victim.read_bytes() == b"precious\n"
    assert not (path / staging.part).is_symlink() and not (path / staging.meta).is_symlink()


@pytest.mark.parametrize("mode", [0o664, 0o666, 0o646])
def test_a_partial_file_others_may_write_is_refused(folder: tuple[Path, int], mode: int) -> None:
    path, _ = folder
    staging = staged(folder, b"a baby", Sidecar("peer1", "koala", "joey.txt", 13))
    (path / staging.part).chmod(mode)
    with pytest.raises(UnsafeLocalFile, match=f"mode {mode:04o}"):
        staging.open(WANTED, None)
    assert (path / staging.part).read_bytes() == b"a baby"  # left for the user to look at


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_partial_file_of_another_user_is_refused(folder: tuple[Path, int]) -> None:
    path, _ = folder
    staging = staged(folder, b"a baby", Sidecar("peer1", "koala", "joey.txt", 13))
    os.chown(path / staging.part, 65534, 65534)
    with pytest.raises(UnsafeLocalFile, match="belongs to uid 65534"):
        staging.open(WANTED, None)


def test_a_partial_file_with_another_link_is_refused(
    folder: tuple[Path, int], tmp_path: Path
) -> None:
    path, _ = folder
    staging = staged(folder, b"a baby", Sidecar("peer1", "koala", "joey.txt", 13))
    os.link(path / staging.part, tmp_path / "their-view")
    with pytest.raises(UnsafeLocalFile, match="other links"):
        staging.open(WANTED, None)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_sidecar_of_another_user_is_not_trusted(folder: tuple[Path, int]) -> None:
    path, _ = folder
    staging = staged(folder, b"a baby", Sidecar("peer1", "koala", "joey.txt", 13))
    os.chown(path / staging.meta, 65534, 65534)
    part = staging.open(WANTED, None)
    try:
        assert part.offset == 0
    finally:
        part.close()


def _age(path: Path, days: float) -> None:
    then = time.time() - days * 86400
    os.utime(path, (then, then), follow_symlinks=False)


def test_stale_partial_files_are_swept_and_fresh_or_locked_ones_kept(tmp_path: Path) -> None:
    koala = tmp_path / "koala"
    koala.mkdir()
    old_part, old_meta = part_names("old.bin")
    new_part, _ = part_names("new.bin")
    busy_part, _ = part_names("busy.bin")
    orphan_meta = part_names("gone.bin")[1]
    for name in (old_part, old_meta, new_part, busy_part, orphan_meta, "old.bin"):
        (koala / name).write_bytes(b"x")
    for name in (old_part, busy_part, orphan_meta, "old.bin"):
        _age(koala / name, 4)
    _age(koala / old_meta, 0)  # goes with its partial file whatever its own age
    with (koala / busy_part).open("rb") as busy:
        fcntl.flock(busy, fcntl.LOCK_EX)
        removed = sweep_stale_parts(tmp_path, time.time(), 3 * 86400)
    assert sorted(removed) == sorted(f"koala/{n}" for n in (old_part, old_meta, orphan_meta))
    assert sorted(p.name for p in koala.iterdir()) == sorted([new_part, busy_part, "old.bin"])


def test_there_is_room_for_a_small_file_and_none_for_a_huge_one(folder: tuple[Path, int]) -> None:
    path, fd = folder
    check_room(fd, path / "small", 1)
    with pytest.raises(NotEnoughRoom, match="not enough free space"):
        check_room(fd, path / "huge", 1 << 60)


def test_a_partial_longer_than_its_recorded_size_starts_afresh(
    folder: tuple[Path, int],
) -> None:
    staging = staged(folder, b"x" * 20, Sidecar("peer1", "koala", "joey.txt", 13))
    part = staging.open(WANTED, None)
    try:
        assert part.offset == 0
    finally:
        part.close()


def test_a_partial_being_downloaded_is_locked(folder: tuple[Path, int]) -> None:
    staging = staged(folder, b"", None)
    first = staging.open(WANTED, None)
    try:
        with pytest.raises(DownloadError, match="already being downloaded"):
            staging.open(WANTED, None)
    finally:
        first.close()
    staging.open(WANTED, None).close()  # free again once the first is closed


def test_discard_removes_the_partial_and_its_sidecar(folder: tuple[Path, int]) -> None:
    path, _ = folder
    staging = staged(folder, b"a baby", WANTED)
    staging.discard()
    staging.discard()  # and again: nothing there is fine
    assert list(path.iterdir()) == []


def test_written_bytes_are_hashed_and_a_resumed_prefix_rehashed(
    folder: tuple[Path, int],
) -> None:
    staging = staged(folder, b"", None)
    part = staging.open(WANTED, None)
    try:
        written = hashlib.sha256()
        write_hashed(part.fd, b"a baby ", 0, written)
        write_hashed(part.fd, memoryview(b"koala\n"), 7, written)
        os.ftruncate(part.fd, 20)  # junk past what is kept
        again = hashlib.sha256()
        hash_prefix(again, part.fd, 13)
        assert written.digest() == again.digest() == DIGEST
        assert os.fstat(part.fd).st_size == 13
    finally:
        part.close()


def test_a_keyword_folder_in_another_case_is_reused(tmp_path: Path) -> None:
    (tmp_path / "Koala").mkdir()
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        folder = open_keyword_folder(root_fd, tmp_path, "koala")
        os.close(folder.fd)
    finally:
        os.close(root_fd)
    assert (folder.name, folder.created) == ("Koala", False)


@pytest.mark.parametrize("mode", [0o775, 0o777, 0o757])
def test_a_keyword_folder_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    (tmp_path / "koala").mkdir()
    (tmp_path / "koala").chmod(mode)
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(UnsafeLocalFile, match=f"may be written by other users.*{mode:04o}"):
            open_keyword_folder(root_fd, tmp_path, "koala")
    finally:
        os.close(root_fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder away needs root")
def test_a_keyword_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    (tmp_path / "koala").mkdir()
    os.chown(tmp_path / "koala", 65534, 65534)
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(UnsafeLocalFile, match="belongs to uid 65534"):
            open_keyword_folder(root_fd, tmp_path, "koala")
    finally:
        os.close(root_fd)


# --- the share folder, keyword folders, odd partial files, the sweep's skips ----------------


def test_the_share_folder_is_made_if_missing(tmp_path: Path) -> None:
    fd = open_share_root(tmp_path / "new" / "share")
    os.close(fd)
    assert (tmp_path / "new" / "share").is_dir()


def test_a_share_folder_that_cannot_be_made_is_a_download_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"not a folder")
    with pytest.raises(DownloadError, match=r"cannot use .* for downloads"):
        open_share_root(tmp_path / "file" / "share")


def test_a_share_folder_others_may_write_is_refused(tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    (tmp_path / "share").chmod(0o777)
    with pytest.raises(UnsafeLocalFile, match="may be written by other users"):
        open_share_root(tmp_path / "share")


def test_a_new_keyword_folder_is_made_and_marked_created(tmp_path: Path) -> None:
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        folder = open_keyword_folder(root_fd, tmp_path, "koala")
        os.close(folder.fd)
    finally:
        os.close(root_fd)
    assert (folder.name, folder.created) == ("koala", True)
    assert (tmp_path / "koala").is_dir()


def test_a_keyword_folder_made_meanwhile_by_another_download_is_used_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_mkdir = os.mkdir

    def racing_mkdir(name: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(name, mode, dir_fd=dir_fd)  # the other download wins the race
        raise FileExistsError(name)

    monkeypatch.setattr(os, "mkdir", racing_mkdir)
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        folder = open_keyword_folder(root_fd, tmp_path, "koala")
        os.close(folder.fd)
    finally:
        os.close(root_fd)
    assert (folder.name, folder.created) == ("koala", False)


def test_a_keyword_folder_that_cannot_be_made_is_a_download_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_room(name: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "mkdir", no_room)
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(DownloadError, match=r"cannot make the folder .*No space left"):
            open_keyword_folder(root_fd, tmp_path, "koala")
    finally:
        os.close(root_fd)


def test_a_sidecar_with_a_digest_that_is_not_hex_is_none() -> None:
    doc = b'{"peer":"p","keyword":"k","file_name":"f","size":1,"sha256":"not hex"}'
    assert Sidecar.from_json(doc) is None


def test_a_fifo_in_place_of_the_partial_file_is_refused(folder: tuple[Path, int]) -> None:
    path, fd = folder
    staging = Staging(fd, "joey.txt", path / "joey.txt")
    os.mkfifo(path / staging.part, 0o600)
    with pytest.raises(DownloadError, match="is not a regular file"):
        staging.open(WANTED, None)


def test_the_sweep_of_a_missing_share_removes_nothing(tmp_path: Path) -> None:
    assert sweep_stale_parts(tmp_path / "absent", time.time(), 0) == []


def test_the_sweep_skips_hidden_folders_and_folders_others_may_write(tmp_path: Path) -> None:
    part = part_names("old.bin")[0]
    for folder in (".hidden", "shared"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / part).write_bytes(b"x")
        _age(tmp_path / folder / part, 4)
    (tmp_path / "shared").chmod(0o777)
    assert sweep_stale_parts(tmp_path, time.time(), 3 * 86400) == []
    assert (tmp_path / ".hidden" / part).exists() and (tmp_path / "shared" / part).exists()


def test_a_partial_file_shorter_than_its_recorded_prefix_is_an_io_error(
    folder: tuple[Path, int],
) -> None:
    staging = staged(folder, b"a baby", None)
    part = staging.open(WANTED, None)
    try:
        with pytest.raises(OSError, match="shorter than expected"):
            hash_prefix(hashlib.sha256(), part.fd, 13)
    finally:
        part.close()
