"""The index's operations (PROTOCOL.md §4): register, auth, sync, search, ping, bye.

:class:`IndexService` holds the state the handlers share — the injected :class:`IndexStore`,
the in-memory :class:`KeywordIndex`, the password hasher, the login limits and the staged
uploads — and :meth:`IndexService.operations` gives the handler table for
:class:`netproto.server.Server`. Handlers do no socket I/O. Store calls run on two
single-thread executors: one for writes, so they are serialized and commit in the order they
were made, and one for reads, which WAL lets run beside a write.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography import x509

from indexd.keywords import MAX_HIT_FILES, KeywordIndex, PeerHits, prepare_hits
from indexd.passwords import PasswordHasher
from indexd.ratelimit import AttemptLimiter, BackoffPolicy
from indexd.staging import StagingLimits, SyncStaging
from indexd.store import (
    IndexStore,
    Listing,
    ListingChange,
    PeerOwned,
    PeerRecord,
    StaleListing,
    StoreError,
    UnknownUser,
)
from netproto.errors import (
    AuthFailed,
    Forbidden,
    Internal,
    NotFound,
    RequestError,
    UserExists,
    VersionMismatch,
)
from netproto.framing import DEFAULT_MAX_FRAME
from netproto.names import check_password
from netproto.operations import (
    AuthReply,
    ByeReply,
    Credentials,
    KeywordRequest,
    PeerRequest,
    PingReply,
    RegisterReply,
    SharedFile,
    SyncDeltaRequest,
    SyncReply,
    SyncRequest,
)
from netproto.server import Operation, PackedReply, RequestContext
from netproto.tls import certificate_dns_names
from netproto.tokens import TokenIssuer

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PEER_TTL = 120.0


@dataclass(frozen=True)
class IndexSettings:
    """Tunables of the index's behaviour (the daemon fills them from its flags)."""

    peer_ttl: float = DEFAULT_PEER_TTL
    max_frame: int = DEFAULT_MAX_FRAME
    max_hit_files: int = MAX_HIT_FILES
    user_backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    # An address may be shared by many users (NAT): more free attempts before backing off.
    address_backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(free=100))
    staging: StagingLimits = field(default_factory=StagingLimits)


def wire_error(exc: StoreError) -> RequestError:
    """The wire error a store refusal is answered with (the one place they are translated)."""
    if isinstance(exc, PeerOwned):
        return Forbidden("this domain_name belongs to another user")
    if isinstance(exc, UnknownUser):
        return Forbidden("the token's user is not registered")
    if isinstance(exc, StaleListing):
        return VersionMismatch("this peer has no listing to change; send it whole")
    return Internal()  # e.g. SchemaTooNew: refused at start-up, never reaches a handler


@functools.lru_cache(maxsize=4096)
def _keyword_request(keyword: str) -> KeywordRequest:
    return KeywordRequest.from_wire({"keyword": keyword})


def parse_search(body: dict[str, Any]) -> KeywordRequest:
    """:meth:`KeywordRequest.from_wire`, remembering recent valid keywords.

    Checking a keyword (Unicode categories, NFKC look-alikes, device names) costs more than
    the rest of a cached search; a search for a keyword checked before skips it (BENCHMARKS.md).
    Invalid keywords are not remembered, and any other body goes the full way.
    """
    keyword = body.get("keyword")
    if type(keyword) is str and len(body) == 1:
        return _keyword_request(keyword)
    return KeywordRequest.from_wire(body)


@functools.lru_cache(maxsize=1024)
def _certificate_names(cert: x509.Certificate) -> frozenset[str]:
    return frozenset(certificate_dns_names(cert))


