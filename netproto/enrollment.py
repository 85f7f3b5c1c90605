"""Typed bodies of the enrollment operations (PROTOCOL.md §10): ``ca``, ``enroll``, ``revoked``.

Like :mod:`netproto.operations`, ``from_wire`` validates a decoded map (``BAD_REQUEST`` naming
the field) and ``to_wire`` gives the map to encode; a client parses replies with the same
classes (a malformed reply is the index's fault there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Self

from netproto.errors import BadRequest

#: A DER certificate or request travels as msgpack ``bin`` of at most this many bytes.
MAX_DER = 4096
#: Serials in one ``revoked`` reply (lower-case hex of at most 40 digits each).
MAX_REVOKED = 20_000
_SERIAL = re.compile(r"[0-9a-f]{1,40}")


def _map(value: Any, name: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise BadRequest(f"{name}: expected a map")
    return value


def _der(body: dict[str, Any], name: str) -> bytes:
    value = body.get(name)
    if type(value) is not bytes or not 0 < len(value) <= MAX_DER:
        raise BadRequest(f"{name}: expected 1-{MAX_DER} bytes of DER as msgpack bin")
    return value


def check_serial(value: Any, name: str = "serial") -> str:
    """A certificate serial as it travels: lower-case hex, 1–40 digits."""
    if type(value) is not str or not _SERIAL.fullmatch(value):
        raise BadRequest(f"{name}: expected 1-40 lower-case hex digits")
    return value


@dataclass(frozen=True, slots=True)
class CaReply:
    """Reply of ``ca``: the deployment's CA certificate (DER), to check against a fingerprint."""

    certificate: bytes

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate a ``ca`` reply."""
        return cls(_der(_map(body, "reply"), "certificate"))

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {"certificate": self.certificate}


@dataclass(frozen=True, slots=True)
class EnrollRequest:
    """Body of ``enroll``: the name to be known by and a PKCS#10 request (DER) for it."""

    domain_name: str
    csr: bytes = field(repr=False)

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Self:
        """Validate an ``enroll`` body (the request's content is the handler's to judge)."""
        name = body.get("domain_name")
        if type(name) is not str or not 0 < len(name) <= 63:
            raise BadRequest("domain_name: expected a string of 1-63 characters")
        return cls(name, _der(body, "csr"))

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {"domain_name": self.domain_name, "csr": self.csr}


@dataclass(frozen=True, slots=True)
class EnrollReply:
    """Reply of ``enroll``: the leaf (DER), its expiry, and — for a renewal over mutual TLS —
    fresh tokens of the same session bound to the new certificate (PROTOCOL.md §10)."""

    certificate: bytes
    expires_at: int
    token: str | None = field(default=None, repr=False)
    peer_token: str | None = field(default=None, repr=False)
    #: When the tokens expire (Unix seconds); 0 without tokens.
    token_expires_at: int = 0

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate an ``enroll`` reply."""
        body = _map(body, "reply")
        times = []
        for name in ("expires_at", "token_expires_at"):
            value = body.get(name, 0)
            if type(value) is not int or not 0 <= value < 2**63:
                raise BadRequest(f"{name}: expected an integer")
            times.append(value)
        tokens: list[str | None] = []
        for name in ("token", "peer_token"):
            value = body.get(name)
            if value is not None and (type(value) is not str or len(value) > 8192):
                raise BadRequest(f"{name}: expected a string")
            tokens.append(value)
        if (tokens[0] is None) != (tokens[1] is None):
            raise BadRequest("token and peer_token: both or neither")
        return cls(_der(body, "certificate"), times[0], tokens[0], tokens[1], times[1])

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        body: dict[str, Any] = {"certificate": self.certificate, "expires_at": self.expires_at}
        if self.token is not None and self.peer_token is not None:
            body["token"] = self.token
            body["peer_token"] = self.peer_token
            body["token_expires_at"] = self.token_expires_at
        return body


@dataclass(frozen=True, slots=True)
class RevokedRequest:
    """Body of ``revoked``: the page after serial ``after`` (the first page without it)."""

    after: str | None = None

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Self:
        """Validate a ``revoked`` body (PROTOCOL.md §10)."""
        after = body.get("after")
        return cls(None if after is None else check_serial(after, "after"))

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        return {} if self.after is None else {"after": self.after}


@dataclass(frozen=True, slots=True)
class RevokedReply:
    """Reply of ``revoked``: a page of serials revoked and not yet expired, lower-case hex in
    ascending order; ``more`` when further pages follow (ask again ``after`` the last)."""

    serials: tuple[str, ...]
    more: bool = False

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate a ``revoked`` reply."""
        body = _map(body, "reply")
        serials = body.get("serials")
        if type(serials) is not list or len(serials) > MAX_REVOKED:
            raise BadRequest(f"serials: expected an array of at most {MAX_REVOKED}")
        more = body.get("more", False)
        if type(more) is not bool or (more and not serials):
            raise BadRequest("more: expected a boolean, true only after a serial")
        return cls(tuple(check_serial(s, "serials") for s in serials), more)

    def to_wire(self) -> dict[str, Any]:
        """The body map."""
        body: dict[str, Any] = {"serials": list(self.serials)}
        if self.more:
            body["more"] = True
        return body
