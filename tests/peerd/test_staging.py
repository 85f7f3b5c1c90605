"""Partial-file staging (peerd/staging.py): temp names, the sidecar, when a partial file is
resumed, and the lock that keeps two downloads of one file apart."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from netproto.operations import ListedFile
from peerd.errors import DownloadError
from peerd.staging import (
    Sidecar,
    Staging,
    hash_prefix,
    open_keyword_folder,
    part_names,
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


def test_a_partial_of_the_listed_digest_is_resumed_whichever_peer_it_came_from(
    folder: tuple[Path, int],
) -> None:
    staging = staged(folder, b"a baby", Sidecar("peer3", "koala", "joey.txt", 13, DIGEST))
    wanted = Sidecar("peer1", "koala", "joey.txt", 0, DIGEST)
    part = staging.open(wanted, ListedFile("joey.txt", 13, DIGEST))
    try:
        assert part.offset == 6
    finally:
        part.close()


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
