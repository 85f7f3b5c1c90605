"""Name rules (PROTOCOL.md §4): keywords, file names, usernames, domain names, passwords.

A keyword or file name must be exactly one harmless path segment on every platform a peer
might run on, so the same rules are applied by the index, the serving peer and the downloader.
A value that is not a string at all (or is missing) is a malformed body, not a bad path:
BAD_REQUEST naming the field (PROTOCOL.md §4, §4.7); a string that breaks a rule is
INVALID_PATH.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

from netproto.errors import BadRequest, InvalidPath, PasswordTooLong, PasswordTooShort

MAX_KEYWORD_CHARS = 64
MAX_FILE_NAME_BYTES = 255
MAX_USERNAME = 32
MIN_PASSWORD_BYTES = 8
MAX_PASSWORD_BYTES = 72  # bcrypt's limit; longer passwords are refused, never truncated.
MAX_ADDRESS_BYTES = 253  # the longest DNS name

_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{p}{n}" for p in ("COM", "LPT") for n in [*"123456789", "¹", "²", "³"]]
)
# Control, surrogate, format (zero-width, soft hyphen, BOM, bidi marks) and line/paragraph
# separator characters: invisible or disruptive in a listing, so never part of a name.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Cf", "Zl", "Zp"})
# Bidirectional overrides and invisible marks make a name display as something it is not.
_DECEPTIVE = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Slash look-alikes that NFKC leaves alone (fullwidth forms are caught by normalising).
_SEPARATOR_LOOKALIKES = frozenset(
    "\u2044\u2215\u2216\u2571\u2572\u29f5\u29f8\u29f9\U0001f67c\U0001f67d"
)
_USERNAME = re.compile(r"[a-z0-9._-]{1,32}")
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _check_segment(kind: str, name: object) -> str:
    if type(name) is not str:
        raise BadRequest(f"{kind}: expected a string")
    if name in ("", ".", ".."):
        raise InvalidPath(f"{kind} {name!r} is not a file name")
    if name.startswith("."):
        raise InvalidPath(f"{kind} must not start with '.' (hidden files are never shared)")
    for ch in name:
        if ch in "/\\" or unicodedata.category(ch) in _FORBIDDEN_CATEGORIES or ch in _DECEPTIVE:
            raise InvalidPath(f"{kind} contains a forbidden character {ch!r}")
    folded = unicodedata.normalize("NFKC", name)
    if (
        "/" in folded
        or "\\" in folded
        or folded in (".", "..")
        or not _SEPARATOR_LOOKALIKES.isdisjoint(folded)
    ):
        raise InvalidPath(f"{kind} contains a look-alike of a path separator")
    if name[-1] in ". ":
        raise InvalidPath(f"{kind} must not end with a dot or a space")
    if name.split(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        raise InvalidPath(f"{kind} {name!r} is a reserved device name")
    return name


def check_keyword(keyword: object, field: str = "keyword") -> str:
    """Return ``keyword`` if it is one safe segment of 1–64 characters, else INVALID_PATH.

    Not a string (``None`` for a missing field): BAD_REQUEST naming ``field``.
    """
    name = _check_segment(field, keyword)
    if len(name) > MAX_KEYWORD_CHARS:
        raise InvalidPath(f"{field} longer than {MAX_KEYWORD_CHARS} characters")
    return name


def check_file_name(file_name: object, field: str = "file_name") -> str:
    """Return ``file_name`` if it is one safe segment of 1–255 UTF-8 bytes, else INVALID_PATH.

    Not a string (``None`` for a missing field): BAD_REQUEST naming ``field`` (a sync entry
    and a search hit call it ``filename``, a fetch ``file_name``).
    """
    name = _check_segment(field, file_name)
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
        raise InvalidPath(f"{field} longer than {MAX_FILE_NAME_BYTES} UTF-8 bytes")
    return name


def canonical_username(username: object) -> str:
    """The lower-cased username, or BAD_REQUEST unless it is 1–32 of ``[a-z0-9._-]``."""
    if type(username) is not str or not _USERNAME.fullmatch(username.lower()):
        raise BadRequest("username: 1 to 32 characters of a-z, 0-9, '.', '_' or '-'")
    return username.lower()


def canonical_domain_name(domain_name: object) -> str:
    """The lower-cased DNS host name, or BAD_REQUEST."""
    if type(domain_name) is not str or not 0 < len(domain_name) <= 253:
        raise BadRequest("domain_name: expected a DNS host name of 1 to 253 characters")
    name = domain_name.lower().rstrip(".")
    labels = name.split(".")
    if not name or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise BadRequest("domain_name: expected a DNS host name (labels of a-z, 0-9, '-')")
    if labels[-1].isdigit():
        # An all-numeric last label reads as an IP address, and TLS would then check the
        # certificate's IP addresses (which many certificates share) instead of its name.
        raise BadRequest("domain_name: must be a DNS name, not an IP address")
    return name


def check_address(address: object, field: str = "address") -> str:
    """An advertised address: an IP literal or a DNS name of at most 253 bytes, else BAD_REQUEST.

    Returned canonical: an IP address as Python writes it, a name lower-cased without a
    trailing dot. No spaces, escapes, control or bidi characters can pass: a DNS name is
    labels of ``a-z0-9-`` only, an IP literal digits, hex, dots and colons (no ``%zone``).
    """
    refused = BadRequest(f"{field}: expected an IP address or a DNS name of at most 253 bytes")
    if type(address) is not str or not address.isascii() or not 0 < len(address) <= 253:
        raise refused
    if ":" in address or address.replace(".", "").isdigit():
        if "%" in address:
            raise refused
        try:
            return str(ipaddress.ip_address(address))
        except ValueError:
            raise refused from None
    name = address.lower()
    name = name[:-1] if name.endswith(".") else name
    labels = name.split(".")
    if not name or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise refused
    if labels[-1].isdigit():  # reads as a (malformed) IP address
        raise refused
    return name


def check_password(password: object) -> bytes:
    """The password's UTF-8 bytes, if 8–72 bytes long."""
    if type(password) is not str:
        raise BadRequest("password: expected a string")
    try:
        raw = password.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequest("password: not valid UTF-8") from exc
    if len(raw) < MIN_PASSWORD_BYTES:
        raise PasswordTooShort(f"password must be at least {MIN_PASSWORD_BYTES} UTF-8 bytes")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise PasswordTooLong(f"password must be at most {MAX_PASSWORD_BYTES} UTF-8 bytes")
    if b"\x00" in raw:
        raise BadRequest("password: must not contain NUL")
    return raw