class IndexService:
    """State and handlers of the index; :meth:`open` before serving, :meth:`close` after."""

    def __init__(
        self,
        store: IndexStore,
        issuer: TokenIssuer,
        hasher: PasswordHasher,
        settings: IndexSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.issuer = issuer
        self.hasher = hasher
        self.settings = settings or IndexSettings()
        self.clock = clock
        self.index = KeywordIndex(self.settings.peer_ttl, self.settings.max_frame)
        self.staging = SyncStaging(self.settings.staging)
        self.user_attempts = AttemptLimiter(self.settings.user_backoff)
        self.address_attempts = AttemptLimiter(self.settings.address_backoff)
        # Every domain name ever synced and its owner; withdrawn peers keep their owner.
        self.owners: dict[str, str] = {}
        #: The version of each listing acknowledged since this index started (PROTOCOL.md
        #: §4.3.1); in memory only, so after a restart every peer sends its listing whole once.
        self.versions: dict[str, int] = {}
        self._writes = ThreadPoolExecutor(1, thread_name_prefix="indexd-store-write")
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="indexd-store-read")
        # Numbered on the write thread, so the order of generations is the order of commits.
        self._generations: Iterator[int] = itertools.count(1)

    # -- life cycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Load owners and listings from the store into memory; make the dummy hash."""
        peers, listings = await self._write(self._load)
        self.owners = {p.domain_name: p.owner for p in peers}
        for prepared, generation in listings:
            self.index.apply(prepared, generation)
        await self.hasher.start()
        log.info("index loaded: %d peers known, %d listed", len(self.owners), len(self.index))

    def _load(self) -> tuple[list[PeerRecord], list[tuple[PeerHits, int]]]:
        peers = self.store.peers()
        listings = [
            (self._prepare(record, files), next(self._generations))
            for record, files in self.store.iter_listings()
        ]
        return peers, listings

    async def close(self) -> None:
        """Finish store work in progress and stop the worker threads."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._reads.shutdown(wait=True)
        self._writes.shutdown(wait=True)
        self.hasher.close()

    def sweep(self) -> None:
        """Drop expired staged uploads and decayed login counters (called now and then)."""
        now = self.clock()
        self.staging.expire(now)
        self.user_attempts.prune(now)
        self.address_attempts.prune(now)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._in_store(self._writes, fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._in_store(self._reads, fn, *args)

    @staticmethod
    async def _in_store(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        """Run a store call off the event loop; its refusals come back as wire errors."""
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except StoreError as exc:
            raise wire_error(exc) from exc

    def _prepare(self, record: PeerRecord, files: Iterable[SharedFile]) -> PeerHits:
        s = self.settings
        return prepare_hits(record, files, max_hit_files=s.max_hit_files, max_frame=s.max_frame)

    # -- checks -------------------------------------------------------------------------

    @staticmethod
    def _check_certificate(ctx: RequestContext, domain_name: str) -> None:
        """A client certificate, when presented, must name the domain name (PROTOCOL.md §4)."""
        if ctx.peer_cert is not None and domain_name not in _certificate_names(ctx.peer_cert):
            raise Forbidden("the client certificate does not name this domain_name")

    def _check_owner(self, user: str, domain_name: str) -> str | None:
        owner = self.owners.get(domain_name)
        if owner is not None and owner != user:
            raise Forbidden("this domain_name belongs to another user")
        return owner

    # -- handlers -----------------------------------------------------------------------

    async def handle_register(self, ctx: RequestContext, req: Credentials) -> RegisterReply:
        """Create a user: password 8–72 UTF-8 bytes, name unique case-insensitively."""
        password = check_password(req.password)
        if await self._read(self.store.password_hash, req.username) is not None:
            raise UserExists()
        hashed = await self.hasher.hash(password)
        if not await self._write(self.store.add_user, req.username, hashed, self.clock()):
            raise UserExists()
        log.info("registered user %s from %s", req.username, ctx.address)
        return RegisterReply(req.username)

    async def handle_auth(self, ctx: RequestContext, req: Credentials) -> AuthReply:
        """Check a password and issue a token; unknown user and wrong password look alike."""
        now = self.clock()
        user, address = req.username, ctx.address
        self.user_attempts.check(user, now)
        self.address_attempts.check(address, now)
        # Charged before the check, so parallel guesses are limited like sequential ones.
        self.user_attempts.charge(user, now)
        self.address_attempts.charge(address, now)
        try:
            hashed = await self._read(self.store.password_hash, user)
            ok = await self.hasher.verify(req.password.encode("utf-8", "surrogatepass"), hashed)
        except BaseException:
            self.user_attempts.refund(user, now)
            self.address_attempts.refund(address, now)
            raise
        if not ok:
            log.info("failed login for %s from %s", user, address)
            raise AuthFailed()
        self.user_attempts.reset(user)
        self.address_attempts.refund(address, self.clock())
        token, expires_at = self.issuer.issue(user)
        log.info("user %s logged in from %s", user, address)
        return AuthReply(token, expires_at)

    async def handle_sync(self, ctx: RequestContext, req: SyncRequest) -> SyncReply:
        """Replace the caller's listing for a domain name (one-shot, or the final part)."""
        user = ctx.subject
        self._check_certificate(ctx, req.domain_name)
        self._check_owner(user, req.domain_name)
        now = self.clock()
        files: tuple[SharedFile, ...]
        if req.part is None:
            files = req.files
        else:
            staged = self.staging.add(user, req, now)
            if staged.files is None:
                return SyncReply(staged.received)
            files = staged.files
        listing = Listing(
            user, req.domain_name, req.port_number, req.address or ctx.address, files, now
        )
        self.versions.pop(req.domain_name, None)  # a delta racing this sync must not apply
        count, prepared, generation = await self._write(self._commit_listing, listing)
        self.owners[req.domain_name] = user
        self.index.apply(prepared, generation)
        version = self.versions[req.domain_name] = _new_version()
        log.info("%s synced %s: %d files", user, req.domain_name, count)
        return SyncReply(count, version)

    async def handle_sync_delta(self, ctx: RequestContext, req: SyncDeltaRequest) -> SyncReply:
        """Change the caller's listing at version ``req.base``: entries put and removed
        (PROTOCOL.md §4.3.1); ``VERSION_MISMATCH`` unless that is the version listed now, at
        the same port and address."""
        user = ctx.subject
        name = req.domain_name
        self._check_certificate(ctx, name)
        self._check_owner(user, name)
        record = self.index.record(name)
        address = req.address or ctx.address
        if (
            record is None
            or self.versions.get(name) != req.base
            or (record.port_number, record.address) != (req.port_number, address)
        ):
            raise VersionMismatch()
        now = self.clock()
        change = ListingChange(user, name, req.files, req.removed, now)
        # The new version is taken now, so a second delta against the same base cannot apply.
        version = self.versions[name] = _new_version()
        try:
            count, touched, generation = await self._write(self._commit_change, change)
        except BaseException:
            if self.versions.get(name) == version:
                del self.versions[name]
            raise
        fresh = PeerRecord(name, user, req.port_number, address, now)
        hits = {kw: hit for kw, hit in self.index.hits_of(name).items() if kw not in touched}
        hits.update(self._prepare(fresh, [f for files in touched.values() for f in files]).hits)
        self.index.apply(PeerHits(fresh, hits), generation)
        log.info(
            "%s changed %s: %d put, %d removed; %d files",
            user,
            name,
            len(req.files),
            len(req.removed),
            count,
        )
        return SyncReply(count, version)

    def _commit_change(self, change: ListingChange) -> tuple[int, dict[str, list[SharedFile]], int]:
        count, touched = self.store.update_listing(change)
        return count, touched, next(self._generations)

    def _commit_listing(self, listing: Listing) -> tuple[int, PeerHits, int]:
        count = self.store.replace_listing(listing)
        generation = next(self._generations)
        record = PeerRecord(
            listing.domain_name,
            listing.owner,
            listing.port_number,
            listing.address,
            listing.seen_at,
        )
        return count, self._prepare(record, listing.unique_files()), generation

    def handle_search(self, ctx: RequestContext, req: KeywordRequest) -> PackedReply:
        """Live peers' files under a keyword, matched case-insensitively, from memory (an
        inline operation: answered as the request is read)."""
        return PackedReply(self.index.search(req.keyword, self.clock()))

    async def handle_ping(self, ctx: RequestContext, req: PeerRequest) -> PingReply:
        """Refresh the liveness of one of the caller's listed peers."""
        self._check_certificate(ctx, req.domain_name)
        if self._check_owner(ctx.subject, req.domain_name) is None:
            raise NotFound("no peer with this domain_name; sync first")
        # Liveness is soft state, kept in memory only, so a ping costs no disk write; after a
        # restart a peer counts as last seen at its last sync until it pings again.
        if not self.index.touch(req.domain_name, self.clock()):
            raise NotFound("this peer has no listing; sync first")
        return PingReply(req.domain_name, self.settings.peer_ttl)

    async def handle_bye(self, ctx: RequestContext, req: PeerRequest) -> ByeReply:
        """Withdraw one of the caller's peers from search (it keeps owning the name)."""
        self._check_certificate(ctx, req.domain_name)
        if self._check_owner(ctx.subject, req.domain_name) is None:
            raise NotFound("no peer with this domain_name")
        generation = await self._write(self._commit_withdraw, req.domain_name, ctx.subject)
        self.versions.pop(req.domain_name, None)
        self.index.remove(req.domain_name, generation)
        log.info("%s withdrew %s", ctx.subject, req.domain_name)
        return ByeReply(req.domain_name)

    def _commit_withdraw(self, domain_name: str, owner: str) -> int:
        self.store.withdraw(domain_name, owner)
        return next(self._generations)

    def operations(self) -> dict[str, Operation[Any]]:
        """The handler table for :class:`netproto.server.Server`."""
        return {
            "register": Operation(Credentials.from_wire, self.handle_register, needs_token=False),
            "auth": Operation(
                Credentials.from_wire, self.handle_auth, needs_token=False, proves=True
            ),
            "sync": Operation(SyncRequest.from_wire, self.handle_sync),
            "sync_delta": Operation(SyncDeltaRequest.from_wire, self.handle_sync_delta),
            "search": Operation(parse_search, self.handle_search, inline=True),
            "ping": Operation(PeerRequest.from_wire, self.handle_ping),
            "bye": Operation(PeerRequest.from_wire, self.handle_bye),
        }


def _new_version() -> int:
    """An opaque listing version: random, so one from before a restart never matches."""
    return secrets.randbits(62) + 1
