"""What changed between two listings of a share: the entries an incremental sync sends.

Pure: two lists of :class:`~netproto.operations.SharedFile` in, a :class:`ListingDelta` out. A
file is known by its ``(keyword, filename)``, as the index keys a listing (PROTOCOL.md §4.3); it
has changed when its size or digest did.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from netproto.operations import FileKey, SharedFile


@dataclass(frozen=True, slots=True)
class ListingDelta:
    """Files new to the listing, files whose content changed, and files gone from it."""

    added: tuple[SharedFile, ...] = ()
    changed: tuple[SharedFile, ...] = ()
    removed: tuple[FileKey, ...] = ()

    @property
    def put(self) -> tuple[SharedFile, ...]:
        """The entries to send whole: added and changed."""
        return self.added + self.changed

    @property
    def size(self) -> int:
        """Entries an incremental sync sends."""
        return len(self.added) + len(self.changed) + len(self.removed)

    def __bool__(self) -> bool:
        return self.size > 0


def diff_listing(old: Iterable[SharedFile], new: Iterable[SharedFile]) -> ListingDelta:
    """The changes that turn listing ``old`` into listing ``new``."""
    before = {(f.keyword, f.filename): f for f in old}
    added: list[SharedFile] = []
    changed: list[SharedFile] = []
    seen: set[tuple[str, str]] = set()
    for f in new:
        key = (f.keyword, f.filename)
        seen.add(key)
        was = before.get(key)
        if was is None:
            added.append(f)
        elif was != f:
            changed.append(f)
    removed = tuple(FileKey(k, n) for (k, n) in before if (k, n) not in seen)
    return ListingDelta(tuple(added), tuple(changed), removed)


__all__ = ["ListingDelta", "diff_listing"]
