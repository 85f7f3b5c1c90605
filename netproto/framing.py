"""Length-prefixed framing (PROTOCOL.md §2): a 4-byte big-endian length, then that many bytes.

Sans-I/O: :class:`FrameBuffer` hands out the buffers received bytes go into (no copy between
TLS and a large frame's reader) and returns whole frame bodies. It checks the length against
``max_frame`` before a single body byte is buffered.
"""

from __future__ import annotations

import struct

from netproto.errors import BadFrame, FrameTooLarge, RequestError

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME = 1 << 20


def frame_header(length: int) -> bytes:
    """The 4-byte length prefix for a body of ``length`` bytes."""
    return HEADER.pack(length)


def encode_frame(body: bytes) -> bytes:
    """One whole frame: prefix and body."""
    return HEADER.pack(len(body)) + body


#: Frames at least this long arrive in a buffer of their own (see :class:`FrameBuffer`).
OWN_BUFFER_AT = 64 << 10
#: The scratch buffer's size when it is (re)made: one TLS record's plaintext.
SCRATCH = 16 << 10


class FrameBuffer:
    """Incremental frame decoder that hands out the buffers bytes are received into.

    For :class:`asyncio.BufferedProtocol`: :meth:`get_buffer` gives the receiver (TLS, which
    decrypts straight into it) where to put the next bytes, :meth:`buffer_updated` says how
    many came and returns the frames they completed. Small frames are read, several at a time,
    into a scratch buffer and returned as views of it, valid only until the next
    :meth:`get_buffer`. A frame of :data:`OWN_BUFFER_AT` bytes or more gets a buffer of its
    own as soon as its length is known, and its body arrives straight into it: that one is
    returned as a :class:`bytearray` nobody else touches, so a 256 KiB stream chunk is never
    copied between the decryption and whoever reads it. Lengths are checked against
    ``max_frame`` from the prefix alone, before any body byte is buffered.

    Memory follows the traffic (PROTOCOL.md §6): the scratch buffer is :data:`SCRATCH` bytes,
    grows only to hold one incomplete frame under :data:`OWN_BUFFER_AT`, and :meth:`release`
    drops it whenever no frame is incomplete, so an idle connection holds no buffer at all.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._scratch = bytearray()
        self._view = memoryview(self._scratch)
        self._start = 0  # first byte not yet handed out
        self._end = 0  # end of the bytes received into the scratch buffer
        self._own: bytearray | None = None  # the body of a large frame being received
        self._own_filled = 0
        #: Set once a prefix is refused: nothing after it can be read (PROTOCOL.md §2).
        self.error: RequestError | None = None

    @property
    def in_frame(self) -> bool:
        """True while part of a frame (prefix or body) has arrived but not all of it."""
        return self._own is not None or self._end > self._start

    @property
    def allocated(self) -> int:
        """Bytes of buffer held now (the scratch buffer and a large frame's own)."""
        return len(self._scratch) + (len(self._own) if self._own is not None else 0)

    def release(self) -> None:
        """Drop the scratch buffer unless it holds part of a frame (between reads)."""
        if self._start == self._end and self._scratch:
            self._scratch = bytearray()
            self._view = memoryview(self._scratch)
            self._start = self._end = 0

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next received bytes go (never past the end of a large frame's body)."""
        own = self._own
        if own is not None:
            return memoryview(own)[self._own_filled :]
        start, end, size = self._start, self._end, len(self._scratch)
        if start == end or self.error is not None:  # past a refused prefix: nothing to keep
            start = end = self._start = self._end = 0
        needed = HEADER_SIZE  # what the incomplete frame at start needs in all
        if end - start >= HEADER_SIZE:
            needed += min(HEADER.unpack_from(self._view, start)[0], OWN_BUFFER_AT)
        if start + needed > size or end == size:
            # Move the incomplete frame's head to the front of a buffer that holds all of it
            # (frames of OWN_BUFFER_AT or more leave for their own as soon as their length is
            # known, so this stays under OWN_BUFFER_AT + the prefix).
            head = self._scratch[start:end]  # a copy: the two ranges may overlap
            if needed > size:
                scratch = bytearray(max(needed, SCRATCH))
                scratch[: end - start] = head
                self._scratch, self._view = scratch, memoryview(scratch)
            else:
                self._scratch[: end - start] = head
            self._start, self._end = 0, end - start
        view = self._view[self._end :]
        assert view, "an incomplete frame never fills its buffer"  # else reads see EOF
        return view

    def buffer_updated(self, nbytes: int) -> list[memoryview | bytearray]:
        """``nbytes`` arrived in the last buffer; return the frame bodies now complete.

        A length over ``max_frame`` is :class:`FrameTooLarge`, a length of 0 :class:`BadFrame`.
        The frames before a refused prefix are still returned, and the error is kept in
        :attr:`error`; it is raised when no frame precedes it, and by every later call.
        """
        if self.error is not None:
            raise self.error
        frames: list[memoryview | bytearray] = []
        own = self._own
        if own is not None:
            self._own_filled += nbytes
            if self._own_filled < len(own):
                return frames
            frames.append(own)
            self._own = None
            return frames
        self._end += nbytes
        pos, end, view = self._start, self._end, self._view
        while end - pos >= HEADER_SIZE:
            (length,) = HEADER.unpack_from(view, pos)
            if length == 0 or length > self.max_frame:
                self.error = (
                    BadFrame("empty frame (length 0)")
                    if length == 0
                    else FrameTooLarge(f"frame of {length} bytes exceeds {self.max_frame}")
                )
                if not frames:
                    raise self.error
                break
            body = pos + HEADER_SIZE
            if end - body >= length:
                frames.append(view[body : body + length])
                pos = body + length
                continue
            if length >= OWN_BUFFER_AT:
                own = bytearray(length)
                have = end - body
                own[:have] = view[body:end]
                self._own, self._own_filled = own, have
                pos = end
            break
        self._start = pos
        return frames

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[bytes | bytearray]:
        """Feed bytes received elsewhere; return the frames they completed, as independent
        objects (frames in the scratch buffer are copied out; large ones keep their own).
        A refused prefix is raised, or kept in :attr:`error` if frames came before it."""
        frames: list[bytes | bytearray] = []
        source = memoryview(data)
        while source and self.error is None:
            buf = self.get_buffer(len(source))
            n = min(len(buf), len(source))
            buf[:n] = source[:n]
            source = source[n:]
            try:
                done = self.buffer_updated(n)
            except RequestError:
                if frames:
                    return frames
                raise
            frames.extend(f if isinstance(f, bytearray) else bytes(f) for f in done)
        return frames
