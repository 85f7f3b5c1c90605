"""The sans-I/O TLS layer (netproto/tlsbio.py): two sessions talk through memory alone.

Ciphertext goes from one session to the other whole and byte by byte; plaintext arrives in
the receiving core's frame buffer; what a session buffers stays a record's worth.
"""

from __future__ import annotations

import bisect
import random
import ssl
from dataclasses import dataclass
from typing import Any

import pytest

from netproto.errors import LocalProtocolError
from netproto.framing import OWN_BUFFER_AT
from netproto.messages import Request
from netproto.protocol import ClientProtocol, ServerProtocol, Unreadable
from netproto.tls import certificate_dns_names, server_context
from netproto.tlsbio import _CIPHER_SLICE, RECORD, TLSSession


def _pair(pki: Any, client_cert: str | None = None) -> tuple[TLSSession, TLSSession]:
    server = TLSSession(pki.server_ctx("indexd"), server_side=True)
    client = TLSSession(pki.client_ctx(client_cert), server_side=False, server_hostname="indexd")
    return client, server


def _deliver(data: list[bytes], to: TLSSession, core: Any, *, bytewise: bool) -> list[Any]:
    """Feed ciphertext to ``to`` whole or one byte at a time; the core's events."""
    events: list[Any] = []
    joined = b"".join(data)
    pieces = [joined[i : i + 1] for i in range(len(joined))] if bytewise else [joined]
    for piece in pieces:
        events += to.receive_data(memoryview(piece), core)[0]
    return events


def _handshake(client: TLSSession, server: TLSSession, *, bytewise: bool) -> None:
    cores = {id(client): ClientProtocol(), id(server): ServerProtocol()}
    assert not client.handshake()
    sender, receiver = client, server
    for _ in range(6):  # hello, the server's flight, the client's finished, tickets
        _deliver(sender.data_to_send(), receiver, cores[id(receiver)], bytewise=bytewise)
        sender, receiver = receiver, sender
    assert client.established and server.established


@pytest.mark.parametrize("bytewise", [False, True])
def test_the_handshake_completes_in_memory_and_each_side_sees_the_others_certificate(
    pki: Any, bytewise: bool
) -> None:
    client, server = _pair(pki, "peer1")
    _handshake(client, server, bytewise=bytewise)
    server_cert, client_cert = client.peer_certificate(), server.peer_certificate()
    assert server_cert is not None and "indexd" in certificate_dns_names(server_cert)
    assert client_cert is not None and "peer1" in certificate_dns_names(client_cert)
    assert client.version() == server.version() == "TLSv1.3"


def test_a_client_without_a_certificate_gives_the_server_none(pki: Any) -> None:
    client, server = _pair(pki)
    _handshake(client, server, bytewise=False)
    assert server.peer_certificate() is None


@pytest.mark.parametrize("bytewise", [False, True])
def test_frames_sent_arrive_as_the_receiving_cores_events(pki: Any, bytewise: bool) -> None:
    client, server = _pair(pki)
    _handshake(client, server, bytewise=False)
    protocol = ClientProtocol()
    frames = [protocol.encode_request(i, "search", {"keyword": f"k{i}"}, None) for i in (1, 2)]
    big = protocol.encode_request(3, "search", {"keyword": "x" * (OWN_BUFFER_AT + 10)}, None)
    client.send((frames[0], frames[1], big))
    events = _deliver(client.data_to_send(), server, ServerProtocol(), bytewise=bytewise)
    assert [(e.id, len(e.body["keyword"])) for e in events if isinstance(e, Request)] == [
        (1, 2),
        (2, 2),
        (3, OWN_BUFFER_AT + 10),
    ]


def test_a_large_write_leaves_as_record_sized_pieces(pki: Any) -> None:
    # Each piece is drained before the next is encrypted, so the outgoing memory BIO never
    # holds more than one record (it keeps the largest size it ever held).
    client, server = _pair(pki)
    _handshake(client, server, bytewise=False)
    client.send((b"\0" * (8 * RECORD + 5),))
    pieces = client.data_to_send()
    assert len(pieces) == 9
    assert all(len(p) <= RECORD + 256 for p in pieces)


def test_close_sends_close_notify_and_the_peer_sees_it(pki: Any) -> None:
    client, server = _pair(pki)
    _handshake(client, server, bytewise=False)
    server.close()
    assert not client.peer_closed
    assert _deliver(server.data_to_send(), client, ClientProtocol(), bytewise=False) == []
    assert client.peer_closed
    assert client.read_into(memoryview(bytearray(10))) == 0


def test_a_tampered_record_is_an_ssl_error(pki: Any) -> None:
    client, server = _pair(pki)
    _handshake(client, server, bytewise=False)
    client.send((ClientProtocol().encode_request(1, "search", {"keyword": "k"}, None),))
    record = bytearray(b"".join(client.data_to_send()))
    record[-1] ^= 1
    with pytest.raises(ssl.SSLError):
        server.receive_data(memoryview(record), ServerProtocol())


