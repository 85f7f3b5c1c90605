"""indexd.keywords: the in-memory keyword index, its fair pages and cached rankings."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter

import pytest

from indexd import keywords
from indexd.keywords import (
    HIT_OVERHEAD,
    RANKING_OVERHEAD,
    KeywordIndex,
    PeerHits,
    decode_cursor,
    encode_cursor,
    expand_hit,
    expanded_size,
    peer_head,
    prepare_hits,
    reply_budget,
)
from indexd.store import PeerRecord
from netproto.codec import pack, unpack_map
from netproto.errors import BadRequest
from netproto.operations import SearchHit, SearchReply, SharedFile

TTL = 60.0


def _file(keyword: str, name: str, size: int = 1) -> SharedFile:
    return SharedFile(name, keyword, size, hashlib.sha256(name.encode()).digest())


def _published(keyword: str, name: str, size: int = 1) -> SharedFile:
    digest = hashlib.sha256(name.encode()).digest()
    return SharedFile(name, keyword, size, digest, hashlib.sha256(digest).digest(), bytes(64))


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


def test_a_listing_read_before_a_removal_never_brings_the_peer_back() -> None:
    # A reload's snapshot (generation 2) applied after a bye withdrew the peer (3).
    index = _index()
    assert index.apply(prepare_hits(_record("p"), [_file("k", "a")]), 1)
    assert index.remove("p", 3)
    assert not index.apply(prepare_hits(_record("p"), [_file("k", "a")]), 2)
    assert _decode(index.search("k", 1.0)) == []
    assert "p" not in index
    # A listing made after the removal (a new sync) is taken.
    assert index.apply(prepare_hits(_record("p"), [_file("k", "b")]), 4)
    assert _names(_decode(index.search("k", 1.0))) == [("p", ["b"])]


def test_a_removal_of_a_peer_not_yet_loaded_still_refuses_an_older_listing() -> None:
    index = _index()
    assert not index.remove("p", 5)  # nothing to withdraw yet
    assert not index.apply(prepare_hits(_record("p"), [_file("k", "a")]), 4)
    assert "p" not in index


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


# --- packed hits (memory: BENCHMARKS.md, index_memory) --------------------------------------


def _reply_form(record: PeerRecord, files: list[SharedFile]) -> bytes:
    """A hit as PROTOCOL.md §4.2 encodes it, built the plain way."""
    ordered = sorted(files, key=lambda f: (f.filename, f.keyword))
    return pack(
        {
            "domain_name": record.domain_name,
            "port_number": record.port_number,
            "address": record.address,
            "total": len(files),
            "files": [f.listed().to_wire() for f in ordered],
        }
    )


def test_a_packed_hit_expands_to_exactly_the_reply_form_of_its_files() -> None:
    record = _record("peer1")
    files = [_published("k", "b.iso", 1 << 40), _file("k", "a.txt", 70_000), _file("K", "c", 0)]
    [(kw, hit)] = prepare_hits(record, files).hits.items()
    head = peer_head(record)
    assert kw == "k"
    assert expand_hit(head, hit) == _reply_form(record, files)
    assert expanded_size(head, hit) == len(_reply_form(record, files))


def test_a_hit_cut_at_max_hit_files_knows_its_expanded_size() -> None:
    record = _record("peer1")
    files = [_published("k", f"f{i:03d}") for i in range(30)]
    [hit] = prepare_hits(record, files, max_hit_files=20).hits.values()
    expanded = expand_hit(peer_head(record), hit)
    assert expanded_size(peer_head(record), hit) == len(expanded)
    assert len(unpack_map(expanded)["files"]) == 20


def test_a_published_file_is_held_in_far_fewer_bytes_than_its_reply_entry() -> None:
    record = _record("a-rather-long-domain-name.example")
    files = [_published("k", f"holiday-photo-{i:04d}.jpeg", 3_000_000) for i in range(50)]
    [hit] = prepare_hits(record, files).hits.values()
    assert len(hit) <= 0.8 * expanded_size(peer_head(record), hit)


def test_published_files_keep_their_manifest_and_signature_in_search() -> None:
    f = _published("k", "a")
    [hit] = _decode(_index((_record("p"), [f])).search("k", 1.0))
    assert (hit.files[0].manifest, hit.files[0].signature) == (f.manifest, f.signature)


def test_a_stored_file_with_digests_of_the_wrong_length_is_left_out_of_search(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = _file("k", "good")
    for bad in (
        SharedFile("a", "k", 1, bytes(32), bytes(32), bytes(63)),
        SharedFile("a", "k", 1, bytes(31)),
        SharedFile("a", "other", 1, bytes(33)),
    ):
        caplog.clear()
        prepared = prepare_hits(_record("p"), [bad, good])
        assert list(prepared.hits) == ["k"]
        [hit] = _decode(_index((_record("p"), [bad, good])).search("k", 1.0))
        assert (hit.total, [f.filename for f in hit.files]) == (1, ["good"])
        assert "wrong length" in caplog.text


def test_every_peers_hit_under_a_keyword_shares_one_key_string() -> None:
    first = prepare_hits(_record("p1"), [_file("Music", "a")]).hits
    second = prepare_hits(_record("p2"), [_file("music", "b")]).hits
    [k1], [k2] = first, second
    assert k1 is k2


def test_hits_reapplied_under_a_new_record_carry_the_new_peer_fields() -> None:
    index = _index((_record("p", address="10.0.0.1"), [_file("a", "x"), _file("b", "y")]))
    moved = PeerRecord("p", "alice", 7009, "10.0.0.9", 1.0)
    assert index.apply(PeerHits(moved, index.hits_of("p")), 2)
    for kw in ("a", "b"):
        [hit] = _decode(index.search(kw, 2.0))
        assert (hit.port_number, hit.address) == (7009, "10.0.0.9")


def test_one_owners_hits_beyond_one_page_are_all_reachable_by_cursor() -> None:
    max_frame = 16 << 10
    listings = [
        (_record(f"peer{i:02d}"), [_published("k", f"{'n' * 100}{j}") for j in range(20)])
        for i in range(25)
    ]
    index = _index(*listings, max_frame=max_frame)
    pages = _all_pages(index, "k", 1.0)
    assert len(pages) > 1
    names = [h.domain_name for page in pages for h in page.hits]
    assert sorted(names) == [f"peer{i:02d}" for i in range(25)]
    for page in pages:
        for hit in page.hits:
            assert [f.signature for f in hit.files] == [bytes(64)] * len(hit.files)


def test_cached_rankings_stay_within_max_cached_bytes_and_searches_stay_right() -> None:
    listings = [
        (_record(f"peer{i}", owner=f"user{i}"), [_published(f"kw{k}", f"f{i}") for k in range(20)])
        for i in range(10)
    ]
    index = KeywordIndex(TTL, max_cached_bytes=8_000)
    for gen, (record, files) in enumerate(listings, 1):
        index.apply(prepare_hits(record, files), gen)
    first = {
        k: sorted(h.domain_name for h in _decode(index.search(f"kw{k}", 1.0))) for k in range(20)
    }
    assert 0 < index.cached_bytes <= 8_000
    again = {
        k: sorted(h.domain_name for h in _decode(index.search(f"kw{k}", 1.0))) for k in range(20)
    }
    assert again == first == {k: sorted(f"peer{i}" for i in range(10)) for k in range(20)}


def test_cached_bytes_count_the_expanded_hits_of_rankings_and_of_dropped_ones() -> None:
    records = [_record("p1", owner="u1"), _record("p2", owner="u2")]
    prepared = [prepare_hits(r, [_published("k", r.domain_name)]) for r in records]
    index = KeywordIndex(TTL)
    for gen, p in enumerate(prepared, 1):
        index.apply(p, gen)

    def size(p: PeerHits) -> int:
        return expanded_size(peer_head(p.record), p.hits["k"])

    overhead = RANKING_OVERHEAD + 2 * HIT_OVERHEAD
    index.search("k", 1.0)
    assert index.cached_bytes == size(prepared[0]) + size(prepared[1]) + overhead
    # p1 syncs: the ranking goes, its expanded hits stay counted until "k" is ranked again.
    resynced = prepare_hits(records[0], [_published("k", "other-name")])
    index.apply(resynced, 3)
    assert index.cached_bytes == size(prepared[0]) + size(prepared[1]) + overhead
    index.search("k", 1.0)
    assert index.cached_bytes == size(resynced) + size(prepared[1]) + overhead


def test_a_sync_reexpands_only_its_own_hits_when_the_keyword_is_ranked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index = _index(*[(_record(f"p{i}", owner=f"u{i}"), [_published("k", "a")]) for i in range(10)])
    expanded: list[bytes] = []

    def counting(head: bytes, hit: bytes) -> bytes:
        expanded.append(head)
        return expand_hit(head, hit)

    monkeypatch.setattr(keywords, "expand_hit", counting)
    first = sorted(h.domain_name for h in _decode(index.search("k", 1.0)))
    assert len(expanded) == 10
    index.apply(prepare_hits(_record("p3", owner="u3"), [_published("k", "b")]), 11)
    again = _decode(index.search("k", 1.0))
    assert expanded[10:] == [peer_head(_record("p3", owner="u3"))]
    assert sorted(h.domain_name for h in again) == first
    assert [f.filename for h in again if h.domain_name == "p3" for f in h.files] == ["b"]


def test_a_ranking_larger_than_the_cache_is_answered_but_not_kept() -> None:
    index = KeywordIndex(TTL, max_cached_bytes=500)
    for gen, i in enumerate(range(5), 1):
        index.apply(prepare_hits(_record(f"p{i}", owner=f"u{i}"), [_published("k", "a")]), gen)
    for _ in range(2):
        assert sorted(h.domain_name for h in _decode(index.search("k", 1.0))) == [
            f"p{i}" for i in range(5)
        ]
        assert index.cached_bytes == 0


def test_a_search_served_from_the_cache_makes_its_ranking_the_last_to_go() -> None:
    listings = [
        (_record(f"p{i}", owner=f"u{i}"), [_published(k, f"f{i}") for k in ("a", "b", "c")])
        for i in range(2)
    ]
    index = _index(*listings)
    for k in ("a", "b", "c", "a"):
        index.search(k, 1.0)
    a_cost = index.cached_bytes // 3
    index.max_cached_bytes = 2 * a_cost
    index.search("d", 1.0)  # nothing under "d": a ranking of no hits, and a trim
    assert "a" in index._cache and "b" not in index._cache


def test_a_keyword_of_one_owner_holds_its_page_alone() -> None:
    record = _record("p1", owner="u1")
    index = _index((record, [_published("k", "a"), _published("k", "b")]))
    body = index.search("k", 1.0)
    assert [f.filename for h in _decode(body) for f in h.files] == ["a", "b"]
    assert index.cached_bytes == len(body) + RANKING_OVERHEAD + HIT_OVERHEAD
    assert index.search("k", 1.0) is body


def test_a_delta_reexpands_no_hit_of_a_keyword_it_left_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index = _index(*[(_record(f"p{i}", owner=f"u{i}"), [_published("k", "a")]) for i in range(3)])
    first = index.search("k", 1.0)
    expanded: list[bytes] = []

    def counting(head: bytes, hit: bytes) -> bytes:
        expanded.append(head)
        return expand_hit(head, hit)

    monkeypatch.setattr(keywords, "expand_hit", counting)
    # p1 changes keyword "other" only: its hit under "k" is the same packed hit.
    hits = index.hits_of("p1") | prepare_hits(_record("p1"), [_file("other", "x")]).hits
    index.apply(PeerHits(_record("p1", owner="u1"), hits), 10)
    assert sorted(_names(_decode(index.search("k", 1.0)))) == sorted(_names(_decode(first)))
    assert expanded == []


def test_no_ranking_is_kept_for_a_keyword_no_peer_lists_any_more() -> None:
    index = _index((_record("p1", owner="u1"), [_published("k", "a")]))
    index.apply(prepare_hits(_record("p2", owner="u2"), [_published("k", "b")]), 2)
    index.search("k", 1.0)
    index.remove("p1", 3)
    assert "k" in index._kept
    index.remove("p2", 4)
    assert "k" not in index._kept and index.cached_bytes == 0


def test_seen_at_a_past_time_brings_a_stale_peer_back_and_never_moves_last_seen_back() -> None:
    index = _index(
        (_record("p1", owner="u1"), [_file("k", "a")]),
        (_record("p2", owner="u2"), [_file("k", "b")]),
    )
    now = TTL + 5.0
    index.touch("p2", now)
    assert [h.domain_name for h in _decode(index.search("k", now))] == ["p2"]
    # Another index server heard p1 at TTL + 1: it is live at ``now`` again.
    assert index.seen_at("p1", TTL + 1.0, now)
    assert sorted(h.domain_name for h in _decode(index.search("k", now))) == ["p1", "p2"]
    record = index.record("p1")
    assert record is not None and record.last_seen == TTL + 1.0
    assert index.seen_at("p1", 2.0, now)  # older news: last_seen stays
    record = index.record("p1")
    assert record is not None and record.last_seen == TTL + 1.0
    assert not index.seen_at("nobody", now, now)
