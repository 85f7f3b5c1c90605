"""peerd.publish: sync entries carry the manifest digest and publisher signature."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netproto.manifest import publication_valid, publish_signing_payload
from peerd.manifests import ManifestCache
from peerd.publish import published
from peerd.share import Share


def test_each_entry_gets_its_manifest_digest_and_a_signature_that_verifies(tmp_path: Path) -> None:
    (tmp_path / "koala").mkdir()
    (tmp_path / "koala" / "joey.txt").write_bytes(b"joey" * 100_000)
    key = Ed25519PrivateKey.generate()
    share = Share(tmp_path, cache_file=None)
    [entry] = published(share, ManifestCache("peer1", key), share.scan())
    assert entry.manifest is not None and entry.signature is not None
    payload = publish_signing_payload(
        publisher="peer1",
        keyword="koala",
        file_name="joey.txt",
        size=entry.size,
        sha256=entry.sha256,
        manifest_digest=entry.manifest,
    )
    assert publication_valid(key.public_key(), entry.signature, payload)


def test_an_entry_that_changed_or_vanished_since_the_scan_goes_without(tmp_path: Path) -> None:
    (tmp_path / "koala").mkdir()
    (tmp_path / "koala" / "a.txt").write_bytes(b"a")
    share = Share(tmp_path, cache_file=None)
    [entry] = share.scan()
    stale = dataclasses.replace(entry, size=2)
    gone = dataclasses.replace(entry, filename="gone.txt")
    cache = ManifestCache("peer1", Ed25519PrivateKey.generate())
    assert published(share, cache, [stale, gone]) == [stale, gone]


def test_a_share_larger_than_the_cache_is_not_hashed_again_by_the_next_scan(
    tmp_path: Path,
) -> None:
    (tmp_path / "koala").mkdir()
    for i in range(5):
        (tmp_path / "koala" / f"{i}.txt").write_bytes(b"joey" * (i + 1))
    share = Share(tmp_path, cache_file=None)
    cache = ManifestCache("peer1", Ed25519PrivateKey.generate(), capacity=2)
    for _ in range(3):
        published(share, cache, share.scan())
    assert cache.computed == 5
