"""TLS without a socket (PROTOCOL.md §1): an :class:`ssl.SSLObject` over two memory BIOs.

Sans-I/O: ciphertext goes in with :meth:`TLSSession.receive_data`, plaintext comes out into
whatever buffer the caller hands to :meth:`TLSSession.read_into` (the frame buffer, so nothing
is copied between decryption and framing), plaintext goes in with :meth:`TLSSession.send`, and
the ciphertext to put on the wire comes out of :meth:`TLSSession.data_to_send`.

Memory (PROTOCOL.md §6, "Memory per connection"): OpenSSL releases its own record buffers
between records (Python sets ``SSL_MODE_RELEASE_BUFFERS``), but a memory BIO keeps the largest
size it ever held. So ciphertext is fed in, and plaintext encrypted, at most :data:`RECORD`
bytes at a time, each piece drained before the next: an idle session holds a few KiB whatever
went through it. Ciphertext is cut at the ends of TLS records (their 5-byte headers give the
length), so a record fed in whole is decrypted with one read: no read is made that can only
find half a record (each read lets go of the GIL, and another thread waiting for it may take
it meanwhile).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterable
from typing import Any, Protocol, cast

from cryptography import x509

from netproto.errors import LocalProtocolError

#: The most plaintext one TLS record carries; a ciphertext slice is at most one record (a
#: TLS 1.3 record is at most RECORD + 256 bytes after its header), and never more than this.
RECORD = 16 << 10
_CIPHER_SLICE = RECORD + 512
#: A TLS record's header: type (1 byte), legacy version (2), length of what follows (2).
_RECORD_HEADER = 5
#: The longest body a TLS 1.3 record may announce: 2^14 bytes of plaintext and 256 of expansion.
_MAX_RECORD_BODY = RECORD + 256


class Receiver(Protocol):
    """What decrypted bytes go into: :class:`netproto.protocol.ServerProtocol` or
    :class:`netproto.protocol.ClientProtocol` (their frame buffer)."""

    @property
    def accepting(self) -> bool:
        """False once nothing more is to be read (a refused frame length, a stopped
        connection): decryption stops there."""

    def get_buffer(self, sizehint: int = -1) -> memoryview: ...

    def buffer_updated(self, nbytes: int) -> list[Any]: ...


class TLSSession:
    """One side of a TLS connection, driven by bytes in and bytes out."""

    def __init__(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._out: list[bytes] = []
        #: Where the ciphertext stream stands: bytes of the current record still to come
        #: (0: at a header), and the part of a header that arrived so far.
        self._record_left = 0
        self._header = bytearray()
        self._closed = False  # our close_notify went out: nothing more may be sent
        #: True once the handshake completed (the peer is authenticated).
        self.established = False
        #: True once the peer's close_notify arrived.
        self.peer_closed = False

    def handshake(self) -> bool:
        """Advance the handshake; True once it is complete. Raises :class:`ssl.SSLError`
        (a certificate that does not verify: :class:`ssl.SSLCertVerificationError`)."""
        if not self.established:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                self.established = True
            finally:  # a failed handshake's alert is sent too
                self._drain()
        return self.established

    def peer_certificate(self) -> x509.Certificate | None:
        """The certificate the peer presented in the handshake, if any."""
        der = self._ssl.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None

    def version(self) -> str | None:
        """The negotiated protocol version (``TLSv1.3``)."""
        return self._ssl.version()

    def receive_data(self, data: memoryview, core: Receiver) -> tuple[list[Any], int]:
        """Take ciphertext, advance the handshake, decrypt what follows it straight into
        ``core``'s buffers; return the events the core completed and the plaintext bytes
        decrypted (0: handshake or post-handshake messages only). A record at a time goes in
        (:meth:`_record_end`), so the incoming BIO stays small, and it is read once it is
        whole. Stops at the peer's close_notify (:attr:`peer_closed`), and as soon as
        ``core`` stops accepting: the rest of the read is dropped undecrypted (a refused frame
        length costs no more work)."""
        events: list[Any] = []
        plaintext = 0
        incoming, pos, size = self._incoming, 0, len(data)
        while True:
            end, whole = self._record_end(data, pos) if pos < size else (pos, False)
            incoming.write(data[pos:end])
            pos = end
            if self.handshake() and whole:
                while core.accepting and not self.peer_closed:
                    if not (n := self.read_into(core.get_buffer(-1))):
                        break
                    plaintext += n
                    events += core.buffer_updated(n)
                    if not incoming.pending and not self._ssl.pending():
                        break  # the record is read: nothing more to decrypt until the next
                if not core.accepting or self.peer_closed:
                    break
            if pos >= size:
                break
        return events, plaintext

    def _record_end(self, data: memoryview, pos: int) -> tuple[int, bool]:
        """Where the record going on at ``data[pos]`` ends in ``data`` (at most
        :data:`_CIPHER_SLICE` on), and whether it ends there (whole, once fed in)."""
        start, left, header = pos, self._record_left, self._header
        if not left:
            take = min(_RECORD_HEADER - len(header), len(data) - pos)
            header += data[pos : pos + take]
            pos += take
            if len(header) < _RECORD_HEADER:
                return pos, False
            left = int.from_bytes(header[3:5], "big")
            header.clear()
            if left > _MAX_RECORD_BODY:
                # A forged length: OpenSSL refuses the record from its header, so read now
                # rather than buffer what it announces.
                self._record_left = left
                return pos, True
        end = min(pos + left, len(data), start + _CIPHER_SLICE)
        self._record_left = left - (end - pos)
        return end, not self._record_left

    def read_into(self, buffer: memoryview) -> int:
        """Decrypt into ``buffer``: the bytes written, 0 when nothing more is decrypted now
        (or the peer closed: see :attr:`peer_closed`). Post-handshake messages (session
        tickets, key updates) are handled here; their answers go to :meth:`data_to_send`."""
        try:
            # Into a buffer, read() returns the count (typeshed knows only the bytes form).
            n = cast(int, self._ssl.read(len(buffer), buffer))
        except ssl.SSLWantReadError:
            n = 0
        except ssl.SSLZeroReturnError:  # its close_notify after ours
            n, self.peer_closed = 0, True
        else:
            self.peer_closed = n == 0 and len(buffer) > 0  # 0 into nothing is no close_notify
        if self._outgoing.pending:
            self._drain()
        return n

    def send(self, parts: Iterable[bytes | bytearray | memoryview] = ()) -> None:
        """Encrypt ``parts`` (a record at a time, so the outgoing BIO stays small). After
        :meth:`close` that is our error (:class:`LocalProtocolError`)."""
        write = self._ssl.write
        for part in parts:
            view = memoryview(part)
            if self._closed and view:
                raise LocalProtocolError("data written after our close_notify")
            for start in range(0, len(view), RECORD):
                write(view[start : start + RECORD])
                self._drain()

    def close(self) -> None:
        """Send close_notify (the peer's is not waited for); nothing may be sent after it."""
        self._closed = True
        # SSLWantReadError: waiting for the peer's close_notify; else the session is broken.
        with contextlib.suppress(ssl.SSLError):
            self._ssl.unwrap()
        self._drain()

    def data_to_send(self) -> list[bytes]:
        """The ciphertext produced since the last call."""
        out, self._out = self._out, []
        return out

    def _drain(self) -> None:
        if self._outgoing.pending:
            self._out.append(self._outgoing.read())
