"""The client library (peerd/client.py, peerd/download.py): verified downloads, against honest
and deliberately malicious peers, resume, and never overwriting a file silently."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from netproto.errors import (
    AuthRequired,
    BadRequest,
    ConnectionClosed,
    LocalProtocolError,
    NotFound,
    RemoteProtocolError,
    RequestError,
    VerificationFailed,
)
from netproto.operations import (
    FetchHeader,
    ListedFile,
    SharedFile,
    list_reply_from_wire,
    split_sync,
)
from netproto.server import Server
from peerd.client import FetchStream, IndexClient, index_tls_name, parse_host_port, parse_reply
from peerd.download import (
    CHECKS,
    DownloadError,
    DownloadRefused,
    FileConflict,
    download,
    part_names,
)
from peerd.server import CHUNK_SIZE
from tests.support.evil_peer import EvilPeer, sha

TIMEOUT = 15.0


def put(root: Path, rel: str, content: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def leftovers(folder: Path) -> list[str]:
    """Hidden files (temp files, sidecars) left in a folder."""
    return (
        sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
        if folder.exists()
        else []
    )


@pytest.fixture
def content() -> bytes:
    return os.urandom(3 * CHUNK_SIZE + 12345)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "mine"


async def honest_peer(peer_rig: Any, tmp_path: Path, content: bytes) -> Server:
    put(tmp_path / "theirs", "koala/file.bin", content)
    server: Server = await peer_rig.serve(tmp_path / "theirs")
    return server


# --- the honest path -------------------------------------------------------------------------


async def test_a_download_passes_every_check_and_lands_in_the_keyword_folder(
    peer_rig: Any, tmp_path: Path, content: bytes, dest: Path
) -> None:
    server = await honest_peer(peer_rig, tmp_path, content)
    expected = ListedFile("file.bin", len(content), sha(content))
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        result = await download(peer, "koala", "file.bin", dest, expected=expected)
    assert (dest / "koala" / "file.bin").read_bytes() == content
    assert result.path == dest / "koala" / "file.bin"
    assert [c.name for c in result.checks] == list(CHECKS)
    assert all(c.passed for c in result.checks)
    assert (result.size, result.sha256, result.signer) == (len(content), sha(content), "peer1")
    assert leftovers(dest / "koala") == []


async def test_without_an_index_digest_that_check_is_reported_not_applicable(
    peer_rig: Any, tmp_path: Path, content: bytes, dest: Path
) -> None:
    server = await honest_peer(peer_rig, tmp_path, content)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        result = await download(peer, "koala", "file.bin", dest)
    outcomes = {c.name: c.passed for c in result.checks}
    assert outcomes.pop("index-digest") is None
    assert all(outcomes.values())


async def test_progress_is_reported_up_to_the_total(
    peer_rig: Any, tmp_path: Path, content: bytes, dest: Path
) -> None:
    server = await honest_peer(peer_rig, tmp_path, content)
    seen: list[tuple[int, int]] = []
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        await download(peer, "koala", "file.bin", dest, progress=lambda r, t: seen.append((r, t)))
    assert seen[0] == (0, len(content))
    assert seen[-1] == (len(content), len(content))
    assert [r for r, _ in seen] == sorted(r for r, _ in seen)
    assert len(seen) == 5  # the start, then one per chunk


async def test_a_download_goes_into_an_existing_folder_spelled_in_another_case(
    peer_rig: Any, tmp_path: Path, content: bytes, dest: Path
) -> None:
    server = await honest_peer(peer_rig, tmp_path, content)
    (dest / "Koala").mkdir(parents=True)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        result = await download(peer, "koala", "file.bin", dest)
    assert result.path == dest / "Koala" / "file.bin"
    assert not (dest / "koala").exists()


async def test_a_file_name_of_255_bytes_downloads_through_a_shortened_temp_name(
    peer_rig: Any, tmp_path: Path, dest: Path
) -> None:
    name = "é" * 127 + "x"  # 255 UTF-8 bytes
    put(tmp_path / "theirs", f"koala/{name}", b"long name")
    server = await peer_rig.serve(tmp_path / "theirs")
    assert len(part_names(name)[1].encode()) <= 255
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        await download(peer, "koala", name, dest)
    assert (dest / "koala" / name).read_bytes() == b"long name"


async def test_a_file_the_peer_does_not_have_is_not_found_and_leaves_nothing(
    peer_rig: Any, tmp_path: Path, content: bytes, dest: Path
) -> None:
    server = await honest_peer(peer_rig, tmp_path, content)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        with pytest.raises(NotFound):
            await download(peer, "koala", "other.bin", dest)
    assert leftovers(dest / "koala") == []


async def test_an_index_digest_that_differs_from_the_peers_file_is_refused(
    peer_rig: Any, tmp_path: Path, content: bytes, dest: Path
) -> None:
    server = await honest_peer(peer_rig, tmp_path, content)
    stale = ListedFile("file.bin", len(content), sha(b"an older version"))
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        with pytest.raises(VerificationFailed) as info:
            await download(peer, "koala", "file.bin", dest, expected=stale)
    assert info.value.check == "index-digest"
    assert not (dest / "koala").exists()


async def test_a_peer_presenting_another_peers_certificate_fails_the_tls_handshake(
    peer_rig: Any, tmp_path: Path, content: bytes
) -> None:
    put(tmp_path / "theirs", "koala/file.bin", content)
    server = await peer_rig.serve(tmp_path / "theirs", name="mallory")
    with pytest.raises(Exception, match=r"(?i)certificate|hostname|closed"):
        async with asyncio.timeout(TIMEOUT):
            await peer_rig.connect(server.port, domain_name="peer1")


# --- existing files --------------------------------------------------------------------------


async def test_an_identical_existing_file_is_success_without_a_download(
    peer_rig: Any, tmp_path: Path, content: bytes, dest: Path
) -> None:
    server = await honest_peer(peer_rig, tmp_path, content)
    put(dest, "koala/file.bin", content)
    expected = ListedFile("file.bin", len(content), sha(content))
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        result = await download(peer, "koala", "file.bin", dest, expected=expected)
    assert result.already_present
    assert result.received == 0


async def test_an_identical_existing_file_unknown_to_the_index_is_success_after_checking(
    peer_rig: Any, tmp_path: Path, content: bytes, dest: Path
) -> None:
    server = await honest_peer(peer_rig, tmp_path, content)
    put(dest, "koala/file.bin", content)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        result = await download(peer, "koala", "file.bin", dest)
    assert result.already_present
    assert leftovers(dest / "koala") == []


@pytest.mark.parametrize("listed", [True, False])
async def test_a_different_existing_file_is_never_overwritten_silently(
    peer_rig: Any, tmp_path: Path, content: bytes, dest: Path, listed: bool
) -> None:
    server = await honest_peer(peer_rig, tmp_path, content)
    mine = put(dest, "koala/file.bin", b"my own file")
    expected = ListedFile("file.bin", len(content), sha(content)) if listed else None
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        with pytest.raises(FileConflict):
            await download(peer, "koala", "file.bin", dest, expected=expected)
    assert mine.read_bytes() == b"my own file"
    assert leftovers(dest / "koala") == []


async def test_overwrite_replaces_a_different_existing_file(
    peer_rig: Any, tmp_path: Path, content: bytes, dest: Path
) -> None:
    server = await honest_peer(peer_rig, tmp_path, content)
    put(dest, "koala/file.bin", b"my own file")
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        await download(peer, "koala", "file.bin", dest, overwrite=True)
    assert (dest / "koala" / "file.bin").read_bytes() == content


async def test_an_existing_symlink_under_the_name_is_refused_and_its_target_untouched(
    peer_rig: Any, tmp_path: Path, content: bytes, dest: Path
) -> None:
    server = await honest_peer(peer_rig, tmp_path, content)
    target = put(tmp_path, "outside.txt", b"outside")
    (dest / "koala").mkdir(parents=True)
    os.symlink(target, dest / "koala" / "file.bin")
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        with pytest.raises(FileConflict):
            await download(peer, "koala", "file.bin", dest, overwrite=True)
    assert target.read_bytes() == b"outside"


async def test_a_keyword_folder_that_is_a_symlink_out_of_the_share_is_refused(
    peer_rig: Any, tmp_path: Path, content: bytes, dest: Path
) -> None:
    server = await honest_peer(peer_rig, tmp_path, content)
    outside = tmp_path / "outside"
    os.makedirs(outside)
    os.makedirs(dest)
    os.symlink(outside, dest / "koala")
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        with pytest.raises(DownloadError):
            await download(peer, "koala", "file.bin", dest)
    assert list(outside.iterdir()) == []


async def test_two_downloads_of_the_same_file_at_once_do_not_mix(
    peer_rig: Any, tmp_path: Path, dest: Path
) -> None:
    big = os.urandom(8 << 20)
    put(tmp_path / "theirs", "koala/big.bin", big)
    server = await peer_rig.serve(tmp_path / "theirs")
    started = asyncio.Event()
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        first = asyncio.create_task(
            download(peer, "koala", "big.bin", dest, progress=lambda r, t: started.set())
        )
        await started.wait()
        with pytest.raises(DownloadError, match="already being downloaded"):
            await download(peer, "koala", "big.bin", dest)
        await first
    assert (dest / "koala" / "big.bin").read_bytes() == big


async def evil_download(
    peer_rig: Any, dest: Path, content: bytes, *, times: int = 1, **lies: Any
) -> VerificationFailed:
    evil = EvilPeer(peer_rig.pki, content, **lies)
    port = await evil.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            peer = await peer_rig.connect(port, sub="peer2")
            for _ in range(times - 1):
                earlier = await download(peer, "koala", "file.bin", dest)
                os.unlink(earlier.path)
            with pytest.raises(VerificationFailed) as info:
                await download(peer, "koala", "file.bin", dest, overwrite=True)
    finally:
        await evil.stop()
    return info.value


@pytest.mark.parametrize(
    "lies, check",
    [
        ({"flip_byte": True}, "sha256"),
        ({"other_nonce": True}, "nonce"),
        ({"key_name": "mallory"}, "signature"),
        ({"signer": "peer2"}, "signer"),
        ({"trailer_size_delta": 1}, "size"),
        ({"header_size_delta": 1}, "size"),
        ({"header_size_delta": -1}, "size"),
        ({"bad_trailer": True}, "trailer"),
    ],
    ids=[
        "flipped-byte",
        "nonce-of-another-request",
        "signed-by-mallory",
        "wrong-signer-name",
        "trailer-size-mismatch",
        "header-announces-more",
        "header-announces-less",
        "malformed-trailer",
    ],
)
async def test_a_lying_peer_is_refused_with_the_failed_check_and_nothing_is_left(
    peer_rig: Any, dest: Path, content: bytes, lies: dict[str, Any], check: str
) -> None:
    error = await evil_download(peer_rig, dest, content, **lies)
    assert error.check == check
    assert not (dest / "koala").exists()  # no file, no temp file, not even the folder


async def test_a_replayed_signature_from_an_earlier_fetch_is_refused(
    peer_rig: Any, dest: Path, content: bytes
) -> None:
    error = await evil_download(peer_rig, dest, content, times=2, replay=True)
    assert error.check == "signature"
    assert not (dest / "koala" / "file.bin").exists()
    assert leftovers(dest / "koala") == []


async def test_a_refusal_carries_every_checks_outcome(
    peer_rig: Any, dest: Path, content: bytes
) -> None:
    error = await evil_download(peer_rig, dest, content, flip_byte=True)
    assert isinstance(error, DownloadRefused)
    outcomes = {c.name: c.passed for c in error.checks}
    assert outcomes == {
        "nonce": True,
        "size": True,
        "sha256": False,
        "signer": True,
        "signature": True,
        "index-digest": None,
    }


async def test_a_dropped_connection_is_truncated_and_keeps_only_a_hidden_partial(
    peer_rig: Any, dest: Path, content: bytes
) -> None:
    error = await evil_download(peer_rig, dest, content, cut_after=2 * CHUNK_SIZE)
    assert error.check == "truncated"
    assert isinstance(error, DownloadRefused) and error.partial_kept
    assert not (dest / "koala" / "file.bin").exists()
    part, meta = part_names("file.bin")
    assert leftovers(dest / "koala") == sorted([part, meta])
    assert 0 < (dest / "koala" / part).stat().st_size <= 2 * CHUNK_SIZE


# --- resume ----------------------------------------------------------------------------------


async def test_an_interrupted_download_resumes_from_the_offset_and_verifies(
    peer_rig: Any, tmp_path: Path, dest: Path, content: bytes
) -> None:
    await evil_download(peer_rig, dest, content, cut_after=2 * CHUNK_SIZE)
    part = dest / "koala" / part_names("file.bin")[0]
    kept = part.stat().st_size
    server = await honest_peer(peer_rig, tmp_path, content)
    expected = ListedFile("file.bin", len(content), sha(content))
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        result = await download(peer, "koala", "file.bin", dest, expected=expected)
    assert result.resumed_from == kept > 0
    assert result.received == len(content) - kept
    assert all(c.passed for c in result.checks)
    assert (dest / "koala" / "file.bin").read_bytes() == content
    assert leftovers(dest / "koala") == []


async def test_a_partial_with_corrupt_bytes_fails_the_digest_and_is_deleted(
    peer_rig: Any, tmp_path: Path, dest: Path, content: bytes
) -> None:
    await evil_download(peer_rig, dest, content, cut_after=2 * CHUNK_SIZE)
    part = dest / "koala" / part_names("file.bin")[0]
    with part.open("r+b") as f:
        f.write(b"\xff\xff\xff")
    server = await honest_peer(peer_rig, tmp_path, content)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        with pytest.raises(VerificationFailed) as info:
            await download(peer, "koala", "file.bin", dest)
    assert info.value.check == "sha256"
    assert leftovers(dest / "koala") == []


async def test_a_partial_of_a_file_that_changed_size_on_the_peer_is_downloaded_again(
    peer_rig: Any, tmp_path: Path, dest: Path, content: bytes
) -> None:
    await evil_download(peer_rig, dest, content, cut_after=2 * CHUNK_SIZE)
    newer = content + b"a new ending"
    server = await honest_peer(peer_rig, tmp_path, newer)
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port)
        result = await download(peer, "koala", "file.bin", dest)
    assert result.resumed_from == 0
    assert (dest / "koala" / "file.bin").read_bytes() == newer


async def test_a_partial_from_another_peer_is_not_resumed_without_a_common_digest(
    peer_rig: Any, tmp_path: Path, dest: Path, content: bytes
) -> None:
    await evil_download(peer_rig, dest, content, cut_after=2 * CHUNK_SIZE)
    put(tmp_path / "theirs", "koala/file.bin", content)
    server = await peer_rig.serve(tmp_path / "theirs", name="peer3")
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port, domain_name="peer3")
        result = await download(peer, "koala", "file.bin", dest)
    assert result.resumed_from == 0
    assert (dest / "koala" / "file.bin").read_bytes() == content


async def test_a_partial_from_another_peer_is_not_resumed_even_with_the_same_index_digest(
    peer_rig: Any, tmp_path: Path, dest: Path, content: bytes
) -> None:
    # Only the peer that served the prefix may continue it: another one would sign bytes it
    # never sent, so a peer serving a poisoned prefix could make the honest one fail.
    expected = ListedFile("file.bin", len(content), sha(content))
    evil = EvilPeer(peer_rig.pki, content, cut_after=2 * CHUNK_SIZE)
    port = await evil.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            peer = await peer_rig.connect(port)
            with pytest.raises(VerificationFailed):
                await download(peer, "koala", "file.bin", dest, expected=expected)
    finally:
        await evil.stop()
    put(tmp_path / "theirs", "koala/file.bin", content)
    server = await peer_rig.serve(tmp_path / "theirs", name="peer3")
    async with asyncio.timeout(TIMEOUT):
        peer = await peer_rig.connect(server.port, domain_name="peer3")
        result = await download(peer, "koala", "file.bin", dest, expected=expected)
    assert result.resumed_from == 0
    assert (dest / "koala" / "file.bin").read_bytes() == content


# --- small pieces ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("indexd", ("indexd", 7000)),
        ("indexd:7100", ("indexd", 7100)),
        ("127.0.0.1:7100", ("127.0.0.1", 7100)),
        ("[::1]:7100", ("::1", 7100)),
        ("[::1]", ("::1", 7000)),
        ("::1", ("::1", 7000)),
    ],
)
def test_parse_host_port_reads_host_and_optional_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["", ":7000", "host:", "host:70000", "host:x", "[::1"])
def test_parse_host_port_refuses_malformed_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)


# --- the index client ------------------------------------------------------------------------


async def test_a_share_too_large_for_one_frame_syncs_in_parts(
    pki: Any, index_config: Any, running_index: Any
) -> None:
    files = [
        SharedFile(f"file-{i:06d}-{'x' * 40}.bin", "bulk", i, sha(str(i).encode()))
        for i in range(25_000)
    ]
    assert len(split_sync("peer1", 7001, files)) > 1
    async with running_index(index_config()) as index, asyncio.timeout(TIMEOUT * 2):
        client = await IndexClient.connect(
            "127.0.0.1", index.port, pki.client_ctx("peer1"), server_hostname="indexd"
        )
        async with client:
            await client.register("peer1", "correct horse battery")
            await client.auth("peer1", "correct horse battery")
            sent: list[str] = []
            request = client.conn.request

            async def counting(op: str, body: dict[str, Any], *args: Any, **kw: Any) -> Any:
                sent.append(op)
                return await request(op, body, *args, **kw)

            client.conn.request = counting  # type: ignore[method-assign]
            assert await client.sync("peer1", 7001, files) == len(files)
            assert sent.count("sync") > 1
            hits = await client.search("bulk")
    assert sum(len(h.files) for h in hits) > 0


async def test_index_calls_that_need_a_token_refuse_before_auth(
    pki: Any, index_config: Any, running_index: Any
) -> None:
    async with running_index(index_config()) as index, asyncio.timeout(TIMEOUT):
        client = await IndexClient.connect(
            "127.0.0.1", index.port, pki.client_ctx(), server_hostname="indexd"
        )
        async with client:
            with pytest.raises(AuthRequired):
                await client.search("koala")


# --- the index's identity is a DNS name, never an IP address --------------------------------


def test_index_tls_name_defaults_to_indexd_when_dialled_by_address() -> None:
    assert index_tls_name("127.0.0.1") == "indexd"
    assert index_tls_name("::1") == "indexd"


def test_index_tls_name_is_the_host_when_it_is_a_name() -> None:
    assert index_tls_name("Index.Example.org") == "index.example.org"


def test_index_tls_name_prefers_the_explicit_name() -> None:
    assert index_tls_name("127.0.0.1", "idx") == "idx"


def test_index_tls_name_refuses_an_ip_address_as_the_name() -> None:
    with pytest.raises(ValueError):
        index_tls_name("127.0.0.1", "127.0.0.1")


async def test_a_peer_certificate_is_not_accepted_as_the_index_by_address(pki: Any) -> None:
    """peer2's certificate carries 127.0.0.1 too; dialled by address it must still be refused."""
    impostor = Server({}, pki.server_ctx("peer2"), name="impostor")
    await impostor.start("127.0.0.1", 0)
    try:
        async with asyncio.timeout(10):
            with pytest.raises(ConnectionClosed):
                await IndexClient.connect("127.0.0.1", impostor.port, pki.client_ctx("peer1"))
    finally:
        await impostor.close(grace=0.5)


