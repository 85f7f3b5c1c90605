"""Shared machinery of the adversarial suite (``tests/adversarial/``).

Live daemons (a real :class:`IndexDaemon` and a real :class:`PeerDaemon` serving a small share,
in-process or as subprocesses), raw TLS connections on which a test writes what no
well-behaved client would, and the health checks every case ends with: a fresh, well-behaved
client is still served by the same daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import ssl
import struct
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certs import load_cert
from indexd.app import IndexConfig, IndexDaemon
from indexd.ratelimit import BackoffPolicy
from netproto.client import Connection
from netproto.codec import pack, unpack_map
from netproto.errors import ERRORS_BY_CODE
from netproto.framing import encode_frame
from netproto.operations import search_reply_from_wire
from netproto.server import ServerLimits
from netproto.tokens import INDEX_AUDIENCE, PEER_AUDIENCE, certificate_thumbprint
from peerd.client import PeerClient
from peerd.daemon import PeerConfig, PeerDaemon

HOST = "127.0.0.1"
STEP = 15.0  # seconds any one step against a live daemon may take
PASSWORD = "correct horse battery"
HEALTH_KEYWORD = "koala"
HEALTH_FILE = "hello.txt"
HEALTH_CONTENT = b"hello from peer1\n"
REPO = Path(__file__).resolve().parents[2]
DOCUMENTED_CODES = frozenset(ERRORS_BY_CODE)


# --- live daemons ---------------------------------------------------------------------------


@dataclass
class Live:
    """A live index and a live peer ("peer1", user "peer1") that synced its share to it."""

    pki: Any
    index: IndexDaemon
    peer: PeerDaemon
    share: Path
    tmp: Path

    def token(self, sub: str = "peer2") -> str:
        """An index token issued by the live index itself (as ``auth`` would issue it to a
        client without a certificate)."""
        assert self.index.service is not None
        return self.index.service.issuer.issue(sub, audience=INDEX_AUDIENCE)[0]

    def peer_token(self, sub: str = "peer2", cert: str | None = None) -> str:
        """A token for peers issued by the live index itself (PROTOCOL.md §8), bound as
        ``auth`` binds it to the client certificate of the leaf ``cert``, which the connection
        using it must present (default: the leaf named ``sub`` if there is one, else peer2's,
        the one :meth:`target` presents to the peer)."""
        assert self.index.service is not None
        if cert is None:
            cert = sub if Path(self.pki.cert(sub)).exists() else "peer2"
        thumbprint = certificate_thumbprint(load_cert(self.pki.cert(cert)))
        issuer = self.index.service.issuer
        return issuer.issue(sub, audience=PEER_AUDIENCE, thumbprint=thumbprint)[0]

    def token_for(self, kind: str, sub: str = "peer2") -> str:
        """A token for the ``"index"`` or for the ``"peer"``."""
        return self.token(sub) if kind == "index" else self.peer_token(sub)

    @property
    def index_port(self) -> int:
        return self.index.port

    @property
    def peer_port(self) -> int:
        return self.peer.port

    def target(self, kind: str) -> tuple[int, str, ssl.SSLContext]:
        """``(port, TLS name, client context)`` of the ``"index"`` or the ``"peer"``."""
        if kind == "index":
            return self.index_port, "indexd", self.pki.client_ctx()
        return self.peer_port, "peer1", self.pki.client_ctx("peer2")


def put(root: Path, rel: str, content: bytes) -> Path:
    """Write ``root/rel`` (making folders)."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def index_config(pki: Any, tmp: Path, **overrides: Any) -> IndexConfig:
    """An in-process index config: session PKI, fresh database, port 0, bcrypt cost 4, and
    login limits loose enough that tests sharing 127.0.0.1 do not trip them by accident."""
    settings: dict[str, Any] = {
        "cert": pki.cert("indexd"),
        "key": pki.key("indexd"),
        "ca": pki.ca,
        "db": tmp / "index.db",
        "port": 0,
        "bcrypt_cost": 4,
        "address_backoff": BackoffPolicy(free=10_000),
        **overrides,
    }
    return IndexConfig(**settings)


