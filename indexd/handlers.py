"""The index's operations (PROTOCOL.md §4): register, auth, renew, sync, search, listing,
ping, bye.

:class:`IndexService` holds the state the handlers share — the injected :class:`IndexStore`,
the in-memory :class:`KeywordIndex`, the password hashers, the attempt and rate limits, the
staged uploads, the per-user quotas and the deny-list of ended sessions — and
:meth:`IndexService.operations` gives the handler table for :class:`netproto.server.Server`.
Handlers do no socket I/O. Store calls run on two single-thread executors: one for writes, so
they are serialized and commit in the order they were made, and one for reads, which WAL lets
run beside a write.

With a shared store (PostgreSQL, several index servers: PROTOCOL.md §11) the service also
listens to the other servers' commits and reloads what they changed, shares ping liveness in
batches, and keeps login attempt counters in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography import x509

from indexd.keywords import KeywordIndex, PeerHits, prepare_hits
from indexd.passwords import REGISTER_NICENESS, PasswordHasher
from indexd.ratelimit import AttemptLimiter, BackoffPolicy, BucketPolicy, RateBucket
from indexd.staging import StagingLimits, SyncStaging
from indexd.store import (
    AttemptCharge,
    IndexDatabase,
    Listener,
    Listing,
    ListingChange,
    PeerOwned,
    PeerRecord,
    StaleListing,
    StoreError,
    UnknownUser,
)
from netproto.admission import address_key
from netproto.errors import (
    AuthFailed,
    Forbidden,
    Internal,
    NotFound,
    RateLimited,
    RequestError,
    TokenInvalid,
    UserExists,
    VersionMismatch,
)
from netproto.framing import DEFAULT_MAX_FRAME
from netproto.names import check_password
from netproto.operations import (
    MAX_HIT_FILES,
    MAX_HOLDERS,
    MAX_LISTING_FILES,
    AuthReply,
    ByeReply,
    Credentials,
    HoldersReply,
    HoldersRequest,
    Holding,
    ListingReply,
    ListingRequest,
    PeerRequest,
    PingReply,
    RegisterReply,
    SearchRequest,
    SharedFile,
    SyncDeltaRequest,
    SyncReply,
    SyncRequest,
    parse_empty,
)
from netproto.server import Operation, PackedReply, RequestContext
from netproto.tls import certificate_dns_names
from netproto.tokens import LEEWAY, BindingChecker, Principal, SessionTokens, TokenIssuer

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PEER_TTL = 120.0
DEFAULT_MAX_DOMAINS_PER_USER = 4
DEFAULT_MAX_FILES_PER_USER = 200_000
#: ``holders`` and ``listing`` a user may send at once; then one every 50 ms (PROTOCOL.md §6).
DEFAULT_LOOKUP_BURST = 200
#: Peers' listings prepared per step of loading the index at start.
LOAD_BATCH = 256
#: Bytes a file of a ``listing`` reply may take at most (a 255-byte name, size, digest,
#: manifest digest and publisher signature).
_LISTED_FILE_BYTES = 450
#: Seconds between two exchanges of ping liveness with the shared store (PROTOCOL.md §11).
DEFAULT_LIVENESS_INTERVAL = 5.0
#: Extra seconds each liveness poll looks back: a batch written by another server up to this
#: late (a slow commit, clocks apart) is still read.
_LIVENESS_SLACK = 5.0


@dataclass(frozen=True)
class IndexSettings:
    """Tunables of the index's behaviour (the daemon fills them from its flags)."""

    peer_ttl: float = DEFAULT_PEER_TTL
    max_frame: int = DEFAULT_MAX_FRAME
    max_hit_files: int = MAX_HIT_FILES
    #: Logins per (username, client address): a stranger's guesses slow down only their own.
    login_backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    #: Logins per username from all addresses together: a high ceiling, so that many
    #: addresses together cannot guess a password either.
    user_backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(free=100))
    # An address may be shared by many users (NAT): more free attempts before backing off.
    address_backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(free=100))
    #: Registrations per client address (an IPv6 /64).
    register_backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(free=20))
    max_domains_per_user: int = DEFAULT_MAX_DOMAINS_PER_USER
    max_files_per_user: int = DEFAULT_MAX_FILES_PER_USER
    #: ``sync`` per user: one-shot syncs and first parts of uploads (PROTOCOL.md §4.3).
    sync_rate: BucketPolicy = field(default_factory=BucketPolicy)
    #: ``holders`` and ``listing`` per user: store reads on demand (PROTOCOL.md §4.9, §6).
    lookup_rate: BucketPolicy = field(
        default_factory=lambda: BucketPolicy(burst=DEFAULT_LOOKUP_BURST, interval=0.05)
    )
    staging: StagingLimits = field(default_factory=StagingLimits)
    #: With a shared store: how often pings are written and other servers' pings read.
    liveness_interval: float = DEFAULT_LIVENESS_INTERVAL


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
def _search_request(keyword: str) -> SearchRequest:
    return SearchRequest.from_wire({"keyword": keyword})


