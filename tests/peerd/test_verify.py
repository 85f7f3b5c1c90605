"""The checks of PROTOCOL.md §7 (peerd/verify.py) as a pure function: one input changed at a
time, one check fails, and the outcome names it."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from certs import load_cert, load_key
from netproto.operations import FetchHeader, FetchTrailer, ListedFile
from netproto.signing import fetch_signing_payload, sign_fetch
from peerd.verify import CHECKS, FetchExpectation, check_header, first_failure, verify_fetch

CONTENT = b"a baby koala\n"
DIGEST = hashlib.sha256(CONTENT).digest()
NONCE = bytes(range(32))
EXPECTED = FetchExpectation("peer1", "peer2", "koala", "joey.txt", NONCE)


def signed(key: Ed25519PrivateKey, **changes: Any) -> FetchTrailer:
    """The honest trailer for CONTENT, signed by ``key``, with ``changes`` applied after."""
    payload = fetch_signing_payload(
        signer="peer1",
        requester="peer2",
        keyword="koala",
        file_name="joey.txt",
        size=len(CONTENT),
        sha256=DIGEST,
        nonce=NONCE,
    )
    trailer = FetchTrailer(len(CONTENT), DIGEST, NONCE, sign_fetch(key, payload), "peer1")
    return dataclasses.replace(trailer, **changes)


def outcomes(pki: Any, expected: FetchExpectation = EXPECTED, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "size": len(CONTENT),
        "announced_size": len(CONTENT),
        "digest": DIGEST,
        "trailer": signed(load_key(pki.key("peer1"))),
        "public_key": load_cert(pki.cert("peer1")).public_key(),
        **kw,
    }
    checks = verify_fetch(expected, **args)
    assert [c.name for c in checks] == list(CHECKS)
    return {c.name: c.passed for c in checks}


def test_an_honest_fetch_passes_every_check_and_the_index_digest_is_not_applicable(
    pki: Any,
) -> None:
    assert outcomes(pki) == {name: name != "index-digest" or None for name in CHECKS}


def test_an_index_listing_adds_the_index_digest_check(pki: Any) -> None:
    listed = dataclasses.replace(EXPECTED, listed=ListedFile("joey.txt", len(CONTENT), DIGEST))
    assert all(outcomes(pki, listed).values())


@pytest.mark.parametrize(
    "change, failed",
    [
        ({"trailer_changes": {"nonce": bytes(32)}}, "nonce"),
        ({"size": len(CONTENT) - 1}, "size"),
        ({"announced_size": len(CONTENT) + 1}, "size"),
        ({"digest": bytes(32)}, "sha256"),
        ({"trailer_changes": {"signer": "peer3"}}, "signer"),
        ({"key": "mallory"}, "signature"),
        ({"public_key": "peer2"}, "signature"),
        ({"listed": ListedFile("joey.txt", len(CONTENT), bytes(32))}, "index-digest"),
        ({"listed": ListedFile("joey.txt", 1, DIGEST)}, "size"),
    ],
)
def test_each_lie_fails_its_own_check_first(pki: Any, change: dict[str, Any], failed: str) -> None:
    change = dict(change)
    key = load_key(pki.key(change.pop("key", "peer1")))
    trailer = signed(key, **change.pop("trailer_changes", {}))
    expected = dataclasses.replace(EXPECTED, listed=change.pop("listed", None))
    if "public_key" in change:
        change["public_key"] = load_cert(pki.cert(change["public_key"])).public_key()
    result = outcomes(pki, expected, trailer=trailer, **change)
    assert result[failed] is False
    first = next(name for name in CHECKS if result[name] is False)
    assert first == failed


def test_first_failure_names_the_first_failed_check(pki: Any) -> None:
    checks = verify_fetch(
        EXPECTED,
        size=1,
        announced_size=len(CONTENT),
        digest=bytes(32),
        trailer=signed(load_key(pki.key("peer1"))),
        public_key=load_cert(pki.cert("peer1")).public_key(),
    )
    failed = first_failure(checks)
    assert failed is not None and failed.name == "size"
    assert "received 1 bytes" in failed.detail


@pytest.mark.parametrize(
    "header, failed",
    [
        (FetchHeader("koala", "joey.txt", 13, 0), None),
        (FetchHeader("koala", "other.txt", 13, 0), "header"),
        (FetchHeader("wombat", "joey.txt", 13, 0), "header"),
        (FetchHeader("koala", "joey.txt", 13, 5), "header"),
        (FetchHeader("koala", "joey.txt", 14, 0), "size"),
    ],
)
def test_a_header_must_answer_our_request_and_match_the_listing(
    header: FetchHeader, failed: str | None
) -> None:
    listed = dataclasses.replace(EXPECTED, listed=ListedFile("joey.txt", 13, DIGEST))
    outcome = check_header(listed, header, 0)
    assert (outcome.name if outcome is not None else None) == failed


def test_a_header_smaller_than_our_offset_is_refused() -> None:
    outcome = check_header(EXPECTED, FetchHeader("koala", "joey.txt", 10, 12), 12)
    assert outcome is not None and outcome.name == "header"
