"""The in-memory keyword index that answers ``search`` without touching SQLite or a thread.

Each live peer's listing is kept as one msgpack-encoded search hit per (case-folded) keyword,
built off the event loop when a sync commits (:func:`prepare_hits`). A search joins the hits of
the peers still within the liveness TTL into an encoded reply body and caches it per keyword
until a sync, a ``bye`` or a peer coming back changes it, or an included peer goes stale.

Reply bounds (PROTOCOL.md §4.2): a hit lists at most ``max_hit_files`` files (in file-name order)
and at most a quarter of the reply budget in bytes; hits go in domain-name order, and a hit that
would take the whole reply past ``max_frame`` is left out, so a reply always fits in one frame.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from indexd.store import PeerRecord, keyword_key
from netproto.codec import pack
from netproto.framing import DEFAULT_MAX_FRAME
from netproto.operations import SharedFile

MAX_HIT_FILES = 1000
# Room for the reply envelope {"id": <u32>, "ok": true, "body": ...} around the body.
REPLY_ENVELOPE = 32
MAX_CACHED_REPLIES = 10_000


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
    max_hit_bytes = reply_budget(max_frame) // 4
    head = (
        b"\x84"
        + pack("domain_name")
        + pack(record.domain_name)
        + pack("port_number")
        + pack(record.port_number)
        + pack("address")
        + pack(record.address)
        + pack("files")
    )
    groups: dict[str, list[SharedFile]] = {}
    for f in files:
        groups.setdefault(keyword_key(f.keyword), []).append(f)
    hits: dict[str, bytes] = {}
    for kw, group in groups.items():
        group.sort(key=lambda f: (f.filename, f.keyword))
        entries: list[bytes] = []
        used = len(head) + 5
        for f in group[:max_hit_files]:
            entry = pack({"filename": f.filename, "size": f.size, "sha256": f.sha256})
            if used + len(entry) > max_hit_bytes:
                break
            entries.append(entry)
            used += len(entry)
        hits[kw] = b"".join((head, _array_header(len(entries)), *entries))
    return PeerHits(record, hits)


@dataclass(slots=True)
class _Peer:
    record: PeerRecord
    keywords: tuple[str, ...]
    generation: int


@dataclass(frozen=True, slots=True)
class _CachedReply:
    body: bytes
    valid_until: float
    epoch: int


class KeywordIndex:
    """Live peers' hits by folded keyword, with encoded replies cached per keyword."""

    def __init__(self, peer_ttl: float, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.peer_ttl = peer_ttl
        self.max_frame = max_frame
        self._budget = reply_budget(max_frame)
        self._peers: dict[str, _Peer] = {}
        self._by_keyword: dict[str, dict[str, bytes]] = {}
        self._cache: dict[str, _CachedReply] = {}
        # Bumped when a stale peer comes back: any cached reply may have left it out.
        self._epoch = 0

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
            self._epoch += 1  # it was left out of cached replies; they are stale now
        peer.record = PeerRecord(
            record.domain_name,
            record.owner,
            record.port_number,
            record.address,
            max(now, record.last_seen),
            record.withdrawn,
        )
        return True

    def search(self, keyword: str, now: float) -> bytes:
        """The encoded reply body for ``keyword``: hits of peers seen within the TTL."""
        kw = keyword_key(keyword)
        cached = self._cache.get(kw)
        if cached is not None and now < cached.valid_until and cached.epoch == self._epoch:
            return cached.body
        body, valid_until = self._build(kw, now)
        if len(self._cache) >= MAX_CACHED_REPLIES:
            del self._cache[next(iter(self._cache))]
        self._cache[kw] = _CachedReply(body, valid_until, self._epoch)
        return body

    def _build(self, kw: str, now: float) -> tuple[bytes, float]:
        hits = self._by_keyword.get(kw)
        valid_until = float("inf")
        if not hits:
            return _array_header(0), valid_until
        parts: list[bytes] = []
        used = 5
        ttl = self.peer_ttl
        for name in sorted(hits):
            record = self._peers[name].record
            expires = record.last_seen + ttl
            if expires <= now:
                continue
            hit = hits[name]
            if used + len(hit) > self._budget:
                continue
            parts.append(hit)
            used += len(hit)
            valid_until = min(valid_until, expires)
        return b"".join((_array_header(len(parts)), *parts)), valid_until
