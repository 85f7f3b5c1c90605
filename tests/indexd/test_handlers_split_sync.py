"""netproto.operations.split_sync: a share packed into sync requests that each fit a frame."""

from __future__ import annotations

import hashlib

import pytest

from netproto.messages import Request
from netproto.operations import MAX_SYNC_SEQ, SharedFile, SyncRequest, split_sync
from netproto.protocol import encode_message


def _files(n: int, name_len: int = 20) -> list[SharedFile]:
    return [
        SharedFile(f"{i:0{name_len}d}", f"kw{i % 7}", i, hashlib.sha256(str(i).encode()).digest())
        for i in range(n)
    ]


def _frame_size(req: SyncRequest) -> int:
    """The request's frame body with the largest id and a token of the largest accepted size."""
    return len(encode_message(Request(2**32 - 1, "sync", req.to_wire(), "t" * 2048).to_wire())) - 4


def test_a_small_share_is_one_request_without_part() -> None:
    [req] = split_sync("peer1", 7001, _files(10), "10.0.0.5")
    assert req.part is None
    assert (req.domain_name, req.port_number, req.address, len(req.files)) == (
        "peer1",
        7001,
        "10.0.0.5",
        10,
    )


def test_an_empty_share_is_one_empty_request() -> None:
    [req] = split_sync("peer1", 7001, [])
    assert req.files == () and req.part is None


def test_a_large_share_is_split_into_numbered_parts_of_one_upload() -> None:
    files = _files(30_000, name_len=60)
    reqs = split_sync("peer1", 7001, files)
    assert len(reqs) > 1
    assert [r.part.seq for r in reqs if r.part] == list(range(len(reqs)))
    assert [r.part.final for r in reqs if r.part] == [False] * (len(reqs) - 1) + [True]
    assert len({r.part.upload for r in reqs if r.part}) == 1
    assert [f for r in reqs for f in r.files] == files


@pytest.mark.parametrize("max_frame", [8 << 10, 64 << 10, 1 << 20])
def test_every_part_fits_in_the_frame_limit(max_frame: int) -> None:
    reqs = split_sync("peer1", 7001, _files(6000, name_len=200), "a" * 255, max_frame=max_frame)
    assert len(reqs) > 1
    assert all(_frame_size(r) <= max_frame for r in reqs)
    # Parts are filled: all but the last take more than half the frame.
    assert all(_frame_size(r) > max_frame // 2 for r in reqs[:-1])


def test_parts_respect_the_file_count_limit() -> None:
    reqs = split_sync("peer1", 7001, _files(250), max_files_per_part=100)
    assert [len(r.files) for r in reqs] == [100, 100, 50]


def test_a_given_upload_id_is_used() -> None:
    reqs = split_sync("peer1", 7001, _files(5), max_files_per_part=2, upload=b"x" * 16)
    assert {r.part.upload for r in reqs if r.part} == {b"x" * 16}


def test_a_share_needing_too_many_parts_is_refused() -> None:
    with pytest.raises(ValueError, match="parts"):
        split_sync("peer1", 7001, _files(MAX_SYNC_SEQ + 2), max_files_per_part=1)


def test_parts_round_trip_through_the_wire_validation() -> None:
    for req in split_sync("peer1", 7001, _files(100), max_files_per_part=30):
        assert SyncRequest.from_wire(req.to_wire()) == req
