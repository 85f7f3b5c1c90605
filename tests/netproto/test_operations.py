"""netproto.operations: typed request and reply bodies of every operation (PROTOCOL.md §4)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netproto.codec import pack, unpack_map
from netproto.errors import BadRequest, InvalidPath, RequestError
from netproto.framing import DEFAULT_MAX_FRAME
from netproto.operations import (
    MAX_FILE_SIZE,
    MAX_SYNC_FILES_PER_PART,
    AuthReply,
    Credentials,
    FetchHeader,
    FetchRequest,
    FetchTrailer,
    KeywordRequest,
    ListedFile,
    ListingReply,
    ListingRequest,
    PeerRequest,
    RegisterReply,
    SearchHit,
    SearchReply,
    SearchRequest,
    SharedFile,
    SyncPart,
    SyncReply,
    SyncRequest,
    list_reply_from_wire,
    search_reply_from_wire,
    split_sync,
)

DIGEST = bytes(range(32))
NONCE = bytes(range(32, 64))
SHARED = SharedFile("koala.txt", "koala", 1234, DIGEST)

EXAMPLES: dict[str, Any] = {
    "credentials": Credentials("alice", "correct horse"),
    "register reply": RegisterReply("alice"),
    "auth reply": AuthReply("header.payload.signature", 1_700_000_900),
    "auth reply with a peer token": AuthReply("h.p.s", 1_700_000_900, "h.p2.s2"),
    "shared file": SHARED,
    "sync": SyncRequest("peer1", 7001, (SHARED,)),
    "sync with address and part": SyncRequest(
        "peer1", 7001, (SHARED,), "10.0.0.5", SyncPart(b"u" * 16, 3, True)
    ),
    "sync reply": SyncReply(1),
    "keyword": KeywordRequest("koala"),
    "listed file": ListedFile("koala.txt", 1234, DIGEST),
    "search hit": SearchHit("peer1", 7001, "127.0.0.1", (ListedFile("koala.txt", 1, DIGEST),)),
    "search hit with a total": SearchHit(
        "peer1", 7001, "peer1.example.org", (ListedFile("koala.txt", 1, DIGEST),), 250
    ),
    "search": SearchRequest("koala"),
    "search with a cursor": SearchRequest("koala", b"\x81\xa1p\xa5peer1"),
    "search reply": SearchReply(
        (SearchHit("peer1", 7001, "::1", (), 0),), more=3, cursor=b"\x81\xa1p\xa5peer1"
    ),
    "listing": ListingRequest("peer1", "koala", 100),
    "listing reply": ListingReply(
        "peer1", "koala", 101, 100, (ListedFile("koala.txt", 1, DIGEST),)
    ),
    "peer": PeerRequest("peer1"),
    "fetch": FetchRequest("koala", "koala.txt", NONCE),
    "fetch with offset": FetchRequest("koala", "koala.txt", NONCE, 100),
    "fetch header": FetchHeader("koala", "koala.txt", 1234, 0),
    "fetch trailer": FetchTrailer(1234, DIGEST, NONCE, b"s" * 64, "peer1"),
}


@pytest.mark.parametrize("value", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_body_round_trips_through_the_codec(value: Any) -> None:
    decoded = unpack_map(pack({"body": value.to_wire()}))["body"]
    assert type(value).from_wire(decoded) == value


def test_search_reply_round_trips() -> None:
    hits = [EXAMPLES["search hit"], SearchHit("peer2", 7002, "::1", ())]
    body = {"hits": [hit.to_wire() for hit in hits], "more": 0}
    assert search_reply_from_wire(body) == hits


def test_list_reply_round_trips() -> None:
    assert list_reply_from_wire(["a.txt", "b.txt"]) == ["a.txt", "b.txt"]


# --- secrets stay out of repr --------------------------------------------------------------


def test_credentials_repr_hides_the_password() -> None:
    assert "correct horse" not in repr(Credentials("alice", "correct horse"))


def test_auth_reply_repr_hides_the_token() -> None:
    assert "secret-token" not in repr(AuthReply("secret-token", 1))


# --- register / auth -----------------------------------------------------------------------


def test_credentials_username_is_case_folded() -> None:
    assert Credentials.from_wire({"username": "Alice", "password": "x"}).username == "alice"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"password": "password1"}, "username"),
        ({"username": "alice"}, "password"),
        ({"username": "alice", "password": b"bytes-pass"}, "password"),
        ({"username": "alice", "password": "p" * 1025}, "password"),
    ],
    ids=["no username", "no password", "bin password", "huge password"],
)
def test_bad_credentials_are_bad_request_naming_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest, match=field):
        Credentials.from_wire(body)


# --- sync ----------------------------------------------------------------------------------


def _sync_body(**changes: Any) -> dict[str, Any]:
    body = SyncRequest("peer1", 7001, (SHARED,)).to_wire()
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"domain_name": None}, "domain_name"),
        ({"domain_name": "not a host"}, "domain_name"),
        ({"port_number": 0}, "port_number"),
        ({"port_number": 65536}, "port_number"),
        ({"port_number": "7001"}, "port_number"),
        ({"files": None}, "files"),
        ({"files": {"koala.txt": 1}}, "files"),
        ({"files": [SHARED.to_wire()] * (MAX_SYNC_FILES_PER_PART + 1)}, "files"),
        ({"files": ["koala.txt"]}, "files"),
        ({"address": ""}, "address"),
        ({"address": "h" * 254}, "address"),
        ({"address": 10}, "address"),
        ({"address": "peer one.example"}, "address"),
        ({"address": "peer1\x1b[2J"}, "address"),
        ({"address": "peer1%0a"}, "address"),
        ({"address": "\u202epeer1"}, "address"),
        ({"address": "fe80::1%eth0"}, "address"),
        ({"address": "[::1]"}, "address"),
        ({"address": "10.0.0.256"}, "address"),
        ({"part": []}, "part"),
        ({"part": {"upload": b"u" * 15, "seq": 0, "final": True}}, "upload"),
        ({"part": {"upload": b"u" * 16, "seq": -1, "final": True}}, "seq"),
        ({"part": {"upload": b"u" * 16, "seq": 10_001, "final": True}}, "seq"),
        ({"part": {"upload": b"u" * 16, "seq": 0, "final": 1}}, "final"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, dict) else v,
)
def test_bad_sync_body_is_bad_request_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest, match=field):
        SyncRequest.from_wire(_sync_body(**changes))


@pytest.mark.parametrize(
    "entry_changes,field",
    [
        ({"size": -1}, "size"),
        ({"size": MAX_FILE_SIZE + 1}, "size"),
        ({"size": 1.5}, "size"),
        ({"size": True}, "size"),
        ({"sha256": DIGEST[:31]}, "sha256"),
        ({"sha256": DIGEST.hex()}, "sha256"),
    ],
)
def test_bad_shared_file_is_bad_request_naming_the_field(
    entry_changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(BadRequest, match=field):
        SharedFile.from_wire({**SHARED.to_wire(), **entry_changes})


@pytest.mark.parametrize("entry_changes", [{"filename": "../secret"}, {"keyword": "a/b"}])
def test_shared_file_with_a_bad_name_is_invalid_path(entry_changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidPath):
        SharedFile.from_wire({**SHARED.to_wire(), **entry_changes})


# Not a string: how a client written from PROTOCOL.md alone got INVALID_PATH where the
# contract says BAD_REQUEST naming the field. None stands for the field being left out.
NOT_STRINGS = {"missing": None, "int": 7, "bin": b"koala", "array": ["koala"]}


def _without_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize("field", ["filename", "keyword"])
@pytest.mark.parametrize("value", NOT_STRINGS.values(), ids=NOT_STRINGS.keys())
def test_sync_entry_name_that_is_not_a_string_is_bad_request_naming_it(
    field: str, value: Any
) -> None:
    entry = _without_none({**SHARED.to_wire(), field: value})
    with pytest.raises(BadRequest, match=rf"^{field}: expected a string$"):
        SyncRequest.from_wire(_sync_body(files=[entry]))


@pytest.mark.parametrize("value", NOT_STRINGS.values(), ids=NOT_STRINGS.keys())
def test_search_or_list_keyword_that_is_not_a_string_is_bad_request_naming_it(
    value: Any,
) -> None:
    with pytest.raises(BadRequest, match=r"^keyword: expected a string$"):
        KeywordRequest.from_wire(_without_none({"keyword": value}))


@pytest.mark.parametrize("field", ["keyword", "file_name"])
@pytest.mark.parametrize("value", NOT_STRINGS.values(), ids=NOT_STRINGS.keys())
def test_fetch_name_that_is_not_a_string_is_bad_request_naming_it(field: str, value: Any) -> None:
    body = _without_none({**EXAMPLES["fetch"].to_wire(), field: value})
    with pytest.raises(BadRequest, match=rf"^{field}: expected a string$"):
        FetchRequest.from_wire(body)


@pytest.mark.parametrize("field", ["keyword", "file_name"])
def test_fetch_name_that_is_a_string_but_not_a_safe_segment_stays_invalid_path(
    field: str,
) -> None:
    with pytest.raises(InvalidPath, match=field):
        FetchRequest.from_wire({**EXAMPLES["fetch"].to_wire(), field: "../up"})


def test_sync_domain_name_is_lower_cased() -> None:
    assert SyncRequest.from_wire(_sync_body(domain_name="Peer1")).domain_name == "peer1"


# --- multi-part sync (PROTOCOL.md §4.3) ----------------------------------------------------


def _many_files(count: int) -> list[SharedFile]:
    return [SharedFile(f"file-{i:05d}.bin", "bulk", i, DIGEST) for i in range(count)]


def test_small_share_syncs_in_one_request_without_part() -> None:
    requests = split_sync("peer1", 7001, _many_files(3))
    assert len(requests) == 1
    assert requests[0].part is None
    assert len(requests[0].files) == 3


def test_large_share_is_split_into_parts_that_each_fit_a_frame() -> None:
    files = _many_files(300)
    requests = split_sync("peer1", 7001, files, max_frame=8192)
    assert len(requests) > 1
    parts = [r.part for r in requests]
    assert all(p is not None for p in parts)
    assert [p.seq for p in parts if p] == list(range(len(requests)))
    assert [p.final for p in parts if p] == [False] * (len(requests) - 1) + [True]
    assert len({p.upload for p in parts if p}) == 1
    assert [f for r in requests for f in r.files] == files
    for r in requests:
        envelope = {"v": 1, "id": 2**32 - 1, "op": "sync", "body": r.to_wire(), "token": "t" * 2048}
        assert len(pack(envelope)) <= 8192


def test_split_sync_default_fits_the_default_frame() -> None:
    requests = split_sync("peer1", 7001, _many_files(MAX_SYNC_FILES_PER_PART + 5))
    assert len(requests) >= 2
    assert all(len(pack(r.to_wire())) <= DEFAULT_MAX_FRAME for r in requests)
    assert all(len(r.files) <= MAX_SYNC_FILES_PER_PART for r in requests)


# --- search / list / ping / bye ------------------------------------------------------------


@pytest.mark.parametrize("body", [{"keyword": ""}, {"keyword": ".."}, {"keyword": "a\\b"}])
def test_bad_keyword_request_is_invalid_path(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidPath):
        KeywordRequest.from_wire(body)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"hits": [{"domain_name": "peer1", "files": []}], "more": 0}, "port_number"),
        ({"hits": [], "more": "0"}, "more"),
        ({"hits": [], "more": 2}, "cursor"),
        ({"hits": {}, "more": 0}, "hits"),
        ([], "reply"),
        (None, "reply"),
    ],
    ids=["bad hit", "bad more", "more without a cursor", "hits not an array", "array", "nil"],
)
def test_a_malformed_search_reply_is_bad_request_naming_the_field(body: Any, field: str) -> None:
    with pytest.raises(BadRequest, match=field):
        search_reply_from_wire(body)


@pytest.mark.parametrize("address", ["peer1\nevil", "a" * 254, "x y", "\u2067peer"], ids=repr)
def test_a_search_hit_with_a_bad_address_is_bad_request(address: str) -> None:
    hit = {**EXAMPLES["search hit"].to_wire(), "address": address}
    with pytest.raises(BadRequest, match="address"):
        SearchHit.from_wire(hit)


def test_a_search_hit_with_fewer_total_than_files_is_bad_request() -> None:
    hit = {**EXAMPLES["search hit"].to_wire(), "total": 0}
    with pytest.raises(BadRequest, match="total"):
        SearchHit.from_wire(hit)


@pytest.mark.parametrize("cursor", [b"", b"c" * 1025, "text"], ids=["empty", "huge", "str"])
def test_a_search_cursor_that_is_not_1_to_1024_bytes_is_bad_request(cursor: Any) -> None:
    with pytest.raises(BadRequest, match="cursor"):
        SearchRequest.from_wire({"keyword": "koala", "cursor": cursor})


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"keyword": "koala"}, BadRequest),
        ({"domain_name": "peer1"}, BadRequest),
        ({"domain_name": "peer1", "keyword": "../x"}, InvalidPath),
        ({"domain_name": "peer1", "keyword": "k", "offset": -1}, BadRequest),
    ],
    ids=["no domain_name", "no keyword", "bad keyword", "negative offset"],
)
def test_a_bad_listing_request_is_refused(body: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        ListingRequest.from_wire(body)


@pytest.mark.parametrize(
    ("address", "canonical"),
    [
        ("10.0.0.5", "10.0.0.5"),
        ("2001:DB8::1", "2001:db8::1"),
        ("Peer1.Example.ORG.", "peer1.example.org"),
        ("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61, None),
    ],
    ids=["ipv4", "ipv6", "dns name", "253 bytes"],
)
def test_an_advertised_address_is_kept_canonical(address: str, canonical: str | None) -> None:
    body = _sync_body(address=address)
    assert SyncRequest.from_wire(body).address == (canonical or address)


def test_list_reply_with_a_bad_file_name_is_invalid_path() -> None:
    with pytest.raises(InvalidPath):
        list_reply_from_wire(["ok.txt", "../../etc/passwd"])


def test_peer_request_without_domain_name_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="domain_name"):
        PeerRequest.from_wire({})


# --- fetch ---------------------------------------------------------------------------------


def test_fetch_offset_defaults_to_zero_and_is_left_out_of_the_wire() -> None:
    request = FetchRequest.from_wire({"keyword": "k", "file_name": "f", "nonce": NONCE})
    assert request.offset == 0
    assert "offset" not in request.to_wire()


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"nonce": NONCE[:31]}, "nonce"),
        ({"nonce": NONCE + b"x"}, "nonce"),
        ({"nonce": NONCE.hex()}, "nonce"),
        ({"offset": -1}, "offset"),
        ({"offset": "0"}, "offset"),
    ],
)
def test_bad_fetch_request_is_bad_request_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    body = {"keyword": "koala", "file_name": "koala.txt", "nonce": NONCE, **changes}
    with pytest.raises(BadRequest, match=field):
        FetchRequest.from_wire(body)


@pytest.mark.parametrize("signature", [b"s" * 65, "s" * 64, None])
def test_fetch_trailer_with_a_bad_signature_field_is_bad_request(signature: Any) -> None:
    body = {**EXAMPLES["fetch trailer"].to_wire(), "digital_signature": signature}
    with pytest.raises(BadRequest, match="digital_signature"):
        FetchTrailer.from_wire(body)


def test_fetch_header_that_is_not_a_map_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="header"):
        FetchHeader.from_wire([1, 2])


# --- any body ------------------------------------------------------------------------------

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
_field_names = st.sampled_from(
    [
        "username",
        "password",
        "domain_name",
        "port_number",
        "files",
        "address",
        "part",
        "keyword",
        "file_name",
        "nonce",
        "offset",
        "cursor",
        "filename",
        "size",
        "sha256",
    ]
)
_PARSERS = [
    Credentials.from_wire,
    SyncRequest.from_wire,
    KeywordRequest.from_wire,
    SearchRequest.from_wire,
    ListingRequest.from_wire,
    PeerRequest.from_wire,
    FetchRequest.from_wire,
]


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(_field_names, _values), st.sampled_from(_PARSERS))
def test_any_body_parses_or_raises_a_request_error(body: dict[str, Any], parse: Any) -> None:
    try:
        parse(body)
    except RequestError as exc:
        assert isinstance(exc, BadRequest | InvalidPath)


# --- issue 14: manifest digests in sync entries and search hits; holders ------------------


def test_a_sync_entry_carries_its_manifest_digest_and_signature_both_or_neither() -> None:
    from netproto.operations import SharedFile as Shared

    entry = Shared("a.txt", "k", 1, b"\x01" * 32, b"\x02" * 32, b"\x03" * 64)
    assert Shared.from_wire(entry.to_wire()) == entry
    assert entry.listed().manifest == b"\x02" * 32
    plain = Shared("a.txt", "k", 1, b"\x01" * 32)
    assert "manifest" not in plain.to_wire()
    with pytest.raises(BadRequest, match="signature"):
        Shared.from_wire({**plain.to_wire(), "manifest": b"\x02" * 32})
    with pytest.raises(BadRequest, match="manifest"):
        Shared.from_wire({**plain.to_wire(), "manifest": b"\x02", "signature": b"\x03" * 64})


def test_a_holders_request_needs_a_32_byte_digest() -> None:
    from netproto.operations import HoldersRequest

    assert HoldersRequest.from_wire({"sha256": b"\x01" * 32}).to_wire() == {"sha256": b"\x01" * 32}
    with pytest.raises(BadRequest, match="sha256"):
        HoldersRequest.from_wire({"sha256": b"\x01"})
