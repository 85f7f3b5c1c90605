"""The peer server (peerd/server.py): list and signed fetch over mutual TLS, with real daemons."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from certs import load_cert, load_key
from netproto.client import Connection
from netproto.codec import pack
from netproto.errors import (
    AuthRequired,
    BadRequest,
    Busy,
    ConnectionClosed,
    InvalidPath,
    NotFound,
    RequestError,
    TokenInvalid,
)
from netproto.framing import DEFAULT_MAX_FRAME
from netproto.operations import (
    FetchHeader,
    FetchRequest,
    FetchTrailer,
    KeywordRequest,
    SharedFile,
)
from netproto.server import RequestContext
from netproto.signing import fetch_signature_valid, fetch_signing_payload
from netproto.tokens import Principal, TokenIssuer
from peerd.client import FetchStream, PeerClient
from peerd.errors import InvalidName, NotShared, ShareError, ShareUnavailable, UnsafeLocalFile
from peerd.pacing import PacePolicy
from peerd.server import (
    CHUNK_SIZE,
    HANDLERS,
    FetchSlots,
    PeerService,
    ReadTooSlowly,
    _Transfer,
    fit_list_reply,
)
from peerd.share import FileIdentity, OpenFile, Share, ShareFile
from tests.support.fake_clock import FakeClock

TIMEOUT = 10.0
NONCE = bytes(range(32))


def make_share(root: Path, files: dict[str, bytes]) -> Path:
    """Write ``{"keyword/name": content}`` under ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


async def drain(stream: FetchStream) -> tuple[list[bytes], FetchTrailer]:
    chunks = [bytes(chunk) async for chunk in stream.chunks()]
    return chunks, stream.trailer()


@pytest.fixture
def share(tmp_path: Path) -> Path:
    return make_share(
        tmp_path / "share",
        {
            "koala/eucalyptus.txt": b"koalas eat eucalyptus\n",
            "koala/sleep.txt": b"20 hours a day\n",
            "wombat/burrow.txt": b"cube-shaped\n",
        },
    )


async def test_list_returns_the_file_names_of_a_keyword(peer_rig: Any, share: Path) -> None:
    server = await peer_rig.serve(share)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        assert await peer.list("koala") == ["eucalyptus.txt", "sleep.txt"]


async def test_list_matches_the_keyword_folder_case_insensitively(
    peer_rig: Any, tmp_path: Path
) -> None:
    share = make_share(tmp_path / "s", {"Koala/a.txt": b"a"})
    server = await peer_rig.serve(share)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        assert await peer.list("koala") == ["a.txt"]
        assert await peer.list("KOALA") == ["a.txt"]


async def test_list_of_a_keyword_the_peer_does_not_have_is_not_found(
    peer_rig: Any, share: Path
) -> None:
    server = await peer_rig.serve(share)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        with pytest.raises(NotFound):
            await peer.list("platypus")


async def test_fetch_streams_the_file_with_a_trailer_signed_by_the_peer_key(
    peer_rig: Any, share: Path
) -> None:
    server = await peer_rig.serve(share)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port, sub="alice")
        stream = await peer.fetch("koala", "sleep.txt", NONCE)
        chunks, trailer = await drain(stream)
    content = b"20 hours a day\n"
    assert b"".join(chunks) == content
    assert (stream.header.size, stream.header.offset) == (len(content), 0)
    assert trailer.sha256 == hashlib.sha256(content).digest()
    assert (trailer.size, trailer.nonce, trailer.signer) == (len(content), NONCE, "peer1")
    payload = fetch_signing_payload(
        signer="peer1",
        requester="alice",
        keyword="koala",
        file_name="sleep.txt",
        size=len(content),
        sha256=trailer.sha256,
        nonce=NONCE,
    )
    key = load_cert(peer_rig.pki.cert("peer1")).public_key()
    assert isinstance(key, Ed25519PublicKey)
    assert fetch_signature_valid(key, trailer.digital_signature, payload)


