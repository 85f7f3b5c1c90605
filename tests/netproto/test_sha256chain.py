"""netproto.sha256chain: SHA-256 carried on from a chaining value (PROTOCOL.md §4.8).

The OpenSSL path is checked against :mod:`hashlib`, and against the pure-Python compression
that stands in for it, which is itself checked against :mod:`hashlib` (small inputs only: the
pure path is slow).
"""

from __future__ import annotations

import hashlib
import math
import random
import struct

import pytest

from netproto import sha256chain
from netproto.cbuffer import Buffer
from netproto.sha256chain import (
    INITIAL,
    SHA256_BLOCK,
    SHA256_SIZE,
    ChainHash,
    compress,
    openssl_backed,
)

WORDS = struct.Struct(">8I")
#: Message lengths either side of where SHA-256's padding needs a second block (55/56) and
#: of the block ends themselves.
PADDING_EDGES = [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129]


def _pieces(data: bytes, rng: random.Random) -> list[Buffer]:
    """``data`` cut at random into pieces of every buffer kind ChainHash takes, with empty
    pieces between them."""
    pieces: list[Buffer] = []
    pos = 0
    while pos < len(data):
        end = min(len(data), pos + rng.choice((0, 1, 3, 63, 64, 65, rng.randrange(1, 3000))))
        chunk = data[pos:end]
        kind = rng.randrange(4)
        if kind == 0:
            pieces.append(chunk)
        elif kind == 1:
            pieces.append(bytearray(chunk))
        elif kind == 2:  # a read-only slice inside a larger bytes object
            pieces.append(memoryview(data)[pos:end])
        else:  # a writable slice inside a larger bytearray
            pieces.append(memoryview(bytearray(b"?" + chunk + b"?"))[1 : 1 + len(chunk)])
        pieces.append(rng.choice((b"", bytearray(), memoryview(data)[pos:pos])))
        pos = end
    return pieces


def _python_digest(data: bytes) -> bytes:
    """SHA-256 by the pure-Python stand-in alone."""
    chain = sha256chain._PythonChain(INITIAL)
    chain.update(data)
    return chain.digest(len(data))


@pytest.mark.parametrize("seed", range(6))
def test_the_digest_of_data_fed_in_random_pieces_of_every_buffer_kind_is_sha256(
    seed: int,
) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randrange(20_000, 60_000))
    chain = ChainHash()
    pieces = _pieces(data, rng)
    assert {type(p) for p in pieces} == {bytes, bytearray, memoryview}
    for piece in pieces:
        chain.update(piece)
    assert chain.digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("size", PADDING_EDGES)
def test_the_digest_at_the_padding_boundaries_is_sha256(size: int) -> None:
    data = random.Random(size).randbytes(size)
    chain = ChainHash()
    chain.update(data)
    assert chain.digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("blocks", [0, 1, 2, 37, 160])
@pytest.mark.parametrize("tail", [0, 1, 55, 56, 64, 1000])
def test_a_chain_restarted_from_its_state_gives_the_same_digest(blocks: int, tail: int) -> None:
    data = random.Random(blocks * 1000 + tail).randbytes(blocks * SHA256_BLOCK + tail)
    first = ChainHash()
    first.update(data[: blocks * SHA256_BLOCK])
    state = first.state()
    assert len(state) == SHA256_SIZE
    second = ChainHash(state, blocks * SHA256_BLOCK)
    second.update(data[blocks * SHA256_BLOCK :])
    assert second.digest() == hashlib.sha256(data).digest()


def test_a_file_checked_block_by_block_from_each_previous_state_ends_in_its_sha256() -> None:
    # What a manifest does (PROTOCOL.md §4.8): every block carries the hash on from the state
    # at the end of the one before, and the last one's digest is the whole file's.
    block = 16 * SHA256_BLOCK
    data = random.Random(3).randbytes(5 * block + 17)
    states = [INITIAL]
    for start in range(0, 5 * block, block):
        chain = ChainHash(states[-1], start)
        chain.update(memoryview(data)[start : start + block])
        states.append(chain.state())
    last = ChainHash(states[-1], 5 * block)
    last.update(data[5 * block :])
    assert last.digest() == hashlib.sha256(data).digest()


def test_the_state_after_whole_blocks_is_the_pure_python_compressions_chaining_value() -> None:
    data = random.Random(4).randbytes(7 * SHA256_BLOCK)
    chain = ChainHash()
    state = WORDS.unpack(INITIAL)
    for start in range(0, len(data), SHA256_BLOCK):
        chain.update(data[start : start + SHA256_BLOCK])
        state = compress(state, data[start : start + SHA256_BLOCK])
        assert chain.state() == WORDS.pack(*state)


