"""The publishing peer's manifests: computed once per file version, cached, signed.

A manifest (PROTOCOL.md §4.8) is cached by the file's ``(keyword folder, file name)`` and its
identity (size, mtime and inode, :class:`~peerd.share.FileIdentity`): a file is read again
only once it changed. Requests for a version being computed wait for that one computation; the
cache grows to the share (:meth:`ManifestCache.fit`), so a scan never evicts what it needs.
Computing one reads the file once and hashes it once: the block digests are SHA-256's chaining
values at the blocks' ends (PROTOCOL.md §4.8), so a manifest costs about what a plain SHA-256
of the file does (BENCHMARKS.md).

Everything here blocks: the peer server runs it in a worker thread.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netproto.manifest import (
    MAX_MANIFEST_FILE,
    Manifest,
    ManifestBuilder,
    publish_signing_payload,
    sign_publication,
)
from peerd.errors import ShareError
from peerd.share import FileIdentity, ShareFile

log = logging.getLogger(__name__)

#: Bytes read per step: a whole number of blocks of every block size up to 4 MiB.
_READ = 4 << 20
#: Manifests kept in memory at least (a 2,000-block manifest is about 70 KiB); more once the
#: share has more files (:meth:`ManifestCache.fit`).
DEFAULT_CAPACITY = 4096


class FileChangedWhileHashed(ShareError):
    """The file changed while its manifest was being computed."""


class TooLargeForManifest(ShareError):
    """The file is larger than a manifest can describe (only the whole-file fetch serves it)."""


@dataclass(frozen=True, slots=True)
class SignedManifest:
    """A manifest with its digest, the keyword and publisher it is signed under, and the
    publisher's signature."""

    manifest: Manifest
    keyword: str
    digest: bytes
    publisher: str
    signature: bytes


def compute_manifest(opened: ShareFile) -> Manifest:
    """The manifest of an opened file as it is now (blocking): one SHA-256 pass over it."""
    size = opened.identity.size
    if size > MAX_MANIFEST_FILE:
        raise TooLargeForManifest(f"larger than {MAX_MANIFEST_FILE} bytes")
    builder = ManifestBuilder(size)
    pos = 0
    step = max(_READ, builder.block_size)
    while pos < size:
        data = opened.read(pos, min(step, size - pos))
        if not data:
            raise FileChangedWhileHashed("the file became shorter while it was hashed")
        builder.update(data)
        pos += len(data)
    if opened.current_identity() != opened.identity:
        raise FileChangedWhileHashed("the file changed while it was hashed")
    return builder.finish()


class ManifestCache:
    """Signed manifests by file and version, computed on first use (thread-safe, bounded)."""

    def __init__(
        self, publisher: str, key: Ed25519PrivateKey, capacity: int = DEFAULT_CAPACITY
    ) -> None:
        self.publisher = publisher
        self._key = key
        self._capacity = capacity
        self._entries: OrderedDict[tuple[str, str], tuple[FileIdentity, SignedManifest]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        #: Versions being computed now, with the future their other requesters wait on.
        self._computing: dict[tuple[str, str, FileIdentity], Future[SignedManifest]] = {}
        #: Manifests computed by reading a file (a cached one reads nothing).
        self.computed = 0

    def get(self, folder: str, file_name: str, identity: FileIdentity) -> SignedManifest | None:
        """The cached signed manifest of exactly this version of the file."""
        with self._lock:
            entry = self._entries.get((folder, file_name))
            if entry is None or entry[0] != identity:
                return None
            self._entries.move_to_end((folder, file_name))
            return entry[1]

    def fit(self, files: int) -> None:
        """Hold at least ``files`` manifests: every file of a share that has that many."""
        with self._lock:
            self._capacity = max(self._capacity, files)

    def signed(self, folder: str, file_name: str, opened: ShareFile) -> SignedManifest:
        """The signed manifest of the opened file, from the cache or computed now (blocking).

        One computation per file version: a second request for a version being computed
        waits for it. The signature names the keyword as this peer lists it, its folder's name
        (PROTOCOL.md §4.8), whatever case the requester asked with.
        """
        key = (folder, file_name, opened.identity)
        with self._lock:
            entry = self._entries.get((folder, file_name))
            if entry is not None and entry[0] == opened.identity:
                self._entries.move_to_end((folder, file_name))
                return entry[1]
            running = self._computing.get(key)
            if running is None:
                mine: Future[SignedManifest] = Future()
                self._computing[key] = mine
        if running is not None:
            return running.result()
        try:
            cached = self.sign(folder, file_name, compute_manifest(opened))
        except BaseException as exc:
            mine.set_exception(exc)
            with self._lock:
                del self._computing[key]
            raise
        with self._lock:
            self.computed += 1
            self._entries[(folder, file_name)] = (opened.identity, cached)
            self._entries.move_to_end((folder, file_name))
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
            del self._computing[key]
        mine.set_result(cached)
        return cached

    def sign(self, keyword: str, file_name: str, manifest: Manifest) -> SignedManifest:
        """The publisher's signature over a file's listing and manifest digest."""
        digest = manifest.digest()
        payload = publish_signing_payload(
            publisher=self.publisher,
            keyword=keyword,
            file_name=file_name,
            size=manifest.size,
            sha256=manifest.sha256,
            manifest_digest=digest,
        )
        signature = sign_publication(self._key, payload)
        return SignedManifest(manifest, keyword, digest, self.publisher, signature)


__all__ = [
    "FileChangedWhileHashed",
    "ManifestCache",
    "SignedManifest",
    "TooLargeForManifest",
    "compute_manifest",
]