def peer_config(pki: Any, name: str, index_port: int, share: Path, **overrides: Any) -> PeerConfig:
    """An in-process peer config that registers its user and serves on 127.0.0.1:0."""
    settings: dict[str, Any] = {
        "domain_name": name,
        "index_host": HOST,
        "index_port": index_port,
        "username": name,
        "password": PASSWORD,
        "file_directory": share,
        "cert": pki.cert(name),
        "key": pki.key(name),
        "ca": pki.ca,
        "port": 0,
        "bind": HOST,
        "register": True,
        "connect_timeout": 10.0,
        "request_timeout": 10.0,
        **overrides,
    }
    return PeerConfig(**settings)


@contextlib.asynccontextmanager
async def live_daemons(
    pki: Any,
    tmp: Path,
    *,
    index_limits: ServerLimits | None = None,
    peer_limits: ServerLimits | None = None,
    index_overrides: dict[str, Any] | None = None,
    peer_overrides: dict[str, Any] | None = None,
    files: dict[str, bytes] | None = None,
) -> AsyncIterator[Live]:
    """Run a live index and peer1 for the ``async with`` block."""
    tmp.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - set-up, not the code under test
    share = tmp / "peer1-files"
    put(share, f"{HEALTH_KEYWORD}/{HEALTH_FILE}", HEALTH_CONTENT)
    for rel, content in (files or {}).items():
        put(share, rel, content)
    extra = dict(index_overrides or {})
    if index_limits is not None:
        extra["limits"] = index_limits
    index = IndexDaemon(index_config(pki, tmp, **extra))
    await asyncio.wait_for(index.start(), STEP)
    try:
        pextra = dict(peer_overrides or {})
        if peer_limits is not None:
            pextra["limits"] = peer_limits
        peer = PeerDaemon(peer_config(pki, "peer1", index.port, share, **pextra))
        await asyncio.wait_for(peer.start(), STEP)
        try:
            yield Live(pki, index, peer, share, tmp)
        finally:
            await asyncio.wait_for(peer.stop(grace=0.5), STEP)
    finally:
        await asyncio.wait_for(index.stop(grace=0.5), STEP)


# --- raw TLS --------------------------------------------------------------------------------