def test_compress_over_the_padded_abc_block_is_its_sha256() -> None:
    # SHA-256 of "abc" (the standard's first example), padded by hand: the stand-in checked
    # without ChainHash.
    block = b"abc\x80" + bytes(52) + struct.pack(">Q", 24)
    assert WORDS.pack(*compress(WORDS.unpack(INITIAL), block)) == hashlib.sha256(b"abc").digest()


@pytest.mark.parametrize("size", PADDING_EDGES)
def test_the_pure_python_chain_agrees_with_openssl_at_the_padding_boundaries(size: int) -> None:
    data = random.Random(size).randbytes(size)
    chain = ChainHash()
    chain.update(data)
    assert _python_digest(data) == chain.digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("tail", [0, 55, 56, 65])
def test_the_pure_python_chain_restarted_from_an_openssl_state_agrees(
    blocks: int, tail: int
) -> None:
    data = random.Random(blocks + tail).randbytes(blocks * SHA256_BLOCK + tail)
    head = ChainHash()
    head.update(data[: blocks * SHA256_BLOCK])
    pure = sha256chain._PythonChain(INITIAL)
    pure.update(data[: blocks * SHA256_BLOCK])
    assert pure.state() == head.state()
    rest = sha256chain._PythonChain(head.state())
    rest.update(data[blocks * SHA256_BLOCK :])
    assert rest.digest(len(data)) == hashlib.sha256(data).digest()


def test_the_message_length_past_2_to_the_32_bits_is_carried_into_the_padding() -> None:
    # OpenSSL keeps the length in bits as two 32-bit words (Nl, Nh): a state taken 64 GiB into
    # a file must put the high word in the padding as the stand-in does.
    state = hashlib.sha256(b"any 32 bytes").digest()
    done = (1 << 36) + 12345 * SHA256_BLOCK  # both length words in use
    tail = b"the last bytes of a very large file"
    chain = ChainHash(state, done)
    chain.update(tail)
    pure = sha256chain._PythonChain(state)
    pure.update(tail)
    assert chain.digest() == pure.digest(done + len(tail))


def test_chainhash_without_libcrypto_uses_the_pure_python_chain_and_agrees(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = random.Random(5).randbytes(3 * SHA256_BLOCK + 56)
    monkeypatch.setattr(sha256chain, "_openssl", None)
    assert not openssl_backed()
    chain = ChainHash()
    assert isinstance(chain._impl, sha256chain._PythonChain)
    chain.update(memoryview(data)[: 2 * SHA256_BLOCK])
    chain.update(bytearray(data[2 * SHA256_BLOCK : 3 * SHA256_BLOCK]))
    state = chain.state()
    chain.update(data[3 * SHA256_BLOCK :])
    assert chain.digest() == hashlib.sha256(data).digest()
    rest = ChainHash(state, 3 * SHA256_BLOCK)
    rest.update(data[3 * SHA256_BLOCK :])
    assert rest.digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("fed", [1, 63, 65, 127])
def test_state_inside_a_block_is_a_value_error(fed: int) -> None:
    chain = ChainHash()
    chain.update(bytes(fed))
    with pytest.raises(ValueError, match="inside a 64-byte block"):
        chain.state()


def test_state_inside_a_block_of_a_restarted_chain_is_a_value_error() -> None:
    chain = ChainHash(INITIAL, 2 * SHA256_BLOCK)
    chain.update(b"x")
    with pytest.raises(ValueError, match="inside a 64-byte block"):
        chain.state()


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_a_state_that_is_not_32_bytes_is_a_value_error(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ChainHash(bytes(size))


@pytest.mark.parametrize("done", [1, 63, 65, 100, -64])
def test_a_done_count_that_is_not_whole_blocks_is_a_value_error(done: int) -> None:
    with pytest.raises(ValueError, match="whole 64-byte blocks"):
        ChainHash(INITIAL, done)


def test_the_chain_runs_on_libcrypto_here() -> None:
    assert openssl_backed()
    assert isinstance(ChainHash()._impl, sha256chain._OpenSSLChain)


def test_initial_is_sha256s_initial_value_and_the_state_of_an_empty_chain() -> None:
    # SHA-256's initial value: the first 32 bits of the fractional parts of the square roots of the
    # first eight primes, derived here rather than copied.
    primes = (2, 3, 5, 7, 11, 13, 17, 19)
    assert WORDS.pack(*(math.isqrt(p << 64) & 0xFFFFFFFF for p in primes)) == INITIAL
    assert ChainHash().state() == INITIAL


def test_the_digest_of_nothing_is_sha256_of_nothing() -> None:
    assert ChainHash().digest() == hashlib.sha256(b"").digest()