def test_a_server_certificate_for_another_name_fails_the_handshake(pki: Any) -> None:
    client = TLSSession(pki.client_ctx(), server_side=False, server_hostname="peer1")
    server = TLSSession(pki.server_ctx("indexd"), server_side=True)
    client.handshake()
    server.receive_data(memoryview(b"".join(client.data_to_send())), ServerProtocol())
    with pytest.raises(ssl.SSLCertVerificationError):
        client.receive_data(memoryview(b"".join(server.data_to_send())), ClientProtocol())


def test_a_server_signed_by_another_ca_is_not_trusted(pki: Any) -> None:
    foreign = server_context(
        pki.cert("indexd", other=True),
        pki.key("indexd", other=True),
        pki.ca,
        require_client_cert=False,
    )
    client = TLSSession(pki.client_ctx(), server_side=False, server_hostname="indexd")
    server = TLSSession(foreign, server_side=True)
    client.handshake()
    server.receive_data(memoryview(b"".join(client.data_to_send())), ServerProtocol())
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        client.receive_data(memoryview(b"".join(server.data_to_send())), ClientProtocol())


@pytest.mark.parametrize("other", [None, True], ids=["no-certificate", "other-ca"])
def test_a_server_requiring_a_client_certificate_refuses_and_sends_the_alert_saying_why(
    pki: Any, other: bool | None
) -> None:
    # None: no certificate at all; True: one signed by another CA. The server's alert must
    # leave (TLS 1.3: the client finished its side and learns of the refusal from it alone).
    ctx = pki.client_ctx() if other is None else pki.client_ctx("peer1", other=True)
    client = TLSSession(ctx, server_side=False, server_hostname="indexd")
    server = TLSSession(pki.server_ctx("indexd", require_client_cert=True), server_side=True)
    client.handshake()
    server.receive_data(memoryview(b"".join(client.data_to_send())), ServerProtocol())
    client.receive_data(memoryview(b"".join(server.data_to_send())), ClientProtocol())
    assert client.established  # its side is done before the server has looked
    with pytest.raises(ssl.SSLError):
        server.receive_data(memoryview(b"".join(client.data_to_send())), ServerProtocol())
    alert = server.data_to_send()
    assert alert, "the alert was not sent"
    why = "certificate required" if other is None else "unknown ca"
    with pytest.raises(ssl.SSLError, match=why):
        client.receive_data(memoryview(b"".join(alert)), ClientProtocol())


def test_a_request_in_the_same_flight_as_the_clients_finished_is_read(pki: Any) -> None:
    client, server = _pair(pki)
    client.handshake()
    server.receive_data(memoryview(b"".join(client.data_to_send())), ServerProtocol())
    client.receive_data(memoryview(b"".join(server.data_to_send())), ClientProtocol())
    assert client.established and not server.established
    client.send((ClientProtocol().encode_request(1, "search", {"keyword": "k"}, None),))
    events, plaintext = server.receive_data(
        memoryview(b"".join(client.data_to_send())), ServerProtocol()
    )
    assert server.established
    assert [(e.id, e.body) for e in events] == [(1, {"keyword": "k"})]
    assert plaintext > 0


def test_handshake_messages_decrypt_no_plaintext_and_data_counts_its_bytes(pki: Any) -> None:
    client, server = _pair(pki)
    client.handshake()
    server.receive_data(memoryview(b"".join(client.data_to_send())), ServerProtocol())
    flight = memoryview(b"".join(server.data_to_send()))
    assert client.receive_data(flight, ClientProtocol()) == ([], 0)
    _, plaintext = server.receive_data(
        memoryview(b"".join(client.data_to_send())), ServerProtocol()
    )
    assert plaintext == 0  # the client's Finished alone: no activity on the connection
    frame = ClientProtocol().encode_request(1, "search", {"keyword": "k"}, None)
    client.send((frame,))
    events, plaintext = server.receive_data(
        memoryview(b"".join(client.data_to_send())), ServerProtocol()
    )
    assert plaintext == len(frame) and len(events) == 1


@pytest.mark.parametrize("prefix", [bytes(4), (1 << 30).to_bytes(4, "big")], ids=["0", "1GiB"])
def test_a_refused_frame_length_stops_decryption_with_one_unreadable(
    pki: Any, prefix: bytes
) -> None:
    # One record ending in a refused length, then 240 KiB more in the same read: decrypting
    # the rest would cost one event per byte that fits after it (PROTOCOL.md §2).
    client, server = _pair(pki)
    _handshake(client, server, bytewise=False)
    frame = ClientProtocol().encode_request(1, "search", {"keyword": "k"}, None)
    client.send((frame + prefix,))
    client.send((b"\1" * (240 << 10),))
    events, plaintext = server.receive_data(
        memoryview(b"".join(client.data_to_send())), ServerProtocol()
    )
    assert [type(e) for e in events] == [Request, Unreadable]
    assert plaintext < 2 * RECORD  # the rest of the read was never decrypted


