"""Publisher-signed manifests and the ranged-fetch bodies (PROTOCOL.md §4.8, §7.1).

A manifest describes one version of a shared file: its size, its whole-file SHA-256, a block
size, and for every block the SHA-256 **chaining value** at its end, as a **flat list**
(PROTOCOL.md §4.8 says why not a Merkle tree, nor a digest of each block on its own): block
``i`` is checked by carrying SHA-256 on over it from the value at the end of block ``i - 1``
(:mod:`netproto.sha256chain`), and the last block's check is the whole file's SHA-256. Its
digest is what ``sync`` lists and the publisher signs, together with the file's name; a
downloader checks each block it receives against the list before writing it.

Pure: hashing is :mod:`hashlib` and :mod:`netproto.sha256chain`, signatures are Ed25519 from
``cryptography``; no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from netproto.cbuffer import Buffer
from netproto.codec import pack
from netproto.errors import BadRequest
from netproto.names import canonical_domain_name, check_file_name, check_keyword
from netproto.sha256chain import INITIAL, ChainHash

SHA256_SIZE = 32
SIGNATURE_SIZE = 64
_EMPTY_SHA256 = hashlib.sha256(b"").digest()
MANIFEST_CONTEXT = b"p2pshare/1 chained manifest\n"
PUBLISH_CONTEXT = b"p2pshare/1 publish\n"
#: Block sizes are powers of two from 128 KiB to 16 MiB, the smallest that keeps a file under
#: TARGET_BLOCKS blocks (Syncthing's rule); past 16 MiB a file simply has more blocks.
MIN_BLOCK = 128 << 10
MAX_BLOCK = 16 << 20
TARGET_BLOCKS = 2000
#: The most blocks a manifest may list: 512 KiB of digests, so a manifest fits one frame;
#: with 16 MiB blocks that is a 256 GiB file (beyond it, only the whole-file ``fetch``).
MAX_BLOCKS = 16384
MAX_MANIFEST_FILE = MAX_BLOCKS * MAX_BLOCK


def block_size_for(size: int) -> int:
    """The block size of a file of ``size`` bytes (PROTOCOL.md §4.8)."""
    block = MIN_BLOCK
    while block < MAX_BLOCK and size > block * TARGET_BLOCKS:
        block *= 2
    return block


def block_count(size: int, block_size: int) -> int:
    """Blocks of a file of ``size`` bytes (an empty file has none)."""
    return -(-size // block_size)


@dataclass(frozen=True, slots=True)
class Manifest:
    """One version of a file: size, whole-file SHA-256, block size and block digests (the
    SHA-256 chaining value at the end of each block; the last one is ``sha256`` itself)."""

    size: int
    sha256: bytes
    block_size: int
    blocks: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.sha256) != SHA256_SIZE:
            raise BadRequest("manifest.sha256: expected 32 bytes")
        if self.block_size != block_size_for(self.size):
            raise BadRequest(
                f"manifest.block_size: {self.block_size} is not the block size of"
                f" {self.size} bytes ({block_size_for(self.size)})"
            )
        if len(self.blocks) != block_count(self.size, self.block_size):
            raise BadRequest(
                f"manifest.blocks: {len(self.blocks)} digests for"
                f" {block_count(self.size, self.block_size)} blocks"
            )
        if len(self.blocks) > MAX_BLOCKS:
            raise BadRequest(f"manifest.blocks: more than {MAX_BLOCKS}")
        if self.blocks and self.blocks[-1] != self.sha256:
            raise BadRequest("manifest.blocks: the last block's digest is not the file's sha256")
        if not self.blocks and self.sha256 != _EMPTY_SHA256:
            raise BadRequest("manifest.sha256: not the SHA-256 of an empty file")

    @property
    def count(self) -> int:
        """How many blocks the file has."""
        return len(self.blocks)

    def span(self, index: int) -> tuple[int, int]:
        """Offset and length of block ``index``."""
        start = index * self.block_size
        return start, min(self.block_size, self.size - start)

    def block_valid(self, index: int, data: Buffer | Sequence[Buffer]) -> bool:
        """True when ``data`` (one buffer, or the pieces it arrived in) is block ``index``:
        SHA-256 carried on over it from the chaining value at the end of the block before
        gives this block's (finished, for the last block: the whole file's SHA-256)."""
        start, length = self.span(index)
        pieces = (data,) if isinstance(data, bytes | bytearray | memoryview) else data
        chain = ChainHash(self.blocks[index - 1] if index else INITIAL, start)
        size = 0
        for piece in pieces:
            chain.update(piece)
            size += memoryview(piece).nbytes
        if size != length:
            return False
        last = index == len(self.blocks) - 1
        return (chain.digest() if last else chain.state()) == self.blocks[index]

    def digest(self) -> bytes:
        """The manifest digest: what ``sync`` lists and the publisher signs."""
        return hashlib.sha256(manifest_bytes(self)).digest()

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate a manifest map (its shape; the downloader checks its digest)."""
        if type(body) is not dict:
            raise BadRequest("manifest: expected a map")
        size, block_size = body.get("size"), body.get("block_size")
        sha256, blocks = body.get("sha256"), body.get("blocks")
        if type(size) is not int or not 0 <= size <= MAX_MANIFEST_FILE:
            raise BadRequest(f"manifest.size: must be between 0 and {MAX_MANIFEST_FILE}")
        if type(block_size) is not int:
            raise BadRequest("manifest.block_size: expected an integer")
        if type(sha256) is not bytes:
            raise BadRequest("manifest.sha256: expected 32 bytes as msgpack bin")
        if type(blocks) is not bytes or len(blocks) % SHA256_SIZE:
            raise BadRequest("manifest.blocks: expected a bin of 32-byte digests")
        split = tuple(blocks[i : i + SHA256_SIZE] for i in range(0, len(blocks), SHA256_SIZE))
        return cls(size, sha256, block_size, split)

    def to_wire(self) -> dict[str, Any]:
        """The manifest map: the block digests travel as one ``bin``, concatenated."""
        return {
            "size": self.size,
            "sha256": self.sha256,
            "block_size": self.block_size,
            "blocks": b"".join(self.blocks),
        }


