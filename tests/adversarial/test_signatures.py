"""Signatures and nonces (PROTOCOL.md §7): replayed trailers, a file or signer swapped, signatures
malformed, and a file rewritten while it is being sent. The downloader refuses each one naming
the failed check and leaves no file under the real name; the live peer never signs a digest of
bytes it did not send."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from netproto.errors import Busy
from netproto.operations import ListedFile, search_reply_from_wire
from peerd.client import PeerClient
from peerd.download import DownloadRefused, download
from tests.support.adversary import (
    HEALTH_CONTENT,
    HEALTH_FILE,
    HEALTH_KEYWORD,
    HOST,
    STEP,
    HostilePeer,
    assert_index_serves,
    assert_peer_serves,
    live_daemons,
    sha256,
    tree,
)

CONTENT = b"the genuine content of new.txt\n" * 10


@pytest_asyncio.fixture(loop_scope="function")
async def hostile(pki: Any) -> AsyncIterator[HostilePeer]:
    peer = HostilePeer(pki, content=CONTENT, names=["new.txt"])
    await peer.start()
    yield peer
    await peer.stop()


async def _connect(port: int, pki: Any, requester: str = "peer2") -> PeerClient:
    from certs import load_cert, load_key
    from netproto.tokens import PEER_AUDIENCE, TokenIssuer, certificate_thumbprint

    # A peer token bound to the certificate this connection presents, as auth issues it.
    bound = certificate_thumbprint(load_cert(pki.cert("peer2")))
    issuer = TokenIssuer(load_key(pki.key("indexd")), "indexd")
    token = issuer.issue(requester, audience=PEER_AUDIENCE, thumbprint=bound)[0]
    return await PeerClient.connect(
        HOST, port, "peer1", pki.client_ctx("peer2"),
        token=token, requester=requester, connect_timeout=STEP, request_timeout=STEP,
    )  # fmt: skip


async def _refused(
    hostile: HostilePeer, pki: Any, dest: Path, expected: ListedFile | None = None
) -> DownloadRefused:
    before = tree(dest)
    peer = await _connect(hostile.server.port, pki)
    try:
        with pytest.raises(DownloadRefused) as caught:
            await download(peer, "koala", "new.txt", dest, expected=expected)
    finally:
        await peer.close()
    after = tree(dest)
    assert "koala/new.txt" not in after
    assert after == before or set(after) - set(before) <= {"koala/"}, after
    return caught.value


# --- replay --------------------------------------------------------------------------------


async def test_a_trailer_replayed_from_an_earlier_fetch_fails_the_nonce_check(
    hostile: HostilePeer, pki: Any, tmp_path: Path
) -> None:
    recorded: dict[str, dict[str, Any]] = {}

    def replay(req: Any, sub: str, honest: dict[str, Any]) -> dict[str, Any]:
        return recorded.setdefault("trailer", honest)  # the first answer, forever

    hostile.trailer = replay
    peer = await _connect(hostile.server.port, pki)
    first = await download(peer, "koala", "new.txt", tmp_path / "first")
    await peer.close()
    assert first.size == len(CONTENT)
    error = await _refused(hostile, pki, tmp_path / "second")
    assert error.check == "nonce"


async def test_a_replayed_signature_under_the_fresh_nonce_fails_the_signature_check(
    hostile: HostilePeer, pki: Any, tmp_path: Path
) -> None:
    recorded: dict[str, Any] = {}

    def replay(req: Any, sub: str, honest: dict[str, Any]) -> dict[str, Any]:
        old = recorded.setdefault("trailer", honest)
        return {**honest, "digital_signature": old["digital_signature"]}  # echo the new nonce

    hostile.trailer = replay
    peer = await _connect(hostile.server.port, pki)
    await download(peer, "koala", "new.txt", tmp_path / "first")
    await peer.close()
    error = await _refused(hostile, pki, tmp_path / "second")
    assert error.check == "signature"


# --- swapped file, keyword, signer, requester --------------------------------------------


def _signed_for(hostile: HostilePeer, key_name: str, **changes: Any) -> Any:
    def trailer(req: Any, sub: str, honest: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "signer": "peer1",
            "requester": sub,
            "keyword": req.keyword,
            "file_name": req.file_name,
            "size": len(CONTENT),
            "sha256": sha256(CONTENT),
            "nonce": req.nonce,
        }
        fields.update(changes)
        signature = hostile.sign(key_name, **fields)
        return {**honest, "digital_signature": signature, "signer": changes.get("signer", "peer1")}

    return trailer


SWAPS: dict[str, tuple[str, dict[str, Any], str]] = {
    "signed for another file of the peer": ("peer1", {"file_name": "other.txt"}, "signature"),
    "signed for another keyword": ("peer1", {"keyword": "wombat"}, "signature"),
    "signed for another requester": ("peer1", {"requester": "peer3"}, "signature"),
    "signed for another size": ("peer1", {"size": len(CONTENT) + 1}, "signature"),
    "signed over another digest": ("peer1", {"sha256": sha256(b"other")}, "signature"),
    "signed by peer2's key, naming peer1": ("peer2", {}, "signature"),
    "signed by peer2's key, naming peer2": ("peer2", {"signer": "peer2"}, "signer"),
    "signed by mallory's key": ("mallory", {}, "signature"),
    "signed by the index's key": ("indexd", {}, "signature"),
}


@pytest.mark.parametrize("key_name,changes,check", SWAPS.values(), ids=SWAPS.keys())
async def test_a_swapped_file_or_signer_fails_the_named_check(
    hostile: HostilePeer,
    pki: Any,
    tmp_path: Path,
    key_name: str,
    changes: dict[str, Any],
    check: str,
) -> None:
    hostile.trailer = _signed_for(hostile, key_name, **changes)
    error = await _refused(hostile, pki, tmp_path)
    assert error.check == check, error


async def test_another_files_bytes_with_their_genuine_signature_fail_the_signature_check(
    hostile: HostilePeer, pki: Any, tmp_path: Path
) -> None:
    # The peer serves other.txt's bytes (and other.txt's honest trailer) when asked new.txt.
    other = b"another file altogether\n"
    hostile.content = other

    def trailer(req: Any, sub: str, honest: dict[str, Any]) -> dict[str, Any]:
        signature = hostile.sign(
            "peer1", signer="peer1", requester=sub, keyword=req.keyword, file_name="other.txt",
            size=len(other), sha256=sha256(other), nonce=req.nonce,
        )  # fmt: skip
        return {**honest, "digital_signature": signature}

    hostile.trailer = trailer
    error = await _refused(hostile, pki, tmp_path)
    assert error.check == "signature"


# --- malformed signatures ------------------------------------------------------------------

MALFORMED: dict[str, tuple[Any, str]] = {
    "empty": (b"", "signature"),
    "one byte": (b"\x01", "signature"),
    "63 bytes": (b"s" * 63, "signature"),
    "64 zero bytes": (b"\x00" * 64, "signature"),
    "64 0xff bytes": (b"\xff" * 64, "signature"),
    "65 bytes": (b"s" * 65, "trailer"),
    "a string": ("s" * 64, "trailer"),
    "nil": (None, "trailer"),
    "an int": (7, "trailer"),
    "a list": ([b"s" * 64], "trailer"),
}


@pytest.mark.parametrize("signature,check", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_signature_is_refused_naming_the_check(
    hostile: HostilePeer, pki: Any, tmp_path: Path, signature: Any, check: str
) -> None:
    hostile.trailer = lambda req, sub, honest: {**honest, "digital_signature": signature}
    error = await _refused(hostile, pki, tmp_path)
    assert error.check == check, error


async def test_a_valid_signature_with_a_flipped_bit_fails_the_signature_check(
    hostile: HostilePeer, pki: Any, tmp_path: Path
) -> None:
    def flip(req: Any, sub: str, honest: dict[str, Any]) -> dict[str, Any]:
        sig = bytearray(honest["digital_signature"])
        sig[10] ^= 0x01
        return {**honest, "digital_signature": bytes(sig)}

    hostile.trailer = flip
    error = await _refused(hostile, pki, tmp_path)
    assert error.check == "signature"


# --- a file rewritten during the transfer (live peer) --------------------------------------


async def test_a_file_rewritten_while_it_is_sent_is_never_signed_and_the_download_is_refused(
    pki: Any, tmp_path: Path
) -> None:
    old = os.urandom(1 << 20) * 8  # 8 MiB
    new = os.urandom(len(old))  # same size: only the content (and mtime) changes
    files = {"bulk/data.bin": old}
    async with live_daemons(pki, tmp_path / "rig", files=files) as live:
        served = live.share / "bulk" / "data.bin"
        from tests.support.adversary import open_conn

        conn = await open_conn(live.index_port, "indexd", pki.client_ctx())
        hits = search_reply_from_wire(
            await conn.request("search", {"keyword": "bulk"}, live.token())
        )
        await conn.close()
        listed = hits[0].files[0]
        assert listed.sha256 == sha256(old)

        # 1. Raw: the peer ends the stream with an error instead of a trailer over a mix.
        peer = await _connect(live.peer_port, pki)
        stream = await peer.fetch("bulk", "data.bin", os.urandom(32))
        rewritten = False
        with pytest.raises(Busy, match="changed"):
            async for _ in stream.chunks():
                if not rewritten:
                    served.write_bytes(new)  # same size, new content, new mtime
                    rewritten = True
        assert stream._stream.trailer is None  # no trailer, so no signature over old bytes
        await peer.close()

        # 2. Through the downloader: refused, and nothing under the real name.
        served.write_bytes(old)
        dest = tmp_path / "dest"
        peer = await _connect(live.peer_port, pki)
        state = {"done": False}

        def rewrite_once(received: int, total: int) -> None:
            if received and not state["done"]:
                served.write_bytes(new)
                state["done"] = True

        with pytest.raises(DownloadRefused) as caught:
            await download(peer, "bulk", "data.bin", dest, expected=listed, progress=rewrite_once)
        assert caught.value.check == "truncated"
        assert not (dest / "bulk" / "data.bin").exists()

        # 3. Fetched again after the rewrite: the peer signs the new digest, which is not the
        # one the index listed, so the downloader refuses that too.
        with pytest.raises(DownloadRefused) as caught:
            await download(peer, "bulk", "data.bin", dest, expected=listed)
        assert caught.value.check == "index-digest"
        assert not (dest / "bulk" / "data.bin").exists()
        await peer.close()

        # 4. Once the peer syncs again, the new file downloads and verifies.
        await live.peer.resync()
        conn = await open_conn(live.index_port, "indexd", pki.client_ctx())
        hits = search_reply_from_wire(
            await conn.request("search", {"keyword": "bulk"}, live.token())
        )
        await conn.close()
        peer = await _connect(live.peer_port, pki)
        result = await download(peer, "bulk", "data.bin", dest, expected=hits[0].files[0])
        await peer.close()
        assert result.sha256 == sha256(new)
        assert (dest / "bulk" / "data.bin").read_bytes() == new
        await assert_peer_serves(live)
        await assert_index_serves(live)


async def test_the_live_peer_signs_exactly_what_it_sends_for_this_requester_and_nonce(
    pki: Any, tmp_path: Path
) -> None:
    async with live_daemons(pki, tmp_path) as live:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        from certs import load_cert
        from netproto.signing import fetch_signature_valid, fetch_signing_payload

        key = load_cert(pki.cert("peer1")).public_key()
        assert isinstance(key, Ed25519PublicKey)
        nonces = [os.urandom(32), os.urandom(32)]
        trailers = []
        for requester, nonce in zip(("peer2", "peer3"), nonces, strict=True):
            peer = await _connect(live.peer_port, pki, requester)
            stream = await peer.fetch(HEALTH_KEYWORD, HEALTH_FILE, nonce)
            assert b"".join([c async for c in stream.chunks()]) == HEALTH_CONTENT
            trailers.append((requester, nonce, stream.trailer()))
            await peer.close()
        for requester, nonce, trailer in trailers:
            fields: dict[str, Any] = dict(
                signer="peer1", requester=requester, keyword=HEALTH_KEYWORD,
                file_name=HEALTH_FILE, size=len(HEALTH_CONTENT), sha256=sha256(HEALTH_CONTENT),
            )  # fmt: skip
            assert trailer.nonce == nonce
            assert fetch_signature_valid(
                key, trailer.digital_signature, fetch_signing_payload(**fields, nonce=nonce)
            )
            # Bound to this request: not valid for the other requester's nonce.
            other = nonces[1] if nonce == nonces[0] else nonces[0]
            assert not fetch_signature_valid(
                key, trailer.digital_signature, fetch_signing_payload(**fields, nonce=other)
            )
        assert trailers[0][2].digital_signature != trailers[1][2].digital_signature