def parse_search(body: dict[str, Any]) -> SearchRequest:
    """:meth:`SearchRequest.from_wire`, remembering recent valid keywords.

    Checking a keyword (Unicode categories, NFKC look-alikes, device names) costs more than
    the rest of a cached search; a search for a keyword checked before skips it (BENCHMARKS.md).
    Invalid keywords are not remembered, and any other body (a cursor) goes the full way.
    """
    keyword = body.get("keyword")
    if type(keyword) is str and len(body) == 1:
        return _search_request(keyword)
    return SearchRequest.from_wire(body)


@functools.lru_cache(maxsize=1024)
def _certificate_names(cert: x509.Certificate) -> frozenset[str]:
    return frozenset(certificate_dns_names(cert))


class IndexService:
    """State and handlers of the index; :meth:`open` before serving, :meth:`close` after."""

    def __init__(
        self,
        store: IndexDatabase,
        issuer: TokenIssuer,
        hasher: PasswordHasher,
        settings: IndexSettings | None = None,
        *,
        register_hasher: PasswordHasher | None = None,
        clock: Callable[[], float] = time.time,
        shared: bool = False,
    ) -> None:
        self.store = store
        #: Other index servers write to the same store (PROTOCOL.md §11): listen to their
        #: changes, share liveness, and count login attempts in the store.
        self.shared = shared
        self.issuer = issuer
        self.hasher = hasher
        # Registrations hash apart from logins: their own thread, queue and lower priority.
        self.register_hasher = register_hasher or PasswordHasher(
            hasher.cost,
            concurrency=1,
            max_waiting=16,
            niceness=REGISTER_NICENESS,
            name="indexd-bcrypt-register",
        )
        self.settings = s = settings or IndexSettings()
        self.clock = clock
        self.index = KeywordIndex(s.peer_ttl, s.max_frame)
        self.staging = SyncStaging(s.staging)
        self.login_attempts = AttemptLimiter(s.login_backoff)
        self.user_attempts = AttemptLimiter(s.user_backoff)
        self.address_attempts = AttemptLimiter(s.address_backoff)
        self.register_attempts = AttemptLimiter(s.register_backoff)
        self.sync_rate = RateBucket(s.sync_rate)
        self.lookup_rate = RateBucket(s.lookup_rate)
        self._holders_turn = 0  # which owner the next holders reply starts with
        self.binding = BindingChecker()
        # Every domain name ever synced and its owner; withdrawn peers keep their owner.
        self.owners: dict[str, str] = {}
        self.domains: dict[str, set[str]] = {}  # the other way round
        self.listed: dict[str, int] = {}  # files listed per domain name
        #: The version of each listing acknowledged since this index started (PROTOCOL.md
        #: §4.3.1); in memory only, so after a restart every peer sends its listing whole once.
        self.versions: dict[str, int] = {}
        self._committing: Counter[str] = Counter()  # files per user in commits under way
        #: Sessions ended by ``bye``, until their last token expires (PROTOCOL.md §8).
        self.revoked: dict[str, float] = {}
        #: Checks every token-bearing request passes besides its token: refusals of disabled
        #: users and revoked certificates (:mod:`indexd.enroll`, PROTOCOL.md §10).
        self.gates: list[Callable[[RequestContext, Principal], None]] = []
        self._writes = ThreadPoolExecutor(1, thread_name_prefix="indexd-store-write")
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="indexd-store-read")
        # Password look-ups have a thread (and store connection) of their own: a flood of
        # other reads (listing, holders) cannot delay a login behind it.
        self._logins = ThreadPoolExecutor(1, thread_name_prefix="indexd-store-login")
        # Numbered on the write thread, so the order of generations is the order of commits.
        self._generations: Iterator[int] = itertools.count(1)
        # -- a shared store (PROTOCOL.md §11) --
        self._listener: Listener | None = None
        self._liveness: asyncio.Task[None] | None = None
        #: Pings answered since the last batch was written: domain name -> when.
        self._seen: dict[str, float] = {}
        self._reloading: set[str] = set()  # names being read from the store now
        self._again: set[str] = set()  # ...and to be read once more after that
        #: While a whole load runs: names changed meanwhile, reloaded after it.
        self._deferred: set[str] | None = None
        self._reload_all: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- life cycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Load owners, listings and ended sessions into memory; make the dummy hash. With a
        shared store, listen first (so no change made meanwhile is missed) and start sharing
        liveness."""
        loop = asyncio.get_running_loop()
        if self.shared:
            self._deferred = set()
            self._listener = await loop.run_in_executor(
                None, self.store.listen, functools.partial(self._heard, loop)
            )
        peers, revoked = await self._write(self._load_records, self.clock())
        for p in peers:
            self._own(p.domain_name, p.owner)
        # A batch at a time: only one batch of prepared hits waits beside the index being
        # built (BENCHMARKS.md, the index's memory per 10^6 listed files).
        listings = await self._write(self.store.iter_listings)
        while batch := await self._write(self._prepare_batch, listings):
            for prepared, generation, count in batch:
                self.index.apply(prepared, generation)
                self.listed[prepared.record.domain_name] = count
        self.revoked = revoked
        if self.shared:
            self._replay_deferred()
            self._liveness = asyncio.create_task(self._share_liveness())
        await self.hasher.start()
        log.info("index loaded: %d peers known, %d listed", len(self.owners), len(self.index))

    def _load_records(self, now: float) -> tuple[list[PeerRecord], dict[str, float]]:
        self.store.prune_revoked(now)
        return self.store.peers(), self.store.revoked_sessions(now)

    def _prepare_batch(
        self, listings: Iterator[tuple[PeerRecord, list[SharedFile]]]
    ) -> list[tuple[PeerHits, int, int]]:
        return [
            (self._prepare(record, files), next(self._generations), len(files))
            for record, files in itertools.islice(listings, LOAD_BATCH)
        ]

    async def close(self) -> None:
        """Stop listening, finish store work in progress and stop the worker threads."""
        loop = asyncio.get_running_loop()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await loop.run_in_executor(None, listener.close)
        tasks = [t for t in (self._liveness, self._reload_all, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._seen:  # the last pings' liveness, for the other servers
            seen, self._seen = self._seen, {}
            with contextlib.suppress(Exception):
                await self._write(self.store.record_seen, seen)
        await loop.run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._reads.shutdown(wait=True)
        self._logins.shutdown(wait=True)
        self._writes.shutdown(wait=True)
        self.hasher.close()
        self.register_hasher.close()

    def sweep(self) -> None:
        """Drop expired uploads, decayed counters and ended sessions' expired entries."""
        now = self.clock()
        self.staging.expire(now)
        for limiter in (
            self.login_attempts,
            self.user_attempts,
            self.address_attempts,
            self.register_attempts,
        ):
            limiter.prune(now)
        self.sync_rate.prune(now)
        self.lookup_rate.prune(now)
        expired = [s for s, until in self.revoked.items() if until <= now]
        for session in expired:
            del self.revoked[session]
        if expired:
            self._writes.submit(self.store.prune_revoked, now).add_done_callback(_log_failure)
        if self.shared:  # the store's counters have no bound of their own
            self._writes.submit(self.store.attempts_prune, now).add_done_callback(_log_failure)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._in_store(self._writes, fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._in_store(self._reads, fn, *args)

    async def _password_hash(self, username: str) -> bytes | None:
        return await self._in_store(self._logins, self.store.password_hash, username)

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

    def _own(self, domain_name: str, user: str) -> None:
        self.owners[domain_name] = user
        self.domains.setdefault(user, set()).add(domain_name)

    def _disown(self, domain_name: str, user: str) -> None:
        if self.owners.get(domain_name) == user:
            del self.owners[domain_name]
            names = self.domains.get(user, set())
            names.discard(domain_name)
            if not names:
                self.domains.pop(user, None)

    # -- several index servers on one store (PROTOCOL.md §11) ---------------------------

    def _heard(self, loop: asyncio.AbstractEventLoop, payload: str | None) -> None:
        """The store's notification callback, on its listening thread: hop to the loop."""
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody to tell
            loop.call_soon_threadsafe(self._changed, payload)

    def _changed(self, payload: str | None) -> None:
        """A change committed to the store (by any server): bring memory up to date."""
        if payload is None:  # notifications were lost for a while: anything may have changed
            if self._reload_all is None:
                self._reload_all = self._spawn(self._reload_everything())
            return
        kind, _, arg = payload.partition(" ")
        if kind == "revoked":
            # Every token of a session expires within the token TTL (the same on every server
            # of a deployment) and the leeway: refused here at once, no store read needed.
            until = self.clock() + self.issuer.ttl + LEEWAY
            self.revoked[arg] = max(until, self.revoked.get(arg, until))
        elif kind == "listing":  # another server's commit: the store passes over our own
            self._reload(arg)
        else:
            log.warning("unknown database notification %r", payload[:80])

    def _reload(self, domain_name: str) -> None:
        """Read one peer from the store and apply it; bursts for one name are coalesced."""
        # Another server changed it: a delta based on this server's version must not apply.
        self.versions.pop(domain_name, None)
        if self._deferred is not None:
            self._deferred.add(domain_name)
        elif domain_name in self._reloading:
            self._again.add(domain_name)
        else:
            self._reloading.add(domain_name)
            self._spawn(self._reload_peer(domain_name))

    async def _reload_peer(self, name: str) -> None:
        try:
            while True:
                self._again.discard(name)
                loaded = await self._read(self._read_peer, name)
                if self._deferred is not None:  # a whole load began meanwhile: after it
                    self._deferred.add(name)
                    return
                self._apply_loaded(name, *loaded)
                if name not in self._again:
                    return
        except Exception:
            log.exception("could not reload %s from the database", name)
        finally:
            self._reloading.discard(name)

    def _read_peer(self, name: str) -> tuple[int, PeerRecord | None, PeerHits | None, int]:
        # Numbered before the read: a commit numbered later may be newer than what is read.
        generation = next(self._generations)
        found = self.store.listing_of(name)
        if found is None:
            return generation, self.store.peer(name), None, 0
        record, files = found
        return generation, record, self._prepare(record, files), len(files)

    def _apply_loaded(
        self, name: str, generation: int, record: PeerRecord | None, hits: PeerHits | None, n: int
    ) -> None:
        if record is not None:
            self._own(name, record.owner)
        before = self.index.record(name)
        if hits is None:
            if self.index.remove(name, generation):
                self.listed[name] = 0
            return
        if self.index.apply(hits, generation):
            self.listed[name] = n
            if before is not None:  # pings heard here and not yet in the store still count
                self.index.touch(name, before.last_seen)

    async def _reload_everything(self) -> None:
        """After lost notifications: load every peer again and swap it in (as :meth:`open`)."""
        try:
            # Names being reloaded now may be read after the load's snapshot: again after it.
            self._deferred = (self._deferred or set()) | self._reloading
            generation, peers, listings, revoked = await self._read(self._read_all, self.clock())
            for p in peers:
                self._own(p.domain_name, p.owner)
            listed = set()
            for prepared, count in listings:
                name = prepared.record.domain_name
                listed.add(name)
                before = self.index.record(name)
                if self.index.apply(prepared, generation):
                    self.listed[name] = count
                    if before is not None:
                        self.index.touch(name, before.last_seen)
            for p in peers:
                if p.domain_name not in listed and self.index.remove(p.domain_name, generation):
                    self.listed[p.domain_name] = 0
            for session, until in revoked.items():
                self.revoked[session] = max(until, self.revoked.get(session, until))
            self.versions.clear()
            log.info("index reloaded: %d peers known, %d listed", len(self.owners), len(self.index))
        except Exception:
            log.exception("could not reload the index from the database")
        finally:
            self._reload_all = None
            self._replay_deferred()

    def _read_all(
        self, now: float
    ) -> tuple[int, list[PeerRecord], list[tuple[PeerHits, int]], dict[str, float]]:
        generation = next(self._generations)  # before the read, as in _read_peer
        peers = self.store.peers()
        listings = [
            (self._prepare(r, files), len(files)) for r, files in self.store.iter_listings()
        ]
        return generation, peers, listings, self.store.revoked_sessions(now)

    def _replay_deferred(self) -> None:
        deferred, self._deferred = self._deferred or set(), None
        for name in deferred:
            self._reload(name)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _share_liveness(self) -> None:
        """Every ``liveness_interval``: write the pings answered here in one batch, and
        touch the peers that pinged other servers (PROTOCOL.md §11)."""
        interval = self.settings.liveness_interval
        since = self.clock() - interval - _LIVENESS_SLACK
        while True:
            await asyncio.sleep(interval)
            try:
                seen, self._seen = self._seen, {}
                if seen:
                    try:
                        await self._write(self.store.record_seen, seen)
                    except BaseException:
                        self._seen = {**seen, **self._seen}  # next time, then
                        raise
                polled = self.clock()
                elsewhere = await self._read(self.store.seen_since, since)
                since = polled - interval - _LIVENESS_SLACK
                now = self.clock()
                for name, when in elsewhere.items():
                    record = self.index.record(name)
                    if record is not None and when > record.last_seen:
                        self.index.seen_at(name, when, now)
            except Exception as exc:  # the store is away: try again next time
                log.warning("could not share liveness with the database: %s", exc)

    # -- checks -------------------------------------------------------------------------

    def _authorize(self, ctx: RequestContext) -> Principal:
        """The request's principal, once its token is bound to the certificate presented (if
        it is bound at all) and its session has not ended (PROTOCOL.md §8)."""
        principal = ctx.principal
        assert principal is not None, "only for operations that need a token"
        self.binding.check(principal, ctx.peer_cert)
        if self.revoked and principal.session_id in self.revoked:
            raise TokenInvalid("this session has ended (bye); log in again")
        for gate in self.gates:
            gate(ctx, principal)
        return principal

    @staticmethod
    def _check_certificate(ctx: RequestContext, domain_name: str) -> None:
        """A client certificate naming the domain name is required (PROTOCOL.md §4.5)."""
        if ctx.peer_cert is None:
            raise Forbidden("sync, ping and bye need a client certificate naming the domain_name")
        if domain_name not in _certificate_names(ctx.peer_cert):
            raise Forbidden("the client certificate does not name this domain_name")

    def _check_owner(self, user: str, domain_name: str) -> str | None:
        owner = self.owners.get(domain_name)
        if owner is not None and owner != user:
            raise Forbidden("this domain_name belongs to another user")
        return owner

    def _files_in_use(self, user: str, domain_name: str) -> int:
        """Files ``user`` lists under its other names, stages, or is committing now."""
        listed = sum(self.listed.get(d, 0) for d in self.domains.get(user, ()) if d != domain_name)
        return listed + self.staging.user_files(user) + self._committing[user]

    # -- handlers -----------------------------------------------------------------------

    async def handle_register(self, ctx: RequestContext, req: Credentials) -> RegisterReply:
        """Create a user: password 8–72 UTF-8 bytes, name unique case-insensitively."""
        now, where = self.clock(), address_key(ctx.address)
        self.register_attempts.check(where, now)
        self.register_attempts.charge(where, now)
        password = check_password(req.password)
        if await self._password_hash(req.username) is not None:
            raise UserExists()
        hashed = await self.register_hasher.hash(password)
        if not await self._write(self.store.add_user, req.username, hashed, self.clock()):
            raise UserExists()
        log.info("registered user %s from %s", req.username, ctx.address)
        return RegisterReply(req.username)

    async def handle_auth(self, ctx: RequestContext, req: Credentials) -> AuthReply:
        """Check a password and issue the session's tokens; unknown user and wrong password
        look alike."""
        if self.shared:
            return await self._shared_auth(ctx, req)
        now = self.clock()
        user, where = req.username, address_key(ctx.address)
        limits = (
            (self.login_attempts, f"{user} {where}"),
            (self.user_attempts, user),
            (self.address_attempts, where),
        )
        wait = max(limiter.retry_after(key, now) for limiter, key in limits)
        if wait > 0:
            raise RateLimited(retry_after=math.ceil(wait * 1000) / 1000)
        for limiter, key in limits:
            limiter.admit(key, now)  # a full table refuses before anything is charged
        # Charged before the check, so parallel guesses are limited like sequential ones.
        for limiter, key in limits:
            limiter.charge(key, now)
        try:
            hashed = await self._password_hash(user)
            ok = await self.hasher.verify(req.password.encode("utf-8", "surrogatepass"), hashed)
        except BaseException:
            for limiter, key in limits:
                limiter.refund(key, now)
            raise
        if not ok:
            log.info("failed login for %s from %s", user, ctx.address)
            raise AuthFailed()
        now = self.clock()
        self.login_attempts.reset(limits[0][1])
        self.user_attempts.refund(user, now)
        self.address_attempts.refund(where, now)
        tokens = self.issuer.issue_session(user, ctx.peer_cert)
        log.info("user %s logged in from %s", user, ctx.address)
        return _auth_reply(tokens)

    async def _shared_auth(self, ctx: RequestContext, req: Credentials) -> AuthReply:
        """:meth:`handle_auth` with its attempt counters in the shared store, so that the
        index servers together allow what one would (PROTOCOL.md §11); the same arithmetic."""
        s, now = self.settings, self.clock()
        user, where = req.username, address_key(ctx.address)
        login_key = f"login {user} {where}"
        charges: list[AttemptCharge] = [
            (login_key, s.login_backoff),
            (f"user {user}", s.user_backoff),
            (f"address {where}", s.address_backoff),
        ]
        # Charged before the check, so parallel guesses are limited like sequential ones.
        wait = await self._in_store(self._logins, self.store.attempts_charge, charges, now)
        if wait > 0:
            raise RateLimited(retry_after=math.ceil(wait * 1000) / 1000)
        try:
            hashed = await self._password_hash(user)
            ok = await self.hasher.verify(req.password.encode("utf-8", "surrogatepass"), hashed)
        except BaseException:
            self._logins.submit(self.store.attempts_refund, charges, now).add_done_callback(
                _log_failure
            )
            raise
        if not ok:
            log.info("failed login for %s from %s", user, ctx.address)
            raise AuthFailed()
        now = self.clock()
        await self._in_store(self._logins, self.store.attempts_reset, [login_key])
        await self._in_store(self._logins, self.store.attempts_refund, charges[1:], now)
        tokens = self.issuer.issue_session(user, ctx.peer_cert)
        log.info("user %s logged in from %s", user, ctx.address)
        return _auth_reply(tokens)

    async def handle_renew(self, ctx: RequestContext, req: None) -> AuthReply:
        """Fresh tokens of the same session for a certificate-bound token: a running peer
        stays logged in without its password (so a login lockout cannot knock it off)."""
        principal = self._authorize(ctx)
        if principal.thumbprint is None:
            raise Forbidden("renew needs a token bound to a client certificate; log in again")
        if await self._password_hash(principal.subject) is None:
            raise Forbidden("the token's user is not registered")
        tokens = self.issuer.issue_session(
            principal.subject, ctx.peer_cert, session=principal.session_id
        )
        return _auth_reply(tokens)

    async def handle_sync(self, ctx: RequestContext, req: SyncRequest) -> SyncReply:
        """Replace the caller's listing for a domain name (one-shot, or the final part)."""
        user = self._authorize(ctx).subject
        name = req.domain_name
        self._check_certificate(ctx, name)
        s = self.settings
        claiming = self._check_owner(user, name) is None
        if claiming and len(self.domains.get(user, ())) >= s.max_domains_per_user:
            raise Forbidden(f"a user may own at most {s.max_domains_per_user} domain names")
        if self._files_in_use(user, name) + len(req.files) > s.max_files_per_user:
            if req.part is not None:
                self.staging.discard(user, req.part.upload)
            raise Forbidden(f"a user may list at most {s.max_files_per_user} files")
        now = self.clock()
        if req.part is None or req.part.seq == 0:
            self.sync_rate.take(user, now)
        files: tuple[SharedFile, ...]
        if req.part is None:
            files = req.files
        else:
            staged = self.staging.add(user, req, now)
            if staged.files is None:
                return SyncReply(staged.received)
            files = staged.files
        listing = Listing(user, name, req.port_number, req.address or ctx.address, files, now)
        # Claimed and counted before the commit, so concurrent syncs cannot pass the limits
        # together.
        if claiming:
            self._own(name, user)
        self._committing[user] += len(files)
        self.versions.pop(name, None)  # a delta racing this sync must not apply
        try:
            count, prepared, generation = await self._write(self._commit_listing, listing)
        except BaseException:
            if claiming and name not in self.index:
                self._disown(name, user)
            raise
        finally:
            self._committing[user] -= len(files)
            if self._committing[user] <= 0:
                del self._committing[user]
        self._own(name, user)
        self.listed[name] = count
        self.index.apply(prepared, generation)
        version = self.versions[name] = _new_version()
        log.info("%s synced %s: %d files", user, name, count)
        return SyncReply(count, version)

    async def handle_sync_delta(self, ctx: RequestContext, req: SyncDeltaRequest) -> SyncReply:
        """Change the caller's listing at version ``req.base``: entries put and removed
        (PROTOCOL.md §4.3.1); ``VERSION_MISMATCH`` unless that is the version listed now, at
        the same port and address."""
        user = self._authorize(ctx).subject
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
        s = self.settings
        if self._files_in_use(user, name) + self.listed.get(name, 0) + len(req.files) > (
            s.max_files_per_user
        ):
            raise Forbidden(f"a user may list at most {s.max_files_per_user} files")
        now = self.clock()
        self.sync_rate.take(user, now)  # a delta is a sync: the same per-user rate (§4.3)
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
        self.listed[name] = count
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

    def handle_search(self, ctx: RequestContext, req: SearchRequest) -> PackedReply:
        """A page of live peers' hits under a keyword, matched case-insensitively, from
        memory (an inline operation: answered as the request is read)."""
        self._authorize(ctx)
        return PackedReply(self.index.search(req.keyword, self.clock(), req.cursor))

    async def handle_listing(self, ctx: RequestContext, req: ListingRequest) -> ListingReply:
        """A page of one live peer's files under a keyword: the rest of a search hit."""
        user = self._authorize(ctx).subject
        self.lookup_rate.take(user, self.clock())
        if not self.index.is_live(req.domain_name, self.clock()):
            raise NotFound("no live peer with this domain_name")
        limit = min(
            MAX_LISTING_FILES, max(1, (self.settings.max_frame - 1024) // _LISTED_FILE_BYTES)
        )
        total, files = await self._read(
            self.store.listing_page, req.domain_name, req.keyword, req.offset, limit
        )
        if not total:
            raise NotFound("this peer lists no file under this keyword")
        return ListingReply(req.domain_name, req.keyword, total, req.offset, tuple(files))

    async def handle_holders(self, ctx: RequestContext, req: HoldersRequest) -> HoldersReply:
        """The live peers holding a content, whatever its name or keyword (PROTOCOL.md §4.9):
        one entry per peer, owners dealt in turn from a rotating first one."""
        user = self._authorize(ctx).subject
        self.lookup_rate.take(user, self.clock())
        rows = await self._read(self.store.holders, req.sha256)
        now = self.clock()
        by_owner: dict[str, list[Holding]] = {}
        # Liveness before the limit: stale peers take no place in the reply.
        for peer, f in sorted(rows, key=lambda row: row[0].domain_name):
            if self.index.is_live(peer.domain_name, now):
                holding = Holding(
                    peer.domain_name, peer.port_number, peer.address, f.keyword, f.listed()
                )
                by_owner.setdefault(peer.owner, []).append(holding)
        turn, self._holders_turn = self._holders_turn, self._holders_turn + 1
        return HoldersReply(req.sha256, deal_fairly(by_owner, turn, MAX_HOLDERS))

    async def handle_ping(self, ctx: RequestContext, req: PeerRequest) -> PingReply:
        """Refresh the liveness of one of the caller's listed peers."""
        user = self._authorize(ctx).subject
        self._check_certificate(ctx, req.domain_name)
        if self._check_owner(user, req.domain_name) is None:
            raise NotFound("no peer with this domain_name; sync first")
        # Liveness is soft state, kept in memory, so a ping costs no disk write; after a
        # restart a peer counts as last seen at its last sync until it pings again. With a
        # shared store, the pings go to it in one batch every few seconds (PROTOCOL.md §11).
        now = self.clock()
        if not self.index.touch(req.domain_name, now):
            raise NotFound("this peer has no listing; sync first")
        if self.shared:
            self._seen[req.domain_name] = now
        return PingReply(req.domain_name, self.settings.peer_ttl)

    async def handle_bye(self, ctx: RequestContext, req: PeerRequest) -> ByeReply:
        """Withdraw one of the caller's peers from search (it keeps owning the name) and end
        the session: its tokens are refused from now on, also after a restart."""
        principal = self._authorize(ctx)
        user = principal.subject
        self._check_certificate(ctx, req.domain_name)
        if self._check_owner(user, req.domain_name) is None:
            raise NotFound("no peer with this domain_name")
        # Every token of the session expires by then: renew is refused once it has ended.
        until = self.clock() + self.issuer.ttl + LEEWAY
        session = principal.session_id
        generation = await self._write(self._commit_withdraw, req.domain_name, user, session, until)
        self.revoked[session] = max(until, self.revoked.get(session, until))
        self.listed[req.domain_name] = 0
        self.versions.pop(req.domain_name, None)
        self.index.remove(req.domain_name, generation)
        log.info("%s withdrew %s and ended its session", user, req.domain_name)
        return ByeReply(req.domain_name)

    def _commit_withdraw(self, domain_name: str, owner: str, session: str, until: float) -> int:
        self.store.withdraw(domain_name, owner)
        self.store.revoke_session(session, until)
        return next(self._generations)

    def operations(self) -> dict[str, Operation[Any]]:
        """The handler table for :class:`netproto.server.Server`."""
        return {
            "register": Operation(Credentials.from_wire, self.handle_register, needs_token=False),
            "auth": Operation(
                Credentials.from_wire, self.handle_auth, needs_token=False, proves=True
            ),
            "renew": Operation(parse_empty, self.handle_renew),
            "sync": Operation(SyncRequest.from_wire, self.handle_sync),
            "sync_delta": Operation(SyncDeltaRequest.from_wire, self.handle_sync_delta),
            "search": Operation(parse_search, self.handle_search, inline=True),
            "listing": Operation(ListingRequest.from_wire, self.handle_listing),
            "holders": Operation(HoldersRequest.from_wire, self.handle_holders),
            "ping": Operation(PeerRequest.from_wire, self.handle_ping),
            "bye": Operation(PeerRequest.from_wire, self.handle_bye),
        }


def deal_fairly(by_owner: dict[str, list[Holding]], turn: int, limit: int) -> tuple[Holding, ...]:
    """At most ``limit`` holdings, dealt in rounds (each owner's r-th peer in round r), the
    owners ordered by first domain name and turned to start at ``turn``: no owner's many
    peers or low-sorting names crowd the others out."""
    groups = sorted(by_owner.values(), key=lambda g: g[0].domain_name)
    if not groups:
        return ()
    start = turn % len(groups)
    groups = groups[start:] + groups[:start]
    dealt: list[Holding] = []
    for r in range(max(len(g) for g in groups)):
        for group in groups:
            if r < len(group):
                dealt.append(group[r])
                if len(dealt) == limit:
                    return tuple(dealt)
    return tuple(dealt)


def _new_version() -> int:
    """An opaque listing version: random, so one from before a restart never matches."""
    return secrets.randbits(62) + 1


def _auth_reply(tokens: SessionTokens) -> AuthReply:
    return AuthReply(tokens.token, tokens.expires_at, tokens.peer_token)


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("a background store write failed: %s", future.exception())
