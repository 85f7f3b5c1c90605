"""The peer's local control socket: how ``p2pshare search|get|status|sync`` reach a running peer.

A Unix socket, ``control.sock``, in the peer's state folder (``--state-dir``; by default
``$XDG_STATE_HOME/p2pshare/<hostname>``, else ``~/.local/state/p2pshare/<hostname>``). The
folder is made with mode 0700 and the socket with mode 0600, and the peer also checks the
connecting process's uid with ``SO_PEERCRED``: only the user running the peer may drive it.

The protocol is the project's own (PROTOCOL.md §9): one request frame and one answer frame per
connection, each a 4-byte length and a msgpack map, with the envelope and error maps of
PROTOCOL.md §3 and §5. :class:`ControlService` holds the handlers (no socket I/O, tested with a
fake session); :class:`ControlServer` serves them; :class:`ControlClient` is the other end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from netproto.errors import (
    BadFrame,
    BadRequest,
    Forbidden,
    Internal,
    InvalidPath,
    NotFound,
    P2PError,
    RemoteProtocolError,
    RequestError,
    UnknownOp,
)
from netproto.framing import HEADER, HEADER_SIZE
from netproto.messages import ErrorReply, Reply, Request
from netproto.names import check_file_name, check_keyword
from netproto.operations import ListedFile, SearchHit
from netproto.protocol import (
    ClientProtocol,
    Rejected,
    ServerProtocol,
    Unreadable,
    encode_message,
)
from peerd.download import DownloadResult
from peerd.errors import DownloadRefused, FileConflict
from peerd.session import PeerSession, PeerStatus, SyncReport
from peerd.swarmget import as_download_result, get_from_holders
from peerd.verify import CheckOutcome

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
#: A search reply from the index fits in 1 MiB (PROTOCOL.md §4.2); ours wraps it.
MAX_CONTROL_FRAME = 4 << 20
#: Unix socket paths are limited to about 108 bytes; longer ones are reached via /proc.
_MAX_SUN_PATH = 100
_CONNECT_TIMEOUT = 5.0


# --- the state folder ------------------------------------------------------------------------


def state_home(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/p2pshare`` if the variable is an absolute path, else
    ``~/.local/state/p2pshare``."""
    value = environ.get("XDG_STATE_HOME", "")
    base = Path(value) if value and os.path.isabs(value) else None
    if base is None:
        base = Path(environ.get("HOME") or Path.home()) / ".local" / "state"
    return base / "p2pshare"


def default_state_dir(domain_name: str, environ: Mapping[str, str] = os.environ) -> Path:
    """The state folder of the peer called ``domain_name``."""
    return state_home(environ) / domain_name.lower()