def test_a_refused_length_filling_the_buffer_is_not_taken_for_close_notify(pki: Any) -> None:
    client, server = _pair(pki)
    _handshake(client, server, bytewise=False)
    client.send((bytes(RECORD),))  # a zero length, then zeros to the end of the record
    core = ServerProtocol()
    events, _ = server.receive_data(memoryview(b"".join(client.data_to_send())), core)
    assert [type(e) for e in events] == [Unreadable]
    assert not server.peer_closed
    client.send((bytes(RECORD),))
    assert server.receive_data(memoryview(b"".join(client.data_to_send())), core) == ([], 0)
    assert not server.peer_closed


def test_data_sent_after_our_close_notify_is_a_local_error(pki: Any) -> None:
    client, server = _pair(pki)
    _handshake(client, server, bytewise=False)
    client.close()
    client.send(())  # nothing to send is fine
    with pytest.raises(LocalProtocolError):
        client.send((b"late",))


# --- ciphertext cut at record ends ------------------------------------------------------------
#
# The receiving session feeds its incoming BIO a record at a time, from each record's 5-byte
# header, and reads a record once it is whole; these tests cut a stream of many records at
# random (1 and 3 bytes, 4 bytes across a header, exact records, 100 KiB) and watch the BIO
# and the reads.


def _record_ends(stream: bytes) -> list[int]:
    """Where each TLS record of ``stream`` ends, from its header (type, version, length)."""
    ends, pos = [], 0
    while pos < len(stream):
        pos += 5 + int.from_bytes(stream[pos + 3 : pos + 5], "big")
        ends.append(pos)
    assert pos == len(stream), "the stream ends inside a record"
    return ends


def _cut(stream: bytes, ends: list[int], rng: random.Random) -> list[memoryview]:
    """``stream`` in non-empty pieces of random kinds: 1 byte, 3 bytes, 4 bytes across the
    next record's header (or its boundary), exactly to the end of the record going on,
    100 KiB, anything up to 40 KiB."""
    view, pieces, pos = memoryview(stream), [], 0
    while pos < len(stream):
        record_end = ends[bisect.bisect_right(ends, pos)]
        kind = rng.choice(("1", "3", "header", "record", "100KiB", "any"))
        if kind == "header":
            split = record_end + rng.randint(-3, 4)
            if pos < split < len(stream):
                pieces.append(view[pos:split])
                pos = split
            end = pos + 4
        elif kind == "record":
            end = record_end
        else:
            end = pos + {"1": 1, "3": 3, "100KiB": 100 << 10}.get(kind, rng.randrange(1, 40_000))
        end = min(end, len(stream))
        pieces.append(view[pos:end])
        pos = end
    return pieces


class _Sink:
    """A receiver whose buffer always has room for a whole record's plaintext."""

    accepting = True

    def __init__(self) -> None:
        self.received = bytearray()
        self._buffer = bytearray(2 * RECORD)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        return memoryview(self._buffer)

    def buffer_updated(self, nbytes: int) -> list[Any]:
        self.received += self._buffer[:nbytes]
        return []


@dataclass
class _Delivery:
    """What the receiving session did with a stream delivered in pieces."""

    events: list[Any]
    #: After each receive_data call: (bytes the incoming BIO held, bytes of the record still
    #: arriving that were delivered).
    held: list[tuple[int, int]]
    #: What each read (TLSSession.read_into, one SSLObject.read) returned.
    reads: list[int]
    records: int
    calls: int


def _deliver_cut(
    stream: bytes,
    to: TLSSession,
    core: Any,
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
) -> _Delivery:
    """Deliver ``stream`` to ``to`` in random pieces (:func:`_cut`), counting its reads."""
    ends = _record_ends(stream)
    pieces = _cut(stream, ends, rng)
    reads: list[int] = []
    read_into = to.read_into

    def counted(buffer: memoryview) -> int:
        reads.append(read_into(buffer))
        return reads[-1]

    monkeypatch.setattr(to, "read_into", counted)  # receive_data reads through it
    events: list[Any] = []
    held: list[tuple[int, int]] = []
    fed = 0
    for piece in pieces:
        events += to.receive_data(piece, core)[0]
        fed += len(piece)
        arriving = fed - max((end for end in ends if end <= fed), default=0)
        held.append((to._incoming.pending, arriving))
    return _Delivery(events, held, reads, len(ends), len(pieces))


