"""The in-memory keyword index that answers ``search`` without touching SQLite or a thread.

Each live peer's listing is kept as one msgpack-encoded search hit per (case-folded) keyword,
built off the event loop when a sync commits (:func:`prepare_hits`): the peer's first
``max_hit_files`` files under the keyword in file-name order (at most a sixteenth of the reply
budget in bytes) and ``total``, how many it lists in all; ``listing`` serves the rest from the
store. A search ranks the hits of the peers still within the liveness TTL and caches the
ranking per keyword until a sync, a ``bye`` or a peer coming back changes it, or an included
peer goes stale.

Fairness (PROTOCOL.md §4.2): hits are dealt round by round — every owner's first peer, then
every owner's second, ... (an owner's peers in domain-name order) — and within a round in the
order of the owners' first domain names, rotated on every search to start at the next owner.
A page ends before the first hit that would take it past the reply budget; the hits after it
are counted (``more``) and reachable with the ``cursor`` the page carries. No hit is ever left
out without being counted, no owner's peers all come before another owner's first, and no name
comes first in every reply.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from indexd.store import PeerRecord, keyword_key
from netproto.codec import pack, unpack_map
from netproto.errors import BadFrame, BadRequest, RequestError
from netproto.framing import DEFAULT_MAX_FRAME
from netproto.names import canonical_domain_name
from netproto.operations import MAX_CURSOR, MAX_HIT_FILES, SharedFile

# Room for the reply envelope {"id": <u32>, "ok": true, "body": ...} around the body.
REPLY_ENVELOPE = 32
# Room in a page for the body map around the hits: its header, "hits" and the array header,
# "more" and its count, "cursor" and the largest cursor.
PAGE_ALLOWANCE = 64 + MAX_CURSOR
MAX_CACHED_REPLIES = 10_000
MAX_ROUNDS = 1_000_000  # bound on a cursor's round number

_HITS = b"\x82" + pack("hits")  # a page with no cursor: {"hits": [...], "more": 0}
_HITS_CURSOR = b"\x83" + pack("hits")
_MORE = pack("more")
_NO_MORE = _MORE + pack(0)
_CURSOR = pack("cursor")


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def reply_budget(max_frame: int) -> int:
    """Bytes a search reply body may take so the whole reply fits in ``max_frame``."""
    return max_frame - REPLY_ENVELOPE


@dataclass(frozen=True, slots=True)
class PeerHits:
    """A peer's listing prepared for search: one encoded hit per folded keyword."""

    record: PeerRecord
    hits: dict[str, bytes]