def prepare_state_dir(path: Path) -> None:
    """Make ``path`` (mode 0700); refuse one owned by another user or open to others.

    Raises OSError with a readable ``strerror``.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(path, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a folder")
    if st.st_uid != os.getuid():
        raise OSError(f"{path} belongs to another user (uid {st.st_uid})")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def socket_path(state_dir: Path) -> Path:
    """Where the control socket of the peer with this state folder is."""
    return state_dir / SOCKET_NAME


@contextlib.contextmanager
def _reachable(path: Path) -> Iterator[str]:
    """A name of ``path`` short enough for a Unix socket address (via /proc/self/fd when the
    path itself is too long)."""
    if len(os.fsencode(path)) <= _MAX_SUN_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (None where unknown)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


# --- what travels (PROTOCOL.md §9) ------------------------------------------------------------


def _opt_float(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float):
        raise RemoteProtocolError(f"{name}: expected a number")
    return float(value)


def _int(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    if type(value) is not int:
        raise RemoteProtocolError(f"{name}: expected an integer")
    return value


def _map(value: Any, name: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise RemoteProtocolError(f"{name}: expected a map")
    return value


def report_to_wire(report: SyncReport) -> dict[str, Any]:
    """A sync report as a map."""
    return dataclasses.asdict(report)


def report_from_wire(body: Any) -> SyncReport:
    """A sync report from a map (the peer's answer: its faults are RemoteProtocolError)."""
    body = _map(body, "sync report")
    full = body.get("full")
    if type(full) is not bool:
        raise RemoteProtocolError("full: expected a boolean")
    at = _opt_float(body.get("at"), "at")
    return SyncReport(
        _int(body, "files"),
        _int(body, "added"),
        _int(body, "changed"),
        _int(body, "removed"),
        _int(body, "sent"),
        full,
        at or 0.0,
    )


@dataclass(frozen=True)
class StatusReply:
    """Answer to ``status``: the peer's status, its share's size, and downloads made here."""

    status: PeerStatus
    share_bytes: int
    downloads: int
    downloaded_bytes: int
    refused: int
    failed: int

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        status = dataclasses.asdict(self.status)
        return {
            "status": status,
            "share_bytes": self.share_bytes,
            "downloads": self.downloads,
            "downloaded_bytes": self.downloaded_bytes,
            "refused": self.refused,
            "failed": self.failed,
        }

    @classmethod
    def from_wire(cls, body: Any) -> StatusReply:
        """Validate a status answer."""
        body = _map(body, "status reply")
        raw = _map(body.get("status"), "status")
        auto = raw.get("last_auto_sync")
        try:
            status = PeerStatus(
                domain_name=str(raw["domain_name"]),
                username=str(raw["username"]),
                port=_int(raw, "port"),
                index=str(raw["index"]),
                index_connected=bool(raw["index_connected"]),
                token_expires_at=_opt_float(raw.get("token_expires_at"), "token_expires_at"),
                shared_files=_int(raw, "shared_files"),
                last_sync=_opt_float(raw.get("last_sync"), "last_sync"),
                last_ping=_opt_float(raw.get("last_ping"), "last_ping"),
                active_fetches=_int(raw, "active_fetches"),
                watching=bool(raw.get("watching", False)),
                last_auto_sync=None if auto is None else report_from_wire(auto),
            )
        except KeyError as exc:
            raise RemoteProtocolError(f"status: {exc.args[0]} missing") from None
        return cls(
            status,
            _int(body, "share_bytes"),
            _int(body, "downloads"),
            _int(body, "downloaded_bytes"),
            _int(body, "refused"),
            _int(body, "failed"),
        )


@dataclass(frozen=True)
class GetRequest:
    """Body of ``get``: which file, from which peer (any if None), and may it overwrite."""

    keyword: str
    file_name: str
    source: str | None = None
    overwrite: bool = False

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> GetRequest:
        """Validate a get body (names as in PROTOCOL.md §4.7)."""
        source = body.get("from")
        if source is not None and (type(source) is not str or not 0 < len(source) <= 253):
            raise BadRequest("from: expected a peer name")
        overwrite = body.get("overwrite", False)
        if type(overwrite) is not bool:
            raise BadRequest("overwrite: expected a boolean")
        return cls(
            check_keyword(body.get("keyword")),
            check_file_name(body.get("file_name")),
            source.lower() if source is not None else None,
            overwrite,
        )

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        body: dict[str, Any] = {"keyword": self.keyword, "file_name": self.file_name}
        if self.source is not None:
            body["from"] = self.source
        if self.overwrite:
            body["overwrite"] = True
        return body


def checks_to_wire(checks: tuple[CheckOutcome, ...]) -> list[dict[str, Any]]:
    """Check outcomes as maps."""
    return [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks]


def checks_from_wire(value: Any) -> tuple[CheckOutcome, ...]:
    """Check outcomes from maps."""
    if type(value) is not list:
        raise RemoteProtocolError("checks: expected an array")
    out = []
    for item in value:
        item = _map(item, "check")
        passed = item.get("passed")
        if passed is not None and type(passed) is not bool:
            raise RemoteProtocolError("check.passed: expected a boolean or nil")
        out.append(CheckOutcome(str(item.get("name")), passed, str(item.get("detail"))))
    return tuple(out)


def result_to_wire(result: DownloadResult) -> dict[str, Any]:
    """A verified download as a map."""
    return {
        "path": os.path.abspath(result.path),  # the caller may run in another folder
        "keyword": result.keyword,
        "file_name": result.file_name,
        "size": result.size,
        "sha256": result.sha256,
        "signer": result.signer,
        "checks": checks_to_wire(result.checks),
        "resumed_from": result.resumed_from,
        "received": result.received,
        "elapsed": result.elapsed,
        "already_present": result.already_present,
    }


def result_from_wire(body: Any) -> DownloadResult:
    """A verified download from a map."""
    body = _map(body, "result")
    sha256 = body.get("sha256")
    if type(sha256) is not bytes or len(sha256) != 32:
        raise RemoteProtocolError("sha256: expected 32 bytes")
    return DownloadResult(
        Path(str(body.get("path"))),
        str(body.get("keyword")),
        str(body.get("file_name")),
        _int(body, "size"),
        sha256,
        str(body.get("signer")),
        checks_from_wire(body.get("checks")),
        resumed_from=_int(body, "resumed_from"),
        received=_int(body, "received"),
        elapsed=_opt_float(body.get("elapsed"), "elapsed") or 0.0,
        already_present=bool(body.get("already_present")),
    )


@dataclass(frozen=True)
class Attempt:
    """One peer tried by ``get`` that did not deliver: who, and one readable line why."""

    peer: str
    message: str
    #: For a download refused by a check: the check, every outcome, and whether a resumable
    #: partial file was kept.
    check: str | None = None
    checks: tuple[CheckOutcome, ...] = ()
    partial_kept: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The map."""
        return {
            "peer": self.peer,
            "message": self.message,
            "check": self.check,
            "checks": checks_to_wire(self.checks),
            "partial_kept": self.partial_kept,
        }

    @classmethod
    def from_wire(cls, value: Any) -> Attempt:
        """From a map."""
        value = _map(value, "attempt")
        check = value.get("check")
        return cls(
            str(value.get("peer")),
            str(value.get("message")),
            check if isinstance(check, str) else None,
            checks_from_wire(value.get("checks", [])),
            value.get("partial_kept") is True,
        )


class DownloadFailed(RequestError):
    """``get``: every peer listing the file was tried and none delivered a verified copy."""

    code = "DOWNLOAD_FAILED"
    default_message = "no peer delivered a verified copy"


class Unavailable(RequestError):
    """The peer could not do it now (the index unreachable, the share unreadable, ...)."""

    code = "UNAVAILABLE"
    default_message = "the peer cannot do that now"


# --- the handlers ----------------------------------------------------------------------------


class ControlledPeer(PeerSession, Protocol):
    """What the control socket needs of the peer: the shell's session, plus a sync that says
    what it sent."""

    async def sync_share(self) -> SyncReport:
        """Scan the share and bring the index's listing up to date (only the changes if it
        can)."""
        ...


Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def _explain(exc: BaseException, where: str = "the index") -> str:
    # Imported here: the shell's module loads rich, which a daemon without a shell never needs
    # unless a one-shot command fails.
    from peerd.shell import explain

    return explain(exc, where)


class ControlService:
    """The control socket's handlers, over a :class:`ControlledPeer`; no socket I/O."""

    def __init__(self, peer: ControlledPeer) -> None:
        self.peer = peer
        self.downloads = 0
        self.downloaded_bytes = 0
        self.refused = 0
        self.failed = 0
        self.handlers: dict[str, Handler] = {
            "status": self.handle_status,
            "search": self.handle_search,
            "get": self.handle_get,
            "sync": self.handle_sync,
        }

    async def handle(self, op: str, body: dict[str, Any]) -> Any:
        """Run one request; failures come out as :class:`RequestError` with a readable line."""
        handler = self.handlers.get(op)
        if handler is None:
            raise UnknownOp(f"unknown operation {op!r}")
        try:
            return await handler(body)
        except RequestError:
            raise
        except (P2PError, OSError) as exc:
            raise Unavailable(_explain(exc)) from exc

    async def _search(self, keyword: str) -> list[SearchHit]:
        """The index's hits; a failure keeps its code and gets the shell's wording."""
        try:
            return await self.peer.search(keyword)
        except RequestError as exc:
            readable = RequestError(_explain(exc), **exc.extra)
            readable.code = exc.code  # type: ignore[misc]
            raise readable from exc
        except (P2PError, OSError) as exc:
            raise Unavailable(_explain(exc)) from exc

    async def handle_status(self, body: dict[str, Any]) -> dict[str, Any]:
        """``status``: the peer's status, as the shell shows it."""
        share_bytes = sum(f.size for f in self.peer.shared)
        reply = StatusReply(
            self.peer.status(),
            share_bytes,
            self.downloads,
            self.downloaded_bytes,
            self.refused,
            self.failed,
        )
        return reply.to_wire()

    async def handle_search(self, body: dict[str, Any]) -> dict[str, Any]:
        """``search {keyword}``: the index's hits (the caller exits 1 on none)."""
        keyword = check_keyword(body.get("keyword"))
        hits = await self._search(keyword)
        return {"keyword": keyword, "hits": [h.to_wire() for h in hits]}

    async def handle_sync(self, body: dict[str, Any]) -> dict[str, Any]:
        """``sync``: bring the index's listing up to date."""
        return report_to_wire(await self.peer.sync_share())

    async def handle_get(self, body: dict[str, Any]) -> dict[str, Any]:
        """``get {keyword, file_name, from?, overwrite?}``: as the shell's ``get``."""
        req = GetRequest.from_wire(body)
        keyword, file_name = req.keyword, req.file_name
        me = self.peer.domain_name
        hits = [h for h in await self._search(keyword) if h.domain_name != me]
        if req.source is not None:
            hits = [h for h in hits if h.domain_name == req.source]
            if not hits:
                raise NotFound(f"{req.source} shares nothing under {keyword!r} (search {keyword})")
        else:
            hits = [h for h in hits if any(f.filename == file_name for f in h.files)]
            if not hits:
                raise NotFound(
                    f"no other peer shares {keyword}/{file_name} (search {keyword} to see what"
                    " is there)"
                )
        attempts: list[Attempt] = []
        # Every holder at once when the file has a signed manifest, as the shell's get does.
        started = asyncio.get_running_loop().time()
        try:
            swarm = await get_from_holders(
                self.peer, keyword, file_name, hits, source=req.source, overwrite=req.overwrite
            )
        except DownloadRefused as exc:
            self.refused += 1
            detail = str(exc).partition(": ")[2] or str(exc)
            names = ", ".join(h.domain_name for h in hits)
            attempts.append(Attempt(names, detail, exc.check, exc.checks, exc.partial_kept))
            if exc.check in ("holders", "size"):
                raise DownloadFailed(attempts=[a.to_wire() for a in attempts]) from exc
            swarm = None  # a manifest refused: fetch the whole file from one holder instead
        except (P2PError, OSError) as exc:
            self.failed += 1
            where = f"{keyword}/{file_name}"
            attempts.append(Attempt(", ".join(h.domain_name for h in hits), _explain(exc, where)))
            raise DownloadFailed(attempts=[a.to_wire() for a in attempts]) from exc
        if swarm is not None:
            elapsed = asyncio.get_running_loop().time() - started
            result = as_download_result(swarm, keyword, file_name, elapsed)
            self.downloads += 1
            self.downloaded_bytes += result.received
            return {"peer": result.signer, "result": result_to_wire(result), "attempts": []}
        for hit in hits:
            where = f"{hit.domain_name} at {hit.address}:{hit.port_number}"
            expected: ListedFile | None = next(
                (f for f in hit.files if f.filename == file_name), None
            )
            try:
                async with await self.peer.open_peer(hit) as remote:
                    result = await remote.download(
                        keyword, file_name, expected=expected, overwrite=req.overwrite
                    )
            except DownloadRefused as exc:
                self.refused += 1
                detail = str(exc).partition(": ")[2] or str(exc)
                attempts.append(
                    Attempt(hit.domain_name, detail, exc.check, exc.checks, exc.partial_kept)
                )
                continue
            except (P2PError, OSError) as exc:
                self.failed += 1
                log.debug("get from %s failed", where, exc_info=True)
                attempts.append(Attempt(hit.domain_name, _explain(exc, where)))
                if isinstance(exc, FileConflict | InvalidPath):
                    break  # the same with every peer
                continue
            self.downloads += 1
            self.downloaded_bytes += result.received
            return {
                "peer": hit.domain_name,
                "result": result_to_wire(result),
                "attempts": [a.to_wire() for a in attempts],
            }
        raise DownloadFailed(attempts=[a.to_wire() for a in attempts])


