"""The incremental sync's wire types (netproto/operations.py, PROTOCOL.md §4.3.1):
``sync_delta`` bodies, ``FileKey``, the version in ``SyncReply``, and ``VERSION_MISMATCH``."""

from __future__ import annotations

from typing import Any

import pytest

from netproto.codec import pack, unpack_map
from netproto.errors import BadRequest, InvalidPath, RequestError, VersionMismatch
from netproto.operations import (
    MAX_SYNC_FILES_PER_PART,
    FileKey,
    SharedFile,
    SyncDeltaRequest,
    SyncReply,
)

DIGEST = bytes(range(32))
ENTRY = SharedFile("joey.txt", "koala", 13, DIGEST)


def delta(**changes: Any) -> dict[str, Any]:
    body = SyncDeltaRequest("peer1", 7001, 42, (ENTRY,), (FileKey("koala", "old.txt"),)).to_wire()
    body.update(changes)
    return body


def test_a_delta_round_trips_through_the_codec() -> None:
    request = SyncDeltaRequest(
        "peer1", 7001, 2**62, (ENTRY,), (FileKey("koala", "old.txt"),), "peer1.example"
    )
    assert SyncDeltaRequest.from_wire(unpack_map(pack(request.to_wire()))) == request


def test_a_reply_carries_the_version_and_an_old_reply_has_none() -> None:
    assert SyncReply.from_wire({"files": 3, "version": 7}) == SyncReply(3, 7)
    assert SyncReply.from_wire({"files": 3}) == SyncReply(3, None)
    assert SyncReply(3).to_wire() == {"files": 3}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"base": -1}, "base"),
        ({"base": "7"}, "base"),
        ({"base": 2**63}, "base"),
        ({"files": {}}, "files"),
        ({"removed": "x"}, "removed"),
        ({"removed": [["koala", "a"]]}, r"removed\[\]"),
        ({"removed": [{"keyword": "koala"}]}, "filename"),
        ({"port_number": 0}, "port_number"),
        ({"address": ""}, "address"),
    ],
)
def test_a_bad_delta_is_bad_request_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest, match=field if "[" in field else f"^{field}"):
        SyncDeltaRequest.from_wire(delta(**changes))


def test_a_removed_name_that_is_not_a_safe_segment_is_invalid_path() -> None:
    with pytest.raises(InvalidPath):
        SyncDeltaRequest.from_wire(delta(removed=[{"keyword": "koala", "filename": "../x"}]))


def test_more_entries_than_a_sync_part_takes_are_refused_in_all() -> None:
    half = MAX_SYNC_FILES_PER_PART // 2 + 1
    keys = [{"keyword": "k", "filename": f"f{i}"} for i in range(half)]
    files = [{**ENTRY.to_wire(), "filename": f"g{i}"} for i in range(half)]
    with pytest.raises(BadRequest, match="removed"):
        SyncDeltaRequest.from_wire(delta(files=files, removed=keys))


def test_a_delta_knows_whether_it_fits_one_frame() -> None:
    small = SyncDeltaRequest("peer1", 7001, 1, (ENTRY,))
    assert small.fits()
    many = tuple(SharedFile(f"{i:0200d}", "koala", 1, DIGEST) for i in range(6000))
    assert not SyncDeltaRequest("peer1", 7001, 1, many).fits()


def test_version_mismatch_round_trips_as_its_own_class() -> None:
    error = RequestError.from_wire(VersionMismatch().to_wire())
    assert isinstance(error, VersionMismatch) and error.code == "VERSION_MISMATCH"
