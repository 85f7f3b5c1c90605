"""A fake :class:`peerd.session.PeerSession` for shell tests: no index, no peers, no TLS.

Other peers are :class:`FakePeer` values (their files in memory, or the failure they answer
with); a download writes the file into the session's real folder, so what the shell shows of
it (the preview) and what lands on disk can be checked.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from netproto.errors import NotFound
from netproto.manifest import manifest_of
from netproto.operations import Holding, ListedFile, SearchHit, SharedFile
from peerd.download import CHECKS, CheckOutcome, DownloadResult, ProgressCallback
from peerd.errors import DownloadRefused, FileConflict
from peerd.session import PeerStatus
from peerd.swarm import Listing, PeerStats, SwarmProgress, SwarmResult
from tests.support.fake_clock import FakeClock

#: What each check says when it passes, as the real download words it.
PASSED = {
    "nonce": "the trailer echoes our fresh nonce",
    "size": "as announced",
    "sha256": "the bytes hash to the trailer's digest",
    "signer": "signed by the peer we asked",
    "signature": "Ed25519 signature by the peer's certificate key",
    "index-digest": "matches the digest the index listed",
}


def sha(data: bytes) -> bytes:
    """SHA-256 of ``data``."""
    return hashlib.sha256(data).digest()


@dataclass
class FakePeer:
    """Another peer: its files by keyword, and the failures it answers with, if any."""

    domain_name: str
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    address: str = "127.0.0.1"
    port: int = 7001
    #: Raised when the shell connects (an offline peer, an untrusted certificate, ...).
    connect_error: BaseException | None = None
    #: Raised by a download, by file name (a forged signature, a busy peer, ...).
    download_errors: dict[str, BaseException] = field(default_factory=dict)
    #: True when the peer publishes signed manifests (its hits carry the manifest digest).
    signed: bool = False
    #: Why the multi-source downloader drops this peer (a bad block, a vanished connection).
    drop_reason: str | None = None

    def _folder(self, keyword: str) -> dict[str, bytes] | None:
        for name, files in self.files.items():
            if name.casefold() == keyword.casefold():
                return files
        return None

    def hit(self, keyword: str) -> SearchHit | None:
        """This peer's search hit for ``keyword``, as the index would return it."""
        folder = self._folder(keyword)
        if folder is None:
            return None
        listed = tuple(self.entry(n, c) for n, c in sorted(folder.items()))
        return SearchHit(self.domain_name, self.port, self.address, listed)

    def entry(self, name: str, content: bytes) -> ListedFile:
        """One file as the index lists it (with its manifest digest when ``signed``)."""
        if not self.signed:
            return ListedFile(name, len(content), sha(content))
        return ListedFile(
            name, len(content), sha(content), manifest_of(content).digest(), b"s" * 64
        )

    def holdings(self, sha256: bytes) -> list[Holding]:
        """The files of this peer with that content, as ``holders`` returns them."""
        return [
            Holding(self.domain_name, self.port, self.address, kw, self.entry(n, c))
            for kw, folder in sorted(self.files.items())
            for n, c in sorted(folder.items())
            if sha(c) == sha256
        ]