def manifest_bytes(manifest: Manifest) -> bytes:
    """The bytes the manifest digest is taken over (PROTOCOL.md §4.8)."""
    m = manifest
    return MANIFEST_CONTEXT + pack([m.size, m.sha256, m.block_size, b"".join(m.blocks)])


class ManifestBuilder:
    """Builds a manifest from a file's bytes fed in order, in pieces of any size: one SHA-256
    pass, its chaining value taken at every block's end."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.block_size = block_size_for(size)
        self._chain = ChainHash()
        self._in_block = 0
        self._blocks: list[bytes] = []

    def update(self, data: Buffer) -> None:
        """Feed the next bytes of the file."""
        view = memoryview(data).cast("B")
        while view:
            take = min(len(view), self.block_size - self._in_block)
            self._chain.update(view[:take])
            self._in_block += take
            view = view[take:]
            if self._in_block == self.block_size and self._fed_before_last():
                self._blocks.append(self._chain.state())
                self._in_block = 0

    def _fed_before_last(self) -> bool:
        """True while the block just completed is not the file's last."""
        return (len(self._blocks) + 1) * self.block_size < self.size

    def finish(self) -> Manifest:
        """The manifest, once every byte was fed."""
        whole = self._chain.digest()
        blocks = [*self._blocks, whole] if self.size else []
        return Manifest(self.size, whole, self.block_size, tuple(blocks))


def manifest_of(data: bytes) -> Manifest:
    """The manifest of a file held in memory (tests, small files)."""
    builder = ManifestBuilder(len(data))
    builder.update(data)
    return builder.finish()


def merkle_root(leaves: Iterable[bytes]) -> bytes:
    """A binary SHA-256 Merkle root over ``leaves`` (the alternative measured, §4.8)."""
    level = list(leaves) or [hashlib.sha256(b"").digest()]
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0]


# --- the publisher's signature ----------------------------------------------------------


def publish_signing_payload(
    *,
    publisher: str,
    keyword: str,
    file_name: str,
    size: int,
    sha256: bytes,
    manifest_digest: bytes,
) -> bytes:
    """The exact bytes a publisher signs for one listed file (PROTOCOL.md §4.8)."""
    fields = [publisher, keyword, file_name, size, sha256, manifest_digest]
    return PUBLISH_CONTEXT + pack(fields)


