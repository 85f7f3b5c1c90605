"""Length-prefixed framing (PROTOCOL.md §2): a 4-byte big-endian length, then that many bytes.

Sans-I/O: :class:`FrameDecoder` takes bytes as they arrive and hands out whole frame bodies.
The length is checked against ``max_frame`` before a single body byte is buffered.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from netproto.errors import FrameTooLarge

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME = 1 << 20


def frame_header(length: int) -> bytes:
    """The 4-byte length prefix for a body of ``length`` bytes."""
    return HEADER.pack(length)


def encode_frame(body: bytes) -> bytes:
    """One whole frame: prefix and body."""
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental frame decoder: ``receive_data`` bytes in, ``frames()`` bodies out."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        self._need: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out as a frame."""
        return len(self._buf) - self._pos

    @property
    def in_frame(self) -> bool:
        """True while part of a frame (prefix or body) has arrived but not all of it."""
        # A consumed prefix leaves nothing buffered until the body starts: still mid-frame.
        return self._need is not None or self.buffered > 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes; call :meth:`frames` to collect what completed."""
        self._buf += data

    def frames(self) -> Iterator[bytes]:
        """Yield each complete frame body; raise :class:`FrameTooLarge` on a bad length."""
        buf = self._buf
        while True:
            avail = len(buf) - self._pos
            if self._need is None:
                if avail < HEADER_SIZE:
                    break
                (length,) = HEADER.unpack_from(buf, self._pos)
                if length == 0:
                    raise FrameTooLarge("empty frame (length 0)")
                if length > self.max_frame:
                    raise FrameTooLarge(f"frame of {length} bytes exceeds {self.max_frame}")
                self._pos += HEADER_SIZE
                self._need = length
                avail -= HEADER_SIZE
            if avail < self._need:
                break
            start = self._pos
            self._pos += self._need
            self._need = None
            yield bytes(buf[start : self._pos])
        # Compact once per batch, not per frame: keeps receive O(n) for many small frames.
        if self._pos:
            del buf[: self._pos]
            self._pos = 0
