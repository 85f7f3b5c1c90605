"""SHA-256 carried on from a chaining value: what a manifest's block digests are (PROTOCOL.md §4.8).

SHA-256 hashes a message 64 bytes at a time, each step turning the 32-byte chaining value
into the next; the digest is the last chaining value after the padding. A manifest lists the
chaining value at the end of every block, so block ``i`` is checked by carrying the hash on
over it from the value at the end of block ``i - 1`` (the standard initial value for the
first), and the last block's check finishes the hash: it *is* the whole file's SHA-256. Every
byte of a download is hashed once, in any order, and the whole-file digest comes out of the
same pass.

:mod:`hashlib` cannot start from a given state, so :class:`ChainHash` calls OpenSSL's
``SHA256_Update`` on a ``SHA256_CTX`` whose state it sets: libcrypto, the library ``hashlib``
and ``ssl`` already use, through ctypes (the same assembly, SHA extensions included; ctypes
lets go of the GIL for the call). Where no libcrypto with it can be loaded a pure-Python
compression stands in: correct, but about 4,000 times slower (an error is logged once).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from netproto.cbuffer import Buffer, c_buffer

log = logging.getLogger(__name__)

SHA256_SIZE = 32
#: SHA-256's block: a chaining value exists after every whole multiple of it.
SHA256_BLOCK = 64
#: SHA-256's initial chaining value (PROTOCOL.md §4.8 gives it too), as 8 big-endian 32-bit
#: words.
INITIAL = bytes.fromhex("6a09e667bb67ae853c6ef372a54ff53a510e527f9b05688c1f83d9ab5be0cd19")

_WORDS = struct.Struct(">8I")


class _Context(ctypes.Structure):
    """OpenSSL's ``SHA256_CTX``: the state words, the bit count (low, high word), the partial
    64-byte block and how much of it is filled, the digest length (unchanged since 0.9.8)."""

    _fields_ = (
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint32 * 16),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    )


class _OpenSSL(NamedTuple):
    """libcrypto's two calls this module makes."""

    update: Callable[[Any, int, int], int]
    final: Callable[[ctypes.Array[ctypes.c_char], Any], int]


def _libcrypto_candidates() -> list[str | None]:
    """Where ``SHA256_Update`` may be: the libcrypto this Python's ``hashlib`` is linked with
    (as mapped into this process), ``hashlib``'s own module (a static build), the process's
    own symbols (None), the system's libcrypto."""
    found: list[str | None] = []
    try:
        import _hashlib  # loads libcrypto into this process

        found.append(getattr(_hashlib, "__file__", None))
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1]
                if "/libcrypto" in path:
                    found.insert(0, path)
                    break
    except (ImportError, OSError):
        pass
    return [*found, None, ctypes.util.find_library("crypto")]


def _load() -> _OpenSSL | None:
    for path in _libcrypto_candidates():
        try:
            lib = ctypes.CDLL(path)
            update, final = lib.SHA256_Update, lib.SHA256_Final
        except (OSError, AttributeError):
            continue
        update.argtypes = (ctypes.POINTER(_Context), ctypes.c_void_p, ctypes.c_size_t)
        update.restype = ctypes.c_int
        final.argtypes = (ctypes.c_char_p, ctypes.POINTER(_Context))
        final.restype = ctypes.c_int
        return _OpenSSL(update, final)
    return None


_openssl = _load()
if _openssl is None:  # pragma: no cover - every supported system has libcrypto
    log.error(
        "libcrypto's SHA256_Update not found: manifests and block checks use a pure-Python"
        " SHA-256, about 4,000 times slower (0.5 MB/s)"
    )