# --- whose fault is it? ----------------------------------------------------------------------


def test_a_malformed_answer_is_the_other_sides_fault_chained_to_what_was_wrong() -> None:
    with pytest.raises(RemoteProtocolError, match="the peer's list reply is malformed") as info:
        parse_reply(list_reply_from_wire, {"not": "a list"}, "the peer's list reply")
    assert isinstance(info.value.__cause__, BadRequest)
    assert not isinstance(info.value, RequestError)  # never a wire error, as if we had sent it


def test_asking_for_the_trailer_before_the_stream_ended_is_our_fault() -> None:
    class Unfinished:
        trailer = None

        def close(self) -> None:
            pass

    stream = FetchStream(Unfinished(), FetchHeader("koala", "a.txt", 1, 0))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        stream.trailer()


async def test_signed_entries_travel_through_a_real_index_and_holders_finds_them(
    pki: Any, index_config: Any, running_index: Any
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from netproto.manifest import ManifestBuilder, ManifestReply
    from peerd.manifests import ManifestCache
    from peerd.swarm import Listing, check_manifest

    content = b"joey" * 1000
    builder = ManifestBuilder(len(content))
    builder.update(content)
    manifest = builder.finish()
    key = Ed25519PrivateKey.generate()
    signed = ManifestCache("peer1", key).sign("koala", "joey.txt", manifest)
    entry = SharedFile(
        "joey.txt", "koala", len(content), sha(content), signed.digest, signed.signature
    )
    async with running_index(index_config()) as index, asyncio.timeout(TIMEOUT):
        client = await IndexClient.connect(
            "127.0.0.1", index.port, pki.client_ctx("peer1"), server_hostname="indexd"
        )
        async with client:
            await client.register("peer1", "correct horse battery")
            await client.auth("peer1", "correct horse battery")
            await client.sync("peer1", 7001, [entry])
            [hit] = await client.search("KOALA")
            found = await client.holders(sha(content))
    [listed] = hit.files
    assert (listed.manifest, listed.signature) == (signed.digest, signed.signature)
    assert [(h.domain_name, h.keyword) for h in found.holders] == [("peer1", "koala")]
    reply = ManifestReply(manifest, "koala", "peer1", signed.signature)
    good = Listing(listed.size, listed.sha256, listed.manifest, listed.signature, "peer1")
    assert check_manifest(reply, "peer1", key.public_key(), "koala", "joey.txt", good) is None
    forged = Listing(listed.size, listed.sha256, listed.manifest, bytes(64), "peer1")
    failed = check_manifest(reply, "peer1", key.public_key(), "koala", "joey.txt", forged)
    assert failed is not None and failed.name == "index-signature"
    wrong = Listing(listed.size, listed.sha256, sha(b"other"), listed.signature, "peer1")
    failed = check_manifest(reply, "peer1", key.public_key(), "koala", "joey.txt", wrong)
    assert failed is not None and failed.name == "index-manifest"
