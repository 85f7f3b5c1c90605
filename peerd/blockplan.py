"""Which block to ask of whom: the pure bookkeeping of a multi-source download.

:class:`BlockMap` is the set of verified blocks (kept as a bitmap beside the partial file, so
a resumed download neither fetches nor hashes them again). :class:`BlockPlan` hands out runs of
blocks in file order from a given start (wrapping), takes back the blocks of a peer that
failed, and at the end (the endgame) gives a block still in flight to a second peer, so that
one slow peer cannot hold up the last blocks. No I/O and no clock: :mod:`peerd.swarm` drives it.
"""

from __future__ import annotations

from collections.abc import Iterable


class BlockMap:
    """A bitmap of ``count`` blocks: set once a block is verified and written."""

    def __init__(self, count: int, bits: bytes | None = None) -> None:
        self.count = count
        size = (count + 7) // 8
        self._bits = bytearray(bits if bits is not None and len(bits) == size else size)
        if count % 8 and self._bits:
            self._bits[-1] &= (1 << (count % 8)) - 1  # no bits past the last block
        self.done = sum(bin(b).count("1") for b in self._bits)

    def __contains__(self, index: int) -> bool:
        return bool(self._bits[index >> 3] & (1 << (index & 7)))

    def add(self, index: int) -> None:
        """Mark block ``index`` verified."""
        if index not in self:
            self._bits[index >> 3] |= 1 << (index & 7)
            self.done += 1

    @property
    def complete(self) -> bool:
        """True once every block is verified."""
        return self.done == self.count

    def to_bytes(self) -> bytes:
        """The bitmap as bytes (block ``i`` is bit ``i % 8`` of byte ``i // 8``)."""
        return bytes(self._bits)


class BlockPlan:
    """Blocks still wanted, handed out in order from ``start`` (wrapping), per peer."""

    def __init__(self, have: BlockMap, start: int = 0) -> None:
        self.have = have
        count = have.count
        order = [(start + i) % count for i in range(count)] if count else []
        self._queue = [b for b in order if b not in have]
        self._queue.reverse()  # pop() from the end takes the next block in order
        #: block → the peers it is being fetched from now
        self.in_flight: dict[int, set[str]] = {}

    @property
    def complete(self) -> bool:
        """True once every block is verified."""
        return self.have.complete

    @property
    def unassigned(self) -> int:
        """Blocks not yet asked of any peer."""
        return len(self._queue)

    def take(self, peer: str, most: int) -> list[int]:
        """Up to ``most`` consecutive blocks nobody was asked for yet (fewer at a wrap)."""
        run: list[int] = []
        while self._queue and len(run) < most:
            block = self._queue[-1]
            if block in self.have:
                self._queue.pop()
                continue
            if run and block != run[-1] + 1:
                break
            self._queue.pop()
            run.append(block)
            self.in_flight.setdefault(block, set()).add(peer)
        return run

    def endgame(self, peer: str) -> list[int]:
        """One block in flight at another peer only, to ask of ``peer`` too (the endgame:
        nothing is left unassigned); empty when there is none."""
        if self._queue:
            return []
        for block, peers in sorted(self.in_flight.items()):
            if peer not in peers and len(peers) == 1 and block not in self.have:
                peers.add(peer)
                return [block]
        return []

    def finished(self, peer: str, block: int) -> set[str]:
        """Block ``block`` arrived from ``peer`` verified; the other peers still asked for it."""
        self.have.add(block)
        others = self.in_flight.pop(block, set())
        others.discard(peer)
        return others

    def give_back(self, peer: str, blocks: Iterable[int]) -> None:
        """``peer`` will not deliver ``blocks``: those nobody else has in flight are queued
        again, first in line."""
        again: list[int] = []
        for block in blocks:
            peers = self.in_flight.get(block)
            if peers is None or peer not in peers:
                continue
            peers.discard(peer)
            if not peers:
                del self.in_flight[block]
                if block not in self.have:
                    again.append(block)
        self._queue.extend(sorted(again, reverse=True))


__all__ = ["BlockMap", "BlockPlan"]
