"""Paths (PROTOCOL.md §4.7 name rules, docs/design.md §5 downloads): traversal in every
spelling at a live peer (list, fetch) and index (sync, search); symlinks and FIFOs in a live
share, swapped in after the scan too; and hostile names sent back by a malicious peer, which
must never make the downloader write anything outside ``file_directory/<keyword>/``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from netproto.errors import (
    InvalidPath,
    NotFound,
    RemoteProtocolError,
    VerificationFailed,
)
from netproto.operations import ListedFile
from peerd.client import PeerClient
from peerd.download import DownloadRefused, download
from tests.support.adversary import (
    HEALTH_CONTENT,
    HEALTH_FILE,
    HEALTH_KEYWORD,
    HOST,
    STEP,
    HostilePeer,
    Live,
    assert_index_serves,
    assert_peer_serves,
    live_daemons,
    open_conn,
    put,
    sha256,
    tree,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

TRAVERSALS: dict[str, str] = {
    "dot-dot": "..",
    "dot": ".",
    "empty": "",
    "dot-dot slash": "../secret",
    "deep dot-dot": "../../../../etc/passwd",
    "absolute": "/etc/passwd",
    "backslash dot-dot": "..\\secret",
    "UNC path": "\\\\server\\share",
    "Windows absolute": "C:\\Windows\\win.ini",
    "slash inside": "a/b",
    "backslash inside": "a\\b",
    "NUL": "a\x00b",
    "NUL alone": "\x00",
    "newline": "a\nb",
    "DEL": "a\x7fb",
    "C1 control (NEL)": "a\x85b",
    "line separator": "a\u2028b",
    "right-to-left override": "txt.\u202eexe",
    "zero-width space": "a\u200bb",
    "byte-order mark": "\ufeffa",
    "fullwidth dot-dot": "\uff0e\uff0e",
    "one dot leader pair": "\u2024\u2024",
    "fullwidth solidus": "a\uff0fb",
    "small reverse solidus": "a\ufe68b",
    "division slash": "a\u2215b",
    "fraction slash": "a\u2044b",
    "set minus": "a\u2216b",
    "big solidus": "a\u29f8b",
    "hidden": ".bashrc",
    "trailing dot": "name.",
    "trailing space": "name ",
    "device CON": "CON",
    "device con.txt": "con.txt",
    "device Aux.tar.gz": "Aux.tar.gz",
    "device NUL.": "NUL.",
    "device COM1": "COM1",
    "device lpt9.log": "lpt9.log",
    "device COM superscript 1": "COM\u00b9",
    "device CONIN$": "CONIN$",
    "device con with spaces": "con .txt",
}
LONG_FILE_NAMES = {"256 ASCII bytes": "x" * 256, "256 UTF-8 bytes of 128 chars": "é" * 128}
LONG_KEYWORDS = {"65 characters": "k" * 65}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    tmp = tmp_path_factory.mktemp("adv-paths")
    outside = tmp / "outside"
    put(outside, "secret.txt", b"outside the share\n")
    share = tmp / "peer1-files"
    put(share, "zoo/inside.txt", b"a file inside the share\n")
    (share / "zoo").mkdir(parents=True, exist_ok=True)
    os.symlink(outside / "secret.txt", share / "zoo" / "link-out.txt")
    os.symlink(share / "zoo" / "inside.txt", share / "zoo" / "link-in.txt")
    os.symlink("/dev/zero", share / "zoo" / "zero")
    os.mkfifo(share / "zoo" / "pipe")
    os.symlink(outside, share / "linked-keyword")
    (share / "zoo" / "folder").mkdir()
    async with live_daemons(pki, tmp) as daemons:
        conn = await open_conn(daemons.index_port, "indexd", pki.client_ctx())
        await conn.request("register", {"username": "pathuser", "password": "path user pw"})
        await conn.close()
        yield daemons


async def _peer(live: Live) -> PeerClient:
    return await PeerClient.connect(
        HOST, live.peer_port, "peer1", live.pki.client_ctx("peer2"),
        token=live.peer_token("peer2"), requester="peer2",
        connect_timeout=STEP, request_timeout=STEP,
    )  # fmt: skip


async def _raw(live: Live, kind: str, op: str, body: dict[str, Any]) -> Any:
    """Send a body as is (bypassing the client library's own checks)."""
    port, name, ctx = live.target(kind)
    conn = await open_conn(port, name, ctx)
    try:
        return await conn.request(op, body, live.token_for(kind, "peer2"))
    finally:
        await conn.close()


ALL_FILE_NAMES = {**TRAVERSALS, **LONG_FILE_NAMES}
ALL_KEYWORDS = {**TRAVERSALS, **LONG_KEYWORDS}


@pytest.mark.parametrize("name", ALL_FILE_NAMES.values(), ids=ALL_FILE_NAMES.keys())
async def test_fetching_a_traversal_file_name_is_invalid_path(live: Live, name: str) -> None:
    body = {"keyword": HEALTH_KEYWORD, "file_name": name, "nonce": b"n" * 32}
    with pytest.raises(InvalidPath):
        await _raw(live, "peer", "fetch", body)
    await assert_peer_serves(live)


@pytest.mark.parametrize("keyword", ALL_KEYWORDS.values(), ids=ALL_KEYWORDS.keys())
async def test_a_traversal_keyword_is_invalid_path_for_list_fetch_and_search(
    live: Live, keyword: str
) -> None:
    with pytest.raises(InvalidPath):
        await _raw(live, "peer", "list", {"keyword": keyword})
    body = {"keyword": keyword, "file_name": HEALTH_FILE, "nonce": b"n" * 32}
    with pytest.raises(InvalidPath):
        await _raw(live, "peer", "fetch", body)
    with pytest.raises(InvalidPath):
        await _raw(live, "index", "search", {"keyword": keyword})
    await assert_peer_serves(live)


@pytest.mark.parametrize("name", ALL_FILE_NAMES.values(), ids=ALL_FILE_NAMES.keys())
async def test_syncing_a_traversal_name_is_invalid_path_and_lists_nothing(
    live: Live, name: str
) -> None:
    conn = await open_conn(live.index_port, "indexd", live.pki.client_ctx())
    token = live.token("pathuser")
    good = {"filename": "ok.txt", "keyword": "paths", "size": 1, "sha256": b"s" * 32}
    for bad in (
        {**good, "filename": name},
        {**good, "keyword": name if name not in LONG_FILE_NAMES.values() else "k" * 65},
    ):
        body = {"domain_name": "pathpeer", "port_number": 7001, "files": [good, bad]}
        with pytest.raises(InvalidPath):
            await conn.request("sync", body, token)
    # The whole sync was refused: not even the good entry is listed.
    assert (await conn.request("search", {"keyword": "paths"}, token))["hits"] == []
    await conn.close()
    await assert_index_serves(live)


# --- what a live share serves ----------------------------------------------------------------


async def test_only_regular_files_inside_the_share_are_listed_and_synced(live: Live) -> None:
    peer = await _peer(live)
    assert await peer.list("zoo") == ["inside.txt"]
    await peer.close()
    conn = await open_conn(live.index_port, "indexd", live.pki.client_ctx())
    hits = (await conn.request("search", {"keyword": "zoo"}, live.token()))["hits"]
    assert [f["filename"] for f in hits[0]["files"]] == ["inside.txt"]
    empty = await conn.request("search", {"keyword": "linked-keyword"}, live.token())
    assert empty["hits"] == []
    await conn.close()


@pytest.mark.parametrize("name", ["link-out.txt", "link-in.txt", "zero", "pipe", "folder"])
async def test_a_symlink_fifo_or_folder_in_a_keyword_folder_is_not_found(
    live: Live, name: str
) -> None:
    body = {"keyword": "zoo", "file_name": name, "nonce": b"n" * 32}
    async with asyncio.timeout(5):  # a FIFO must not block the server
        with pytest.raises(NotFound):
            await _raw(live, "peer", "fetch", body)
    await assert_peer_serves(live)


async def test_a_keyword_folder_that_is_a_symlink_is_not_found(live: Live) -> None:
    with pytest.raises(NotFound):
        await _raw(live, "peer", "list", {"keyword": "linked-keyword"})
    body = {"keyword": "linked-keyword", "file_name": "secret.txt", "nonce": b"n" * 32}
    with pytest.raises(NotFound):
        await _raw(live, "peer", "fetch", body)
    await assert_peer_serves(live)


async def test_a_file_swapped_for_a_symlink_after_the_scan_is_not_served(live: Live) -> None:
    target = live.share / "zoo" / "inside.txt"
    saved = target.read_bytes()
    target.unlink()
    os.symlink(live.tmp / "outside" / "secret.txt", target)
    try:
        body = {"keyword": "zoo", "file_name": "inside.txt", "nonce": b"n" * 32}
        with pytest.raises(NotFound):
            await _raw(live, "peer", "fetch", body)
    finally:
        target.unlink()
        target.write_bytes(saved)
    await assert_peer_serves(live)


async def test_a_keyword_folder_swapped_for_a_symlink_after_the_scan_is_not_served(
    live: Live,
) -> None:
    folder = live.share / "swapped"
    put(folder, "f.txt", b"f\n")
    peer = await _peer(live)
    assert await peer.list("swapped") == ["f.txt"]
    await peer.close()
    (folder / "f.txt").unlink()
    folder.rmdir()
    os.symlink(live.tmp / "outside", folder)
    put(live.tmp / "outside", "f.txt", b"outside\n")
    try:
        with pytest.raises(NotFound):
            await _raw(live, "peer", "list", {"keyword": "swapped"})
        body = {"keyword": "swapped", "file_name": "f.txt", "nonce": b"n" * 32}
        with pytest.raises(NotFound):
            await _raw(live, "peer", "fetch", body)
    finally:
        folder.unlink()
    await assert_peer_serves(live)


# --- hostile names sent back by a malicious peer -------------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def hostile(pki: Any) -> AsyncIterator[HostilePeer]:
    peer = HostilePeer(pki)
    await peer.start()
    yield peer
    await peer.stop()


@pytest.fixture
def arena(tmp_path: Path) -> tuple[Path, Path]:
    """A downloader's share and, beside it, a victim folder that must stay untouched."""
    dest = tmp_path / "downloads"
    victim = tmp_path / "victim"
    put(victim, "precious.txt", b"do not touch\n")
    put(dest, "koala/mine.txt", b"already here\n")
    return dest, victim


async def _connect(hostile: HostilePeer, pki: Any) -> PeerClient:
    from certs import load_key
    from netproto.tokens import TokenIssuer

    token = TokenIssuer(load_key(pki.key("indexd")), "indexd").issue("peer2")[0]
    return await PeerClient.connect(
        HOST, hostile.server.port, "peer1", pki.client_ctx("peer2"),
        token=token, requester="peer2", connect_timeout=STEP, request_timeout=STEP,
    )  # fmt: skip


HOSTILE_LISTS = {
    "dot-dot": ["../evil.txt"],
    "absolute": ["/tmp/evil.txt"],
    "backslash": ["..\\evil.txt"],
    "hidden": [".bashrc"],
    "device": ["CON"],
    "NUL": ["a\x00b"],
    "a good name among bad": ["fine.txt", "../../victim/precious.txt"],
    "not a list": {"file": "x"},
    "names not strings": [b"evil", 7],
}


@pytest.mark.parametrize("names", HOSTILE_LISTS.values(), ids=HOSTILE_LISTS.keys())
async def test_a_list_reply_naming_hostile_files_is_refused_and_nothing_is_written(
    hostile: HostilePeer, pki: Any, arena: tuple[Path, Path], names: Any
) -> None:
    dest, _ = arena
    before = tree(dest.parent)
    hostile.names = names
    peer = await _connect(hostile, pki)
    with pytest.raises(RemoteProtocolError):  # the peer's fault, not our request's
        await peer.list("koala")
    await peer.close()
    assert tree(dest.parent) == before


@pytest.mark.parametrize(
    "file_name", ["../evil.txt", "/tmp/evil.txt", "..", "a/b", "CON", "x" * 256]
)
async def test_download_refuses_a_hostile_name_from_a_search_hit_before_any_io(
    hostile: HostilePeer, pki: Any, arena: tuple[Path, Path], file_name: str
) -> None:
    dest, _ = arena
    before = tree(dest.parent)
    peer = await _connect(hostile, pki)
    for keyword, name in (("koala", file_name), (file_name, "fine.txt")):
        with pytest.raises(InvalidPath):
            await download(peer, keyword, name, dest)
    await peer.close()
    assert hostile.requests == []  # nothing was even asked of the peer
    assert tree(dest.parent) == before


HOSTILE_HEADERS: dict[str, tuple[dict[str, Any], type[Exception]]] = {
    "names ../x": ({"file_name": "../x"}, RemoteProtocolError),
    "names another file": ({"file_name": "mine.txt"}, DownloadRefused),
    "names another keyword": ({"keyword": "victim"}, DownloadRefused),
    "names a traversal keyword": ({"keyword": "../victim"}, RemoteProtocolError),
    "another offset": ({"offset": 5}, DownloadRefused),
    "size 2^53 + 1": ({"size": 2**53 + 1}, RemoteProtocolError),
    "size 2^64 - 1": ({"size": 2**64 - 1}, RemoteProtocolError),
    "negative size": ({"size": -1}, RemoteProtocolError),
    "size as a string": ({"size": "21"}, RemoteProtocolError),
    "size 2^53 with a short body": ({"size": 2**53}, DownloadRefused),
    "size smaller than the body": ({"size": 3}, DownloadRefused),
    "not a map": ("header", RemoteProtocolError),  # type: ignore[dict-item]
}


@pytest.mark.parametrize("change,error", HOSTILE_HEADERS.values(), ids=HOSTILE_HEADERS.keys())
async def test_a_hostile_stream_header_is_refused_and_nothing_lands_outside_the_keyword_folder(
    hostile: HostilePeer, pki: Any, arena: tuple[Path, Path], change: Any, error: type[Exception]
) -> None:
    dest, _ = arena
    before = tree(dest.parent)
    hostile.header = (
        (lambda req, honest: change)
        if not isinstance(change, dict)
        else (lambda req, honest: {**honest, **change})
    )
    hostile.content = b"c" * 4000
    hostile.chunks = lambda req, data: [data[i : i + 100] for i in range(0, len(data), 100)]
    hostile.names = ["new.txt"]
    peer = await _connect(hostile, pki)
    with pytest.raises(error):
        await download(peer, "koala", "new.txt", dest)
    # The refused stream does not wedge the connection: the next request is answered.
    assert await asyncio.wait_for(peer.list("koala"), 5) == ["new.txt"]
    await peer.close()
    assert tree(dest.parent) == before  # no file, no temp file, nothing anywhere else


HOSTILE_TRAILERS: dict[str, dict[str, Any]] = {
    "size 2^53": {"size": 2**53},
    "signer ../peer2": {"signer": "../peer2"},
    "nonce of 31 bytes": {"nonce": b"n" * 31},
    "sha256 as a string": {"sha256": "00" * 32},
    "signature of 65 bytes": {"digital_signature": b"s" * 65},
    "signature of 100 KiB": {"digital_signature": b"s" * (100 << 10)},
}


@pytest.mark.parametrize("change", HOSTILE_TRAILERS.values(), ids=HOSTILE_TRAILERS.keys())
async def test_a_hostile_trailer_is_refused_and_nothing_is_left(
    hostile: HostilePeer, pki: Any, arena: tuple[Path, Path], change: dict[str, Any]
) -> None:
    dest, _ = arena
    before = tree(dest.parent)
    hostile.trailer = lambda req, sub, honest: {**honest, **change}
    peer = await _connect(hostile, pki)
    with pytest.raises(VerificationFailed):
        await download(peer, "koala", "new.txt", dest)
    await peer.close()
    assert tree(dest.parent) == before


async def test_an_honest_answer_of_the_hostile_peer_lands_only_in_the_keyword_folder(
    hostile: HostilePeer, pki: Any, arena: tuple[Path, Path]
) -> None:
    # The control case: the same rig, honest, writes exactly one file where it should.
    dest, _ = arena
    before = tree(dest.parent)
    peer = await _connect(hostile, pki)
    expected = ListedFile("new.txt", len(hostile.content), sha256(hostile.content))
    result = await download(peer, "koala", "new.txt", dest, expected=expected)
    await peer.close()
    after = tree(dest.parent)
    assert {k: v for k, v in after.items() if k not in before} == {
        "downloads/koala/new.txt": hostile.content
    }
    assert result.path == dest / "koala" / "new.txt"


async def test_the_live_peer_still_serves_its_own_file_after_the_attacks(live: Live) -> None:
    peer = await _peer(live)
    stream = await peer.fetch(HEALTH_KEYWORD, HEALTH_FILE, os.urandom(32))
    data = b"".join([chunk async for chunk in stream.chunks()])
    assert data == HEALTH_CONTENT and stream.trailer().sha256 == sha256(HEALTH_CONTENT)
    await peer.close()
    await assert_index_serves(live)
