"""The in-memory keyword index that answers ``search`` without touching SQLite or a thread.

Each live peer's listing is kept as one search hit per (case-folded) keyword, built off the
event loop when a sync commits (:func:`prepare_hits`): the peer's first ``max_hit_files`` files
under the keyword in file-name order (at most a sixteenth of the reply budget in bytes) and
``total``, how many it lists in all; ``listing`` serves the rest from the store. A search ranks
the hits of the peers still within the liveness TTL and caches the ranking per keyword until a
sync, a ``bye`` or a peer coming back changes it, or an included peer goes stale.

Memory (BENCHMARKS.md, ``index_memory``): a hit is held *packed* — one msgpack array of its
values without the field names, ``[total, filename, size, digests, filename, ...]`` where
``digests`` is the ``sha256`` (then the ``manifest`` and ``signature``, PROTOCOL.md §4.8) in
one ``bin``, behind the length the hit will take in a reply — and the peer's own fields
(``domain_name``, ``port_number``, ``address``) are encoded once per peer, not once per hit.
A published file's entry is then about 165 bytes instead of 210. A ranking expands the hits
it puts on a page into their reply form (PROTOCOL.md §4.2) and keeps them while it is cached,
so a cached search costs what it did before; when a sync drops it, it is kept as it is (no
copy) for the next ranking of the keyword, which re-expands only the hits of peers that synced.
Only the hits of pages served are expanded: every hit when they all fit on one page, else those
of the pages asked for; a keyword of one owner keeps its page alone. The rankings, what they
hold and the dropped ones kept cost at most :data:`MAX_CACHED_BYTES`, each charged its expanded
bytes and :data:`HIT_OVERHEAD` per hit; the least recently searched go first.

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
import logging
import struct
import sys
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from indexd.store import PeerRecord, keyword_key
from netproto.codec import pack, unpack_map
from netproto.errors import BadFrame, BadRequest, RequestError
from netproto.framing import DEFAULT_MAX_FRAME
from netproto.names import canonical_domain_name
from netproto.operations import MAX_CURSOR, MAX_HIT_FILES, SHA256_SIZE, SharedFile

log = logging.getLogger(__name__)

# Room for the reply envelope {"id": <u32>, "ok": true, "body": ...} around the body.
REPLY_ENVELOPE = 32
# Room in a page for the body map around the hits: its header, "hits" and the array header,
# "more" and its count, "cursor" and the largest cursor.
PAGE_ALLOWANCE = 64 + MAX_CURSOR
MAX_CACHED_REPLIES = 10_000
#: Bytes the cached rankings cost at most, all keywords together (BENCHMARKS.md,
#: ``index_memory``: what a warm index adds to a cold one).
MAX_CACHED_BYTES = 8 << 20
#: What a ranking costs per hit besides the hit's bytes: its place in the ranking's six lists
#: (8 bytes each) and its size (an int object), rounded up.
HIT_OVERHEAD = 96
#: What a ranking costs besides its hits: the object and its lists' headers.
RANKING_OVERHEAD = 1024
MAX_ROUNDS = 1_000_000  # bound on a cursor's round number

_HITS = b"\x82" + pack("hits")  # a page with no cursor: {"hits": [...], "more": 0}
_HITS_CURSOR = b"\x83" + pack("hits")
_MORE = pack("more")
_NO_MORE = _MORE + pack(0)
_CURSOR = pack("cursor")
_FILES = pack("files")
#: A packed hit starts with the length of its expanded tail (``total`` on, no peer fields).
_TAIL_LENGTH = struct.Struct(">I")
#: What a file's entry in a reply weighs over its packed entry (``filename``, ``size`` and its
#: digests as one ``bin``): the map header and field names, and for a published file the two
#: more ``bin`` headers of the digests split in three.
_PLAIN_EXTRA = len(pack({"filename": "", "size": 0, "sha256": bytes(32)})) - len(
    pack("") + pack(0) + pack(bytes(32))
)
_PUBLISHED_EXTRA = len(
    pack(
        {
            "filename": "",
            "size": 0,
            "sha256": bytes(32),
            "manifest": bytes(32),
            "signature": bytes(64),
        }
    )
) - len(pack("") + pack(0) + pack(bytes(128)))


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
    """A peer's listing prepared for search: one packed hit per folded keyword (opaque; see
    the module docstring)."""

    record: PeerRecord
    hits: dict[str, bytes]


def prepare_hits(
    record: PeerRecord,
    files: Iterable[SharedFile],
    *,
    max_hit_files: int = MAX_HIT_FILES,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> PeerHits:
    """Pack a peer's files as search hits, one per folded keyword (pure; may run off-loop)."""
    max_hit_bytes = reply_budget(max_frame) // 16
    head = len(peer_head(record))
    groups: dict[str, list[SharedFile]] = {}
    for f in files:
        # Lengths are checked on the way in (PROTOCOL.md §4.8) and the packed form relies on
        # them; a stored row that breaks them is left out of search, not fatal.
        if not _well_formed(f):
            log.warning(
                "%s: a listed file's digests have the wrong length; not searchable",
                record.domain_name,
            )
            continue
        groups.setdefault(keyword_key(f.keyword), []).append(f)
    hits: dict[str, bytes] = {}
    for kw, group in groups.items():
        group.sort(key=lambda f: (f.filename, f.keyword))
        total = pack(len(group))
        # Sizes as the reply will carry the hit (the largest array header counted), so the
        # byte bound is the one of PROTOCOL.md §4.2.
        fixed = head + len(total) + len(_FILES) + 5
        body = 0
        entries: list[bytes] = []
        for f in group[:max_hit_files]:
            if f.manifest is not None and f.signature is not None:
                digests = f.sha256 + f.manifest + f.signature
                # The array header is left out: every entry is three values.
                entry = pack((f.filename, f.size, digests))[1:]
                size = len(entry) + _PUBLISHED_EXTRA
            else:
                entry = pack((f.filename, f.size, f.sha256))[1:]
                size = len(entry) + _PLAIN_EXTRA
            if fixed + body + size > max_hit_bytes:
                break
            entries.append(entry)
            body += size
        expanded = len(total) + len(_FILES) + len(_array_header(len(entries))) + body
        # One flat array: total, then filename, size and digests of each file. The keyword is
        # interned: every peer's hit under it shares one key string.
        hits[sys.intern(kw)] = b"".join(
            (_TAIL_LENGTH.pack(expanded), _array_header(1 + 3 * len(entries)), total, *entries)
        )
    return PeerHits(record, hits)


