"""The manifest format, its digest and signatures, and the ranged-fetch bodies
(netproto/manifest.py, PROTOCOL.md §4.8, §7.1)."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netproto.errors import BadRequest
from netproto.manifest import (
    MAX_BLOCK,
    MIN_BLOCK,
    Manifest,
    ManifestBuilder,
    ManifestReply,
    ManifestRequest,
    RangeHeader,
    RangeRequest,
    block_size_for,
    manifest_bytes,
    manifest_of,
    merkle_root,
    publication_valid,
    publish_signing_payload,
    sign_publication,
)

DATA = os.urandom(3 * MIN_BLOCK + 5)


def test_the_block_size_keeps_a_file_under_2000_blocks_between_128_kib_and_16_mib() -> None:
    assert block_size_for(0) == MIN_BLOCK
    assert block_size_for(2000 * MIN_BLOCK) == MIN_BLOCK
    assert block_size_for(2000 * MIN_BLOCK + 1) == 2 * MIN_BLOCK
    assert block_size_for(10**15) == MAX_BLOCK


def test_a_manifest_fed_byte_by_byte_equals_one_fed_whole() -> None:
    builder = ManifestBuilder(len(DATA))
    for i in range(0, len(DATA), 4099):
        builder.update(DATA[i : i + 4099])
    assert builder.finish() == manifest_of(DATA)
    assert manifest_of(DATA).count == 4


def test_a_manifest_round_trips_and_its_digest_covers_the_prefixed_bytes() -> None:
    m = manifest_of(DATA)
    assert Manifest.from_wire(m.to_wire()) == m
    assert manifest_bytes(m).startswith(b"p2pshare/1 chained manifest\n")
    assert m.block_valid(3, DATA[3 * MIN_BLOCK :]) and not m.block_valid(0, DATA[:10])


@pytest.mark.parametrize(
    "change, field",
    [
        ({"block_size": 7}, "block_size"),
        ({"blocks": b"x" * 31}, "blocks"),
        ({"blocks": b"x" * 32}, "blocks"),
        ({"blocks": manifest_of(DATA).to_wire()["blocks"][:-32] + bytes(32)}, "blocks"),
        ({"sha256": bytes(32)}, "sha256"),
        ({"size": -1}, "size"),
        ({"sha256": "no"}, "sha256"),
        ({"sha256": b"short"}, "sha256"),
        ({"block_size": "big"}, "block_size"),
    ],
)
def test_a_malformed_manifest_is_bad_request_naming_the_field(
    change: dict[str, object], field: str
) -> None:
    wire = {**manifest_of(DATA).to_wire(), **change}
    with pytest.raises(BadRequest, match=field):
        Manifest.from_wire(wire)
    with pytest.raises(BadRequest):
        Manifest.from_wire([])


def test_the_publisher_signature_verifies_only_over_its_own_fields() -> None:
    key = Ed25519PrivateKey.generate()
    m = manifest_of(DATA)

    def payload_of(digest: bytes) -> bytes:
        return publish_signing_payload(
            publisher="peer1",
            keyword="koala",
            file_name="a",
            size=m.size,
            sha256=m.sha256,
            manifest_digest=digest,
        )

    payload = payload_of(m.digest())
    signature = sign_publication(key, payload)
    assert publication_valid(key.public_key(), signature, payload)
    assert not publication_valid(key.public_key(), signature, payload_of(bytes(32)))


def test_the_peer_bodies_round_trip() -> None:
    m = manifest_of(DATA)
    reply = ManifestReply(m, "koala", "peer1", bytes(64))
    assert ManifestReply.from_wire(reply.to_wire()) == reply
    with pytest.raises(BadRequest):
        ManifestReply.from_wire("x")
    req = ManifestRequest("koala", "a")
    assert ManifestRequest.from_wire(req.to_wire()) == req
    rng = RangeRequest("koala", "a", m.digest(), MIN_BLOCK, MIN_BLOCK)
    assert RangeRequest.from_wire(rng.to_wire()) == rng
    header = RangeHeader(m.digest(), 0, 5)
    assert RangeHeader.from_wire(header.to_wire()) == header
    with pytest.raises(BadRequest):
        RangeHeader.from_wire(None)


@pytest.mark.parametrize(
    "offset, length, problem",
    [
        (0, 3 * MIN_BLOCK + 5, None),
        (3 * MIN_BLOCK, 5, None),
        (0, MIN_BLOCK, None),
        (1, MIN_BLOCK, "offset"),
        (0, MIN_BLOCK + 1, "length"),
        (0, 0, "length"),
        (0, 4 * MIN_BLOCK, "length"),
    ],
)
def test_a_range_must_be_aligned_to_blocks(offset: int, length: int, problem: str | None) -> None:
    m = manifest_of(DATA)
    why = RangeRequest("k", "a", m.digest(), offset, length).alignment_error(m)
    assert (why is None) if problem is None else (why is not None and why.startswith(problem))


def test_the_merkle_root_of_one_leaf_is_the_leaf_and_of_none_the_empty_hash() -> None:
    leaf = bytes(range(32))
    assert merkle_root([leaf]) == leaf
    assert len(merkle_root([])) == 32
    assert merkle_root([leaf, leaf, leaf]) != merkle_root([leaf, leaf])
