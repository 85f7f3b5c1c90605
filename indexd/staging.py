"""Multi-part sync (PROTOCOL.md §4.3): parts of one upload are staged until the final one.

Parts are keyed by (user, upload id). They must come in order (``seq`` 0, 1, 2, ...) with the
same ``domain_name``, ``port_number`` and ``address``; the final part hands the whole listing
over to be committed in one transaction. Staging is bounded per upload, per user and in
total, and an upload not continued within ``ttl`` seconds is dropped. Staged parts live in
memory only: an upload interrupted by a restart of the index is started again by the client.
Sans-I/O: time is passed in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from netproto.errors import BadRequest, Busy, NotFound
from netproto.operations import SharedFile, SyncRequest


@dataclass(frozen=True)
class StagingLimits:
    """Bounds on staged uploads."""

    max_upload_files: int = 500_000
    max_user_files: int = 500_000
    max_user_uploads: int = 4
    max_total_files: int = 2_000_000
    ttl: float = 300.0


@dataclass(frozen=True, slots=True)
class StagedPart:
    """What adding a part gave: files received so far, and the whole share once final."""

    received: int
    files: tuple[SharedFile, ...] | None = None


@dataclass(slots=True)
class _Upload:
    user: str
    domain_name: str
    port_number: int
    address: str | None
    updated: float
    next_seq: int = 0
    files: list[SharedFile] = field(default_factory=list)


class SyncStaging:
    """The uploads in progress, bounded and expiring."""

    def __init__(self, limits: StagingLimits | None = None) -> None:
        self.limits = limits or StagingLimits()
        self._uploads: dict[tuple[str, bytes], _Upload] = {}
        self._user_files: Counter[str] = Counter()
        self._user_uploads: Counter[str] = Counter()
        self._total = 0

    @property
    def staged_files(self) -> int:
        """Files held across all uploads in progress."""
        return self._total

    def __len__(self) -> int:
        return len(self._uploads)

    def user_files(self, user: str) -> int:
        """Files ``user`` has staged across its uploads in progress."""
        return self._user_files.get(user, 0)

    def expire(self, now: float) -> int:
        """Drop uploads not continued within the TTL; return how many were dropped."""
        cutoff = now - self.limits.ttl
        stale = [key for key, up in self._uploads.items() if up.updated <= cutoff]
        for key in stale:
            self.discard(*key)
        return len(stale)

    def discard(self, user: str, upload: bytes) -> None:
        """Forget an upload (expired, refused, or committed)."""
        up = self._uploads.pop((user, upload), None)
        if up is None:
            return
        self._total -= len(up.files)
        self._user_files[user] -= len(up.files)
        self._user_uploads[user] -= 1
        if self._user_uploads[user] <= 0:
            del self._user_uploads[user]
            del self._user_files[user]

    def add(self, user: str, req: SyncRequest, now: float) -> StagedPart:
        """Stage one part; the final one returns the whole share and ends the upload."""
        part = req.part
        if part is None:
            raise ValueError("not a multi-part sync request")
        limits = self.limits
        self.expire(now)
        key = (user, part.upload)
        up = self._uploads.get(key)
        if part.seq == 0:
            if up is not None:
                raise BadRequest("part.seq: upload already started; use a fresh upload id")
            if self._user_uploads[user] >= limits.max_user_uploads:
                raise Busy(f"at most {limits.max_user_uploads} uploads in progress per user")
            up = _Upload(user, req.domain_name, req.port_number, req.address, now)
        else:
            if up is None:
                raise NotFound("part.upload: unknown or expired upload; start again at seq 0")
            if part.seq != up.next_seq:
                raise BadRequest(f"part.seq: expected {up.next_seq}, got {part.seq}")
            if (req.domain_name, req.port_number, req.address) != (
                up.domain_name,
                up.port_number,
                up.address,
            ):
                raise BadRequest(
                    "part: domain_name, port_number and address must be the same in every part"
                )
        n = len(req.files)
        if len(up.files) + n > limits.max_upload_files:
            self.discard(*key)
            raise BadRequest(f"part: an upload may list at most {limits.max_upload_files} files")
        if (
            self._user_files[user] + n > limits.max_user_files
            or self._total + n > limits.max_total_files
        ):
            raise Busy("too many files staged; retry the part later")
        if part.seq == 0:
            self._uploads[key] = up
            self._user_uploads[user] += 1
        up.files.extend(req.files)
        up.next_seq += 1
        up.updated = now
        self._user_files[user] += n
        self._total += n
        received = len(up.files)
        if not part.final:
            return StagedPart(received)
        files = tuple(up.files)
        self.discard(*key)
        return StagedPart(received, files)
