"""netproto.names: keywords, file names, usernames, domain names, passwords (PROTOCOL.md §4.7)."""

from __future__ import annotations

import pytest

from netproto.errors import BadRequest, InvalidPath, PasswordTooLong, PasswordTooShort
from netproto.names import (
    canonical_domain_name,
    canonical_username,
    check_address,
    check_file_name,
    check_keyword,
    check_password,
)

# Names refused as keywords and as file names alike.
BAD_SEGMENTS = {
    "empty": "",
    "dot": ".",
    "dot dot": "..",
    "slash": "a/b",
    "leading slash": "/etc",
    "backslash": "a\\b",
    "NUL": "a\x00b",
    "newline": "a\nb",
    "tab": "a\tb",
    "escape": "a\x1b[31mb",
    "DEL": "a\x7fb",
    "C1 control": "a\x85b",
    "lone surrogate": "a\ud800b",
    "leading dot": ".hidden",
    "trailing dot": "notes.",
    "trailing space": "notes ",
    "CON": "CON",
    "con.txt": "con.txt",
    "nul with extension": "nul.tar.gz",
    "aux lower case": "aux",
    "PRN": "PRN",
    "LPT1": "LPT1",
    "com9 with extension": "com9.log",
    "COM superscript one": "COM\u00b9",
    "device name before a space": "CON .txt",
    "CONIN$": "CONIN$",
    "division slash": "a\u2215b",
    "fraction slash": "a\u2044b",
    "big solidus": "a\u29f8b",
    "set minus (backslash look-alike)": "a\u2216b",
    "fullwidth solidus": "a\uff0fb",
    "fullwidth reverse solidus": "a\uff3cb",
    "small reverse solidus": "a\ufe68b",
    "one dot leader pair": "\u2024\u2024",
    "fullwidth dots": "\uff0e\uff0e",
    "bidi right-to-left override": "cod\u202eexe.txt",
    "bidi isolate": "a\u2067b",
    "left-to-right mark": "a\u200eb",
}
# Not a string at all (None is how a missing field arrives): a malformed body, not a bad path.
NOT_STRINGS = {"missing": None, "bytes": b"bytes", "int": 7, "list": ["a"], "map": {"a": 1}}


@pytest.mark.parametrize("name", BAD_SEGMENTS.values(), ids=BAD_SEGMENTS.keys())
def test_bad_keyword_is_invalid_path(name: object) -> None:
    with pytest.raises(InvalidPath):
        check_keyword(name)


@pytest.mark.parametrize("name", BAD_SEGMENTS.values(), ids=BAD_SEGMENTS.keys())
def test_bad_file_name_is_invalid_path(name: object) -> None:
    with pytest.raises(InvalidPath):
        check_file_name(name)


@pytest.mark.parametrize("value", NOT_STRINGS.values(), ids=NOT_STRINGS.keys())
def test_a_keyword_that_is_not_a_string_is_bad_request_naming_the_field(value: object) -> None:
    with pytest.raises(BadRequest, match=r"^keyword: expected a string$"):
        check_keyword(value)


@pytest.mark.parametrize("value", NOT_STRINGS.values(), ids=NOT_STRINGS.keys())
def test_a_file_name_that_is_not_a_string_is_bad_request_naming_the_field(value: object) -> None:
    with pytest.raises(BadRequest, match=r"^file_name: expected a string$"):
        check_file_name(value)


def test_the_field_name_is_the_callers() -> None:
    with pytest.raises(BadRequest, match=r"^filename: expected a string$"):
        check_file_name(None, "filename")
    with pytest.raises(InvalidPath, match=r"^filename must not start with '\.'"):
        check_file_name(".hidden", "filename")


@pytest.mark.parametrize(
    "name",
    [
        "koala",
        "Koala Photos",
        "report-2024_v2.final.pdf",
        "console",
        "CONSOLE.txt",
        "com10",
        "lpt",
        "naïve café",
        "日本語のファイル",
        "x\u2025y",  # a two-dot leader inside a name is not a separator
        "a b",
    ],
)
def test_ordinary_names_are_accepted_unchanged(name: str) -> None:
    assert check_keyword(name) == name
    assert check_file_name(name) == name


def test_keyword_of_64_characters_is_accepted() -> None:
    assert check_keyword("é" * 64) == "é" * 64


def test_keyword_of_65_characters_is_invalid_path() -> None:
    with pytest.raises(InvalidPath):
        check_keyword("k" * 65)


@pytest.mark.parametrize(
    "name",
    ["f" * 255, "é" * 127 + "f", "€" * 85, "😀" * 63 + "abc"],
    ids=["ascii", "two-byte", "three-byte", "four-byte"],
)
def test_file_name_of_255_utf8_bytes_is_accepted(name: str) -> None:
    assert len(name.encode()) == 255
    assert check_file_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["f" * 256, "é" * 128, "€" * 85 + "f", "😀" * 64],
    ids=["ascii", "two-byte", "three-byte", "four-byte"],
)
def test_file_name_of_256_utf8_bytes_is_invalid_path(name: str) -> None:
    assert len(name.encode()) == 256
    with pytest.raises(InvalidPath):
        check_file_name(name)


def test_keyword_limit_counts_characters_not_bytes() -> None:
    # 64 four-byte characters: 256 UTF-8 bytes, still a valid keyword.
    assert check_keyword("😀" * 64) == "😀" * 64