def prepare_hits(
    record: PeerRecord,
    files: Iterable[SharedFile],
    *,
    max_hit_files: int = MAX_HIT_FILES,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> PeerHits:
    """Encode a peer's files as search hits, one per folded keyword (pure; may run off-loop)."""
    max_hit_bytes = reply_budget(max_frame) // 16
    head = (
        b"\x85"
        + pack("domain_name")
        + pack(record.domain_name)
        + pack("port_number")
        + pack(record.port_number)
        + pack("address")
        + pack(record.address)
        + pack("total")
    )
    groups: dict[str, list[SharedFile]] = {}
    for f in files:
        groups.setdefault(keyword_key(f.keyword), []).append(f)
    hits: dict[str, bytes] = {}
    for kw, group in groups.items():
        group.sort(key=lambda f: (f.filename, f.keyword))
        total = pack(len(group)) + pack("files")
        entries: list[bytes] = []
        used = len(head) + len(total) + 5
        for f in group[:max_hit_files]:
            entry = pack(f.listed().to_wire())
            if used + len(entry) > max_hit_bytes:
                break
            entries.append(entry)
            used += len(entry)
        hits[kw] = b"".join((head, total, _array_header(len(entries)), *entries))
    return PeerHits(record, hits)


def encode_cursor(pivot: str, round_: int, owner: str) -> bytes:
    """The cursor of a page that ended with ``owner``'s hit of round ``round_``."""
    return pack({"p": pivot, "r": round_, "o": owner})


def decode_cursor(cursor: bytes) -> tuple[str, int, str]:
    """``(pivot, round, owner)`` from a cursor, or ``BAD_REQUEST``."""
    try:
        fields: dict[str, Any] = unpack_map(cursor)
        pivot, round_, owner = fields["p"], fields["r"], fields["o"]
        if len(fields) != 3 or type(round_) is not int or not 0 <= round_ <= MAX_ROUNDS:
            raise BadRequest()
        return canonical_domain_name(pivot), round_, canonical_domain_name(owner)
    except (BadFrame, RequestError, KeyError):
        raise BadRequest("cursor: not a cursor this index gave") from None


@dataclass(slots=True)
class _Peer:
    record: PeerRecord
    keywords: tuple[str, ...]
    generation: int


@dataclass(slots=True)
class _Ranking:
    """The live hits of one keyword, dealt in rounds (see the module docstring)."""

    #: Round r: the owners' r-th peers' hits, and the owners (by first domain name), in order.
    parts: list[list[bytes]]
    owners: list[list[str]]
    count: int
    #: Every hit fits on one page (then no budget is checked).
    fits: bool
    valid_until: float
    epoch: int
    #: The first page when there is one owner only: nothing to rotate, so it is kept.
    fixed: bytes | None = None

    @property
    def pivots(self) -> list[str]:
        """Every owner, by first domain name (round 0 has them all)."""
        return self.owners[0] if self.owners else []


class KeywordIndex:
    """Live peers' hits by folded keyword, with their rankings cached per keyword."""

    def __init__(self, peer_ttl: float, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.peer_ttl = peer_ttl
        self.max_frame = max_frame
        self._budget = reply_budget(max_frame) - PAGE_ALLOWANCE
        self._peers: dict[str, _Peer] = {}
        self._by_keyword: dict[str, dict[str, bytes]] = {}
        self._cache: dict[str, _Ranking] = {}
        # Bumped when a stale peer comes back: any cached ranking may have left it out.
        self._epoch = 0
        self._turn = 0  # which owner the next first page starts with (modulo their number)

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, domain_name: object) -> bool:
        return domain_name in self._peers

    def record(self, domain_name: str) -> PeerRecord | None:
        """The listed peer's record (with its current ``last_seen``), or None."""
        peer = self._peers.get(domain_name)
        return peer.record if peer is not None else None

    def hits_of(self, domain_name: str) -> dict[str, bytes]:
        """A listed peer's encoded hits by folded keyword (to replace only some of them)."""
        peer = self._peers.get(domain_name)
        if peer is None:
            return {}
        return {kw: self._by_keyword[kw][domain_name] for kw in peer.keywords}

    def is_live(self, domain_name: str, now: float) -> bool:
        """True if the peer is listed and was seen within the TTL."""
        peer = self._peers.get(domain_name)
        return peer is not None and now < peer.record.last_seen + self.peer_ttl

    def apply(self, prepared: PeerHits, generation: int) -> bool:
        """Put a peer's new listing in place of its old one, unless a newer one is there."""
        name = prepared.record.domain_name
        old = self._peers.get(name)
        if old is not None:
            if old.generation > generation:
                return False
            self._drop(name, old)
        for kw, hit in prepared.hits.items():
            self._by_keyword.setdefault(kw, {})[name] = hit
            self._cache.pop(kw, None)
        self._peers[name] = _Peer(prepared.record, tuple(prepared.hits), generation)
        return True

    def remove(self, domain_name: str, generation: int) -> bool:
        """Withdraw a peer's listing (``bye``), unless a newer listing is already there."""
        old = self._peers.get(domain_name)
        if old is None or old.generation > generation:
            return False
        self._drop(domain_name, old)
        del self._peers[domain_name]
        return True

    def _drop(self, name: str, old: _Peer) -> None:
        for kw in old.keywords:
            peers = self._by_keyword.get(kw)
            if peers is not None:
                peers.pop(name, None)
                if not peers:
                    del self._by_keyword[kw]
            self._cache.pop(kw, None)

    def touch(self, domain_name: str, now: float) -> bool:
        """Mark a listed peer as seen now (``ping``); False if it is not listed."""
        peer = self._peers.get(domain_name)
        if peer is None:
            return False
        record = peer.record
        if record.last_seen + self.peer_ttl <= now:
            self._epoch += 1  # it was left out of cached rankings; they are stale now
        peer.record = PeerRecord(
            record.domain_name,
            record.owner,
            record.port_number,
            record.address,
            max(now, record.last_seen),
            record.withdrawn,
        )
        return True

    # --- search ----------------------------------------------------------------------

    def search(self, keyword: str, now: float, cursor: bytes | None = None) -> bytes:
        """The encoded reply body for ``keyword``: a page of the hits of peers seen within
        the TTL — the first page (rotated), or the one after ``cursor``."""
        kw = keyword_key(keyword)
        ranking = self._cache.get(kw)
        if ranking is None or now >= ranking.valid_until or ranking.epoch != self._epoch:
            ranking = self._rank(kw, now)
            if len(self._cache) >= MAX_CACHED_REPLIES:
                del self._cache[next(iter(self._cache))]
            self._cache[kw] = ranking
        if cursor is not None:
            return self._page(ranking, *decode_cursor(cursor))
        if ranking.fixed is not None:
            return ranking.fixed
        pivots = ranking.pivots
        self._turn += 1
        pivot = pivots[self._turn % len(pivots)]
        if ranking.fits:
            # The common case: everything on one page, only the order turns.
            chunks = [_HITS, _array_header(ranking.count)]
            for parts, owners in zip(ranking.parts, ranking.owners, strict=True):
                i = bisect.bisect_left(owners, pivot)
                chunks += parts[i:]
                chunks += parts[:i]
            chunks.append(_NO_MORE)
            return b"".join(chunks)
        return self._page(ranking, pivot, 0, None)

    def _rank(self, kw: str, now: float) -> _Ranking:
        hits = self._by_keyword.get(kw) or {}
        ttl, peers = self.peer_ttl, self._peers
        valid_until = float("inf")
        by_owner: dict[str, list[str]] = {}
        for name in hits:
            record = peers[name].record
            expires = record.last_seen + ttl
            if expires <= now:
                continue
            valid_until = min(valid_until, expires)
            by_owner.setdefault(record.owner, []).append(name)
        # Each owner is known by its first domain name (public, unlike its username).
        groups = sorted(sorted(names) for names in by_owner.values())
        rounds = max((len(g) for g in groups), default=0)
        parts: list[list[bytes]] = [[] for _ in range(rounds)]
        owners: list[list[str]] = [[] for _ in range(rounds)]
        size = 0
        for names in groups:
            for r, name in enumerate(names):
                parts[r].append(hits[name])
                owners[r].append(names[0])
                size += len(hits[name])
        ranking = _Ranking(
            parts, owners, sum(map(len, parts)), size <= self._budget, valid_until, self._epoch
        )
        if len(groups) <= 1:
            ranking.fixed = self._page(ranking, groups[0][0] if groups else "", 0, None)
        return ranking

    def _page(self, ranking: _Ranking, pivot: str, round_: int, after: str | None) -> bytes:
        """The page of hits that starts in ``round_`` after ``after``'s (or at the start of
        the round), owners turned to start at ``pivot``."""
        parts: list[bytes] = []
        used = 0
        last: tuple[int, str] | None = None
        remaining = 0
        full = False
        for r in range(round_, len(ranking.parts)):
            round_parts, round_owners = ranking.parts[r], ranking.owners[r]
            i = bisect.bisect_left(round_owners, pivot)
            order = list(range(i, len(round_owners))) + list(range(i))
            if r == round_ and after is not None:
                # Skip the owners up to ``after`` in this round's turned order.
                turned = [(round_owners[j] < pivot, round_owners[j]) for j in order]
                order = order[bisect.bisect_right(turned, (after < pivot, after)) :]
            for j in order:
                if full:
                    remaining += 1
                    continue
                hit = round_parts[j]
                if used + len(hit) > self._budget:
                    full = True
                    remaining += 1
                    continue
                parts.append(hit)
                used += len(hit)
                last = (r, round_owners[j])
        head = [_HITS_CURSOR if remaining else _HITS, _array_header(len(parts))]
        tail = [_MORE, pack(remaining)]
        if remaining:
            # A page always holds at least one hit (a hit is far smaller than the budget).
            assert last is not None
            tail += [_CURSOR, pack(encode_cursor(pivot, *last))]
        return b"".join((*head, *parts, *tail))
