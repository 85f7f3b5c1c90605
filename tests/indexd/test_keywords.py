"""indexd.keywords: the in-memory keyword index, its fair pages and cached rankings."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter

import pytest

from indexd.keywords import KeywordIndex, decode_cursor, encode_cursor, prepare_hits, reply_budget
from indexd.store import PeerRecord
from netproto.codec import pack, unpack_map
from netproto.errors import BadRequest
from netproto.operations import SearchHit, SearchReply, SharedFile

TTL = 60.0


def _file(keyword: str, name: str, size: int = 1) -> SharedFile:
    return SharedFile(name, keyword, size, hashlib.sha256(name.encode()).digest())


def _record(
    domain: str, seen: float = 0.0, address: str = "10.0.0.1", owner: str = "alice"
) -> PeerRecord:
    return PeerRecord(domain, owner, 7001, address, seen)


def _page(body: bytes) -> SearchReply:
    return SearchReply.from_wire(unpack_map(pack({"b": 0})[:-1] + body)["b"])


def _decode(body: bytes) -> list[SearchHit]:
    return list(_page(body).hits)


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


def test_unknown_keyword_gives_an_empty_page_with_nothing_more() -> None:
    assert _page(_index().search("nothing", 0.0)) == SearchReply((), 0, None)


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


def test_a_hit_lists_at_most_max_hit_files_in_name_order_and_counts_them_all() -> None:
    files = [_file("k", f"f{i:03d}") for i in range(50)]
    index = _index((_record("p"), files), max_hit_files=10)
    [hit] = _decode(index.search("k", 1.0))
    assert [f.filename for f in hit.files] == [f"f{i:03d}" for i in range(10)]
    assert (hit.total, hit.complete) == (50, False)


def test_a_hit_of_few_files_is_complete() -> None:
    [hit] = _decode(_index((_record("p"), [_file("k", "a")])).search("k", 1.0))
    assert (hit.total, hit.complete) == (1, True)


def _all_pages(index: KeywordIndex, keyword: str, now: float) -> list[SearchReply]:
    pages = [_page(index.search(keyword, now))]
    while pages[-1].cursor is not None:
        pages.append(_page(index.search(keyword, now, pages[-1].cursor)))
    return pages


def test_pages_stay_within_the_frame_and_every_hit_is_on_one_page_or_counted() -> None:
    max_frame = 16 << 10
    listings = [
        (
            _record(f"peer{i:03d}", owner=f"user{i}"),
            [_file("k", f"{'n' * 200}{j}") for j in range(100)],
        )
        for i in range(40)
    ]
    index = _index(*listings, max_frame=max_frame)
    pages = _all_pages(index, "k", 1.0)
    assert len(pages) > 1
    for page in pages:
        assert len(pack(page.to_wire())) <= reply_budget(max_frame)
        for hit in page.hits:  # each hit takes at most a sixteenth of the reply
            assert len(pack(hit.to_wire())) <= reply_budget(max_frame) // 16
    # The first page counts every hit it leaves out; following the cursor reaches each once.
    assert len(pages[0].hits) + pages[0].more == 40
    for page, after in itertools.pairwise(pages):
        assert page.more == len(after.hits) + after.more
    names = [h.domain_name for page in pages for h in page.hits]
    assert sorted(names) == [f"peer{i:03d}" for i in range(40)]


def test_one_owner_with_many_peers_cannot_crowd_out_another_owners_peer() -> None:
    max_frame = 16 << 10
    big = [_file("koala", f"{'x' * 200}{j}") for j in range(100)]
    listings = [(_record(f"fake{i:02d}", owner="mallory"), big) for i in range(20)]
    listings.append((_record("honest", owner="alice"), [_file("koala", "joey.txt")]))
    index = _index(*listings, max_frame=max_frame)
    for now in (1.0, 2.0, 3.0, 4.0):  # whichever owner a page starts with
        first = _page(index.search("koala", now))
        assert "honest" in [h.domain_name for h in first.hits]
        assert first.more > 0  # mallory's other peers are counted, not dropped


def test_hits_are_dealt_round_robin_across_owners() -> None:
    listings = [(_record(f"m{i}", owner="mallory"), [_file("k", "a")]) for i in range(3)]
    listings += [(_record(f"a{i}", owner="alice"), [_file("k", "a")]) for i in range(2)]
    listings.append((_record("b0", owner="bob"), [_file("k", "a")]))
    index = _index(*listings)
    for now in (1.0, 2.0, 3.0):
        names = [h.domain_name for h in _decode(index.search("k", now))]
        # Round 0: each owner's first peer; round 1: each owner's second; round 2: the rest.
        assert sorted(names[:3]) == ["a0", "b0", "m0"]
        assert sorted(names[3:5]) == ["a1", "m1"]
        assert names[5:] == ["m2"]


def test_the_first_hit_turns_from_search_to_search() -> None:
    listings = [(_record(f"peer{i}", owner=f"user{i}"), [_file("k", "a")]) for i in range(4)]
    index = _index(*listings)
    firsts = Counter(_decode(index.search("k", 1.0))[0].domain_name for _ in range(8))
    assert firsts == {"peer0": 2, "peer1": 2, "peer2": 2, "peer3": 2}


def test_the_first_page_turns_too_when_it_does_not_hold_every_hit() -> None:
    max_frame = 16 << 10
    listings = [
        (
            _record(f"peer{i:02d}", owner=f"user{i}"),
            [_file("k", f"{'n' * 200}{j}") for j in range(60)],
        )
        for i in range(30)
    ]
    index = _index(*listings, max_frame=max_frame)
    firsts = {_decode(index.search("k", 1.0))[0].domain_name for _ in range(30)}
    assert len(firsts) == 30


def test_a_cursor_page_is_the_same_whichever_page_came_first() -> None:
    max_frame = 16 << 10
    listings = [
        (
            _record(f"peer{i:02d}", owner=f"user{i}"),
            [_file("k", f"{'n' * 200}{j}") for j in range(60)],
        )
        for i in range(30)
    ]
    index = _index(*listings, max_frame=max_frame)
    cursor = _page(index.search("k", 1.0)).cursor
    assert cursor is not None
    assert index.search("k", 1.0, cursor) == index.search("k", 1.0, cursor)


def test_one_owners_ranking_is_cached_as_one_page() -> None:
    index = _index((_record("peer1"), [_file("k", "a")]), (_record("peer2"), [_file("k", "b")]))
    assert index.search("k", 1.0) is index.search("k", 2.0)


def test_a_cursor_round_trips_and_anything_else_is_bad_request() -> None:
    assert decode_cursor(encode_cursor("peer1", 2, "peer3")) == ("peer1", 2, "peer3")
    for junk in (
        b"\x00",
        pack({"p": "peer1", "r": -1, "o": "peer3"}),
        pack({"p": 1, "r": 0, "o": "x"}),
        b"\xc1",
    ):
        with pytest.raises(BadRequest, match="cursor"):
            decode_cursor(junk)
