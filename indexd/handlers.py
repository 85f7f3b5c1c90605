"""The index's operations (PROTOCOL.md §4): register, auth, renew, sync, search, listing,
ping, bye.

:class:`IndexService` holds the state the handlers share — the injected :class:`IndexStore`,
the in-memory :class:`KeywordIndex`, the password hashers, the attempt and rate limits, the
staged uploads, the per-user quotas and the deny-list of ended sessions — and
:meth:`IndexService.operations` gives the handler table for :class:`netproto.server.Server`.
Handlers do no socket I/O. Store calls run on single-thread executors: one for writes, so
they are serialized and commit in the order they were made; one for reads (``listing``,
``holders``, ``renew``), which WAL lets run beside a write; one for password look-ups and login
counters, so no flood of other reads delays a login; and, with a shared store, one for
reloading what other servers changed. A write and the memory update after it run as one
step that a client going away cannot cut in two (:meth:`IndexService._shielded`).

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
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

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
    SharedDatabase,
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
#: Seconds a user found active is taken to be so by ``renew`` with a shared store: the
#: enrollment gates' refresh interval (indexd.enroll), after which a disabled user is refused.
ACTIVE_USER_TTL = 1.0
#: Login counter keys whose wait the store returned, remembered at most (then: ask it).
MAX_KNOWN_WAITS = 100_000
#: Waits between attempts of a whole reload that failed (the database away), in seconds.
RELOAD_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0)


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


class LoginLimits(Protocol):
    """The attempt counters a login passes (PROTOCOL.md §4.1): one per (user, address), one
    per user, one per address. :meth:`IndexService.handle_auth` drives either kind the same
    way: charge, check the password, then give back (an error) or forget (a success)."""

    async def charge(self, user: str, where: str, now: float) -> float:
        """Charge one attempt to every counter and return 0; or, if any must still wait,
        charge none and return the longest wait (seconds)."""
        ...

    def refund(self, user: str, where: str, now: float) -> None:
        """Give back a charged attempt that ended in an error, not an answer; never waits
        (the request may be being cancelled)."""
        ...

    async def succeeded(self, user: str, where: str, now: float) -> None:
        """A correct password: forget the (user, address) counter and give back the charge
        of the user's and the address's."""
        ...

    def prune(self, now: float) -> None:
        """Drop counters that no longer count (the sweep)."""
        ...


class MemoryLoginLimits:
    """:class:`LoginLimits` in this process's :class:`AttemptLimiter` tables (one index
    server): plain calls, no thread and no store."""

    def __init__(self, login: AttemptLimiter, user: AttemptLimiter, address: AttemptLimiter):
        self.login, self.user, self.address = login, user, address

    def _keyed(self, user: str, where: str) -> tuple[tuple[AttemptLimiter, str], ...]:
        return ((self.login, f"{user} {where}"), (self.user, user), (self.address, where))

    async def charge(self, user: str, where: str, now: float) -> float:
        """See :meth:`LoginLimits.charge`; :class:`RateLimited` if a table is full."""
        keyed = self._keyed(user, where)
        wait = max(limiter.retry_after(key, now) for limiter, key in keyed)
        if wait > 0:
            return wait
        for limiter, key in keyed:
            limiter.admit(key, now)  # a full table refuses before anything is charged
        for limiter, key in keyed:
            limiter.charge(key, now)
        return 0.0

    def refund(self, user: str, where: str, now: float) -> None:
        """See :meth:`LoginLimits.refund`."""
        for limiter, key in self._keyed(user, where):
            limiter.refund(key, now)

    async def succeeded(self, user: str, where: str, now: float) -> None:
        """See :meth:`LoginLimits.succeeded`."""
        self.login.reset(f"{user} {where}")
        self.user.refund(user, now)
        self.address.refund(where, now)

    def prune(self, now: float) -> None:
        """See :meth:`LoginLimits.prune`."""
        for limiter in (self.login, self.user, self.address):
            limiter.prune(now)


class StoreLoginLimits:
    """:class:`LoginLimits` in the shared store's counters, so that the index servers
    together allow what one would (PROTOCOL.md §11.1); the same arithmetic. Charges run on
    the login thread; the waits the store returned are remembered and refused from memory,
    without a store call, until they end (a flood of refused guesses costs the store
    nothing)."""

    def __init__(
        self,
        store: SharedDatabase,
        settings: IndexSettings,
        logins: ThreadPoolExecutor,
        writes: ThreadPoolExecutor,
    ) -> None:
        self.store, self.settings = store, settings
        self._logins = logins
        self._writes = writes  # the prune: a slow one never delays a login
        #: The waits the store returned, per counter key: until when.
        self.known_waits: dict[str, float] = {}

    def _charges(self, user: str, where: str) -> list[AttemptCharge]:
        s = self.settings
        return [
            (f"login {user} {where}", s.login_backoff),
            (f"user {user}", s.user_backoff),
            (f"address {where}", s.address_backoff),
        ]

    async def charge(self, user: str, where: str, now: float) -> float:
        """See :meth:`LoginLimits.charge`."""
        charges = self._charges(user, where)
        wait = max(self.known_waits.get(key, 0.0) for key, _ in charges) - now
        if wait > 0:
            return wait
        wait, blocked = await _in_store(self._logins, self._charge, charges, now)
        if len(self.known_waits) < MAX_KNOWN_WAITS:
            self.known_waits.update(blocked)
        return wait

    def _charge(self, charges: list[AttemptCharge], now: float) -> tuple[float, dict[str, float]]:
        """:meth:`SharedDatabase.attempts_charge`; on a refusal also which keys wait until
        when (one more read, once per wait: then it is known in memory)."""
        wait = self.store.attempts_charge(charges, now)
        if wait <= 0:
            return wait, {}
        states = self.store.attempts_get([key for key, _ in charges])
        return wait, {k: s.blocked_until for k, s in states.items() if s.blocked_until > now}

    def refund(self, user: str, where: str, now: float) -> None:
        """See :meth:`LoginLimits.refund`: queued on the login thread, not awaited."""
        charges = self._charges(user, where)
        self._logins.submit(self.store.attempts_refund, charges, now).add_done_callback(
            _log_failure
        )

    async def succeeded(self, user: str, where: str, now: float) -> None:
        """See :meth:`LoginLimits.succeeded`: one trip to the login thread."""
        await _in_store(self._logins, self._succeeded, self._charges(user, where), now)

    def _succeeded(self, charges: list[AttemptCharge], now: float) -> None:
        self.store.attempts_reset([charges[0][0]])
        self.store.attempts_refund(charges[1:], now)

    def prune(self, now: float) -> None:
        """See :meth:`LoginLimits.prune`: the store's counters have no bound of their own."""
        self._writes.submit(self.store.attempts_prune, now).add_done_callback(_log_failure)
        for key in [k for k, until in self.known_waits.items() if until <= now]:
            del self.known_waits[key]


