"""Typed request and reply bodies of every operation (PROTOCOL.md §4).

Each body is a frozen dataclass. ``from_wire`` validates a decoded map and raises
:class:`BadRequest` naming the field when a field is missing or of the wrong type (a
``keyword``, ``file_name`` or ``filename`` too), or :class:`InvalidPath` for a keyword or file
name string that is not one safe path segment (PROTOCOL.md §4.7); ``to_wire`` gives the map
to encode. Raw maps do not travel past this module.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Self

from netproto.codec import pack
from netproto.errors import BadRequest
from netproto.framing import DEFAULT_MAX_FRAME
from netproto.messages import MAX_ID
from netproto.names import (
    canonical_domain_name,
    canonical_username,
    check_address,
    check_file_name,
    check_keyword,
)

NONCE_SIZE = 32
SHA256_SIZE = 32
MAX_FILE_SIZE = 2**53  # sizes travel as msgpack ints; keep them exact in every language
#: A stream chunk carries 1 to this many bytes (PROTOCOL.md §7).
MAX_CHUNK = 256 << 10
MAX_SYNC_FILES_PER_PART = 20_000
MAX_SYNC_SEQ = 10_000  # a multi-part upload has at most MAX_SYNC_SEQ + 1 parts
MAX_LISTING_VERSION = 2**63 - 1  # listing versions are opaque ints (PROTOCOL.md §4.3.1)
UPLOAD_ID_SIZE = 16
MAX_SIGNATURE = 64  # Ed25519
#: Files of one hit in one search reply; the rest are counted (``total``) and reachable with
#: ``listing`` (PROTOCOL.md §4.2).
MAX_HIT_FILES = 100
#: Files in one ``listing`` reply.
MAX_LISTING_FILES = 1000
MAX_CURSOR = 1024  # bytes of an opaque search cursor


def _map(value: Any, name: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise BadRequest(f"{name}: expected a map")
    return value


def _str(body: dict[str, Any], name: str, max_len: int = 1024) -> str:
    value = body.get(name)
    if type(value) is not str:
        raise BadRequest(f"{name}: expected a string")
    if len(value) > max_len:
        raise BadRequest(f"{name}: longer than {max_len} characters")
    return value


def _int(body: dict[str, Any], name: str, lo: int, hi: int) -> int:
    value = body.get(name)
    if type(value) is not int:
        raise BadRequest(f"{name}: expected an integer")
    if not lo <= value <= hi:
        raise BadRequest(f"{name}: must be between {lo} and {hi}")
    return value


def _bin(body: dict[str, Any], name: str, size: int) -> bytes:
    value = body.get(name)
    if type(value) is not bytes or len(value) != size:
        raise BadRequest(f"{name}: expected {size} bytes as msgpack bin")
    return value


def _publication(entry: dict[str, Any]) -> tuple[bytes | None, bytes | None]:
    """An entry's optional ``manifest`` digest and publisher ``signature``: both or neither
    (PROTOCOL.md §4.8)."""
    if "manifest" not in entry and "signature" not in entry:
        return None, None
    return _bin(entry, "manifest", SHA256_SIZE), _bin(entry, "signature", MAX_SIGNATURE)


def _list(body: dict[str, Any], name: str, max_len: int) -> list[Any]:
    value = body.get(name)
    if type(value) is not list:
        raise BadRequest(f"{name}: expected an array")
    if len(value) > max_len:
        raise BadRequest(f"{name}: more than {max_len} entries")
    return value


# --- index operations --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """Body of ``register`` and ``auth``: the username is lower-cased, the password unchecked."""

    username: str
    password: str = field(repr=False)

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Self:
        """Validate a register/auth body (password length is the handler's to judge)."""
        username = canonical_username(body.get("username"))
        password = body.get("password")
        if type(password) is not str:
            raise BadRequest("password: expected a string")
        if len(password) > 1024:
            raise BadRequest("password: far too long")
        return cls(username, password)

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {"username": self.username, "password": self.password}


@dataclass(frozen=True, slots=True)
class RegisterReply:
    """Reply of ``register``."""

    username: str

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate a register reply."""
        return cls(_str(_map(body, "reply"), "username", 64))

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {"username": self.username}


@dataclass(frozen=True, slots=True)
class AuthReply:
    """Reply of ``auth`` and ``renew``: the index token, its expiry in Unix seconds, and the
    token for peers (only to a client that presented a certificate; PROTOCOL.md §8)."""

    token: str = field(repr=False)
    expires_at: int
    peer_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate an auth or renew reply."""
        body = _map(body, "reply")
        peer_token = _str(body, "peer_token", 8192) if "peer_token" in body else None
        return cls(_str(body, "token", 8192), _int(body, "expires_at", 0, 2**63 - 1), peer_token)

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        body: dict[str, Any] = {"token": self.token, "expires_at": self.expires_at}
        if self.peer_token is not None:
            body["peer_token"] = self.peer_token
        return body


def parse_empty(body: dict[str, Any]) -> None:
    """The body of an operation that takes no fields (``renew``): any map."""
    return None


@dataclass(frozen=True, slots=True)
class SharedFile:
    """One file a peer offers: name, keyword, size and SHA-256."""

    filename: str
    keyword: str
    size: int
    sha256: bytes
    #: The manifest digest and the publisher's signature (PROTOCOL.md §4.8), when synced.
    manifest: bytes | None = None
    signature: bytes | None = None

    @classmethod
    def from_wire(cls, entry: Any) -> Self:
        """Validate one entry of a sync list."""
        entry = _map(entry, "files[]")
        manifest, signature = _publication(entry)
        return cls(
            check_file_name(entry.get("filename"), "filename"),
            check_keyword(entry.get("keyword")),
            _int(entry, "size", 0, MAX_FILE_SIZE),
            _bin(entry, "sha256", SHA256_SIZE),
            manifest,
            signature,
        )

    def to_wire(self) -> dict[str, Any]:
        """The entry map."""
        entry: dict[str, Any] = {
            "filename": self.filename,
            "keyword": self.keyword,
            "size": self.size,
            "sha256": self.sha256,
        }
        if self.manifest is not None and self.signature is not None:
            entry["manifest"] = self.manifest
            entry["signature"] = self.signature
        return entry

    def listed(self) -> ListedFile:
        """The entry as a search hit carries it."""
        return ListedFile(self.filename, self.size, self.sha256, self.manifest, self.signature)


@dataclass(frozen=True, slots=True)
class SyncPart:
    """Where a sync request stands in a multi-part upload (PROTOCOL.md §4.3)."""

    upload: bytes
    seq: int
    final: bool

    @classmethod
    def from_wire(cls, part: Any) -> Self:
        """Validate the ``part`` map of a sync request."""
        part = _map(part, "part")
        final = part.get("final")
        if type(final) is not bool:
            raise BadRequest("part.final: expected a boolean")
        return cls(_bin(part, "upload", UPLOAD_ID_SIZE), _int(part, "seq", 0, MAX_SYNC_SEQ), final)

    def to_wire(self) -> dict[str, Any]:
        """The part map."""
        return {"upload": self.upload, "seq": self.seq, "final": self.final}


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """Body of ``sync``: replaces the caller's listing for ``domain_name``."""

    domain_name: str
    port_number: int
    files: tuple[SharedFile, ...]
    address: str | None = None
    part: SyncPart | None = None

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Self:
        """Validate a sync body."""
        files = _list(body, "files", MAX_SYNC_FILES_PER_PART)
        address = body.get("address")
        if address is not None:
            address = check_address(address)
        part = body.get("part")
        return cls(
            canonical_domain_name(body.get("domain_name")),
            _int(body, "port_number", 1, 65535),
            tuple(SharedFile.from_wire(f) for f in files),
            address,
            SyncPart.from_wire(part) if part is not None else None,
        )

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        body: dict[str, Any] = {
            "domain_name": self.domain_name,
            "port_number": self.port_number,
            "files": [f.to_wire() for f in self.files],
        }
        if self.address is not None:
            body["address"] = self.address
        if self.part is not None:
            body["part"] = self.part.to_wire()
        return body


# Room for the request envelope around a sync body: the largest id, the op, a token of the
# largest size a verifier accepts (netproto.tokens.MAX_TOKEN_BYTES) and a 32-bit array header.
_SYNC_ENVELOPE_ALLOWANCE = 2048 + 64


def split_sync(
    domain_name: str,
    port_number: int,
    files: Iterable[SharedFile],
    address: str | None = None,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    max_files_per_part: int = MAX_SYNC_FILES_PER_PART,
    upload: bytes | None = None,
) -> list[SyncRequest]:
    """Pack a share into sync requests that each fit in one frame (PROTOCOL.md §4.3).

    A share that fits in one request gives one request without ``part`` (a one-shot sync);
    a larger one gives the parts of one upload (a fresh random id unless ``upload`` is given),
    numbered from 0, the last one ``final``. Raises ValueError if a single entry cannot fit
    in a frame or the share needs more than ``MAX_SYNC_SEQ + 1`` parts.
    """
    entries = list(files)
    upload_id = upload if upload is not None else secrets.token_bytes(UPLOAD_ID_SIZE)
    if len(upload_id) != UPLOAD_ID_SIZE:
        raise ValueError(f"upload id must be {UPLOAD_ID_SIZE} bytes")
    widest_part = SyncPart(upload_id, MAX_SYNC_SEQ, False)
    empty = SyncRequest(domain_name, port_number, (), address, widest_part)
    budget = max_frame - len(pack(empty.to_wire())) - _SYNC_ENVELOPE_ALLOWANCE
    groups: list[list[SharedFile]] = [[]]
    used = 0
    for entry in entries:
        size = len(pack(entry.to_wire()))
        if size > budget:
            raise ValueError(f"file entry {entry.filename!r} does not fit in one frame")
        if used + size > budget or len(groups[-1]) >= max_files_per_part:
            groups.append([])
            used = 0
        groups[-1].append(entry)
        used += size
    if len(groups) == 1:
        return [SyncRequest(domain_name, port_number, tuple(groups[0]), address)]
    if len(groups) > MAX_SYNC_SEQ + 1:
        raise ValueError(f"share needs {len(groups)} parts, more than {MAX_SYNC_SEQ + 1}")
    last = len(groups) - 1
    return [
        SyncRequest(
            domain_name,
            port_number,
            tuple(group),
            address,
            SyncPart(upload_id, seq, seq == last),
        )
        for seq, group in enumerate(groups)
    ]


@dataclass(frozen=True, slots=True)
class SyncReply:
    """Reply of ``sync`` and ``sync_delta``: files now listed (or received so far, for a
    non-final part), and the version of the listing once one is committed (PROTOCOL.md §4.3.1).
    """

    files: int
    version: int | None = None

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate a sync reply."""
        body = _map(body, "reply")
        version = _int(body, "version", 0, MAX_LISTING_VERSION) if "version" in body else None
        return cls(_int(body, "files", 0, 2**63 - 1), version)

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        body: dict[str, Any] = {"files": self.files}
        if self.version is not None:
            body["version"] = self.version
        return body


@dataclass(frozen=True, slots=True)
class FileKey:
    """A listed file by its place alone: keyword and file name (what a delta removes)."""

    keyword: str
    filename: str

    @classmethod
    def from_wire(cls, entry: Any) -> Self:
        """Validate one entry of a delta's ``removed``."""
        entry = _map(entry, "removed[]")
        return cls(
            check_keyword(entry.get("keyword")), check_file_name(entry.get("filename"), "filename")
        )

    def to_wire(self) -> dict[str, Any]:
        """The entry map."""
        return {"keyword": self.keyword, "filename": self.filename}


@dataclass(frozen=True, slots=True)
class SyncDeltaRequest:
    """Body of ``sync_delta``: changes to this peer's listing at version ``base`` — entries
    added or changed (``files``, whole) and entries removed (PROTOCOL.md §4.3.1)."""

    domain_name: str
    port_number: int
    base: int
    files: tuple[SharedFile, ...] = ()
    removed: tuple[FileKey, ...] = ()
    address: str | None = None

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Self:
        """Validate a sync_delta body: at most ``MAX_SYNC_FILES_PER_PART`` entries in all."""
        files = _list(body, "files", MAX_SYNC_FILES_PER_PART)
        removed = _list(body, "removed", MAX_SYNC_FILES_PER_PART - len(files))
        address = body.get("address")
        if address is not None and (type(address) is not str or not 0 < len(address) <= 255):
            raise BadRequest("address: expected a host name or IP address")
        return cls(
            canonical_domain_name(body.get("domain_name")),
            _int(body, "port_number", 1, 65535),
            _int(body, "base", 0, MAX_LISTING_VERSION),
            tuple(SharedFile.from_wire(f) for f in files),
            tuple(FileKey.from_wire(k) for k in removed),
            address,
        )

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        body: dict[str, Any] = {
            "domain_name": self.domain_name,
            "port_number": self.port_number,
            "base": self.base,
            "files": [f.to_wire() for f in self.files],
            "removed": [k.to_wire() for k in self.removed],
        }
        if self.address is not None:
            body["address"] = self.address
        return body

    def fits(self, max_frame: int = DEFAULT_MAX_FRAME) -> bool:
        """True when the request fits in one frame, envelope and token included."""
        if len(self.files) + len(self.removed) > MAX_SYNC_FILES_PER_PART:
            return False
        return len(pack(self.to_wire())) + _SYNC_ENVELOPE_ALLOWANCE <= max_frame


@dataclass(frozen=True, slots=True)
class KeywordRequest:
    """Body of ``search`` (index) and ``list`` (peer)."""

    keyword: str

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Self:
        """Validate a keyword body."""
        return cls(check_keyword(body.get("keyword")))

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {"keyword": self.keyword}


@dataclass(frozen=True, slots=True)
class ListedFile:
    """A file in a search hit: name, size and the digest the peer synced."""

    filename: str
    size: int
    sha256: bytes
    #: The manifest digest and the publisher's signature (PROTOCOL.md §4.8), when synced.
    manifest: bytes | None = None
    signature: bytes | None = None

    @classmethod
    def from_wire(cls, entry: Any) -> Self:
        """Validate one file of a search hit."""
        entry = _map(entry, "files[]")
        manifest, signature = _publication(entry)
        return cls(
            check_file_name(entry.get("filename"), "filename"),
            _int(entry, "size", 0, MAX_FILE_SIZE),
            _bin(entry, "sha256", SHA256_SIZE),
            manifest,
            signature,
        )

    def to_wire(self) -> dict[str, Any]:
        """The entry map."""
        entry: dict[str, Any] = {
            "filename": self.filename,
            "size": self.size,
            "sha256": self.sha256,
        }
        if self.manifest is not None and self.signature is not None:
            entry["manifest"] = self.manifest
            entry["signature"] = self.signature
        return entry


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """Body of ``search``: a keyword, and the cursor of the page to continue from."""

    keyword: str
    cursor: bytes | None = None

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Self:
        """Validate a search body."""
        keyword = check_keyword(body.get("keyword"))
        cursor = body.get("cursor")
        if cursor is not None and (type(cursor) is not bytes or not 0 < len(cursor) <= MAX_CURSOR):
            raise BadRequest(f"cursor: expected 1 to {MAX_CURSOR} bytes as msgpack bin")
        return cls(keyword, cursor)

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        body: dict[str, Any] = {"keyword": self.keyword}
        if self.cursor is not None:
            body["cursor"] = self.cursor
        return body


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One peer holding files under the searched keyword: the first files in file-name
    order, and how many it lists in all (``total``; the rest through ``listing``)."""

    domain_name: str
    port_number: int
    address: str
    files: tuple[ListedFile, ...]
    total: int | None = None

    @property
    def complete(self) -> bool:
        """True when ``files`` holds every file the peer lists under the keyword."""
        return self.total is None or len(self.files) >= self.total

    @classmethod
    def from_wire(cls, entry: Any) -> Self:
        """Validate one hit of a search reply."""
        entry = _map(entry, "hit")
        files = tuple(ListedFile.from_wire(f) for f in _list(entry, "files", 10**6))
        total = _int(entry, "total", len(files), 2**63 - 1) if "total" in entry else None
        return cls(
            canonical_domain_name(entry.get("domain_name")),
            _int(entry, "port_number", 1, 65535),
            check_address(entry.get("address")),
            files,
            total,
        )

    def to_wire(self) -> dict[str, Any]:
        """The hit map."""
        hit: dict[str, Any] = {
            "domain_name": self.domain_name,
            "port_number": self.port_number,
            "address": self.address,
        }
        if self.total is not None:
            hit["total"] = self.total
        hit["files"] = [f.to_wire() for f in self.files]
        return hit


@dataclass(frozen=True, slots=True)
class SearchReply:
    """Reply of ``search``: a page of hits, how many more follow, and the cursor to them."""

    hits: tuple[SearchHit, ...]
    more: int = 0
    cursor: bytes | None = None

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate a search reply."""
        body = _map(body, "reply")
        hits = tuple(SearchHit.from_wire(hit) for hit in _list(body, "hits", 10**6))
        more = _int(body, "more", 0, 2**63 - 1)
        cursor = body.get("cursor")
        if more and (type(cursor) is not bytes or not 0 < len(cursor) <= MAX_CURSOR):
            raise BadRequest("cursor: expected with more hits to come, as msgpack bin")
        return cls(hits, more, cursor if more else None)

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        body: dict[str, Any] = {"hits": [h.to_wire() for h in self.hits], "more": self.more}
        if self.cursor is not None:
            body["cursor"] = self.cursor
        return body


def search_reply_from_wire(body: Any) -> list[SearchHit]:
    """The hits of one search reply page (see :class:`SearchReply` for the cursor)."""
    return list(SearchReply.from_wire(body).hits)


@dataclass(frozen=True, slots=True)
class ListingRequest:
    """Body of ``listing``: one live peer's files under a keyword, from ``offset`` on."""

    domain_name: str
    keyword: str
    offset: int = 0

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Self:
        """Validate a listing body."""
        return cls(
            canonical_domain_name(body.get("domain_name")),
            check_keyword(body.get("keyword")),
            _int(body, "offset", 0, 2**31 - 1) if "offset" in body else 0,
        )

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        body: dict[str, Any] = {"domain_name": self.domain_name, "keyword": self.keyword}
        if self.offset:
            body["offset"] = self.offset
        return body


@dataclass(frozen=True, slots=True)
class ListingReply:
    """Reply of ``listing``: a page of a peer's files under a keyword, in file-name order."""

    domain_name: str
    keyword: str
    total: int
    offset: int
    files: tuple[ListedFile, ...]

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate a listing reply."""
        body = _map(body, "reply")
        return cls(
            canonical_domain_name(body.get("domain_name")),
            check_keyword(body.get("keyword")),
            _int(body, "total", 0, 2**63 - 1),
            _int(body, "offset", 0, 2**63 - 1),
            tuple(ListedFile.from_wire(f) for f in _list(body, "files", MAX_LISTING_FILES)),
        )

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {
            "domain_name": self.domain_name,
            "keyword": self.keyword,
            "total": self.total,
            "offset": self.offset,
            "files": [f.to_wire() for f in self.files],
        }


#: The connection-level operation that stops an answer in progress (PROTOCOL.md §3.1).
CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Body of ``cancel``: the id of a request of this same connection whose answer (a stream,
    most often) is no longer wanted."""

    id: int

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Self:
        """Validate a cancel body."""
        return cls(_int(body, "id", 1, MAX_ID))

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {"id": self.id}


#: The most holders one ``holders`` reply lists (PROTOCOL.md §4.9).
MAX_HOLDERS = 256


@dataclass(frozen=True, slots=True)
class HoldersRequest:
    """Body of ``holders``: which live peers hold the content with this SHA-256."""

    sha256: bytes

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Self:
        """Validate a holders body."""
        return cls(_bin(body, "sha256", SHA256_SIZE))

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {"sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class Holding:
    """One live peer's file with the looked-up content, under its own keyword and name."""

    domain_name: str
    port_number: int
    address: str
    keyword: str
    file: ListedFile

    @classmethod
    def from_wire(cls, entry: Any) -> Self:
        """Validate one holder of a holders reply."""
        entry = _map(entry, "holders[]")
        return cls(
            canonical_domain_name(entry.get("domain_name")),
            _int(entry, "port_number", 1, 65535),
            check_address(entry.get("address")),
            check_keyword(entry.get("keyword")),
            ListedFile.from_wire(entry),
        )

    def to_wire(self) -> dict[str, Any]:
        """The holder map."""
        return {
            "domain_name": self.domain_name,
            "port_number": self.port_number,
            "address": self.address,
            "keyword": self.keyword,
            **self.file.to_wire(),
        }

    def hit(self) -> SearchHit:
        """The holder as a search hit of its one file."""
        return SearchHit(self.domain_name, self.port_number, self.address, (self.file,), 1)


@dataclass(frozen=True, slots=True)
class HoldersReply:
    """Reply of ``holders``: the live peers holding the content, at most ``MAX_HOLDERS``."""

    sha256: bytes
    holders: tuple[Holding, ...]

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate a holders reply."""
        body = _map(body, "reply")
        return cls(
            _bin(body, "sha256", SHA256_SIZE),
            tuple(Holding.from_wire(h) for h in _list(body, "holders", MAX_HOLDERS)),
        )

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {"sha256": self.sha256, "holders": [h.to_wire() for h in self.holders]}


@dataclass(frozen=True, slots=True)
class PeerRequest:
    """Body of ``ping`` and ``bye``: which of the caller's peers it concerns."""

    domain_name: str

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Self:
        """Validate a ping/bye body."""
        return cls(canonical_domain_name(body.get("domain_name")))

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {"domain_name": self.domain_name}


@dataclass(frozen=True, slots=True)
class PingReply:
    """Reply of ``ping``: the peer stays in search results for ``ttl`` more seconds."""

    domain_name: str
    ttl: float

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate a ping reply."""
        body = _map(body, "reply")
        ttl = body.get("ttl")
        if type(ttl) not in (int, float) or not 0 < ttl < 2**32:
            raise BadRequest("ttl: expected a positive number of seconds")
        return cls(canonical_domain_name(body.get("domain_name")), float(ttl))

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {"domain_name": self.domain_name, "ttl": self.ttl}


@dataclass(frozen=True, slots=True)
class ByeReply:
    """Reply of ``bye``: the peer's listing is withdrawn."""

    domain_name: str

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate a bye reply."""
        return cls(canonical_domain_name(_map(body, "reply").get("domain_name")))

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {"domain_name": self.domain_name}


# --- peer operations ---------------------------------------------------------------------


def list_reply_from_wire(body: Any) -> list[str]:
    """Validate a list reply: file names, each a safe segment."""
    if type(body) is not list:
        raise BadRequest("reply: expected an array of file names")
    return [check_file_name(name) for name in body]


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """Body of ``fetch``: which file, the requester's fresh nonce, and where to resume."""

    keyword: str
    file_name: str
    nonce: bytes
    offset: int = 0

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Self:
        """Validate a fetch body."""
        return cls(
            check_keyword(body.get("keyword")),
            check_file_name(body.get("file_name")),
            _bin(body, "nonce", NONCE_SIZE),
            _int(body, "offset", 0, MAX_FILE_SIZE) if "offset" in body else 0,
        )

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        body: dict[str, Any] = {
            "keyword": self.keyword,
            "file_name": self.file_name,
            "nonce": self.nonce,
        }
        if self.offset:
            body["offset"] = self.offset
        return body


@dataclass(frozen=True, slots=True)
class FetchHeader:
    """First frame of a fetch stream."""

    keyword: str
    file_name: str
    size: int
    offset: int

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate a fetch header."""
        body = _map(body, "header")
        return cls(
            check_keyword(body.get("keyword")),
            check_file_name(body.get("file_name")),
            _int(body, "size", 0, MAX_FILE_SIZE),
            _int(body, "offset", 0, MAX_FILE_SIZE),
        )

    def to_wire(self) -> dict[str, Any]:
        """The header map."""
        return {
            "keyword": self.keyword,
            "file_name": self.file_name,
            "size": self.size,
            "offset": self.offset,
        }


@dataclass(frozen=True, slots=True)
class FetchTrailer:
    """Last frame of a fetch stream: what the signature covers, and the signature."""

    size: int
    sha256: bytes
    nonce: bytes
    digital_signature: bytes
    signer: str

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate a fetch trailer (shape only; the checks are the downloader's)."""
        body = _map(body, "trailer")
        signature = body.get("digital_signature")
        if type(signature) is not bytes or len(signature) > MAX_SIGNATURE:
            raise BadRequest("digital_signature: expected at most 64 bytes as bin")
        return cls(
            _int(body, "size", 0, MAX_FILE_SIZE),
            _bin(body, "sha256", SHA256_SIZE),
            _bin(body, "nonce", NONCE_SIZE),
            signature,
            canonical_domain_name(body.get("signer")),
        )

    def to_wire(self) -> dict[str, Any]:
        """The trailer map."""
        return {
            "size": self.size,
            "sha256": self.sha256,
            "nonce": self.nonce,
            "digital_signature": self.digital_signature,
            "signer": self.signer,
        }
