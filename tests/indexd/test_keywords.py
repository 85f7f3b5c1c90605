"""indexd.keywords: the in-memory keyword index and its encoded, cached search replies."""

from __future__ import annotations

import hashlib

from indexd.keywords import KeywordIndex, prepare_hits, reply_budget
from indexd.store import PeerRecord
from netproto.codec import pack, unpack_map
from netproto.operations import SearchHit, SharedFile, search_reply_from_wire

TTL = 60.0


def _file(keyword: str, name: str, size: int = 1) -> SharedFile:
    return SharedFile(name, keyword, size, hashlib.sha256(name.encode()).digest())


def _record(domain: str, seen: float = 0.0, address: str = "10.0.0.1") -> PeerRecord:
    return PeerRecord(domain, "alice", 7001, address, seen)


def _decode(body: bytes) -> list[SearchHit]:
    return search_reply_from_wire(unpack_map(pack({"b": 0})[:-1] + body)["b"])


def _names(hits: list[SearchHit]) -> list[tuple[str, list[str]]]:
    return [(h.domain_name, [f.filename for f in h.files]) for h in hits]


def _index(*listings: tuple[PeerRecord, list[SharedFile]], **kw: int) -> KeywordIndex:
    index = KeywordIndex(TTL, max_frame=kw.get("max_frame", 1 << 20))
    for gen, (record, files) in enumerate(listings, 1):
        index.apply(prepare_hits(record, files, **kw), gen)
    return index


def test_encoded_reply_decodes_to_the_hits_of_the_keyword() -> None:
    index = _index(
        (_record("peer2"), [_file("music", "b.mp3"), _file("docs", "x.txt")]),
        (_record("peer1"), [_file("music", "a.mp3", 5)]),
    )
    hits = _decode(index.search("music", 1.0))
    assert _names(hits) == [("peer1", ["a.mp3"]), ("peer2", ["b.mp3"])]
    assert hits[0].port_number == 7001 and hits[0].address == "10.0.0.1"
    assert hits[0].files[0].size == 5
    assert hits[0].files[0].sha256 == hashlib.sha256(b"a.mp3").digest()


def test_keywords_match_case_insensitively_and_merge_per_peer() -> None:
    index = _index((_record("peer1"), [_file("Music", "b"), _file("MUSIC", "a")]))
    assert _names(_decode(index.search("mUsIc", 1.0))) == [("peer1", ["a", "b"])]


def test_unknown_keyword_gives_an_empty_list() -> None:
    assert _decode(_index().search("nothing", 0.0)) == []


def test_peers_not_seen_within_the_ttl_are_left_out() -> None:
    index = _index(
        (_record("old", seen=0.0), [_file("k", "a")]), (_record("new", 50.0), [_file("k", "b")])
    )
    assert [h.domain_name for h in _decode(index.search("k", 59.0))] == ["new", "old"]
    assert [h.domain_name for h in _decode(index.search("k", 61.0))] == ["new"]


def test_a_cached_reply_expires_when_an_included_peer_goes_stale() -> None:
    index = _index((_record("peer1", seen=0.0), [_file("k", "a")]))
    assert len(_decode(index.search("k", 1.0))) == 1  # cached now
    assert _decode(index.search("k", TTL + 1)) == []


def test_ping_brings_a_stale_peer_back_into_cached_replies() -> None:
    index = _index((_record("peer1", seen=0.0), [_file("k", "a")]))
    assert _decode(index.search("k", TTL + 1)) == []  # cached without the stale peer
    assert index.touch("peer1", TTL + 2)
    assert len(_decode(index.search("k", TTL + 3))) == 1


def test_a_new_listing_replaces_the_old_one_and_its_keywords() -> None:
    index = _index((_record("peer1"), [_file("old", "a")]))
    index.search("old", 1.0)
    index.apply(prepare_hits(_record("peer1", 1.0), [_file("new", "b")]), 2)
    assert _decode(index.search("old", 2.0)) == []
    assert _names(_decode(index.search("new", 2.0))) == [("peer1", ["b"])]


def test_an_older_generation_never_overwrites_a_newer_listing() -> None:
    index = _index()
    assert index.apply(prepare_hits(_record("p"), [_file("k", "new")]), 5)
    assert not index.apply(prepare_hits(_record("p"), [_file("k", "old")]), 4)
    assert _names(_decode(index.search("k", 1.0))) == [("p", ["new"])]


def test_remove_withdraws_a_peer_from_search() -> None:
    index = _index((_record("peer1"), [_file("k", "a")]))
    index.search("k", 1.0)
    assert index.remove("peer1", 2)
    assert _decode(index.search("k", 1.0)) == []
    assert not index.touch("peer1", 1.0)


def test_a_hit_lists_at_most_max_hit_files_in_name_order() -> None:
    files = [_file("k", f"f{i:03d}") for i in range(50)]
    index = _index((_record("p"), files), max_hit_files=10)
    [hit] = _decode(index.search("k", 1.0))
    assert [f.filename for f in hit.files] == [f"f{i:03d}" for i in range(10)]


def test_replies_stay_within_the_frame_however_many_peers_match() -> None:
    max_frame = 16 << 10
    listings = [
        (_record(f"peer{i:03d}"), [_file("k", f"{'n' * 200}{j}") for j in range(100)])
        for i in range(40)
    ]
    index = _index(*listings, max_frame=max_frame)
    body = index.search("k", 1.0)
    assert len(body) <= reply_budget(max_frame)
    hits = _decode(body)
    assert 1 <= len(hits) < 40
    assert [h.domain_name for h in hits] == sorted(h.domain_name for h in hits)
    for hit in hits:  # each peer takes at most a quarter of the reply
        assert len(pack(hit.to_wire())) <= reply_budget(max_frame) // 4
