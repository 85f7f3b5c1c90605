"""The peer's own errors, all in the project's :class:`~netproto.errors.P2PError` tree.

Three families, each raised by one layer and chained to its cause (``raise ... from exc``):

- :class:`SessionError`: the peer's session with the index (reach it, trust it, log in,
  publish the share). :meth:`peerd.daemon.PeerDaemon.start` turns one into a
  :class:`~runner.StartupError`; later (a search, the keep-alive loop) it stays itself,
  so the shell can tell an untrusted index from an unreachable one.
- :class:`ShareError`: the share's storage refusing a name or not having it, or a folder or
  file in it that is not this user's own (:class:`UnsafeLocalFile`); the peer server's
  handlers translate these into wire errors (PROTOCOL.md §5).
- :class:`DownloadError` and :class:`DownloadRefused`: a download that could not be done, or
  that failed a check of PROTOCOL.md §7.
"""

from __future__ import annotations

from pathlib import Path

from netproto.errors import InvalidPath, NotFound, P2PError, RequestError, VerificationFailed
from peerd.verify import CheckOutcome

# --- the session with the index -------------------------------------------------------------


class SessionError(P2PError):
    """The peer's session with the index failed; the subclass says how."""


class IndexUnavailable(SessionError):
    """The index cannot be reached, or the connection to it was lost."""


class IndexUntrusted(SessionError):
    """The index presented a certificate we do not trust (not from our CA, not for its name,
    or not usable to check tokens)."""


class RegistrationRefused(SessionError):
    """The index refused to register the user."""


class LoginRefused(SessionError):
    """The index refused the login (wrong username or password, too many attempts, ...)."""


class DomainRefused(SessionError):
    """The index refuses this peer's domain name for this user (PROTOCOL.md §4.5)."""


class ShareTooLarge(SessionError):
    """The share cannot be described to the index within the protocol's limits (§4.3)."""


# --- the share ------------------------------------------------------------------------------


class ShareError(P2PError):
    """The share refused a request; the subclass says why."""


class ShareUnavailable(ShareError):
    """The share folder itself cannot be opened."""


class NotShared(ShareError):
    """No such keyword folder, or no such regular file in it."""


class InvalidName(ShareError):
    """A keyword or file name that is not one safe path segment (PROTOCOL.md §4.7)."""


class UnsafeLocalFile(ShareError):
    """A share folder, partial file or key that is not this user's own, or that others may
    write (docs/design.md §5): nothing is read from it, written to it, or served from it."""


# --- downloads ------------------------------------------------------------------------------


class DownloadError(P2PError):
    """A download that could not be done (not a verification failure)."""


class NotEnoughRoom(DownloadError):
    """The file would not fit: over ``--max-download-size``, or over the free space of the
    share's file system less its margin."""


class FileConflict(DownloadError):
    """A different file already exists under the name; ``overwrite=True`` replaces it."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(message)


class DownloadRefused(VerificationFailed):
    """A download refused by a check; carries every check's outcome for display."""

    def __init__(
        self,
        check: str,
        message: str,
        checks: tuple[CheckOutcome, ...] = (),
        *,
        partial_kept: bool = False,
    ) -> None:
        super().__init__(check, message)
        self.checks = checks
        #: True when a resumable partial file was kept (the connection dropped mid-transfer).
        self.partial_kept = partial_kept


__all__ = [
    "DomainRefused",
    "DownloadError",
    "DownloadRefused",
    "FileConflict",
    "IndexUnavailable",
    "IndexUntrusted",
    "InvalidName",
    "LoginRefused",
    "NotEnoughRoom",
    "NotShared",
    "RegistrationRefused",
    "SessionError",
    "ShareError",
    "ShareTooLarge",
    "ShareUnavailable",
    "UnsafeLocalFile",
]


def wire_error(exc: ShareError) -> RequestError:
    """The wire error (PROTOCOL.md §5) that answers a refusal of the share store."""
    if isinstance(exc, InvalidName):
        return InvalidPath(str(exc))
    return NotFound(str(exc))