# --- the server ------------------------------------------------------------------------------


class ControlSocketInUse(Exception):
    """Another live peer already answers on this state folder's control socket."""


def _socket_alive(path: Path) -> bool:
    with _reachable(path) as address, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return False
        return True


class ControlServer:
    """Serves a :class:`ControlService` on ``<state_dir>/control.sock`` (0600, owner only)."""

    def __init__(
        self,
        service: ControlService,
        state_dir: Path,
        *,
        uid: int | None = None,
        max_frame: int = MAX_CONTROL_FRAME,
        request_timeout: float = 10.0,
    ) -> None:
        self.service = service
        self.state_dir = state_dir
        self.path = socket_path(state_dir)
        #: The only uid allowed to connect (the peer's own by default).
        self.uid = os.getuid() if uid is None else uid
        self.max_frame = max_frame
        self.request_timeout = request_timeout
        self._server: asyncio.base_events.Server | None = None
        self._inode: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Make the folder and bind the socket; OSError or :class:`ControlSocketInUse` if not."""
        prepare_state_dir(self.state_dir)
        path = self.path
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(f"{path} exists and is not a socket")
            if await asyncio.to_thread(_socket_alive, path):
                raise ControlSocketInUse(f"another peer already answers on {path}")
            os.unlink(path)
        # Bound under a temporary name, made owner-only, then renamed into place: the socket
        # is never reachable with a wider mode, whatever the umask.
        tmp = path.with_name(f".{SOCKET_NAME}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _reachable(tmp) as address:
                sock.bind(address)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
            sock.listen(16)
            sock.setblocking(False)
            self._inode = os.stat(path).st_ino
            self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        log.info("control socket at %s", path)

    async def close(self) -> None:
        """Stop serving and remove the socket (if it is still ours)."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._server = None
        with contextlib.suppress(OSError):
            if os.stat(self.path, follow_symlinks=False).st_ino == self._inode:
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            log.debug("control client went away", exc_info=True)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        uid = peer_uid(sock) if sock is not None else None
        if uid is not None and uid != self.uid:
            log.warning("control socket: refused a client running as uid %d", uid)
            writer.write(ServerProtocol.error(0, Forbidden("not the peer's user")))
            await writer.drain()
            return
        async with asyncio.timeout(self.request_timeout):
            head = await reader.readexactly(HEADER_SIZE)
            (length,) = HEADER.unpack(head)
            if not 0 < length <= self.max_frame:
                writer.write(ServerProtocol.error(0, BadFrame("bad frame length")))
                await writer.drain()
                return
            data = head + await reader.readexactly(length)
        try:
            events = ServerProtocol(self.max_frame).receive_data(data)
        except RequestError as exc:
            events = [Unreadable(exc)]
        event = events[0] if events else Unreadable(BadFrame("no request"))
        if isinstance(event, Unreadable):
            writer.write(ServerProtocol.error(0, event.error))
        elif isinstance(event, Rejected):
            writer.write(ServerProtocol.error(event.id, event.error))
        else:
            writer.write(await self._dispatch(event))
        await writer.drain()

    async def _dispatch(self, request: Request) -> bytes:
        try:
            body = await self.service.handle(request.op, request.body)
        except RequestError as exc:
            return ServerProtocol.error(request.id, exc)
        except Exception:
            log.exception("control request %r failed", request.op)
            return ServerProtocol.error(request.id, Internal())
        return encode_message({"id": request.id, "ok": True, "body": body})