async def test_fetch_sends_chunks_of_at_most_256_kib(peer_rig: Any, tmp_path: Path) -> None:
    content = os.urandom(3 * CHUNK_SIZE + 17)
    server = await peer_rig.serve(make_share(tmp_path / "s", {"k/big.bin": content}))
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        chunks, trailer = await drain(await peer.fetch("k", "big.bin", NONCE))
    assert max(map(len, chunks)) <= 256 * 1024
    assert len(chunks) == 4
    assert b"".join(chunks) == content
    assert trailer.sha256 == hashlib.sha256(content).digest()


async def test_fetch_with_an_offset_sends_the_rest_but_signs_the_whole_file(
    peer_rig: Any, tmp_path: Path
) -> None:
    content = os.urandom(CHUNK_SIZE + 1000)
    server = await peer_rig.serve(make_share(tmp_path / "s", {"k/f.bin": content}))
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        stream = await peer.fetch("k", "f.bin", NONCE, offset=1000)
        chunks, trailer = await drain(stream)
    assert stream.header.offset == 1000
    assert b"".join(chunks) == content[1000:]
    assert trailer.size == len(content)
    assert trailer.sha256 == hashlib.sha256(content).digest()


async def test_fetch_with_offset_equal_to_size_sends_no_chunks(peer_rig: Any, share: Path) -> None:
    server = await peer_rig.serve(share)
    size = (share / "koala" / "sleep.txt").stat().st_size
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        chunks, trailer = await drain(await peer.fetch("koala", "sleep.txt", NONCE, size))
    assert chunks == []
    assert trailer.sha256 == hashlib.sha256(b"20 hours a day\n").digest()


async def test_fetch_with_offset_past_the_size_is_bad_request(peer_rig: Any, share: Path) -> None:
    server = await peer_rig.serve(share)
    size = (share / "koala" / "sleep.txt").stat().st_size
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        with pytest.raises(BadRequest, match="offset"):
            await peer.fetch("koala", "sleep.txt", NONCE, size + 1)


async def test_fetch_of_an_empty_file_sends_no_chunks_and_the_empty_digest(
    peer_rig: Any, tmp_path: Path
) -> None:
    server = await peer_rig.serve(make_share(tmp_path / "s", {"k/empty": b""}))
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        chunks, trailer = await drain(await peer.fetch("k", "empty", NONCE))
    assert (chunks, trailer.size) == ([], 0)
    assert trailer.sha256 == hashlib.sha256(b"").digest()


async def test_fetch_of_a_file_changed_since_the_scan_is_signed_with_its_new_digest(
    peer_rig: Any, share: Path
) -> None:
    server = await peer_rig.serve(share)
    (share / "koala" / "sleep.txt").write_bytes(b"changed\n")
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        chunks, trailer = await drain(await peer.fetch("koala", "sleep.txt", NONCE))
    assert b"".join(chunks) == b"changed\n"
    assert trailer.sha256 == hashlib.sha256(b"changed\n").digest()


async def test_a_file_changed_during_the_transfer_ends_the_stream_with_an_error(
    peer_rig: Any, tmp_path: Path
) -> None:
    path = tmp_path / "s" / "k" / "big.bin"
    make_share(tmp_path / "s", {"k/big.bin": os.urandom(32 << 20)})
    server = await peer_rig.serve(tmp_path / "s")
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        stream = await peer.fetch("k", "big.bin", NONCE)
        chunks = stream.chunks()
        await anext(chunks)  # the server is now held back by our unread chunks
        with path.open("ab") as f:
            f.write(b"appended while being sent")
        with pytest.raises(Busy, match="changed"):
            async for _ in chunks:
                pass