def _well_formed(f: SharedFile) -> bool:
    if len(f.sha256) != SHA256_SIZE:
        return False
    if f.manifest is None or f.signature is None:
        return True
    return len(f.manifest) == SHA256_SIZE and len(f.signature) == 64


def peer_head(record: PeerRecord) -> bytes:
    """The start of each of the peer's hits: its own fields, up to the key ``total``."""
    return (
        b"\x85"
        + pack("domain_name")
        + pack(record.domain_name)
        + pack("port_number")
        + pack(record.port_number)
        + pack("address")
        + pack(record.address)
        + pack("total")
    )


def expanded_size(head: bytes, hit: bytes) -> int:
    """Bytes the packed ``hit`` takes in a reply, behind the peer's ``head``."""
    size: int = _TAIL_LENGTH.unpack_from(hit)[0]
    return len(head) + size


def expand_hit(head: bytes, hit: bytes) -> bytes:
    """The search hit (PROTOCOL.md §4.2) of a packed hit, behind the peer's ``head``."""
    # Bytes this module packed itself, not wire input: no codec checks needed.
    values = msgpack.unpackb(memoryview(hit)[_TAIL_LENGTH.size :], use_list=False)
    files = [
        {"filename": name, "size": size, "sha256": digests}
        if len(digests) == 32
        else {
            "filename": name,
            "size": size,
            "sha256": digests[:32],
            "manifest": digests[32:64],
            "signature": digests[64:],
        }
        for name, size, digests in zip(values[1::3], values[2::3], values[3::3], strict=True)
    ]
    return b"".join((head, pack(values[0]), _FILES, pack(files)))


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
    head: bytes  # peer_head(record): shared by all the peer's hits
    keywords: tuple[str, ...]
    generation: int


