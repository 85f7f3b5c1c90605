"""Search hits and holders results made into a swarm Listing (peerd/sources.py)."""

from __future__ import annotations

from netproto.operations import Holding, ListedFile, SearchHit
from peerd.sources import listed_file, listing_for

SHA = bytes(range(32))
MAN = bytes(32)
SIG = bytes(64)


def hit(name: str, *files: ListedFile) -> SearchHit:
    return SearchHit(name, 7000, "10.0.0.1", files)


def test_every_hit_with_the_same_content_is_a_source_under_the_searched_names() -> None:
    same = ListedFile("a.bin", 10, SHA, MAN, SIG)
    other = ListedFile("a.bin", 10, bytes(32))
    listing = listing_for(
        "koala",
        "a.bin",
        [hit("me", same), hit("p1", same), hit("p2", other), hit("p3", same)],
        exclude="me",
    )
    assert listing is not None
    assert (listing.size, listing.sha256, listing.manifest) == (10, SHA, MAN)
    assert [s.domain_name for s in listing.sources] == ["p1", "p3"]
    assert listing.signature_of("p1") == SIG and listing.signature_of("p2") is None


def test_holders_add_peers_listing_the_content_under_their_own_names() -> None:
    plain = ListedFile("a.bin", 10, SHA)
    holdings = [
        Holding("p1", 7001, "10.0.0.2", "koala", plain),
        Holding("p4", 7004, "10.0.0.4", "wombat", ListedFile("copy.bin", 10, SHA, MAN, SIG)),
        Holding("p5", 7005, "10.0.0.5", "wombat", ListedFile("x.bin", 11, SHA)),
        Holding("me", 7000, "10.0.0.1", "koala", plain),
    ]
    listing = listing_for("koala", "a.bin", [hit("p1", plain)], holdings, exclude="me")
    assert listing is not None and listing.manifest is None
    assert listing.manifest_of("p4") == MAN and listing.manifest_of("p1") is None
    assert [(s.domain_name, s.keyword, s.file_name) for s in listing.sources] == [
        ("p1", "koala", "a.bin"),
        ("p4", "wombat", "copy.bin"),
    ]
    only = listing_for("koala", "a.bin", [hit("p1", plain)], holdings, only="P4")
    assert only is not None and [s.domain_name for s in only.sources] == ["p4"]


def test_nothing_listed_under_the_name_gives_no_listing() -> None:
    assert listing_for("koala", "a.bin", [hit("p1", ListedFile("b.bin", 1, SHA))]) is None
    assert listed_file([], "a.bin") is None


def test_a_manifest_listed_by_another_publisher_is_not_lent_to_the_first_hit() -> None:
    honest = ListedFile("a.bin", 10, SHA)
    garbage = ListedFile("a.bin", 10, SHA, bytes([7]) * 32, SIG)
    listing = listing_for("koala", "a.bin", [hit("p1", honest), hit("mallory", garbage)])
    assert listing is not None and listing.manifest is None
    assert listing.manifest_of("p1") is None
    assert listing.manifest_of("mallory") == bytes([7]) * 32