# --- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keyword, file_name",
    [
        ("koala", ".."),
        ("..", "sleep.txt"),
        ("koala", "../wombat/burrow.txt"),
        ("koala", "/etc/passwd"),
        ("/etc", "passwd"),
        ("koala", "a\\b"),
        ("koala", "sleep.txt\x00"),
        ("koala", "CON"),
        ("koala", "lpt1.txt"),
        ("koala", ".hidden"),
        (".git", "config"),
    ],
)
async def test_fetch_of_a_path_that_is_not_one_safe_segment_is_invalid_path(
    peer_rig: Any, share: Path, keyword: str, file_name: str
) -> None:
    server = await peer_rig.serve(share)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        with pytest.raises(InvalidPath):
            await peer.fetch(keyword, file_name, NONCE)


async def test_list_of_a_keyword_with_a_path_separator_is_invalid_path(
    peer_rig: Any, share: Path
) -> None:
    server = await peer_rig.serve(share)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        with pytest.raises(InvalidPath):
            await peer.list("../koala")


async def test_symlinks_out_of_the_share_are_neither_listed_nor_served(
    peer_rig: Any, share: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "outside"
    (secret / "inner").mkdir(parents=True)
    (secret / "secret.txt").write_bytes(b"do not serve")
    (secret / "inner" / "secret.txt").write_bytes(b"do not serve")
    os.symlink(secret / "secret.txt", share / "koala" / "link.txt")
    os.symlink(secret / "inner", share / "linked")
    server = await peer_rig.serve(share)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        assert "link.txt" not in await peer.list("koala")
        with pytest.raises(NotFound):
            await peer.list("linked")
        with pytest.raises(NotFound):
            await peer.fetch("koala", "link.txt", NONCE)
        with pytest.raises(NotFound):
            await peer.fetch("linked", "secret.txt", NONCE)


async def test_a_fifo_is_not_listed_and_fetching_it_is_not_found_without_hanging(
    peer_rig: Any, share: Path
) -> None:
    os.mkfifo(share / "koala" / "pipe")
    server = await peer_rig.serve(share)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        assert "pipe" not in await peer.list("koala")
        with pytest.raises(NotFound):
            await peer.fetch("koala", "pipe", NONCE)


async def test_hidden_and_temp_files_are_not_listed_or_served(peer_rig: Any, share: Path) -> None:
    (share / "koala" / ".secret").write_bytes(b"hidden")
    (share / "koala" / ".x.p2pshare-part").write_bytes(b"partial")
    (share / "koala" / "draft.txt~").write_bytes(b"editor backup")
    server = await peer_rig.serve(share)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        assert await peer.list("koala") == ["eucalyptus.txt", "sleep.txt"]
        with pytest.raises(NotFound):
            await peer.fetch("koala", "draft.txt~", NONCE)
        with pytest.raises(InvalidPath):
            await peer.fetch("koala", ".secret", NONCE)


async def test_a_subfolder_in_a_keyword_folder_is_not_served(peer_rig: Any, share: Path) -> None:
    (share / "koala" / "sub").mkdir()
    server = await peer_rig.serve(share)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        assert "sub" not in await peer.list("koala")
        with pytest.raises(NotFound):
            await peer.fetch("koala", "sub", NONCE)


# --- who may ask -----------------------------------------------------------------------------


async def test_a_requester_without_a_client_certificate_is_refused(
    peer_rig: Any, share: Path
) -> None:
    server = await peer_rig.serve(share)
    with pytest.raises((ConnectionClosed, ssl.SSLError)):
        async with asyncio.timeout(TIMEOUT):
            peer = await peer_rig.connect(server.port, client=None)
            await peer.list("koala")


async def test_a_requester_with_a_certificate_from_another_ca_is_refused(
    peer_rig: Any, share: Path
) -> None:
    server = await peer_rig.serve(share)
    with pytest.raises((ConnectionClosed, ssl.SSLError)):
        async with asyncio.timeout(TIMEOUT):
            peer = await peer_rig.connect(server.port, client="peer1", other_ca=True)
            await peer.list("koala")


async def test_a_request_without_a_token_is_auth_required(peer_rig: Any, share: Path) -> None:
    server = await peer_rig.serve(share)
    ctx = peer_rig.pki.client_ctx("peer2")
    async with asyncio.timeout(TIMEOUT):
        conn = await Connection.open("127.0.0.1", server.port, ctx, server_hostname="peer1")
        try:
            with pytest.raises(AuthRequired):
                await conn.request("list", {"keyword": "koala"})
        finally:
            await conn.close()


async def test_a_token_not_signed_by_the_index_is_invalid(peer_rig: Any, share: Path) -> None:
    server = await peer_rig.serve(share)
    forged = TokenIssuer(load_key(peer_rig.pki.key("mallory")), "indexd").issue("peer2")[0]
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port, token=forged)
        with pytest.raises(TokenInvalid):
            await peer.list("koala")