async def _in_store(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    """Run a store call off the event loop; its refusals come back as wire errors."""
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    except StoreError as exc:
        raise wire_error(exc) from exc


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
    ) -> None:
        self.store = store
        #: The store's refusals and failures: a background task that meets one tries again.
        self._failures: tuple[type[Exception], ...] = (StoreError, RequestError, *store.failures)
        #: Other index servers may write to the same store (PROTOCOL.md §11): listen to their
        #: changes, share liveness, and count login attempts in the store.
        self.shared = isinstance(store, SharedDatabase)
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
        self._active_users: dict[str, float] = {}  # user -> when found active (renew)
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
        #: The login counters: in this process's memory, or with a shared store in the
        #: store, so that every index server counts the same attempts (PROTOCOL.md §11.1).
        self.login_limits: LoginLimits = (
            StoreLoginLimits(store, s, self._logins, self._writes)
            if isinstance(store, SharedDatabase)
            else MemoryLoginLimits(self.login_attempts, self.user_attempts, self.address_attempts)
        )
        # Numbered on the write thread, so the order of generations is the order of commits.
        self._generations: Iterator[int] = itertools.count(1)
        #: Writes under way with the memory update after them (:meth:`_shielded`).
        self._commits: set[asyncio.Task[Any]] = set()
        self._closing = False  # close() has begun: start nothing new
        # -- a shared store (PROTOCOL.md §11) --
        # Reloads of other servers' changes: a thread of their own, so a flood of listing
        # and holders reads cannot hold them back.
        self._reloads = ThreadPoolExecutor(1, thread_name_prefix="indexd-store-reload")
        self._listener: Listener | None = None
        self._liveness: asyncio.Task[None] | None = None
        #: Pings answered since the last batch was written: domain name -> when.
        self._seen: dict[str, float] = {}
        #: Names to read from the store again, all in one batch per round of the reloader.
        self._pending: set[str] = set()
        self._reloader: asyncio.Task[None] | None = None
        #: While a whole load runs: names changed meanwhile, reloaded after it.
        self._deferred: set[str] | None = None
        self._opening = False  # open() is loading: a whole reload waits for its end
        self._whole_wanted = False  # a whole reload is due (again)
        self._reload_all: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- life cycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Load owners, listings and ended sessions into memory; make the dummy hash. With a
        shared store, listen first (so no change made meanwhile is missed) and start sharing
        liveness."""
        loop = asyncio.get_running_loop()
        if self.shared:
            # Changes heard while loading wait for its end (PROTOCOL.md §11.1, Start); so
            # does a whole reload after a lost notification connection.
            self._opening = True
            self._deferred = set()
            self._listener = await loop.run_in_executor(
                None, self.store.listen, functools.partial(self._heard, loop)
            )
        await self._load(self._writes, prune=True)
        if self.shared:
            self._opening = False
            if self._whole_wanted:
                self._reload_all = self._spawn(self._reload_everything())
            else:
                self._replay_deferred()
            self._liveness = asyncio.create_task(self._share_liveness())
        await self.hasher.start()
        log.info("index loaded: %d peers known, %d listed", len(self.owners), len(self.index))

    async def _load(self, executor: ThreadPoolExecutor, *, prune: bool = False) -> set[str]:
        """Read every peer, enrolled name, listing and ended session and put them in place
        of memory's; the names whose listing a newer change in memory kept out (to read
        again, alone). The listings come a batch at a time: only one batch of prepared hits
        waits beside the index (BENCHMARKS.md, the index's memory per 10^6 listed files),
        and requests are served between two batches."""
        loop = asyncio.get_running_loop()
        generation, peers, enrolled, revoked = await loop.run_in_executor(
            executor, self._load_records, self.clock(), prune
        )
        for p in peers:
            self._own(p.domain_name, p.owner)
        for name, user in enrolled.items():
            self._own(name, user)
        refused: set[str] = set()
        listed: set[str] = set()
        listings = await loop.run_in_executor(executor, self.store.iter_listings)
        try:
            while batch := await loop.run_in_executor(executor, self._prepare_batch, listings):
                for prepared, count in batch:
                    name = prepared.record.domain_name
                    listed.add(name)
                    if not self._put(prepared, generation, count):
                        refused.add(name)
        finally:
            if isinstance(listings, Generator):  # abandoned early: its snapshot ends now
                await loop.run_in_executor(executor, listings.close)
        for p in peers:
            if p.domain_name not in listed and not self._remove(p.domain_name, generation):
                refused.add(p.domain_name)
        self._merge_revoked(revoked)
        return refused

    def _load_records(
        self, now: float, prune: bool
    ) -> tuple[int, list[PeerRecord], dict[str, str], dict[str, float]]:
        # One generation for the whole load, numbered before its reads (and the listings'
        # snapshot, taken at their first batch): whatever is committed or reloaded after is
        # numbered later and wins over what the load read.
        generation = next(self._generations)
        if prune:
            self.store.prune_revoked(now)
        return (
            generation,
            self.store.peers(),
            self.store.enrolled_names(),
            self.store.revoked_sessions(now),
        )

    def _prepare_batch(
        self, listings: Iterator[tuple[PeerRecord, list[SharedFile]]]
    ) -> list[tuple[PeerHits, int]]:
        return [
            (self._prepare(record, files), len(files))
            for record, files in itertools.islice(listings, LOAD_BATCH)
        ]

    async def close(self) -> None:
        """Stop listening, finish store work in progress and stop the worker threads."""
        loop = asyncio.get_running_loop()
        self._closing = True  # no reload or notification starts a task from now on
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await loop.run_in_executor(None, listener.close)
        tasks = [t for t in (self._liveness, self._reload_all, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Writes under way finish, and memory learns of them.
        await asyncio.gather(*self._commits, return_exceptions=True)
        if self._seen:  # the last pings' liveness, for the other servers
            seen, self._seen = self._seen, {}
            with contextlib.suppress(Exception):
                await self._write(self.store.record_seen, seen)
        await loop.run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._reloads.shutdown(wait=True)
        self._reads.shutdown(wait=True)
        self._logins.shutdown(wait=True)
        self._writes.shutdown(wait=True)
        self.hasher.close()
        self.register_hasher.close()

    def sweep(self) -> None:
        """Drop expired uploads, decayed counters and ended sessions' expired entries."""
        now = self.clock()
        self.staging.expire(now)
        self.register_attempts.prune(now)
        self.login_limits.prune(now)
        self.sync_rate.prune(now)
        self.lookup_rate.prune(now)
        expired = [s for s, until in self.revoked.items() if until <= now]
        for session in expired:
            del self.revoked[session]
        if expired:
            self._writes.submit(self.store.prune_revoked, now).add_done_callback(_log_failure)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        return await _in_store(self._writes, fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await _in_store(self._reads, fn, *args)

    async def _password_hash(self, username: str) -> bytes | None:
        return await _in_store(self._logins, self.store.password_hash, username)

    def _prepare(self, record: PeerRecord, files: Iterable[SharedFile]) -> PeerHits:
        s = self.settings
        return prepare_hits(record, files, max_hit_files=s.max_hit_files, max_frame=s.max_frame)

    def _own(self, domain_name: str, user: str) -> None:
        """``user`` owns the name now: moved from any previous owner's names."""
        previous = self.owners.get(domain_name)
        if previous is not None and previous != user:
            self._drop_domain(previous, domain_name)
        self.owners[domain_name] = user
        self.domains.setdefault(user, set()).add(domain_name)

    def _disown(self, domain_name: str, user: str) -> None:
        """Undo ``user``'s claim of the name: off their names whoever owns it now."""
        if self.owners.get(domain_name) == user:
            del self.owners[domain_name]
        self._drop_domain(user, domain_name)

    def _drop_domain(self, user: str, domain_name: str) -> None:
        names = self.domains.get(user)
        if names is not None:
            names.discard(domain_name)
            if not names:
                del self.domains[user]

    def _put(self, prepared: PeerHits, generation: int, count: int) -> bool:
        """Put a listing read from the store in place, unless a newer one is there; pings
        heard here and not yet in the store still count."""
        name = prepared.record.domain_name
        self._own(name, prepared.record.owner)
        before = self.index.record(name)
        if not self.index.apply(prepared, generation):
            return False
        self.listed[name] = count
        if before is not None:
            self.index.touch(name, before.last_seen)
        return True

    def _remove(self, domain_name: str, generation: int) -> bool:
        """Take a withdrawn peer's listing out, unless a newer one is there."""
        if domain_name in self.index:
            if not self.index.remove(domain_name, generation):
                return False
            self.listed[domain_name] = 0
        return True

    def _merge_revoked(self, revoked: dict[str, float]) -> None:
        """Ended sessions heard or read: each kept until the later of its expiries."""
        for session, until in revoked.items():
            self.revoked[session] = max(until, self.revoked.get(session, until))

    # -- several index servers on one store (PROTOCOL.md §11) ---------------------------

    def _heard(self, loop: asyncio.AbstractEventLoop, payload: str | None) -> None:
        """The store's notification callback, on its listening thread: hop to the loop."""
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody to tell
            loop.call_soon_threadsafe(self._changed, payload)

    def _changed(self, payload: str | None) -> None:
        """A change committed to the store (by another server): bring memory up to date."""
        if self._closing:
            return
        if payload is None:  # notifications were lost for a while: anything may have changed
            self._reload_whole()
            return
        kind, _, arg = payload.partition(" ")
        if kind == "listing":  # another server's commit: the store passes over our own
            self._reload(arg)
        elif kind == "revoked":
            session, _, expiry = arg.partition(" ")
            until = _float(expiry)
            if until is None:  # no expiry given: every token expires within TTL + leeway
                until = self.clock() + self.issuer.ttl + LEEWAY
            self._merge_revoked({session: until})
        elif kind == "owner":  # a name enrolled through another server (PROTOCOL.md §10)
            name, _, user = arg.partition(" ")
            if name and user:
                self._own(name, user)
        else:
            log.warning("unknown database notification %r", payload[:80])

    def _reload(self, domain_name: str) -> None:
        """Read one peer from the store again and apply it; the names changed while a read
        is under way are read together in the next one."""
        if self._closing:
            return
        # Another server changed it: a delta based on this server's version must not apply.
        self.versions.pop(domain_name, None)
        if self._deferred is not None:
            self._deferred.add(domain_name)
            return
        self._pending.add(domain_name)
        if self._reloader is None:
            self._reloader = self._spawn(self._reload_pending())

    async def _reload_pending(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending and not self._closing:
                names, self._pending = sorted(self._pending), set()
                try:
                    loaded = await loop.run_in_executor(self._reloads, self._read_peers, names)
                except self._failures as exc:
                    # This change would be lost: read everything again, until it works.
                    log.warning("could not reload peers from the database (%s)", exc)
                    self._pending.update(names)
                    self._reload_whole()
                    return
                if self._deferred is not None:  # a whole load began meanwhile: after it
                    self._deferred.update(names)
                    continue
                for name, found in zip(names, loaded, strict=True):
                    if not self._apply_loaded(name, *found):
                        # A change numbered later is in memory, though this read may be
                        # newer still (another server's): read again, numbered after it.
                        self._pending.add(name)
        finally:
            self._reloader = None

    def _read_peers(
        self, names: list[str]
    ) -> list[tuple[int, PeerRecord | None, PeerHits | None, int]]:
        return [self._read_peer(name) for name in names]

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
    ) -> bool:
        """Put what was read of one peer in place; False if a newer change kept it out."""
        if hits is not None:
            return self._put(hits, generation, n)
        if record is not None:
            self._own(name, record.owner)
        return self._remove(name, generation)

    def _reload_whole(self) -> None:
        """Read everything again (now, or after the load or reload under way)."""
        self._whole_wanted = True
        if not (self._opening or self._closing or self._reload_all is not None):
            self._reload_all = self._spawn(self._reload_everything())

    async def _reload_everything(self) -> None:
        """After lost notifications: load everything again and put it in place (as
        :meth:`open`), again after a failure (with growing waits) or another loss."""
        failures = 0
        try:
            while self._whole_wanted and not self._closing:
                self._whole_wanted = False
                # Names read now may be read before the load's snapshot: again after it.
                self._deferred = (self._deferred or set()) | self._pending
                self._pending = set()
                try:
                    refused = await self._load(self._reloads)
                except self._failures as exc:
                    delay = RELOAD_DELAYS[min(failures, len(RELOAD_DELAYS) - 1)]
                    failures += 1
                    log.warning("could not reload the index (%s); again in %.2f s", exc, delay)
                    self._whole_wanted = True
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                self._deferred |= refused
                self.versions.clear()
                log.info(
                    "index reloaded: %d peers known, %d listed", len(self.owners), len(self.index)
                )
        finally:
            self._reload_all = None
            if not self._closing:
                self._replay_deferred()

    def _replay_deferred(self) -> None:
        deferred, self._deferred = self._deferred or set(), None
        for name in deferred:
            self._reload(name)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_task_failure)
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
            except self._failures as exc:
                # The store is away (or refused): try again next time.
                log.warning("could not share liveness with the database: %s", exc)
            except Exception:
                log.exception("sharing liveness failed")

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
        limits, now = self.login_limits, self.clock()
        user, where = req.username, address_key(ctx.address)
        # Charged before the check, so parallel guesses are limited like sequential ones.
        wait = await limits.charge(user, where, now)
        if wait > 0:
            # Rounded up to the millisecond, so waiting exactly retry_after is always enough.
            raise RateLimited(retry_after=math.ceil(wait * 1000) / 1000)
        try:
            hashed = await self._password_hash(user)
            ok = await self.hasher.verify(req.password.encode("utf-8", "surrogatepass"), hashed)
        except BaseException:
            limits.refund(user, where, now)
            raise
        if not ok:
            log.info("failed login for %s from %s", user, ctx.address)
            raise AuthFailed()
        await limits.succeeded(user, where, self.clock())
        tokens = self.issuer.issue_session(user, ctx.peer_cert)
        log.info("user %s logged in from %s", user, ctx.address)
        return _auth_reply(tokens)

    async def handle_renew(self, ctx: RequestContext, req: None) -> AuthReply:
        """Fresh tokens of the same session for a certificate-bound token: a running peer
        stays logged in without its password (so a login lockout cannot knock it off)."""
        principal = self._authorize(ctx)
        if principal.thumbprint is None:
            raise Forbidden("renew needs a token bound to a client certificate; log in again")
        if not await self._user_active(principal.subject):
            raise Forbidden("the token's user is not registered")
        tokens = self.issuer.issue_session(
            principal.subject, ctx.peer_cert, session=principal.session_id
        )
        return _auth_reply(tokens)

    async def _user_active(self, user: str) -> bool:
        """Whether ``user`` is registered and not disabled, read on the reads' thread (a
        flood of logins cannot delay it, PROTOCOL.md §8). With a shared store a yes is
        remembered for :data:`ACTIVE_USER_TTL` seconds — the delay with which the enrollment
        gates learn of a disabled user — so a renew costs no database round trip (§11)."""
        now = self.clock()
        if self.shared and self._active_users.get(user, -math.inf) > now - ACTIVE_USER_TTL:
            return True
        active = await self._read(self.store.user_active, user)
        if active and self.shared:
            if len(self._active_users) >= MAX_KNOWN_WAITS:
                self._active_users.clear()
            self._active_users[user] = now
        return active

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

        async def commit() -> SyncReply:
            try:
                count, prepared, generation = await self._write_or_reload(
                    name, self._commit_listing, listing
                )
            except BaseException:
                if claiming and name not in self.index:
                    self._disown(name, user)
                raise
            finally:
                self._committing[user] -= len(files)
                if self._committing[user] <= 0:
                    del self._committing[user]
            self._own(name, user)
            version = None  # a newer change (another server's) is in place: no version
            if self.index.apply(prepared, generation):
                self.listed[name] = count
                version = self.versions[name] = _new_version()
            log.info("%s synced %s: %d files", user, name, count)
            return SyncReply(count, version)

        return await self._shielded(commit())

    async def _shielded(self, work: Coroutine[Any, Any, T]) -> T:
        """Run a write and the memory update after it to the end, even if the request is
        cancelled meanwhile (its client went away): the store may commit, and memory must
        then learn of it — with a shared store nothing else would tell this server."""
        task = asyncio.get_running_loop().create_task(work)
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)
        return await asyncio.shield(task)

    async def _write_or_reload(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`_write` of a change to ``name``; if it failed other than by a refusal
        (a lost COMMIT: committed or not, nobody knows), read the peer back from the store."""
        try:
            return await self._write(fn, *args)
        except RequestError:  # refused by the store: nothing was committed
            raise
        except BaseException:
            if self.shared:
                self._reload(name)
            raise

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

        async def commit() -> SyncReply:
            try:
                count, touched, generation = await self._write_or_reload(
                    name, self._commit_change, change
                )
            except BaseException:
                if self.versions.get(name) == version:
                    del self.versions[name]
                raise
            fresh = PeerRecord(name, user, req.port_number, address, now)
            hits = {kw: hit for kw, hit in self.index.hits_of(name).items() if kw not in touched}
            hits.update(self._prepare(fresh, [f for files in touched.values() for f in files]).hits)
            if not self.index.apply(PeerHits(fresh, hits), generation):
                # A newer change (another server's) is in place: this version is not it.
                if self.versions.get(name) == version:
                    del self.versions[name]
                return SyncReply(count)
            self.listed[name] = count
            self._log_change(user, req, count)
            return SyncReply(count, version)

        return await self._shielded(commit())

    @staticmethod
    def _log_change(user: str, req: SyncDeltaRequest, count: int) -> None:
        log.info(
            "%s changed %s: %d put, %d removed; %d files",
            user,
            req.domain_name,
            len(req.files),
            len(req.removed),
            count,
        )

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
        session, name = principal.session_id, req.domain_name
        # Refused here from now on, whatever becomes of the write: failing safe.
        self._merge_revoked({session: until})

        async def commit() -> None:
            generation = await self._write_or_reload(
                name, self._commit_withdraw, name, user, session, until
            )
            self._remove(name, generation)
            self.versions.pop(name, None)

        await self._shielded(commit())
        log.info("%s withdrew %s and ended its session", user, name)
        return ByeReply(name)

    def _commit_withdraw(self, domain_name: str, owner: str, session: str, until: float) -> int:
        self.store.withdraw_and_revoke(domain_name, owner, session, until)
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


def _float(text: str) -> float | None:
    """A finite number written by ``repr(float)``, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a background task failed", exc_info=task.exception())


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("a background store write failed: %s", future.exception())