def _requests_sent(client: TLSSession, rng: random.Random) -> tuple[bytes, list[int]]:
    """40 requests sent by ``client``: mostly small, some of a few records, two of 300 KiB
    (a buffer of their own, OWN_BUFFER_AT); the ciphertext and each one's keyword length."""
    sizes = [rng.choice((1, 40, 1000, 9000, 20_000)) for _ in range(40)]
    sizes[rng.randrange(20)] = sizes[rng.randrange(20, 40)] = 300 << 10
    protocol = ClientProtocol()
    client.send(
        protocol.encode_request(rid, "search", {"keyword": "k" * n}, None)
        for rid, n in enumerate(sizes, 1)
    )
    return b"".join(client.data_to_send()), sizes


SEEDS = pytest.mark.parametrize("seed", range(8))


def _requests_delivered_cut(
    pki: Any, monkeypatch: pytest.MonkeyPatch, seed: int
) -> tuple[_Delivery, list[int]]:
    """:func:`_requests_sent` by a client, delivered to a server in random pieces; what the
    server did, and each request's keyword length."""
    rng = random.Random(seed)
    client, server = _pair(pki)
    _handshake(client, server, bytewise=False)
    stream, sizes = _requests_sent(client, rng)
    return _deliver_cut(stream, server, ServerProtocol(), rng, monkeypatch), sizes


@SEEDS
def test_a_stream_cut_anywhere_decrypts_to_exactly_the_frames_sent(
    pki: Any, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    done, sizes = _requests_delivered_cut(pki, monkeypatch, seed)
    assert all(isinstance(e, Request) for e in done.events)
    assert [(e.id, e.body["keyword"]) for e in done.events] == [
        (rid, "k" * n) for rid, n in enumerate(sizes, 1)
    ]


@SEEDS
def test_after_each_call_the_incoming_bio_holds_only_the_record_still_arriving(
    pki: Any, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    # Every whole record was read, so what stays is the part delivered of the next one, and
    # never more than a slice (the BIO keeps the largest size it ever held: PROTOCOL.md §6).
    done, _ = _requests_delivered_cut(pki, monkeypatch, seed)
    assert [(p, a) for p, a in done.held if p > min(a, _CIPHER_SLICE)] == []
    assert done.held[-1] == (0, 0)


@SEEDS
def test_reads_are_at_most_one_per_record_and_one_per_call(
    pki: Any, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    done, _ = _requests_delivered_cut(pki, monkeypatch, seed)
    assert len(done.reads) <= done.records + done.calls


@SEEDS
def test_a_record_is_decrypted_by_one_read_once_whole_and_no_read_finds_nothing(
    pki: Any, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    # With room for a whole record's plaintext in the receiver, a read per record exactly:
    # none on half a record (it would find nothing, and let go of the GIL for it).
    rng = random.Random(seed)
    client, server = _pair(pki)
    _handshake(client, server, bytewise=False)
    sent = rng.randbytes(rng.randrange(300 << 10, 400 << 10))
    parts, pos = [], 0
    while pos < len(sent):
        step = rng.choice((1, 100, RECORD, rng.randrange(1, 3 * RECORD)))
        parts.append(sent[pos : pos + step])
        pos += step
    client.send(parts)
    sink = _Sink()
    done = _deliver_cut(b"".join(client.data_to_send()), server, sink, rng, monkeypatch)
    assert sink.received == sent
    assert 0 not in done.reads
    assert len(done.reads) == done.records


def _feed_until_error(
    session: TLSSession, data: bytes, piece: int
) -> tuple[ssl.SSLError | None, int]:
    """Feed ``data`` ``piece`` bytes at a time until ``session`` raises; the error (None if
    it never did) and the most its incoming BIO held after any call."""
    most = 0
    for start in range(0, len(data), piece):
        try:
            session.receive_data(memoryview(data)[start : start + piece], ServerProtocol())
        except ssl.SSLError as exc:
            return exc, max(most, session._incoming.pending)
        most = max(most, session._incoming.pending)
    return None, most


@pytest.mark.parametrize("piece", [1 << 10, 4 << 10, 0xFFFF + 5], ids=["1KiB", "4KiB", "whole"])
@pytest.mark.parametrize("length", [RECORD + 257, 0xFFFF], ids=["just-over-tls13", "0xFFFF"])
def test_a_forged_record_length_is_an_ssl_error_before_the_bio_holds_more_than_a_slice(
    pki: Any, piece: int, length: int
) -> None:
    # A TLS 1.3 record is at most RECORD + 256 bytes after its header: a header announcing
    # more is forged, and must not make the session buffer what it announces before failing.
    client, server = _pair(pki)
    _handshake(client, server, bytewise=False)
    forged = b"\x17\x03\x03" + length.to_bytes(2, "big") + bytes(length)
    error, most = _feed_until_error(server, forged, piece)
    assert isinstance(error, ssl.SSLError)
    assert most <= _CIPHER_SLICE