async def test_fetches_past_the_concurrency_cap_get_busy(peer_rig: Any, tmp_path: Path) -> None:
    server = await peer_rig.serve(
        make_share(tmp_path / "s", {"k/big.bin": os.urandom(16 << 20)}), max_fetches=1
    )
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        first = await peer.fetch("k", "big.bin", NONCE)  # held open: we do not read it
        with pytest.raises(Busy):
            await peer.fetch("k", "big.bin", NONCE)
        first.close()


async def test_the_fetch_slot_is_released_when_a_transfer_ends(peer_rig: Any, share: Path) -> None:
    server = await peer_rig.serve(share, max_fetches=1)
    async with asyncio.timeout(TIMEOUT):
        peer: PeerClient = await peer_rig.connect(server.port)
        for _ in range(3):
            _, trailer = await drain(await peer.fetch("koala", "sleep.txt", NONCE))
            assert trailer.size == 15


# --- the handlers alone (no sockets) ---------------------------------------------------------


def service_for(pki: Any, share: Path, max_fetches: int = 4) -> PeerService:
    return PeerService(Share(share), "peer1", load_key(pki.key("peer1")), max_fetches)


def context(sub: str = "alice") -> RequestContext:
    return RequestContext("127.0.0.1", 5555, None, Principal(sub, 2e9, "jti"))


async def test_handle_fetch_gives_header_chunks_and_signed_trailer_without_a_socket(
    pki: Any, share: Path
) -> None:
    service = service_for(pki, share)
    reply = await service.handle_fetch(context(), FetchRequest("koala", "sleep.txt", NONCE))
    assert reply.header == FetchHeader("koala", "sleep.txt", 15, 0)
    data = b"".join([bytes(c) async for c in reply.chunks])
    trailer = reply.trailer()
    assert data == b"20 hours a day\n"
    assert trailer.sha256 == hashlib.sha256(data).digest()
    assert service.active_fetches == 0


async def test_handle_fetch_refuses_past_the_cap_and_frees_the_slot_when_closed(
    pki: Any, share: Path
) -> None:
    service = service_for(pki, share, max_fetches=1)
    req = FetchRequest("koala", "sleep.txt", NONCE)
    reply = await service.handle_fetch(context(), req)
    with pytest.raises(Busy):
        await service.handle_fetch(context(), req)
    chunks = reply.chunks
    assert isinstance(chunks, AsyncGenerator)
    await anext(chunks)
    await chunks.aclose()
    assert service.active_fetches == 0


async def test_one_requester_holds_at_most_its_share_of_the_slots(pki: Any, share: Path) -> None:
    service = PeerService(Share(share), "peer1", load_key(pki.key("peer1")), 4, 2)
    req = FetchRequest("koala", "sleep.txt", NONCE)
    held = [await service.handle_fetch(context("greedy"), req) for _ in range(2)]
    with pytest.raises(Busy, match="2 transfers of yours") as info:
        await service.handle_fetch(context("greedy"), req)
    assert info.value.extra["retry_after"] == 1
    other = await service.handle_fetch(context("alice"), req)  # others are still served
    assert b"".join([bytes(c) async for c in other.chunks]) == b"20 hours a day\n"
    for reply in held:
        assert b"".join([bytes(c) async for c in reply.chunks]) == b"20 hours a day\n"
    again = await service.handle_fetch(context("greedy"), req)  # freed when they ended
    assert b"".join([bytes(c) async for c in again.chunks]) == b"20 hours a day\n"
    assert service.active_fetches == 0


