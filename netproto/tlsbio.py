"""TLS without a socket (PROTOCOL.md §1): an :class:`ssl.SSLObject` over two memory BIOs.

Sans-I/O: ciphertext goes in with :meth:`TLSSession.receive_data`, plaintext comes out into
whatever buffer the caller hands to :meth:`TLSSession.read_into` (the frame buffer, so nothing
is copied between decryption and framing), plaintext goes in with :meth:`TLSSession.send`, and
the ciphertext to put on the wire comes out of :meth:`TLSSession.data_to_send`.

Memory (PROTOCOL.md §6, "Memory per connection"): OpenSSL releases its own record buffers
between records (Python sets ``SSL_MODE_RELEASE_BUFFERS``), but a memory BIO keeps the largest
size it ever held. So ciphertext is fed in, and plaintext encrypted, at most :data:`RECORD`
bytes at a time, each piece drained before the next: an idle session holds a few KiB whatever
went through it.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterable
from typing import Any, Protocol, cast

from cryptography import x509

#: The most plaintext one TLS record carries; ciphertext slices are one record and its head.
RECORD = 16 << 10
_CIPHER_SLICE = RECORD + 512


class Receiver(Protocol):
    """What decrypted bytes go into: :class:`netproto.protocol.ServerProtocol` or
    :class:`netproto.protocol.ClientProtocol` (their frame buffer)."""

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
        self._held: list[bytes] = []
        self.held_bytes = 0
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
            self._drain()
        return self.established

    def peer_certificate(self) -> x509.Certificate | None:
        """The certificate the peer presented in the handshake, if any."""
        der = self._ssl.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None

    def version(self) -> str | None:
        """The negotiated protocol version (``TLSv1.3``)."""
        return self._ssl.version()

    def receive_data(self, data: memoryview, core: Receiver) -> list[Any]:
        """Take ciphertext, advance the handshake, decrypt what follows it straight into
        ``core``'s buffers; return the events the core completed (a record's worth of
        ciphertext at a time, so the incoming BIO stays small). Stops at the peer's
        close_notify (:attr:`peer_closed`)."""
        events: list[Any] = []
        for start in range(0, max(len(data), 1), _CIPHER_SLICE):  # once at least: the hello
            self._incoming.write(data[start : start + _CIPHER_SLICE])
            if not self.handshake():
                continue
            while not self.peer_closed and (n := self.read_into(core.get_buffer(-1))):
                events += core.buffer_updated(n)
        return events

    def read_into(self, buffer: memoryview) -> int:
        """Decrypt into ``buffer``: the bytes written, 0 when nothing more is decrypted now
        (or the peer closed: see :attr:`peer_closed`). Post-handshake messages (session
        tickets, key updates) are handled here; their answers go to :meth:`data_to_send`."""
        try:
            # Into a buffer, read() returns the count (typeshed knows only the bytes form).
            n = cast(int, self._ssl.read(len(buffer), buffer))
        except ssl.SSLWantReadError:
            n = 0
        else:
            self.peer_closed = n == 0
        if self._outgoing.pending:
            self._drain()
        return n

    def hold(self, frame: bytes) -> int:
        """Keep a frame to be encrypted together with the next ones; return the plaintext
        bytes now held."""
        self._held.append(frame)
        self.held_bytes += len(frame)
        return self.held_bytes

    def send(self, parts: Iterable[bytes | bytearray | memoryview] = ()) -> None:
        """Encrypt what is held, then ``parts`` (a record at a time, so the outgoing BIO stays
        small)."""
        if self._held:
            held = self._held[0] if len(self._held) == 1 else b"".join(self._held)
            self.discard()
            parts = (held, *parts)
        write = self._ssl.write
        for part in parts:
            view = memoryview(part)
            for start in range(0, len(view), RECORD):
                write(view[start : start + RECORD])
                self._drain()

    def discard(self) -> None:
        """Forget what is held."""
        self._held.clear()
        self.held_bytes = 0

    def close(self) -> None:
        """Send close_notify (the peer's is not waited for)."""
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