@dataclass(slots=True)
class _Ranking:
    """The live hits of one keyword, dealt in rounds (see the module docstring)."""

    keyword: str
    #: Round r: the owners' r-th peers' hits, and the owners (by first domain name), in order.
    #: A hit is expanded (its reply form) once a page has carried it, packed until then.
    parts: list[list[bytes]]
    owners: list[list[str]]
    #: Each hit's size in a reply (a hit is expanded when it has that length: packed, it is
    #: always shorter, lacking at least its peer's fields), its peer, its peer's head and its
    #: packed form (to tell, once the ranking is dropped, which expanded hits still hold).
    sizes: list[list[int]]
    names: list[list[str]]
    heads: list[list[bytes]]
    packed: list[list[bytes]]
    count: int
    #: Every hit fits on one page (then no budget is checked, and every hit is expanded).
    fits: bool
    valid_until: float
    epoch: int
    #: The first page when there is one owner only: nothing to rotate, so it is kept.
    fixed: bytes | None = None
    #: Bytes of expanded hits (and of ``fixed``) held: counted in ``max_cached_bytes``.
    held: int = 0

    @property
    def cost(self) -> int:
        """What the ranking counts for in ``max_cached_bytes``."""
        return self.held + RANKING_OVERHEAD + HIT_OVERHEAD * self.count

    @property
    def pivots(self) -> list[str]:
        """Every owner, by first domain name (round 0 has them all)."""
        return self.owners[0] if self.owners else []


