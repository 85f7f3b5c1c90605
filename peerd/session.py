"""What the shell needs from a running peer: the :class:`PeerSession` protocol.

The shell (:mod:`peerd.shell`) is a client like any script: it is written against this small
protocol, not against :class:`peerd.daemon.PeerDaemon`, which implements it. A test of the
shell passes a fake session and needs no index, no peers and no TLS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from netproto.operations import Holding, ListedFile, SearchHit, SharedFile
from peerd.download import DownloadResult, ProgressCallback
from peerd.swarm import Listing, SwarmProgress, SwarmResult


@dataclass(frozen=True)
class SyncReport:
    """What one sync did: files now listed, the changes sent, and whether it was a full one."""

    files: int
    added: int = 0
    changed: int = 0
    removed: int = 0
    #: Entries that went to the index: every file for a full sync, the changes for a delta.
    sent: int = 0
    full: bool = True
    at: float = 0.0

    @property
    def changes(self) -> int:
        """Files added, changed or removed."""
        return self.added + self.changed + self.removed


@dataclass(frozen=True)
class PeerStatus:
    """A snapshot of the peer's state, for the shell's ``status`` command."""

    domain_name: str
    username: str
    port: int
    index: str
    index_connected: bool
    token_expires_at: float | None
    shared_files: int
    last_sync: float | None
    last_ping: float | None
    active_fetches: int
    #: True while the share is watched and synced by itself (``--no-watch`` turns it off).
    watching: bool = False
    #: The last sync the watcher made by itself, if any.
    last_auto_sync: SyncReport | None = None


class RemotePeer(Protocol):
    """A connection to another peer: list its files, download them into our share."""

    @property
    def closed(self) -> bool:
        """True once the connection has failed or been closed."""
        ...

    async def list(self, keyword: str) -> list[str]:
        """The names of the peer's files under ``keyword``."""
        ...

    async def download(
        self,
        keyword: str,
        file_name: str,
        *,
        expected: ListedFile | None = None,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> DownloadResult:
        """Download one file into this peer's share, verified (see :func:`peerd.download`)."""
        ...

    async def close(self) -> None:
        """Close the connection."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class PeerSession(Protocol):
    """A running peer as the shell uses it: its index session, its share, other peers."""

    @property
    def domain_name(self) -> str:
        """This peer's name."""
        ...

    @property
    def file_directory(self) -> Path:
        """The shared folder (downloads land there too)."""
        ...

    @property
    def shared(self) -> Sequence[SharedFile]:
        """The files the index lists for this peer (as of the last sync)."""
        ...

    def status(self) -> PeerStatus:
        """Where the peer stands now."""
        ...

    async def resync(self) -> int:
        """Scan the share again and replace this peer's listing at the index; files listed."""
        ...

    async def search(self, keyword: str) -> list[SearchHit]:
        """Peers holding files under ``keyword``."""
        ...

    async def scan_share(self) -> list[SharedFile]:
        """The share as it is on disk now (which may differ from what the index lists)."""
        ...

    async def open_peer(self, hit: SearchHit) -> RemotePeer:
        """A connection to the peer of a search hit (use it with ``async with``)."""
        ...

    async def holders(self, sha256: bytes) -> list[Holding]:
        """The live peers holding this content, each under its own names (PROTOCOL.md §4.9)."""
        ...

    async def swarm_get(
        self,
        keyword: str,
        file_name: str,
        listing: Listing,
        *,
        overwrite: bool = False,
        on_progress: Callable[[SwarmProgress], None] | None = None,
    ) -> SwarmResult:
        """Download ``keyword/file_name`` from every source of ``listing`` at once, each block
        verified against the publisher-signed manifest (:func:`peerd.swarm.swarm_download`)."""
        ...


__all__ = ["PeerSession", "PeerStatus", "RemotePeer", "SyncReport"]
