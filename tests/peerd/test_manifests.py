"""peerd.manifests: one computation per file version, however many ask at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import peerd.manifests
from netproto.manifest import Manifest
from peerd.manifests import ManifestCache, SignedManifest
from peerd.share import Share, ShareFile


def _share(tmp_path: Path) -> Share:
    (tmp_path / "koala").mkdir()
    (tmp_path / "koala" / "joey.txt").write_bytes(b"joey" * 100_000)
    return Share(tmp_path, cache_file=None)


def test_two_requests_for_an_uncached_file_share_one_computation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    share = _share(tmp_path)
    cache = ManifestCache("peer1", Ed25519PrivateKey.generate())
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []
    real = peerd.manifests.compute_manifest

    def slow(opened: ShareFile) -> Manifest:
        calls.append(1)
        started.set()
        assert release.wait(10)
        return real(opened)

    monkeypatch.setattr(peerd.manifests, "compute_manifest", slow)

    def ask() -> SignedManifest:
        opened = share.open_file("koala", "joey.txt")
        try:
            return cache.signed("koala", "joey.txt", opened)
        finally:
            opened.close()

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(ask)
        assert started.wait(10)
        second = pool.submit(ask)
        threading.Event().wait(0.2)  # the second request is waiting by now
        release.set()
        assert first.result(10) is second.result(10)
    assert len(calls) == 1 and cache.computed == 1


def test_a_failed_computation_is_given_to_its_waiters_and_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    share = _share(tmp_path)
    cache = ManifestCache("peer1", Ed25519PrivateKey.generate())

    def broken(opened: ShareFile) -> Manifest:
        raise peerd.manifests.FileChangedWhileHashed("changed")

    monkeypatch.setattr(peerd.manifests, "compute_manifest", broken)
    opened = share.open_file("koala", "joey.txt")
    try:
        with pytest.raises(peerd.manifests.FileChangedWhileHashed):
            cache.signed("koala", "joey.txt", opened)
        monkeypatch.undo()
        assert cache.signed("koala", "joey.txt", opened).manifest.size == 400_000
    finally:
        opened.close()