class KeywordIndex:
    """Live peers' hits by folded keyword, with their rankings cached per keyword."""

    def __init__(
        self,
        peer_ttl: float,
        max_frame: int = DEFAULT_MAX_FRAME,
        *,
        max_cached_bytes: int = MAX_CACHED_BYTES,
    ) -> None:
        self.peer_ttl = peer_ttl
        self.max_frame = max_frame
        self.max_cached_bytes = max_cached_bytes
        self._budget = reply_budget(max_frame) - PAGE_ALLOWANCE
        self._peers: dict[str, _Peer] = {}
        #: The generation each withdrawn name was removed at: a listing read before the
        #: removal (a reload racing a ``bye``) must not bring it back. At most one entry per
        #: name ever listed; a newer listing of the name clears it.
        self._removed: dict[str, int] = {}
        self._by_keyword: dict[str, dict[str, bytes]] = {}
        #: Least recently searched first.
        self._cache: OrderedDict[str, _Ranking] = OrderedDict()
        #: Rankings dropped by a sync or a ``bye``, oldest first: ranking the keyword again
        #: reuses the expanded hits whose peer has the same head and packed hit since, so a
        #: sync re-expands only its own hits.
        self._kept: OrderedDict[str, _Ranking] = OrderedDict()
        self._cached_bytes = 0  # the cost of the cached rankings and of the kept ones
        # Bumped when a stale peer comes back: any cached ranking may have left it out.
        self._epoch = 0
        self._turn = 0  # which owner the next first page starts with (modulo their number)

    def __len__(self) -> int:
        return len(self._peers)

    @property
    def cached_bytes(self) -> int:
        """What the cached rankings and the kept ones cost (:attr:`_Ranking.cost`): at most
        ``max_cached_bytes``, besides the ranking being used."""
        return self._cached_bytes

    def __contains__(self, domain_name: object) -> bool:
        return domain_name in self._peers

    def record(self, domain_name: str) -> PeerRecord | None:
        """The listed peer's record (with its current ``last_seen``), or None."""
        peer = self._peers.get(domain_name)
        return peer.record if peer is not None else None

    def hits_of(self, domain_name: str) -> dict[str, bytes]:
        """A listed peer's packed hits by folded keyword (to replace only some of them)."""
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
        record = prepared.record
        name = record.domain_name
        old = self._peers.get(name)
        head: bytes | None = None
        if self._removed.get(name, -1) > generation:
            return False
        self._removed.pop(name, None)
        if old is not None:
            if old.generation > generation:
                return False
            self._drop(name, old)
            if (old.record.port_number, old.record.address) == (
                record.port_number,
                record.address,
            ):
                # The same head object: the hits a delta leaves as they were stay reusable.
                head = old.head
        for kw, hit in prepared.hits.items():
            self._by_keyword.setdefault(kw, {})[name] = hit
            self._uncache(kw)
        if head is None:
            head = peer_head(record)
        self._peers[name] = _Peer(record, head, tuple(prepared.hits), generation)
        return True

    def remove(self, domain_name: str, generation: int) -> bool:
        """Withdraw a peer's listing (``bye``), unless a newer listing is already there."""
        old = self._peers.get(domain_name)
        if old is not None and old.generation > generation:
            return False
        self._removed[domain_name] = max(generation, self._removed.get(domain_name, generation))
        if old is None:
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
                    peers = None
            # Kept only while another peer's hits could be reused.
            self._uncache(kw, keep=peers is not None)
            if peers is None:
                self._unkeep(kw)

    def _uncache(self, kw: str, *, keep: bool = True) -> None:
        """Drop the ranking of ``kw``, keeping it (by reference) for the next ranking of the
        keyword if it holds expanded hits (unless not ``keep``)."""
        ranking = self._cache.pop(kw, None)
        if ranking is None:
            return
        self._cached_bytes -= ranking.cost
        if not keep or ranking.fixed is not None or not ranking.held:
            return
        self._unkeep(kw)
        self._kept[kw] = ranking
        self._cached_bytes += ranking.cost
        self._trim()

    def _unkeep(self, kw: str) -> _Ranking | None:
        ranking = self._kept.pop(kw, None)
        if ranking is not None:
            self._cached_bytes -= ranking.cost
        return ranking

    def _hold(self, ranking: _Ranking, size: int) -> None:
        """Count ``size`` more bytes held by ``ranking`` and trim the cache."""
        ranking.held += size
        if self._cache.get(ranking.keyword) is not ranking:
            return  # dropped already: what it holds goes with it
        self._cached_bytes += size
        self._trim()

    def _trim(self) -> None:
        """While the cache costs more than ``max_cached_bytes``, drop the oldest kept
        rankings, then the least recently searched (even the one in use, if it alone is over:
        the search under way still uses it, the next one ranks again)."""
        while self._cached_bytes > self.max_cached_bytes and self._kept:
            self._unkeep(next(iter(self._kept)))
        while self._cached_bytes > self.max_cached_bytes and self._cache:
            self._uncache(next(iter(self._cache)), keep=False)

    def touch(self, domain_name: str, now: float) -> bool:
        """Mark a listed peer as seen now (``ping``); False if it is not listed."""
        return self.seen_at(domain_name, now, now)

    def seen_at(self, domain_name: str, when: float, now: float) -> bool:
        """Mark a listed peer as seen at ``when``, which may be past (a ping another index
        server answered, PROTOCOL.md §11); cached rankings that left it out as stale at
        ``now`` are dropped. False if it is not listed."""
        peer = self._peers.get(domain_name)
        if peer is None:
            return False
        record = peer.record  # a new record, the same head: only last_seen changes
        if record.last_seen + self.peer_ttl <= now < when + self.peer_ttl:
            self._epoch += 1  # it comes back to life: cached rankings left it out
        peer.record = PeerRecord(
            record.domain_name,
            record.owner,
            record.port_number,
            record.address,
            max(when, record.last_seen),
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
            self._uncache(kw)
            if len(self._cache) >= MAX_CACHED_REPLIES:
                self._uncache(next(iter(self._cache)), keep=False)
            ranking = self._rank(kw, now)
        else:
            self._cache.move_to_end(kw)
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

    def _reusable(self, kw: str) -> dict[str, tuple[bytes, bytes, bytes]]:
        """The expanded hits of the kept ranking of ``kw``, by peer, with the head and the
        packed hit they were expanded from (the ranking is no longer kept)."""
        kept = self._unkeep(kw)
        if kept is None:
            return {}
        reusable: dict[str, tuple[bytes, bytes, bytes]] = {}
        for parts, sizes, names, heads, packed in zip(
            kept.parts, kept.sizes, kept.names, kept.heads, kept.packed, strict=True
        ):
            for j, hit in enumerate(parts):
                if len(hit) == sizes[j]:
                    reusable[names[j]] = (heads[j], packed[j], hit)
        return reusable

    def _rank(self, kw: str, now: float) -> _Ranking:
        """Rank the live hits of ``kw`` and cache the ranking."""
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
        sizes: list[list[int]] = [[] for _ in range(rounds)]
        peer_names: list[list[str]] = [[] for _ in range(rounds)]
        heads: list[list[bytes]] = [[] for _ in range(rounds)]
        packed: list[list[bytes]] = [[] for _ in range(rounds)]
        reusable = self._reusable(kw)
        total = held = 0
        for names in groups:
            for r, name in enumerate(names):
                head, hit = peers[name].head, hits[name]
                size = expanded_size(head, hit)
                packed[r].append(hit)
                old = reusable.get(name)
                if old is not None and old[0] is head and old[1] is hit:
                    hit = old[2]  # expanded from this very hit behind this very head
                    held += size
                parts[r].append(hit)
                owners[r].append(names[0])
                sizes[r].append(size)
                peer_names[r].append(name)
                heads[r].append(head)
                total += size
        fits = total <= self._budget
        ranking = _Ranking(
            kw,
            parts,
            owners,
            sizes,
            peer_names,
            heads,
            packed,
            sum(map(len, parts)),
            fits,
            valid_until,
            self._epoch,
        )
        self._cache[kw] = ranking
        self._cached_bytes += ranking.cost
        if len(groups) <= 1:
            # Nothing to rotate: the first page is kept, its hits packed again.
            fixed = self._page(ranking, groups[0][0] if groups else "", 0, None, keep=False)
            ranking.fixed = fixed
            ranking.parts = [list(round_packed) for round_packed in packed]
            self._hold(ranking, len(fixed))
            return ranking
        if fits:
            # At most a page of hits: all expanded now, so the first page is a join.
            for round_parts, round_sizes, round_heads in zip(parts, sizes, heads, strict=True):
                for j, hit in enumerate(round_parts):
                    if len(hit) != round_sizes[j]:
                        round_parts[j] = expand_hit(round_heads[j], hit)
            held = total
        self._hold(ranking, held)
        return ranking

    def _page(
        self, ranking: _Ranking, pivot: str, round_: int, after: str | None, *, keep: bool = True
    ) -> bytes:
        """The page of hits that starts in ``round_`` after ``after``'s (or at the start of
        the round), owners turned to start at ``pivot``; the hits it expands stay expanded
        in the ranking if ``keep``."""
        parts: list[bytes] = []
        used = 0
        last: tuple[int, str] | None = None
        remaining = 0
        full = False
        budget = self._budget
        expanded = 0
        for r in range(round_, len(ranking.parts)):
            round_owners = ranking.owners[r]
            i = bisect.bisect_left(round_owners, pivot)
            order = list(range(i, len(round_owners))) + list(range(i))
            if r == round_ and after is not None:
                # Skip the owners up to ``after`` in this round's turned order.
                turned = [(round_owners[j] < pivot, round_owners[j]) for j in order]
                order = order[bisect.bisect_right(turned, (after < pivot, after)) :]
            round_sizes = ranking.sizes[r]
            round_parts = ranking.parts[r]
            for j in order:
                if full:
                    remaining += 1
                    continue
                size = round_sizes[j]
                if used + size > budget:
                    full = True
                    remaining += 1
                    continue
                hit = round_parts[j]
                if len(hit) != size:
                    hit = expand_hit(ranking.heads[r][j], hit)
                    if keep:
                        round_parts[j] = hit
                        expanded += size
                parts.append(hit)
                used += size
                last = (r, round_owners[j])
        if expanded:
            self._hold(ranking, expanded)
        head = [_HITS_CURSOR if remaining else _HITS, _array_header(len(parts))]
        tail = [_MORE, pack(remaining)]
        if remaining:
            # A page always holds at least one hit (a hit is far smaller than the budget).
            assert last is not None
            tail += [_CURSOR, pack(encode_cursor(pivot, *last))]
        return b"".join((*head, *parts, *tail))