# --- usernames -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,canonical",
    [
        ("alice", "alice"),
        ("Alice", "alice"),
        ("BOB.smith_2-x", "bob.smith_2-x"),
        ("a" * 32, "a" * 32),
    ],
)
def test_username_is_case_folded(raw: str, canonical: str) -> None:
    assert canonical_username(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    ["", "a" * 33, "al ice", "al/ice", "alice!", "ali\u0130", "\uff41lice", "al\x00ice", 7, None],
    ids=[
        "empty",
        "33 chars",
        "space",
        "slash",
        "bang",
        "dotted capital I",
        "fullwidth a",
        "NUL",
        "int",
        "None",
    ],
)
def test_bad_username_is_bad_request(raw: object) -> None:
    with pytest.raises(BadRequest):
        canonical_username(raw)


# --- domain names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,canonical",
    [("peer1", "peer1"), ("Peer1.Example.ORG", "peer1.example.org"), ("peer1.", "peer1")],
)
def test_domain_name_is_lower_cased(raw: str, canonical: str) -> None:
    assert canonical_domain_name(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    ["", ".", "-peer", "peer-", "pe_er", "a..b", "a" * 64, "a." * 127 + "a", 12],
    ids=[
        "empty",
        "dot",
        "leading hyphen",
        "trailing hyphen",
        "underscore",
        "empty label",
        "64-char label",
        "255 chars",
        "int",
    ],
)
def test_bad_domain_name_is_bad_request(raw: object) -> None:
    with pytest.raises(BadRequest):
        canonical_domain_name(raw)


# --- passwords -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    ["p" * 8, "é" * 4, "p" * 72, "€" * 24, "😀" * 18],
    ids=[
        "8 ascii",
        "8 bytes of 2-byte chars",
        "72 ascii",
        "72 bytes of 3-byte chars",
        "72 bytes of 4-byte chars",
    ],
)
def test_password_of_8_to_72_utf8_bytes_is_accepted(password: str) -> None:
    assert check_password(password) == password.encode()


@pytest.mark.parametrize(
    "password", ["p" * 7, "é" * 3 + "p", ""], ids=["7 ascii", "7 bytes multibyte", "empty"]
)
def test_password_under_8_utf8_bytes_is_too_short(password: str) -> None:
    with pytest.raises(PasswordTooShort):
        check_password(password)


@pytest.mark.parametrize(
    "password", ["p" * 73, "€" * 24 + "p", "é" * 37], ids=["73 ascii", "73 bytes", "74 bytes"]
)
def test_password_over_72_utf8_bytes_is_too_long(password: str) -> None:
    with pytest.raises(PasswordTooLong):
        check_password(password)


@pytest.mark.parametrize(
    "password", ["pass\x00word", "password\ud800", 12345678], ids=["NUL", "lone surrogate", "int"]
)
def test_unusable_password_is_bad_request(password: object) -> None:
    with pytest.raises(BadRequest):
        check_password(password)


@pytest.mark.parametrize("name", ["127.0.0.1", "10.1.2.3", "peer.123", "1"])
def test_domain_name_that_reads_as_an_ip_address_is_refused(name: str) -> None:
    with pytest.raises(BadRequest):
        canonical_domain_name(name)


# --- advertised addresses (PROTOCOL.md §4.7) ----------------------------------------------

GOOD_ADDRESSES = {
    "ipv4": ("192.0.2.7", "192.0.2.7"),
    "ipv6": ("2001:DB8:0:0::7", "2001:db8::7"),
    "ipv4-mapped": ("::ffff:192.0.2.7", "::ffff:c000:207"),
    "name": ("Peer1.Example.org", "peer1.example.org"),
    "trailing dot": ("peer1.example.org.", "peer1.example.org"),
    "253 bytes": ("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61, None),
}
BAD_ADDRESSES = {
    "empty": "",
    "254 bytes": "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 62,
    "space": "peer 1.example",
    "tab": "peer1\texample",
    "newline": "peer1\n",
    "escape": "\x1b[31mpeer1",
    "percent escape": "peer1%2e",
    "backslash": "peer1\\x",
    "bidi override": "\u202epeer1",
    "bidi isolate": "peer1\u2066",
    "zero width": "peer\u200b1",
    "non-ascii": "p\u00e9er1.example",
    "ipv6 zone": "fe80::1%eth0",
    "bracketed": "[::1]",
    "bad ipv4": "10.0.0.256",
    "numeric tld": "peer1.123",
    "label too long": "a" * 64 + ".example",
    "leading hyphen": "-peer1.example",
    "empty label": "peer1..example",
    "url": "https://peer1.example",
    "port": "peer1.example:7001",
    "not a string": 7001,
}


@pytest.mark.parametrize("address,canonical", GOOD_ADDRESSES.values(), ids=GOOD_ADDRESSES.keys())
def test_an_ip_literal_or_dns_name_is_a_good_address(address: str, canonical: str | None) -> None:
    assert check_address(address) == (canonical or address)


@pytest.mark.parametrize("address", BAD_ADDRESSES.values(), ids=BAD_ADDRESSES.keys())
def test_anything_else_is_bad_request_naming_the_field(address: object) -> None:
    with pytest.raises(BadRequest, match=r"^address: "):
        check_address(address)