class FakeRemote:
    """A connection to a :class:`FakePeer`; downloads land in ``file_directory``."""

    def __init__(self, peer: FakePeer, file_directory: Path, downloads: list[str]) -> None:
        self.peer = peer
        self.file_directory = file_directory
        self.downloads = downloads
        self.closed = False

    async def list(self, keyword: str) -> list[str]:
        folder = self.peer._folder(keyword)
        if folder is None:
            raise NotFound(f"no keyword {keyword!r} here")
        return sorted(folder)

    async def download(
        self,
        keyword: str,
        file_name: str,
        *,
        expected: ListedFile | None = None,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> DownloadResult:
        self.downloads.append(f"{self.peer.domain_name}:{keyword}/{file_name}")
        error = self.peer.download_errors.get(file_name)
        if error is not None:
            raise error
        content = (self.peer._folder(keyword) or {}).get(file_name)
        if content is None:
            raise NotFound("no such file")
        path = self.file_directory / keyword / file_name
        if path.exists() and path.read_bytes() != content and not overwrite:
            raise FileConflict(path, f"{path} exists with different content")
        path.parent.mkdir(parents=True, exist_ok=True)
        if progress is not None:
            progress(0, len(content))
        path.write_bytes(content)
        if progress is not None:
            progress(len(content), len(content))
        checks = tuple(
            CheckOutcome(name, expected is not None or name != "index-digest", PASSED[name])
            for name in CHECKS
        )
        return DownloadResult(
            path,
            keyword,
            file_name,
            len(content),
            sha(content),
            self.peer.domain_name,
            checks,
            received=len(content),
            elapsed=0.25,
        )

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def scan(folder: Path) -> list[SharedFile]:
    """The files of a share folder, ``<keyword>/<file>``, as a peer lists them."""
    files: list[SharedFile] = []
    if not folder.is_dir():
        return files
    for keyword in sorted(os.listdir(folder)):
        if keyword.startswith(".") or not (folder / keyword).is_dir():
            continue
        for name in sorted(os.listdir(folder / keyword)):
            path = folder / keyword / name
            if not name.startswith(".") and path.is_file():
                content = path.read_bytes()
                files.append(SharedFile(name, keyword, len(content), sha(content)))
    return files


class FakeSession:
    """Implements :class:`peerd.session.PeerSession` from in-memory peers and a real folder."""

    def __init__(
        self,
        file_directory: Path,
        peers: Sequence[FakePeer] = (),
        *,
        domain_name: str = "peer3",
        username: str = "peer3",
        clock: FakeClock | None = None,
    ) -> None:
        self._file_directory = file_directory
        self._domain_name = domain_name
        self.username = username
        self.peers = {p.domain_name: p for p in peers}
        self.clock = clock or FakeClock()
        self.listed: list[SharedFile] = scan(file_directory)
        self.token_expires_at: float | None = self.clock.time() + 600
        self.last_sync: float | None = self.clock.time()
        #: Replaces the search when set (to make it fail, or hang).
        self.search_hook: Callable[[str], Awaitable[list[SearchHit]]] | None = None
        self.searches: list[str] = []
        self.downloads: list[str] = []
        self.connections: list[FakeRemote] = []
        #: Each multi-source download: the sources' ``peer:keyword/file`` names.
        self.swarms: list[list[str]] = []

    @property
    def domain_name(self) -> str:
        return self._domain_name

    @property
    def file_directory(self) -> Path:
        return self._file_directory

    @property
    def shared(self) -> Sequence[SharedFile]:
        return self.listed

    def status(self) -> PeerStatus:
        return PeerStatus(
            self.domain_name,
            self.username,
            7003,
            "127.0.0.1:7000",
            True,
            self.token_expires_at,
            len(self.listed),
            self.last_sync,
            None,
            0,
        )

    async def resync(self) -> int:
        self.listed = scan(self.file_directory)
        self.last_sync = self.clock.time()
        return len(self.listed)

    async def search(self, keyword: str) -> list[SearchHit]:
        self.searches.append(keyword)
        if self.search_hook is not None:
            return await self.search_hook(keyword)
        hits = [h for p in self.peers.values() if (h := p.hit(keyword)) is not None]
        mine = [f for f in self.listed if f.keyword.casefold() == keyword.casefold()]
        if mine:
            listed = tuple(ListedFile(f.filename, f.size, f.sha256) for f in mine)
            hits.append(SearchHit(self.domain_name, 7003, "127.0.0.1", listed))
        return hits

    async def scan_share(self) -> list[SharedFile]:
        return scan(self.file_directory)

    async def open_peer(self, hit: SearchHit) -> FakeRemote:
        peer = self.peers[hit.domain_name]
        if peer.connect_error is not None:
            raise peer.connect_error
        remote = FakeRemote(peer, self.file_directory, self.downloads)
        self.connections.append(remote)
        return remote

    async def holders(self, sha256: bytes) -> list[Holding]:
        return [h for p in self.peers.values() for h in p.holdings(sha256)]

    async def swarm_get(
        self,
        keyword: str,
        file_name: str,
        listing: Listing,
        *,
        overwrite: bool = False,
        on_progress: Callable[[SwarmProgress], None] | None = None,
    ) -> SwarmResult:
        self.swarms.append([f"{s.domain_name}:{s.keyword}/{s.file_name}" for s in listing.sources])
        stats: list[PeerStats] = []
        content: bytes | None = None
        for source in listing.sources:
            peer = self.peers[source.domain_name]
            data = (peer._folder(source.keyword) or {}).get(source.file_name)
            if peer.drop_reason is not None or data is None:
                stats.append(PeerStats(peer.domain_name, dropped=peer.drop_reason or "not found"))
            else:
                content = data
                stats.append(PeerStats(peer.domain_name, len(data), 1, 1e6))
        if content is None:
            raise DownloadRefused(
                "holders",
                "every holder is gone; the verified blocks are kept",
                (CheckOutcome("manifest", True, "1 blocks"),),
                partial_kept=True,
            )
        path = self.file_directory / keyword / file_name
        if path.exists() and path.read_bytes() != content and not overwrite:
            raise FileConflict(path, f"{path} exists with different content")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if on_progress is not None:
            on_progress(SwarmProgress(len(content), len(content), tuple(stats)))
        checks = (
            CheckOutcome("manifest", True, "1 blocks"),
            CheckOutcome("blocks", True, "1 blocks verified"),
            CheckOutcome("sha256", True, sha(content).hex()),
        )
        return SwarmResult(path, len(content), sha(content), 1, 0, tuple(stats), checks)
