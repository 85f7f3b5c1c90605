"""A small Ed25519 PKI: one CA, and leaf certificates for the index and each peer.

Every daemon is both a TLS server and a TLS client (peers use mutual TLS), so each leaf carries
``serverAuth`` and ``clientAuth``. Its DNS SAN is the name the others verify it by (its
``domain_name``), plus loopback addresses for local use. Keys are PEM PKCS#8, written with mode
0600 from the moment the file exists, and never replaced unless asked (then as a new file:
the old one is unlinked first). A daemon loads a key only if it is its user's own file with
mode 0600 (:func:`check_private_key_file`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT_NAME",
    "CA_KEY_NAME",
    "check_absent",
    "check_private_key_file",
    "fingerprint",
    "init_pki",
    "issue_leaf",
    "leaf_paths",
    "load_cert",
    "load_identity",
    "load_key",
    "make_ca",
    "make_private_dir",
    "validate_name",
    "write_cert",
    "write_key",
]

T = TypeVar("T")

CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"

# Certificates start a little in the past so a peer whose clock lags still accepts them.
CLOCK_SKEW = dt.timedelta(minutes=5)
LOOPBACK_IPS = ("127.0.0.1", "::1")

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_NAME = 253
_KEY_MODE = 0o600
_CERT_MODE = 0o644
_DIR_MODE = 0o700


def validate_name(name: str) -> str:
    """Check ``name`` is a DNS host name and return it lower-cased; raise ValueError if not."""
    if not name:
        raise ValueError("invalid name '': a host name must not be empty")
    lowered = name.lower()
    if len(lowered) > _MAX_NAME:
        raise ValueError(f"invalid name {name!r}: longer than {_MAX_NAME} characters")
    for label in lowered.split("."):
        if not label:
            raise ValueError(f"invalid name {name!r}: empty label (leading, trailing or '..')")
        if len(label) > 63:
            raise ValueError(f"invalid name {name!r}: label {label[:16]!r}... exceeds 63 chars")
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"invalid name {name!r}: label {label!r} must be letters, digits and '-',"
                " not starting or ending with '-'"
            )
    if lowered.rsplit(".", 1)[-1].isdigit():
        # TLS would treat it as an IP address and check IP SANs, not the name (PROTOCOL.md §1).
        raise ValueError(f"invalid name {name!r}: a host name, not an IP address")
    return lowered


def _ip_addresses(ips: Iterable[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Parse ``ips`` in order, dropping duplicates; raise ValueError on a malformed one."""
    parsed: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for ip in ips:
        try:
            address = ipaddress.ip_address(ip.strip())
        except ValueError:
            raise ValueError(f"invalid IP address {ip!r}") from None
        if address not in parsed:
            parsed.append(address)
    return parsed


def _check_days(days: int) -> dt.timedelta:
    if days < 1:
        raise ValueError(f"invalid validity {days} days: must be at least 1")
    return dt.timedelta(days=days)


def _subject_key_id(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def make_ca(
    common_name: str = "p2pshare CA", days: int = 3650
) -> tuple[x509.Certificate, ed25519.Ed25519PrivateKey]:
    """Make a self-signed Ed25519 CA that may sign leaves but no intermediate CAs."""
    if not common_name:
        raise ValueError("invalid CA name: the common name must not be empty")
    lifetime = _check_days(days)
    key = ed25519.Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, algorithm=None)
    )
    return cert, key


def issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: ed25519.Ed25519PrivateKey,
    name: str,
    ips: Sequence[str] = (),
    days: int = 825,
    loopback: bool = True,
    dns: Sequence[str] = (),
) -> tuple[x509.Certificate, ed25519.Ed25519PrivateKey]:
    """Issue an Ed25519 leaf for host ``name`` (TLS server and client), signed by the CA;
    ``dns``: more DNS names after ``name`` (e.g. each index server's, README.md "Two index
    servers over PostgreSQL")."""
    host = validate_name(name)
    more = [n for n in dict.fromkeys(validate_name(d) for d in dns) if n != host]
    addresses = _ip_addresses([*ips, *(LOOPBACK_IPS if loopback else ())])
    lifetime = _check_days(days)
    ca_public = ca_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    cert_public = ca_cert.public_key()
    if not isinstance(cert_public, ed25519.Ed25519PublicKey) or (
        cert_public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        != ca_public
    ):
        raise ValueError("the CA key does not belong to the CA certificate")

    key = ed25519.Ed25519PrivateKey.generate()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in (host, *more)]
    sans.extend(x509.IPAddress(address) for address in addresses)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                _subject_key_id(ca_cert)
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, algorithm=None)
    )
    return cert, key