class ChainHash:
    """SHA-256 carried on from ``state`` (a chaining value, :data:`INITIAL` by default),
    ``done`` bytes into the message (a multiple of 64). One thread at a time."""

    def __init__(self, state: bytes = INITIAL, done: int = 0) -> None:
        if len(state) != SHA256_SIZE or done % SHA256_BLOCK or done < 0:
            raise ValueError("a chaining value is 32 bytes, taken after whole 64-byte blocks")
        self._fed = done
        self._impl: _OpenSSLChain | _PythonChain = (
            _OpenSSLChain(state, done) if _openssl is not None else _PythonChain(state)
        )

    def update(self, data: Buffer) -> None:
        """Hash the next bytes of the message."""
        self._impl.update(data)
        self._fed += memoryview(data).nbytes

    def state(self) -> bytes:
        """The chaining value now: only after whole 64-byte blocks."""
        if self._fed % SHA256_BLOCK:
            raise ValueError("no chaining value inside a 64-byte block")
        return self._impl.state()

    def digest(self) -> bytes:
        """The SHA-256 of the whole message (this object is done with after it)."""
        return self._impl.digest(self._fed)


class _OpenSSLChain:
    def __init__(self, state: bytes, done: int) -> None:
        ctx = self._ctx = _Context()
        ctx.h[:] = _WORDS.unpack(state)
        bits = done * 8
        ctx.Nl, ctx.Nh = bits & 0xFFFFFFFF, bits >> 32
        ctx.md_len = SHA256_SIZE

    def update(self, data: Buffer) -> None:
        assert _openssl is not None
        with c_buffer(data) as (address, length):
            _openssl.update(ctypes.byref(self._ctx), address, length)

    def state(self) -> bytes:
        return _WORDS.pack(*self._ctx.h)

    def digest(self, fed: int) -> bytes:
        assert _openssl is not None
        out = ctypes.create_string_buffer(SHA256_SIZE)
        _openssl.final(out, ctypes.byref(self._ctx))
        return out.raw


_K = (
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4, 0xAB1C5ED5,
    0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE, 0x9BDC06A7, 0xC19BF174,
    0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F, 0x4A7484AA, 0x5CB0A9DC, 0x76F988DA,
    0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7, 0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967,
    0x27B70A85, 0x2E1B2138, 0x4D2C6DFC, 0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85,
    0xA2BFE8A1, 0xA81A664B, 0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070,
    0x19A4C116, 0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7, 0xC67178F2,
)  # fmt: skip
_M = 0xFFFFFFFF


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & _M


def compress(state: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    """One SHA-256 compression (the standard's 64 rounds) in pure Python: the stand-in, and an
    independent check of the OpenSSL path in the tests."""
    w = list(struct.unpack(">16I", block))
    for t in range(16, 64):
        s0 = _rotr(w[t - 15], 7) ^ _rotr(w[t - 15], 18) ^ (w[t - 15] >> 3)
        s1 = _rotr(w[t - 2], 17) ^ _rotr(w[t - 2], 19) ^ (w[t - 2] >> 10)
        w.append((w[t - 16] + s0 + w[t - 7] + s1) & _M)
    a, b, c, d, e, f, g, h = state
    for t in range(64):
        t1 = h + (_rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)) + ((e & f) ^ (~e & g)) + _K[t] + w[t]
        t2 = (_rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))
        h, g, f, e, d, c, b, a = g, f, e, (d + t1) & _M, c, b, a, (t1 + t2) & _M
    return tuple((x + y) & _M for x, y in zip(state, (a, b, c, d, e, f, g, h), strict=True))


class _PythonChain:
    def __init__(self, state: bytes) -> None:
        self._h = _WORDS.unpack(state)
        self._tail = b""

    def update(self, data: Buffer) -> None:
        data = self._tail + bytes(data)
        whole = len(data) - len(data) % SHA256_BLOCK
        for start in range(0, whole, SHA256_BLOCK):
            self._h = compress(self._h, data[start : start + SHA256_BLOCK])
        self._tail = data[whole:]

    def state(self) -> bytes:
        return _WORDS.pack(*self._h)

    def digest(self, fed: int) -> bytes:
        pad = b"\x80" + bytes((55 - fed) % SHA256_BLOCK) + struct.pack(">Q", fed * 8)
        self.update(pad)
        return self.state()


def openssl_backed() -> bool:
    """True when the chain runs on libcrypto (false only on the slow stand-in)."""
    return _openssl is not None


__all__ = ["INITIAL", "SHA256_BLOCK", "SHA256_SIZE", "ChainHash", "compress", "openssl_backed"]
