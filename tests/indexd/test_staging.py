"""indexd.staging: parts of a multi-part sync staged in order, bounded, expiring."""

from __future__ import annotations

import hashlib

import pytest

from indexd.staging import StagingLimits, SyncStaging
from netproto.errors import BadRequest, Busy, NotFound
from netproto.operations import SharedFile, SyncPart, SyncRequest

UP = b"u" * 16


def _files(n: int, start: int = 0) -> tuple[SharedFile, ...]:
    return tuple(
        SharedFile(f"f{i}", "k", 1, hashlib.sha256(str(i).encode()).digest())
        for i in range(start, start + n)
    )


def _part(seq: int, n: int, final: bool = False, upload: bytes = UP, **kw: object) -> SyncRequest:
    fields: dict[str, object] = {"domain_name": "peer1", "port_number": 7001, "address": None}
    fields.update(kw)
    return SyncRequest(
        fields["domain_name"],  # type: ignore[arg-type]
        fields["port_number"],  # type: ignore[arg-type]
        _files(n, 100 * seq),
        fields["address"],  # type: ignore[arg-type]
        SyncPart(upload, seq, final),
    )


def test_parts_accumulate_and_the_final_one_returns_the_whole_share() -> None:
    staging = SyncStaging()
    assert staging.add("alice", _part(0, 3), 0.0).received == 3
    assert staging.add("alice", _part(1, 2), 0.0).files is None
    done = staging.add("alice", _part(2, 1, final=True), 0.0)
    assert done.received == 6
    assert done.files == _files(3) + _files(2, 100) + _files(1, 200)
    assert len(staging) == 0 and staging.staged_files == 0


def test_a_part_out_of_order_is_a_bad_request() -> None:
    staging = SyncStaging()
    staging.add("alice", _part(0, 1), 0.0)
    with pytest.raises(BadRequest, match="expected 1"):
        staging.add("alice", _part(2, 1), 0.0)


def test_a_part_of_an_unknown_upload_is_not_found() -> None:
    with pytest.raises(NotFound, match="unknown or expired"):
        SyncStaging().add("alice", _part(1, 1), 0.0)


def test_uploads_are_per_user_so_another_user_cannot_continue_one() -> None:
    staging = SyncStaging()
    staging.add("alice", _part(0, 1), 0.0)
    with pytest.raises(NotFound):
        staging.add("bob", _part(1, 1), 0.0)


def test_restarting_an_upload_id_in_progress_is_a_bad_request() -> None:
    staging = SyncStaging()
    staging.add("alice", _part(0, 1), 0.0)
    with pytest.raises(BadRequest, match="already started"):
        staging.add("alice", _part(0, 1), 0.0)


def test_parts_must_name_the_same_peer() -> None:
    staging = SyncStaging()
    staging.add("alice", _part(0, 1), 0.0)
    with pytest.raises(BadRequest, match="same in every part"):
        staging.add("alice", _part(1, 1, port_number=7002), 0.0)


def test_stale_uploads_expire() -> None:
    staging = SyncStaging(StagingLimits(ttl=10.0))
    staging.add("alice", _part(0, 5), 0.0)
    with pytest.raises(NotFound):
        staging.add("alice", _part(1, 1), 11.0)
    assert staging.staged_files == 0


def test_uploads_per_user_are_bounded() -> None:
    staging = SyncStaging(StagingLimits(max_user_uploads=2))
    staging.add("alice", _part(0, 1, upload=b"a" * 16), 0.0)
    staging.add("alice", _part(0, 1, upload=b"b" * 16), 0.0)
    with pytest.raises(Busy):
        staging.add("alice", _part(0, 1, upload=b"c" * 16), 0.0)
    staging.add("bob", _part(0, 1, upload=b"c" * 16), 0.0)


def test_files_per_upload_are_bounded_and_the_upload_dropped() -> None:
    staging = SyncStaging(StagingLimits(max_upload_files=5))
    staging.add("alice", _part(0, 4), 0.0)
    with pytest.raises(BadRequest, match="at most 5"):
        staging.add("alice", _part(1, 2), 0.0)
    assert len(staging) == 0


def test_files_staged_per_user_and_in_total_are_bounded() -> None:
    staging = SyncStaging(StagingLimits(max_user_files=5, max_total_files=8))
    staging.add("alice", _part(0, 4, upload=b"a" * 16), 0.0)
    with pytest.raises(Busy):
        staging.add("alice", _part(0, 2, upload=b"b" * 16), 0.0)
    staging.add("bob", _part(0, 4), 0.0)
    with pytest.raises(Busy):
        staging.add("carol", _part(0, 1), 0.0)


def test_user_files_counts_the_files_a_user_has_staged() -> None:
    staging = SyncStaging()
    files = tuple(SharedFile(f"f{i}", "k", 1, bytes(32)) for i in range(3))
    part = SyncPart(b"u" * 16, 0, False)
    staging.add("alice", SyncRequest("peer1", 7001, files, None, part), 0.0)
    assert (staging.user_files("alice"), staging.user_files("bob")) == (3, 0)
    staging.discard("alice", b"u" * 16)
    assert staging.user_files("alice") == 0
