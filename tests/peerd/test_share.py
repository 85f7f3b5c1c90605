"""The share (peerd/share.py): what is listed, what is refused, and the digest cache."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from netproto.errors import P2PError, RequestError
from peerd.errors import InvalidName, NotShared, ShareError, ShareUnavailable, UnsafeLocalFile
from peerd.share import CACHE_FILE_NAME, RACY_WINDOW_NS, Share


def write(root: Path, rel: str, content: bytes, *, age: float = 10.0) -> Path:
    """Write a file whose mtime is ``age`` seconds in the past (older than the racy window)."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    past = time.time() - age
    os.utime(path, (past, past))
    return path


def digest(content: bytes) -> bytes:
    return hashlib.sha256(content).digest()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    write(root, "koala/eucalyptus.txt", b"leaves")
    write(root, "koala/sleep.txt", b"20 hours")
    write(root, "wombat/burrow.txt", b"cube")
    return root


def test_scan_lists_every_regular_file_with_its_keyword_size_and_digest(root: Path) -> None:
    files = Share(root).scan()
    assert [(f.keyword, f.filename, f.size, f.sha256) for f in files] == [
        ("koala", "eucalyptus.txt", 6, digest(b"leaves")),
        ("koala", "sleep.txt", 8, digest(b"20 hours")),
        ("wombat", "burrow.txt", 4, digest(b"cube")),
    ]


def test_scan_leaves_out_hidden_temp_and_unsafe_names(root: Path) -> None:
    write(root, "koala/.hidden", b"x")
    write(root, "koala/.eucalyptus.txt.p2pshare-part", b"x")
    write(root, "koala/notes.txt~", b"x")
    write(root, "koala/download.part", b"x")
    write(root, "koala/CON", b"x")
    write(root, "koala/trailing.", b"x")
    write(root, "koala/tab\there", b"x")
    write(root, ".git/config", b"x")
    write(root, "aux/file.txt", b"x")
    names = {(f.keyword, f.filename) for f in Share(root).scan()}
    assert names == {
        ("koala", "eucalyptus.txt"),
        ("koala", "sleep.txt"),
        ("wombat", "burrow.txt"),
    }


def test_scan_ignores_files_at_the_share_root_and_folders_in_keyword_folders(
    root: Path,
) -> None:
    write(root, "loose.txt", b"x")
    write(root, "koala/sub/deep.txt", b"x")
    names = {f.filename for f in Share(root).scan()}
    assert names == {"eucalyptus.txt", "sleep.txt", "burrow.txt"}


def test_scan_does_not_follow_symlinks_to_files_or_keyword_folders(
    root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    write(outside, "dir/secret.txt", b"secret")
    os.symlink(outside / "dir" / "secret.txt", root / "koala" / "secret.txt")
    os.symlink(outside / "dir", root / "linked")
    os.symlink(root / "koala" / "sleep.txt", root / "koala" / "inside-link.txt")
    names = {(f.keyword, f.filename) for f in Share(root).scan()}
    assert ("koala", "secret.txt") not in names
    assert ("linked", "secret.txt") not in names
    assert ("koala", "inside-link.txt") not in names


def test_scan_skips_a_fifo_without_blocking(root: Path) -> None:
    os.mkfifo(root / "koala" / "pipe")
    names = {f.filename for f in Share(root).scan()}
    assert "pipe" not in names


def test_a_missing_share_folder_scans_as_empty(tmp_path: Path) -> None:
    assert Share(tmp_path / "nowhere").scan() == []


# --- the digest cache ------------------------------------------------------------------------


def test_a_restarted_share_does_not_hash_unchanged_files_again(root: Path) -> None:
    first = Share(root)
    first_files = first.scan()
    assert first.hash_count == 3
    second = Share(root)
    assert second.scan() == first_files
    assert second.hash_count == 0


def test_a_rescan_does_not_hash_unchanged_files_again(root: Path) -> None:
    share = Share(root)
    share.scan()
    share.scan()
    assert share.hash_count == 3


def test_a_modified_file_gets_a_new_digest_after_a_restart(root: Path) -> None:
    Share(root).scan()
    write(root, "koala/sleep.txt", b"18 hours")  # same size, new mtime
    share = Share(root)
    files = {f.filename: f.sha256 for f in share.scan()}
    assert files["sleep.txt"] == digest(b"18 hours")
    assert share.hash_count == 1


def test_a_file_replaced_by_another_with_the_same_size_and_mtime_is_hashed_again(
    root: Path,
) -> None:
    Share(root).scan()
    path = root / "koala" / "sleep.txt"
    st = path.stat()
    replacement = root / "koala" / "new.tmp"
    replacement.write_bytes(b"19 hours")
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, path)  # a new inode
    files = {f.filename: f.sha256 for f in Share(root).scan()}
    assert files["sleep.txt"] == digest(b"19 hours")


def test_a_just_modified_file_is_not_trusted_from_the_cache(root: Path) -> None:
    path = write(root, "koala/fresh.txt", b"new", age=RACY_WINDOW_NS / 1e9 / 4)
    share = Share(root)
    share.scan()
    # Same size, and within the same timestamp tick: only re-hashing can tell.
    st = path.stat()
    path.write_bytes(b"NEW")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    files = {f.filename: f.sha256 for f in Share(root).scan()}
    assert files["fresh.txt"] == digest(b"NEW")