def test_fetch_slots_count_in_all_and_per_requester() -> None:
    slots = FetchSlots(total=3, per_requester=2)
    slots.acquire("a")
    slots.acquire("a")
    with pytest.raises(Busy, match="of yours"):
        slots.acquire("a")
    slots.acquire("b")
    with pytest.raises(Busy, match="too many transfers in progress"):
        slots.acquire("c")
    slots.release("a")
    slots.acquire("c")
    assert (slots.active, slots.held_by("a"), slots.held_by("c")) == (3, 1, 1)


async def test_a_requester_reading_under_the_floor_loses_its_slot(pki: Any, tmp_path: Path) -> None:
    clock = FakeClock()
    share = make_share(tmp_path / "s", {"k/big.bin": os.urandom(4 * CHUNK_SIZE)})
    service = PeerService(
        Share(share), "peer1", load_key(pki.key("peer1")), pace=PacePolicy(1 << 20, 1), clock=clock
    )
    reply = await service.handle_fetch(context(), FetchRequest("k", "big.bin", NONCE))
    chunks = reply.chunks
    await anext(chunks)
    clock.advance(2.0)  # 256 KiB taken in 2 s: under 1 MiB/s over 1 s
    with pytest.raises(ReadTooSlowly) as info:
        await anext(chunks)
    assert info.value.code == "TIMEOUT" and "read too slowly" in info.value.message
    assert service.active_fetches == 0


