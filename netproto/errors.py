"""Error codes of the wire protocol (PROTOCOL.md §5), one exception class per code.

The server encodes a raised :class:`RequestError` as an error frame; the client rebuilds the
same class from the code, so ``except NotFound`` works on both sides of the wire.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar


class P2PError(Exception):
    """Base of every error this project raises on purpose."""


class ProtocolError(P2PError):
    """The protocol was broken; the subclass says by whom (h11's split)."""


class LocalProtocolError(ProtocolError):
    """*We* broke the protocol: e.g. a request that cannot be encoded or exceeds the frame
    limit. Nothing was sent; the connection is still usable."""


class RemoteProtocolError(ProtocolError):
    """The *other side* broke the protocol: a malformed frame, a reply of the wrong kind, a
    stream header or trailer that is not what PROTOCOL.md says. The connection it came on is
    no longer trusted."""


class RequestError(P2PError):
    """An error that travels on the wire as ``{"code", "message", ...extra}``."""

    code: ClassVar[str] = "INTERNAL"
    #: A frame-level error closes the connection after it is sent (PROTOCOL.md §2).
    closes_connection: ClassVar[bool] = False
    default_message: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None, /, **extra: Any) -> None:
        self.message = message or self.default_message
        self.extra = extra
        super().__init__(self.message)

    def to_wire(self) -> dict[str, Any]:
        """The error map of an error frame."""
        return {**self.extra, "code": self.code, "message": self.message}

    @staticmethod
    def from_wire(error: Any) -> RequestError:
        """Rebuild the typed error from an error map; unknown codes stay generic."""
        if not isinstance(error, dict):
            return BadFrame("error frame without an error map")
        code = error.get("code")
        message = error.get("message")
        cls = ERRORS_BY_CODE.get(code, RequestError) if isinstance(code, str) else RequestError
        extra = {k: v for k, v in error.items() if k not in ("code", "message")}
        exc = cls(message if isinstance(message, str) else None, **extra)
        if cls is RequestError and isinstance(code, str):
            exc.code = code  # type: ignore[misc]
        return exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class BadFrame(RequestError):
    """A frame that cannot be read: not msgpack, not a map, bad envelope."""

    code = "BAD_FRAME"
    closes_connection = True
    default_message = "malformed frame"


class FrameTooLarge(RequestError):
    """A length prefix over ``max_frame`` (or zero)."""

    code = "FRAME_TOO_LARGE"
    closes_connection = True
    default_message = "frame too large"


class UnsupportedVersion(RequestError):
    """A request whose ``v`` this server does not speak."""

    code = "UNSUPPORTED_VERSION"
    default_message = "unsupported protocol version"


class UnknownOp(RequestError):
    """A request for an operation this server does not serve."""

    code = "UNKNOWN_OP"
    default_message = "unknown operation"


class BadRequest(RequestError):
    """A well-framed request whose body is wrong; the message names the field."""

    code = "BAD_REQUEST"
    default_message = "bad request"


class AuthRequired(RequestError):
    """The operation needs a token and none was sent."""

    code = "AUTH_REQUIRED"
    default_message = "this operation needs a token"


class TokenInvalid(RequestError):
    """The token failed verification (signature, claims, header, size)."""

    code = "TOKEN_INVALID"
    default_message = "invalid token"


class TokenExpired(RequestError):
    """The token verified but its ``exp`` has passed."""

    code = "TOKEN_EXPIRED"
    default_message = "token expired"


class AuthFailed(RequestError):
    """Unknown user or wrong password (deliberately indistinguishable)."""

    code = "AUTH_FAILED"
    default_message = "wrong username or password"


class UserExists(RequestError):
    """The username (compared case-insensitively) is taken."""

    code = "USER_EXISTS"
    default_message = "username already registered"


class PasswordTooShort(RequestError):
    """Password under the minimum length in UTF-8 bytes."""

    code = "PASSWORD_TOO_SHORT"
    default_message = "password too short"


class PasswordTooLong(RequestError):
    """Password over bcrypt's 72-byte limit (never truncated silently)."""

    code = "PASSWORD_TOO_LONG"
    default_message = "password too long"


class Forbidden(RequestError):
    """Authenticated, but not allowed to do this."""

    code = "FORBIDDEN"
    default_message = "forbidden"


class NotFound(RequestError):
    """The keyword or file does not exist."""

    code = "NOT_FOUND"
    default_message = "not found"


class InvalidPath(RequestError):
    """A keyword or file name that is not one safe path segment."""

    code = "INVALID_PATH"
    default_message = "invalid path"


class RateLimited(RequestError):
    """Too many attempts; the error carries ``retry_after`` seconds."""

    code = "RATE_LIMITED"
    default_message = "too many attempts, retry later"

    @property
    def retry_after(self) -> float:
        """Seconds to wait before trying again."""
        value = self.extra.get("retry_after", 1)
        return float(value) if isinstance(value, int | float) else 1.0


class Busy(RequestError):
    """A connection or concurrency cap is reached."""

    code = "BUSY"
    default_message = "server busy"


class Timeout(RequestError):
    """A deadline passed (on the server, or waiting for the server)."""

    code = "TIMEOUT"
    default_message = "timed out"


class VersionMismatch(RequestError):
    """A ``sync_delta`` against a listing version the index does not hold (PROTOCOL.md §4.3.1):
    send the whole listing instead."""

    code = "VERSION_MISMATCH"
    default_message = "the index does not hold that version of the listing"


class Internal(RequestError):
    """An unexpected server failure; never carries internal detail."""

    code = "INTERNAL"
    default_message = "internal error"


ERRORS_BY_CODE: dict[str, type[RequestError]] = {
    cls.code: cls
    for cls in (
        BadFrame,
        FrameTooLarge,
        UnsupportedVersion,
        UnknownOp,
        BadRequest,
        AuthRequired,
        TokenInvalid,
        TokenExpired,
        AuthFailed,
        UserExists,
        PasswordTooShort,
        PasswordTooLong,
        Forbidden,
        NotFound,
        InvalidPath,
        RateLimited,
        Busy,
        Timeout,
        VersionMismatch,
        Internal,
    )
}


class ConnectionClosed(P2PError):
    """The other side closed the connection, or it failed (TLS, reset, EOF)."""


class VerificationFailed(P2PError):
    """A downloaded file failed one of the checks of PROTOCOL.md §7; ``check`` names it."""

    def __init__(self, check: str, message: str) -> None:
        self.check = check
        super().__init__(f"{check}: {message}")


@contextlib.contextmanager
def transport_errors(what: str) -> Iterator[None]:
    """Transport failures in the block as :class:`ConnectionClosed` or :class:`Timeout`
    (httpcore's ``map_exceptions``: used where the asyncio layer connects)."""
    try:
        yield
    except TimeoutError as exc:
        raise Timeout(f"{what}: timed out") from exc
    except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
        raise ConnectionClosed(f"{what}: {exc or type(exc).__name__}") from exc