def test_the_cache_file_is_hidden_and_no_temp_file_is_left(root: Path) -> None:
    Share(root).scan()
    assert (root / CACHE_FILE_NAME).is_file()
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [CACHE_FILE_NAME]
    assert all(f.filename != CACHE_FILE_NAME for f in Share(root).scan())


def test_a_damaged_cache_file_means_hashing_again_not_failing(root: Path) -> None:
    Share(root).scan()
    (root / CACHE_FILE_NAME).write_text("{not json")
    share = Share(root)
    assert len(share.scan()) == 3
    assert share.hash_count == 3


def test_a_cache_entry_with_a_wrong_digest_shape_is_ignored(root: Path) -> None:
    Share(root).scan()
    doc = json.loads((root / CACHE_FILE_NAME).read_text())
    for entry in doc["files"].values():
        entry[4] = "abcd"
    (root / CACHE_FILE_NAME).write_text(json.dumps(doc))
    share = Share(root)
    files = {f.filename: f.sha256 for f in share.scan()}
    assert files["sleep.txt"] == digest(b"20 hours")
    assert share.hash_count == 3


def test_a_removed_file_leaves_the_cache(root: Path) -> None:
    Share(root).scan()
    (root / "wombat" / "burrow.txt").unlink()
    Share(root).scan()
    doc = json.loads((root / CACHE_FILE_NAME).read_text())
    assert sorted(doc["files"]) == ["koala/eucalyptus.txt", "koala/sleep.txt"]


# --- list and open ---------------------------------------------------------------------------


def test_list_files_matches_the_keyword_case_insensitively(root: Path) -> None:
    write(root, "Platypus/egg.txt", b"egg")
    assert Share(root).list_files("platypus") == ["egg.txt"]


def test_list_files_merges_folders_that_differ_only_in_case(root: Path) -> None:
    write(root, "Koala/upper.txt", b"x")
    assert Share(root).list_files("koala") == ["eucalyptus.txt", "sleep.txt", "upper.txt"]


def test_list_files_of_an_absent_keyword_is_not_shared(root: Path) -> None:
    with pytest.raises(NotShared):
        Share(root).list_files("platypus")


def test_open_file_prefers_the_exactly_spelled_folder(root: Path) -> None:
    write(root, "Koala/sleep.txt", b"other")
    opened = Share(root).open_file("koala", "sleep.txt")
    try:
        assert opened.keyword_dir == "koala"
        assert os.pread(opened.fd, 100, 0) == b"20 hours"
    finally:
        opened.close()


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\\b", "nul", "x\x00", ".hidden", ""])
def test_open_file_with_an_unsafe_name_is_an_invalid_name(root: Path, name: str) -> None:
    with pytest.raises(InvalidName):
        Share(root).open_file("koala", name)


def test_open_file_of_a_symlink_to_dev_null_is_not_shared(root: Path) -> None:
    os.symlink("/dev/null", root / "koala" / "null.txt")
    with pytest.raises(NotShared):
        Share(root).open_file("koala", "null.txt")


def test_open_file_of_a_device_node_is_not_shared(root: Path) -> None:
    try:
        os.mknod(root / "koala" / "dev", 0o600 | 0o020000, os.makedev(1, 3))  # /dev/null
    except PermissionError:
        pytest.skip("creating a device node needs privileges")
    with pytest.raises(NotShared):
        Share(root).open_file("koala", "dev")
    assert "dev" not in Share(root).list_files("koala")


def test_a_missing_share_folder_is_unavailable_to_list_and_open(tmp_path: Path) -> None:
    share = Share(tmp_path / "nowhere")
    with pytest.raises(ShareUnavailable):
        share.list_files("koala")
    with pytest.raises(ShareUnavailable):
        share.open_file("koala", "sleep.txt")


def test_the_share_raises_its_own_errors_never_wire_errors(root: Path) -> None:
    share = Share(root)
    for call in (
        lambda: share.list_files("../koala"),
        lambda: share.list_files("platypus"),
        lambda: share.open_file("koala", ".."),
        lambda: share.open_file("koala", "absent.txt"),
    ):
        with pytest.raises(ShareError) as info:
            call()
        assert not isinstance(info.value, RequestError)
        assert isinstance(info.value, P2PError)


# --- whose folders: the share and its keyword folders must be the user's alone ------------


def test_a_keyword_folder_others_may_write_is_neither_scanned_listed_nor_served(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (root / "koala").chmod(0o777)
    share = Share(root)
    assert {f.keyword for f in share.scan()} == {"wombat"}
    assert "may be written by other users" in caplog.text
    with pytest.raises(NotShared):
        share.list_files("koala")
    with pytest.raises(NotShared):
        share.open_file("koala", "sleep.txt")
    with pytest.raises(UnsafeLocalFile, match=r"koala may be written by other users \(mode 0777\)"):
        share.check()


def test_a_share_others_may_write_is_refused_whole(root: Path) -> None:
    root.chmod(0o775)
    share = Share(root)
    with pytest.raises(UnsafeLocalFile, match=r"the share folder .*share may be written"):
        share.check()
    with pytest.raises(UnsafeLocalFile):
        share.list_files("wombat")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder away needs root")
def test_a_keyword_folder_of_another_user_is_refused(root: Path) -> None:
    os.chown(root / "wombat", 65534, 65534)
    share = Share(root)
    assert {f.keyword for f in share.scan()} == {"koala"}
    with pytest.raises(UnsafeLocalFile, match="belongs to uid 65534"):
        share.check()


def test_a_share_of_the_users_own_folders_passes_the_check(root: Path) -> None:
    Share(root).check()