async def test_offset_at_the_end_of_a_cached_file_reads_nothing(
    pki: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = os.urandom(3 * CHUNK_SIZE)
    share = make_share(tmp_path / "s", {"k/big.bin": content})
    past = os.stat(share / "k" / "big.bin").st_mtime - 10  # hashed well after its last change
    os.utime(share / "k" / "big.bin", (past, past))
    store = Share(share)
    store.scan()  # the digest cache now holds it
    read: list[int] = []
    real = OpenFile.read

    def counting(self: OpenFile, pos: int, length: int) -> bytes:
        read.append(length)
        return real(self, pos, length)

    monkeypatch.setattr(OpenFile, "read", counting)
    service = PeerService(store, "peer1", load_key(pki.key("peer1")))
    for offset in (len(content), len(content), CHUNK_SIZE):
        reply = await service.handle_fetch(context(), FetchRequest("k", "big.bin", NONCE, offset))
        data = b"".join([bytes(c) async for c in reply.chunks])
        assert data == content[offset:]
        assert reply.trailer().sha256 == hashlib.sha256(content).digest()
    assert sum(read) == len(content) - CHUNK_SIZE  # only the bytes sent, never a prefix


async def test_the_handlers_check_the_token_against_the_connections_certificate(
    pki: Any, share: Path
) -> None:
    seen: list[tuple[str, Any]] = []

    def check(principal: Principal, cert: Any) -> None:
        seen.append((principal.subject, cert))
        if cert is None:
            raise TokenInvalid("token bound to a client certificate; none was presented")

    service = PeerService(Share(share), "peer1", load_key(pki.key("peer1")), check_token=check)
    with pytest.raises(TokenInvalid):
        await service.handle_list(context(), KeywordRequest("koala"))
    with pytest.raises(TokenInvalid):
        await service.handle_fetch(context(), FetchRequest("koala", "sleep.txt", NONCE))
    assert service.active_fetches == 0  # refused before a slot was taken
    cert = load_cert(pki.cert("peer2"))
    ctx = RequestContext("127.0.0.1", 5555, cert, Principal("alice", 2e9, "jti"))
    assert await service.handle_list(ctx, KeywordRequest("wombat")) == ["burrow.txt"]
    assert seen == [("alice", None), ("alice", None), ("alice", cert)]


async def test_handle_list_names_the_files_of_a_keyword(pki: Any, share: Path) -> None:
    service = service_for(pki, share)
    assert await service.handle_list(context(), KeywordRequest("wombat")) == ["burrow.txt"]


def test_the_handler_table_serves_list_fetch_manifest_and_fetch_range() -> None:
    assert sorted(HANDLERS) == ["fetch", "fetch_range", "list", "manifest"]


async def test_a_fetch_reads_ahead_only_as_far_as_the_requester_takes(
    peer_rig: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s" / "k" / "huge.bin"
    path.parent.mkdir(parents=True)
    with path.open("wb") as f:
        f.truncate(1 << 30)  # a sparse 1 GiB file
    read = 0
    original = _Transfer._read_hashed

    def counting(self: _Transfer, pos: int, length: int) -> bytes:
        nonlocal read
        data = original(self, pos, length)
        read += len(data)
        return data

    monkeypatch.setattr(_Transfer, "_read_hashed", counting)
    server = await peer_rig.serve(tmp_path / "s")
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        stream = await peer.fetch("k", "huge.bin", NONCE)
        await anext(stream.chunks())
        await asyncio.sleep(0.5)  # time enough to read far ahead, were nothing holding it back
        await peer.close()
    assert 0 < read <= 64 << 20


def test_list_reply_of_a_huge_folder_fits_one_frame() -> None:
    names = sorted(f"{i:06d}-{'x' * 40}.txt" for i in range(30_000))
    fitted = fit_list_reply(names)
    assert 0 < len(fitted) < len(names)
    assert fitted == names[: len(fitted)]
    assert len(pack(fitted)) <= DEFAULT_MAX_FRAME - 1024


def test_list_reply_of_a_small_folder_is_whole() -> None:
    names = ["a.txt", "b.txt"]
    assert fit_list_reply(names) == names


class RefusingStore:
    """A share store (peerd.share.ShareStore) that refuses every name with one error."""

    def __init__(self, error: ShareError) -> None:
        self.error = error

    def scan(self) -> list[SharedFile]:
        return []

    def list_files(self, keyword: str) -> list[str]:
        raise self.error

    def open_file(self, keyword: str, file_name: str) -> ShareFile:
        raise self.error

    def remember(self, opened: ShareFile, identity: FileIdentity, sha256: bytes) -> None:
        raise AssertionError("nothing was served")

    def cached_digest(self, opened: ShareFile) -> bytes | None:
        raise AssertionError("nothing was served")

    def save_cache(self) -> None:
        pass


@pytest.mark.parametrize(
    "error, wire",
    [
        (InvalidName("keyword contains a forbidden character '/'"), InvalidPath),
        (NotShared("no such file"), NotFound),
        (ShareUnavailable("the share folder is not available"), NotFound),
        (UnsafeLocalFile("the share folder s may be written by other users"), NotFound),
    ],
    ids=["invalid-name", "not-shared", "share-unavailable", "unsafe-folder"],
)
async def test_the_handlers_answer_a_refusal_of_the_store_with_its_wire_error(
    pki: Any, error: ShareError, wire: type[RequestError]
) -> None:
    service = PeerService(RefusingStore(error), "peer1", load_key(pki.key("peer1")), 4)
    with pytest.raises(wire) as listed:
        await service.handle_list(context(), KeywordRequest("koala"))
    with pytest.raises(wire) as fetched:
        await service.handle_fetch(context(), FetchRequest("koala", "x.txt", NONCE))
    for info in (listed, fetched):
        assert info.value.message == str(error)
        assert info.value.__cause__ is error
    assert service.active_fetches == 0