def sign_publication(key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """Sign a payload made by :func:`publish_signing_payload`."""
    return key.sign(payload)


def publication_valid(public_key: Ed25519PublicKey, signature: bytes, payload: bytes) -> bool:
    """True when ``signature`` is the publisher's Ed25519 signature of ``payload``."""
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


# --- the peer operations ------------------------------------------------------------------


def _bin(body: dict[str, Any], name: str, size: int) -> bytes:
    value = body.get(name)
    if type(value) is not bytes or len(value) != size:
        raise BadRequest(f"{name}: expected {size} bytes as msgpack bin")
    return value


def _int(body: dict[str, Any], name: str, hi: int) -> int:
    value = body.get(name)
    if type(value) is not int or not 0 <= value <= hi:
        raise BadRequest(f"{name}: must be between 0 and {hi}")
    return value


@dataclass(frozen=True, slots=True)
class ManifestRequest:
    """Body of ``manifest``: which file."""

    keyword: str
    file_name: str

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Self:
        """Validate a manifest request."""
        return cls(check_keyword(body.get("keyword")), check_file_name(body.get("file_name")))

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {"keyword": self.keyword, "file_name": self.file_name}


@dataclass(frozen=True, slots=True)
class ManifestReply:
    """Reply of ``manifest``: the manifest, the keyword and publisher the signature names, and
    the publisher's signature."""

    manifest: Manifest
    keyword: str
    publisher: str
    signature: bytes

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate a manifest reply (shape; the signature is the downloader's check)."""
        if type(body) is not dict:
            raise BadRequest("reply: expected a map")
        return cls(
            Manifest.from_wire(body.get("manifest")),
            check_keyword(body.get("keyword")),
            canonical_domain_name(body.get("publisher")),
            _bin(body, "signature", SIGNATURE_SIZE),
        )

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {
            "manifest": self.manifest.to_wire(),
            "keyword": self.keyword,
            "publisher": self.publisher,
            "signature": self.signature,
        }


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """Body of ``fetch_range``: bytes ``offset``..``offset + length`` of the file whose
    manifest digest is ``manifest``; both aligned to its blocks (the end may be the file's)."""

    keyword: str
    file_name: str
    manifest: bytes
    offset: int
    length: int

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Self:
        """Validate a ranged fetch request (the alignment is checked against the manifest)."""
        return cls(
            check_keyword(body.get("keyword")),
            check_file_name(body.get("file_name")),
            _bin(body, "manifest", SHA256_SIZE),
            _int(body, "offset", MAX_MANIFEST_FILE),
            _int(body, "length", MAX_MANIFEST_FILE),
        )

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {
            "keyword": self.keyword,
            "file_name": self.file_name,
            "manifest": self.manifest,
            "offset": self.offset,
            "length": self.length,
        }

    def alignment_error(self, manifest: Manifest) -> str | None:
        """Why this range is not block-aligned in ``manifest``, or None when it is."""
        end = self.offset + self.length
        if self.length == 0 or end > manifest.size:
            return f"length: the range must hold 1 to {manifest.size - self.offset} bytes"
        if self.offset % manifest.block_size:
            return f"offset: not a multiple of the block size {manifest.block_size}"
        if end % manifest.block_size and end != manifest.size:
            return f"length: the range must end on a block ({manifest.block_size}) or the file"
        return None


@dataclass(frozen=True, slots=True)
class RangeHeader:
    """First frame of a ``fetch_range`` stream: the range that follows."""

    manifest: bytes
    offset: int
    length: int

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate a range header."""
        if type(body) is not dict:
            raise BadRequest("header: expected a map")
        return cls(
            _bin(body, "manifest", SHA256_SIZE),
            _int(body, "offset", MAX_MANIFEST_FILE),
            _int(body, "length", MAX_MANIFEST_FILE),
        )

    def to_wire(self) -> dict[str, Any]:
        """The header map."""
        return {"manifest": self.manifest, "offset": self.offset, "length": self.length}


__all__ = [
    "MANIFEST_CONTEXT",
    "MAX_BLOCK",
    "MAX_BLOCKS",
    "MIN_BLOCK",
    "PUBLISH_CONTEXT",
    "Manifest",
    "ManifestBuilder",
    "ManifestReply",
    "ManifestRequest",
    "RangeHeader",
    "RangeRequest",
    "block_count",
    "block_size_for",
    "manifest_bytes",
    "manifest_of",
    "merkle_root",
    "publication_valid",
    "publish_signing_payload",
    "sign_publication",
]
