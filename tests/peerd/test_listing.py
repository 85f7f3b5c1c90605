"""peerd/listing.py: what an incremental sync sends (PROTOCOL.md §4.3.1)."""

from __future__ import annotations

from netproto.operations import FileKey, SharedFile
from peerd.listing import ListingDelta, diff_listing

A = SharedFile("a.txt", "koala", 1, bytes(32))
B = SharedFile("b.txt", "koala", 2, bytes(32))
B2 = SharedFile("b.txt", "koala", 2, bytes([1]) * 32)
C = SharedFile("c.txt", "wombat", 3, bytes(32))


def test_the_same_listing_has_no_changes() -> None:
    delta = diff_listing([A, B], [B, A])
    assert delta == ListingDelta() and not delta and delta.size == 0


def test_added_changed_and_removed_files_are_told_apart() -> None:
    delta = diff_listing([A, B], [B2, C])
    assert delta.added == (C,)
    assert delta.changed == (B2,)
    assert delta.removed == (FileKey("koala", "a.txt"),)
    assert delta.put == (C, B2) and delta.size == 3


def test_a_file_is_known_by_its_exact_keyword_and_name() -> None:
    moved = SharedFile("a.txt", "Koala", 1, bytes(32))
    delta = diff_listing([A], [moved])
    assert delta.added == (moved,) and delta.removed == (FileKey("koala", "a.txt"),)


def test_one_change_in_100000_files_is_one_entry() -> None:
    old = [SharedFile(f"f{i:06d}.txt", f"k{i % 100}", i, bytes(32)) for i in range(100_000)]
    new = list(old)
    new[50_000] = SharedFile(new[50_000].filename, new[50_000].keyword, 1, bytes([7]) * 32)
    delta = diff_listing(old, new)
    assert delta.size == 1 and delta.changed == (new[50_000],)