async def open_raw(
    port: int,
    server_hostname: str,
    ctx: ssl.SSLContext,
    *,
    local_addr: tuple[str, int] | None = None,
    limit: int = 1 << 16,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection on which the test writes raw bytes."""
    return await asyncio.wait_for(
        asyncio.open_connection(
            HOST,
            port,
            ssl=ctx,
            server_hostname=server_hostname,
            local_addr=local_addr,
            limit=limit,
        ),
        STEP,
    )


async def open_conn(
    port: int,
    server_hostname: str,
    ctx: ssl.SSLContext,
    *,
    local_addr: tuple[str, int] | None = None,
) -> Connection:
    """A well-behaved client connection (optionally from another loopback address)."""
    return await Connection.open(
        HOST,
        port,
        ctx,
        server_hostname=server_hostname,
        connect_timeout=STEP,
        request_timeout=STEP,
        local_addr=local_addr,
    )


def nested_map(depth: int) -> dict[str, Any]:
    """``{"a": {"a": ...}}`` nested ``depth`` maps deep."""
    node: dict[str, Any] = {}
    for _ in range(depth):
        node = {"a": node}
    return node


def raw_map(*pairs: bytes) -> bytes:
    """A msgpack fixmap built from already-encoded keys and values."""
    return bytes([0x80 | (len(pairs) // 2)]) + b"".join(pairs)


def frame_of(msg: Any) -> bytes:
    """One frame holding ``msg`` packed as the protocol packs (bytes as bin)."""
    return encode_frame(pack(msg))


def request_frame(rid: int, op: str, body: Any, token: str | None = None, **extra: Any) -> bytes:
    """A raw request frame."""
    msg: dict[str, Any] = {"v": 1, "id": rid, "op": op, "body": body, **extra}
    if token is not None:
        msg["token"] = token
    return frame_of(msg)


async def read_message(reader: asyncio.StreamReader, timeout: float = STEP) -> dict[str, Any]:
    """Read one frame and decode its map."""
    async with asyncio.timeout(timeout):
        (length,) = struct.unpack(">I", await reader.readexactly(4))
        return unpack_map(await reader.readexactly(length))


async def assert_closed(reader: asyncio.StreamReader, timeout: float = STEP) -> None:
    """The server closed the connection: EOF (or a reset), and nothing more was sent."""
    try:
        async with asyncio.timeout(timeout):
            rest = await reader.read()
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        return
    assert rest == b"", f"unexpected bytes before close: {rest[:64]!r}"


def error_code(msg: dict[str, Any]) -> str:
    """The error code of an error frame (fails the test on any other frame)."""
    assert msg.get("ok") is False, msg
    code = msg["error"]["code"]
    assert code in DOCUMENTED_CODES, code
    return str(code)


async def expect_error_and_close(reader: asyncio.StreamReader, code: str) -> dict[str, Any]:
    """One id-0 error with ``code``, then the connection closes."""
    msg = await read_message(reader)
    assert msg["id"] == 0 and error_code(msg) == code, msg
    await assert_closed(reader)
    return msg


def close_writer(writer: asyncio.StreamWriter) -> None:
    """Drop a raw connection without waiting."""
    writer.transport.abort()


# --- health checks --------------------------------------------------------------------------


async def assert_index_serves(live: Live, *, local_addr: tuple[str, int] | None = None) -> None:
    """A fresh client of the index finds peer1's file by search."""
    conn = await open_conn(live.index_port, "indexd", live.pki.client_ctx(), local_addr=local_addr)
    try:
        body = await conn.request("search", {"keyword": HEALTH_KEYWORD}, live.token("tester"))
        hits = search_reply_from_wire(body)
        assert [h.domain_name for h in hits] == ["peer1"], hits
        assert HEALTH_FILE in [f.filename for f in hits[0].files]
    finally:
        await asyncio.wait_for(conn.close(), STEP)


async def assert_peer_serves(live: Live, *, local_addr: tuple[str, int] | None = None) -> None:
    """A fresh mutual-TLS client of the peer lists its keyword."""
    if local_addr is None:
        peer = await asyncio.wait_for(
            PeerClient.connect(
                HOST,
                live.peer_port,
                "peer1",
                live.pki.client_ctx("peer2"),
                token=live.peer_token("peer2"),
                requester="peer2",
                connect_timeout=STEP,
                request_timeout=STEP,
            ),
            STEP,
        )
    else:
        conn = await open_conn(
            live.peer_port, "peer1", live.pki.client_ctx("peer2"), local_addr=local_addr
        )
        peer = PeerClient(conn, "peer1", token=live.peer_token("peer2"), requester="peer2")
    try:
        assert await peer.list(HEALTH_KEYWORD) == [HEALTH_FILE]
    finally:
        await asyncio.wait_for(peer.close(), STEP)


async def assert_serves(live: Live, kind: str, **kwargs: Any) -> None:
    """The health check of the ``"index"`` or the ``"peer"``."""
    if kind == "index":
        await assert_index_serves(live, **kwargs)
    else:
        await assert_peer_serves(live, **kwargs)


async def wait_until(predicate: Callable[[], bool], seconds: float) -> None:
    """Poll ``predicate`` until true; fail after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 - the daemons offer no event to wait on
            await asyncio.sleep(0.02)


# --- daemons as subprocesses ----------------------------------------------------------------


def _limit_preexec(nofile: int | None, fsize: int | None) -> Callable[[], None] | None:
    if nofile is None and fsize is None:
        return None

    def apply() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            # EFBIG, not death by SIGXFSZ: the write fails and the daemon must cope.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return apply


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "P2P_PASSWORD": PASSWORD}


@dataclass
class Process:
    """A daemon started with ``python -m``; ``port`` read from its start-up line."""

    proc: asyncio.subprocess.Process
    port: int
    log: Path
    stdout_lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def memory_kib(self, field_name: str = "VmHWM") -> int:
        """A ``/proc/<pid>/status`` figure in KiB (VmHWM: peak resident memory)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise AssertionError(f"{field_name} not in /proc/{self.pid}/status")

    def reset_peak(self) -> None:
        """Reset VmHWM to the current resident size (Linux: write 5 to clear_refs)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.kill()
        return await asyncio.wait_for(self.proc.wait(), STEP)


@contextlib.asynccontextmanager
async def indexd_process(
    pki: Any,
    tmp: Path,
    *extra: str,
    nofile: int | None = None,
    fsize: int | None = None,
) -> AsyncIterator[Process]:
    """``python -m indexd --port 0`` (bcrypt cost 4), optionally under resource limits."""
    tmp.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    log = tmp / "indexd.log"
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "indexd",
            "--port", "0",
            "--db", str(tmp / "index.db"),
            "--cert", str(pki.cert("indexd")),
            "--key", str(pki.key("indexd")),
            "--ca", str(pki.ca),
            "--bcrypt-cost", "4",
            *extra,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=REPO,
            env=_env(),
            preexec_fn=_limit_preexec(nofile, fsize),
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), STEP)).decode()
        assert line.startswith("indexd listening on"), line + log.read_text()
        yield Process(proc, int(line.rsplit(":", 1)[1]), log)
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), STEP)


@contextlib.asynccontextmanager
async def peerd_process(
    pki: Any,
    name: str,
    index_port: int,
    share: Path,
    *extra: str,
    nofile: int | None = None,
    fsize: int | None = None,
) -> AsyncIterator[Process]:
    """``python -m peerd --no-shell`` with the original flags, optionally under limits."""
    share.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    log = share.parent / f"{name}.log"
    argv: Sequence[str] = [
        sys.executable, "-m", "peerd",
        "-hostname", name,
        "-index_server_name", f"{HOST}:{index_port}",
        "-peer_server_port", "0",
        "-username", name,
        "-file_directory", str(share),
        "-certificate", str(pki.cert(name)),
        "-private_key", str(pki.key(name)),
        "--ca", str(pki.ca),
        "--bind", HOST,
        "--register",
        "--no-shell",
        *extra,
    ]  # fmt: skip
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=REPO,
            env=_env(),
            preexec_fn=_limit_preexec(nofile, fsize),
        )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), STEP)).decode()
        assert "on port" in line, line + log.read_text()
        yield Process(proc, int(line.rsplit(" ", 1)[1]), log)
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), STEP)


# --- container and nesting bombs -------------------------------------------------------------

MAX_FRAME = 1 << 20


def _fill(header: bytes, size: int = MAX_FRAME) -> bytes:
    """A frame body of nested container headers, as many as fit in ``size`` bytes."""
    prefix = b"\x81\xa4body"
    return (prefix + header * ((size - len(prefix)) // len(header)))[:size]


BOMBS: dict[str, bytes] = {
    "nested array32 headers claiming 200,000 each": _fill(b"\xdd" + struct.pack(">I", 200_000)),
    "nested array16 headers claiming 65,535 each": _fill(b"\xdc\xff\xff"),
    "nested map16 headers claiming 65,535 each": _fill(b"\xde\xff\xff\xa1k"),
    "nested map32 headers claiming 100,000 each": _fill(
        b"\xdf" + struct.pack(">I", 100_000) + b"\xa1k"
    ),
    "a million nested fixarrays": _fill(b"\x91"),
    "a million nested fixmaps": _fill(b"\x81\xa1k"),
    "array16 headers claiming 65,535 in a wide array": _fill(b"\xdc\xff\xff\xdc\xff\xff\xc0" * 4),
}


# --- a hostile peer --------------------------------------------------------------------------


def sha256(data: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(data).digest()


@dataclass
class HostilePeer:
    """A peer server presenting peer1's certificate whose answers a test rewrites at will.

    By default it is honest: it lists ``names`` and serves ``content`` under any name with a
    correct header and a trailer signed by peer1's key. ``header`` and ``trailer`` (functions
    of the request, the requester and the honest map) may return any raw map instead.
    """

    pki: Any
    content: bytes = b"hostile peer content\n"
    names: Any = field(default_factory=lambda: [HEALTH_FILE])
    header: Callable[[Any, dict[str, Any]], Any] | None = None
    trailer: Callable[[Any, str, dict[str, Any]], Any] | None = None
    chunks: Callable[[Any, bytes], list[bytes]] | None = None
    key_name: str = "peer1"
    server: Any = None
    requests: list[Any] = field(default_factory=list)

    async def start(self) -> int:
        from certs import load_cert, load_key
        from netproto.operations import FetchRequest, KeywordRequest
        from netproto.server import Operation, Server
        from netproto.tokens import TokenVerifier
        from peerd.server import peer_ssl_context

        self._key = load_key(self.pki.key(self.key_name))
        verifier = TokenVerifier(load_cert(self.pki.cert("indexd")))
        ctx = peer_ssl_context(self.pki.cert("peer1"), self.pki.key("peer1"), self.pki.ca)
        ops = {
            "list": Operation(KeywordRequest.from_wire, self._list),
            "fetch": Operation(FetchRequest.from_wire, self._fetch),
        }
        self.server = Server(ops, ctx, authenticate=verifier.verify_presented, name="hostile")
        await self.server.start(HOST, 0)
        return int(self.server.port)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close(grace=0)

    async def _list(self, ctx: Any, req: Any) -> Any:
        return self.names

    async def _fetch(self, ctx: Any, req: Any) -> Any:
        from netproto.server import StreamReply
        from netproto.signing import fetch_signing_payload

        self.requests.append(req)
        content = self.content
        header: dict[str, Any] = {
            "keyword": req.keyword,
            "file_name": req.file_name,
            "size": len(content),
            "offset": req.offset,
        }
        payload = fetch_signing_payload(
            signer="peer1",
            requester=ctx.subject,
            keyword=req.keyword,
            file_name=req.file_name,
            size=len(content),
            sha256=sha256(content),
            nonce=req.nonce,
        )
        trailer: dict[str, Any] = {
            "size": len(content),
            "sha256": sha256(content),
            "nonce": req.nonce,
            "digital_signature": self._key.sign(payload),
            "signer": "peer1",
        }
        if self.header is not None:
            header = self.header(req, header)
        if self.trailer is not None:
            trailer = self.trailer(req, ctx.subject, trailer)
        data = content[req.offset :]
        pieces = self.chunks(req, data) if self.chunks is not None else [data] if data else []

        async def stream() -> Any:
            for piece in pieces:
                yield piece

        final = trailer
        return StreamReply(header, stream(), lambda: final)

    def sign(self, key_name: str, **fields: Any) -> bytes:
        """A fetch signature by ``key_name``'s key over the given payload fields."""
        from certs import load_key
        from netproto.signing import fetch_signing_payload

        return load_key(self.pki.key(key_name)).sign(fetch_signing_payload(**fields))


def tree(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root`` (files with their content, links with their target)."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[rel] = path.read_bytes()
        elif path.is_dir():
            found[rel + "/"] = "dir"
    return found
