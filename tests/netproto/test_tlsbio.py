"""The sans-I/O TLS layer (netproto/tlsbio.py): two sessions talk through memory alone.

Ciphertext goes from one session to the other whole and byte by byte; plaintext arrives in
the receiving core's frame buffer; what a session buffers stays a record's worth.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from netproto.framing import OWN_BUFFER_AT
from netproto.messages import Request
from netproto.protocol import ClientProtocol, ServerProtocol
from netproto.tls import certificate_dns_names
from netproto.tlsbio import RECORD, TLSSession


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
        events += to.receive_data(memoryview(piece), core)
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
    client.hold(frames[0])
    assert client.held_bytes == len(frames[0])
    client.send((frames[1], big))
    assert client.held_bytes == 0
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


def test_a_server_the_client_does_not_trust_fails_the_handshake(pki: Any) -> None:
    client = TLSSession(pki.client_ctx(), server_side=False, server_hostname="peer1")
    server = TLSSession(pki.server_ctx("indexd"), server_side=True)
    client.handshake()
    server.receive_data(memoryview(b"".join(client.data_to_send())), ServerProtocol())
    with pytest.raises(ssl.SSLCertVerificationError):
        client.receive_data(memoryview(b"".join(server.data_to_send())), ClientProtocol())