# --- the client ------------------------------------------------------------------------------


class NoPeer(Exception):
    """No peer answers on the control socket (none is running, or it is someone else's)."""


class ControlClient:
    """The other end of the control socket: one request, one answer."""

    def __init__(self, state_dir: Path, *, timeout: float | None = None) -> None:
        self.path = socket_path(state_dir)
        self.timeout = timeout

    async def request(self, op: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; its answer's body, or the :class:`RequestError` it carried."""
        try:
            with _reachable(self.path) as address:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(address), _CONNECT_TIMEOUT
                )
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError) as exc:
            raise NoPeer(f"no peer answers on {self.path}") from exc
        except PermissionError as exc:
            raise NoPeer(f"{self.path} is not ours to use ({exc.strerror})") from exc
        protocol = ClientProtocol(MAX_CONTROL_FRAME)
        try:
            async with asyncio.timeout(self.timeout):
                writer.write(protocol.encode_request(1, op, body or {}, None))
                await writer.drain()
                head = await reader.readexactly(HEADER_SIZE)
                (length,) = HEADER.unpack(head)
                if not 0 < length <= MAX_CONTROL_FRAME:
                    raise RemoteProtocolError(f"answer of {length} bytes")
                data = head + await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise NoPeer(f"the peer at {self.path} closed the connection") from exc
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        try:
            (message,) = protocol.receive_data(data)
        except (RequestError, ValueError) as exc:
            raise RemoteProtocolError(f"unreadable answer: {exc}") from exc
        if isinstance(message, ErrorReply):
            raise message.error
        if not isinstance(message, Reply):
            raise RemoteProtocolError("the answer is not a reply")
        return message.body

    async def status(self) -> StatusReply:
        """The peer's status."""
        return StatusReply.from_wire(await self.request("status"))

    async def search(self, keyword: str) -> list[SearchHit]:
        """The index's hits for ``keyword``."""
        body = _map(await self.request("search", {"keyword": keyword}), "search reply")
        hits = body.get("hits")
        if type(hits) is not list:
            raise RemoteProtocolError("search reply: hits: expected an array")
        try:
            return [SearchHit.from_wire(hit) for hit in hits]
        except RequestError as exc:
            raise RemoteProtocolError(f"search reply: {exc.message}") from exc

    async def get(
        self, keyword: str, file_name: str, source: str | None = None, overwrite: bool = False
    ) -> tuple[str, DownloadResult, list[Attempt]]:
        """Download one file into the peer's share: (peer, result, the attempts that failed)."""
        req = GetRequest(keyword, file_name, source, overwrite)
        body = _map(await self.request("get", req.to_wire()), "get reply")
        attempts = [Attempt.from_wire(a) for a in body.get("attempts", [])]
        return str(body.get("peer")), result_from_wire(body.get("result")), attempts

    async def sync(self) -> SyncReport:
        """Bring the index's listing up to date."""
        return report_from_wire(await self.request("sync"))


__all__ = [
    "MAX_CONTROL_FRAME",
    "SOCKET_NAME",
    "Attempt",
    "ControlClient",
    "ControlServer",
    "ControlService",
    "ControlSocketInUse",
    "ControlledPeer",
    "DownloadFailed",
    "GetRequest",
    "NoPeer",
    "StatusReply",
    "Unavailable",
    "default_state_dir",
    "peer_uid",
    "prepare_state_dir",
    "report_from_wire",
    "report_to_wire",
    "socket_path",
    "state_home",
]