def fingerprint(cert: x509.Certificate) -> str:
    """The certificate's SHA-256 fingerprint as colon-separated upper-case hex."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _write_file(path: Path, data: bytes, mode: int, what: str, overwrite: bool) -> None:
    """Write ``data`` to a new file that has ``mode`` from the moment it exists.

    Replacing (``overwrite``) unlinks the old name first and then creates a new file with
    ``O_EXCL``: rewriting the old inode would keep its owner, its other hard links, and any
    descriptor another user opened while it was readable, all of which would see the new key.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    if overwrite:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a symlink is removed itself, never followed
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise FileExistsError(f"refusing to overwrite existing {what} {path}") from None
    with os.fdopen(fd, "wb") as f:
        # umask may narrow the mode of the new file: set it explicitly before a byte goes in.
        os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_key(path: Path, key: ed25519.Ed25519PrivateKey, overwrite: bool = False) -> None:
    """Write ``key`` as unencrypted PEM PKCS#8 with mode 0600; refuse to replace unless asked."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_file(Path(path), data, _KEY_MODE, "key", overwrite)


def write_cert(path: Path, cert: x509.Certificate, overwrite: bool = False) -> None:
    """Write ``cert`` as PEM with mode 0644; refuse to replace an existing file unless asked."""
    data = cert.public_bytes(serialization.Encoding.PEM)
    _write_file(Path(path), data, _CERT_MODE, "certificate", overwrite)


def load_cert(path: Path) -> x509.Certificate:
    """Read a PEM certificate; raise ValueError if the file holds none."""
    data = Path(path).read_bytes()
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ValueError(f"{path} is not a PEM certificate") from None


def load_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """Read an unencrypted PEM Ed25519 private key; raise ValueError for anything else."""
    data = Path(path).read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(
            f"{path} is an encrypted private key; an unencrypted one is needed"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{path} is not a PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def check_private_key_file(path: Path) -> None:
    """Raise ValueError unless the key file belongs to this user and only this user may read
    it (mode 0600 or 0400: no group or other bits, no execute bit)."""
    st = os.stat(path)
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise ValueError(
            f"private key {path} belongs to uid {st.st_uid}, not to this user"
            f" (uid {os.geteuid()}); a key must be your own file"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & ~_KEY_MODE:
        raise ValueError(
            f"private key {path} has mode {mode:04o}; it must be 0600 (chmod 600 {path})"
        )


def leaf_paths(directory: Path, name: str) -> tuple[Path, Path]:
    """The ``(certificate, key)`` paths for leaf ``name`` in ``directory``."""
    host = validate_name(name)
    if host == Path(CA_CERT_NAME).stem:
        raise ValueError(f"invalid name {name!r}: its files would replace the CA's")
    return Path(directory) / f"{host}.crt", Path(directory) / f"{host}.key"


def check_absent(paths: Iterable[Path]) -> None:
    """Raise FileExistsError naming the first of ``paths`` that exists.

    Callers writing several files check them all first, so a refusal leaves nothing half-made.
    """
    for path in paths:
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"refusing to overwrite existing file {path}")


def make_private_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) with mode 0700 unless it already exists."""
    if not directory.exists():
        directory.mkdir(mode=_DIR_MODE, parents=True)
        os.chmod(directory, _DIR_MODE)  # mkdir's mode is narrowed by umask, never widened


def init_pki(
    directory: Path, names: Sequence[str], ips: Sequence[str] = (), overwrite: bool = False
) -> None:
    """Make a CA and one leaf per name in ``directory`` (created with mode 0700)."""
    directory = Path(directory)
    leaves = [leaf_paths(directory, name) for name in names]
    if len({cert for cert, _ in leaves}) != len(leaves):
        raise ValueError("duplicate leaf names")
    _ip_addresses(ips)
    targets = [directory / CA_CERT_NAME, directory / CA_KEY_NAME]
    targets.extend(path for pair in leaves for path in pair)
    if not overwrite:
        check_absent(targets)
    make_private_dir(directory)
    ca_cert, ca_key = make_ca()
    write_key(directory / CA_KEY_NAME, ca_key, overwrite)
    write_cert(directory / CA_CERT_NAME, ca_cert, overwrite)
    for name, (cert_path, key_path) in zip(names, leaves, strict=True):
        cert, key = issue_leaf(ca_cert, ca_key, name, ips)
        write_key(key_path, key, overwrite)
        write_cert(cert_path, cert, overwrite)


def load_identity(
    cert_path: Path, key_path: Path, ca_path: Path
) -> tuple[x509.Certificate, ed25519.Ed25519PrivateKey, x509.Certificate]:
    """Load a daemon's certificate, key and CA, and check they belong together.

    Raises ValueError with one readable line: a file that cannot be read or parsed, a key
    file that is not this user's own with mode 0600, a key that is not the certificate's, or a
    certificate the CA did not issue.
    """

    def load(what: str, path: Path, loader: Callable[[Path], T]) -> T:
        try:
            return loader(path)
        except OSError as exc:
            raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ValueError(f"bad {what} {path}: {exc}") from None

    cert = load("certificate", cert_path, load_cert)
    key = load("private key", key_path, load_key)
    check_private_key_file(key_path)
    ca = load("CA certificate", ca_path, load_cert)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    cert_key = cert.public_key()
    if not isinstance(cert_key, ed25519.Ed25519PublicKey) or (
        cert_key.public_bytes(*raw) != key.public_key().public_bytes(*raw)
    ):
        raise ValueError(f"private key {key_path} does not match certificate {cert_path}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ValueError(f"certificate {cert_path} is not issued by CA {ca_path}") from None
    return cert, key, ca
