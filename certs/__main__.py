"""Command line for the PKI tool: ``python -m certs {ca,issue,init,show,fingerprint} ...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from certs import pki
from certs.requests import ca_fingerprint
from runner import CommandError, ExitCode, run_command


def _ca_paths(directory: Path) -> tuple[Path, Path]:
    return directory / pki.CA_CERT_NAME, directory / pki.CA_KEY_NAME


def _replace_or_refuse(paths: Sequence[Path], force: bool) -> None:
    if not force:
        pki.check_absent(paths)


def _wrote(out: TextIO, *paths: Path) -> None:
    for path in paths:
        print(f"wrote {path}", file=out)


def _cmd_ca(args: argparse.Namespace, out: TextIO) -> None:
    cert_path, key_path = _ca_paths(args.dir)
    _replace_or_refuse([cert_path, key_path], args.force)
    cert, key = pki.make_ca(args.name, args.days)
    pki.make_private_dir(args.dir)
    pki.write_key(key_path, key, overwrite=args.force)
    pki.write_cert(cert_path, cert, overwrite=args.force)
    _wrote(out, cert_path, key_path)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ed25519.Ed25519PrivateKey]:
    cert_path, key_path = _ca_paths(directory)
    for path in (cert_path, key_path):
        if not path.is_file():
            raise CommandError(
                f"no CA in {directory}: {path} not found"
                f" (make one first: python -m certs ca --dir {directory})"
            )
    pki.check_private_key_file(key_path)
    return pki.load_cert(cert_path), pki.load_key(key_path)


def _cmd_issue(args: argparse.Namespace, out: TextIO) -> None:
    cert_path, key_path = pki.leaf_paths(args.dir, args.name)
    ca_cert, ca_key = _load_ca(args.dir)
    _replace_or_refuse([cert_path, key_path], args.force)
    cert, key = pki.issue_leaf(
        ca_cert, ca_key, args.name, args.ip, days=args.days, loopback=args.loopback, dns=args.dns
    )
    pki.write_key(key_path, key, overwrite=args.force)
    pki.write_cert(cert_path, cert, overwrite=args.force)
    _wrote(out, cert_path, key_path)


def _cmd_init(args: argparse.Namespace, out: TextIO) -> None:
    pki.init_pki(args.dir, args.names, args.ip, overwrite=args.force)
    written = list(_ca_paths(args.dir))
    for name in args.names:
        written.extend(pki.leaf_paths(args.dir, name))
    _wrote(out, *written)


def _general_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return dns, ips


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _cmd_show(args: argparse.Namespace, out: TextIO) -> None:
    cert = pki.load_cert(args.file)
    dns, ips = _general_names(cert)
    rows = [
        ("file", str(args.file)),
        ("subject", cert.subject.rfc4514_string()),
        ("issuer", cert.issuer.rfc4514_string()),
        ("ca", "yes" if _is_ca(cert) else "no"),
        ("dns names", ", ".join(dns) or "-"),
        ("ip addresses", ", ".join(ips) or "-"),
        ("not before", cert.not_valid_before_utc.isoformat()),
        ("not after", cert.not_valid_after_utc.isoformat()),
        ("serial", f"{cert.serial_number:x}"),
        ("sha256", pki.fingerprint(cert)),
    ]
    width = max(len(label) for label, _ in rows) + 1
    for label, value in rows:
        print(f"{label + ':':<{width}} {value}", file=out)


def _cmd_fingerprint(args: argparse.Namespace, out: TextIO) -> None:
    print(ca_fingerprint(pki.load_cert(args.file)), file=out)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m certs", description="Make the p2pshare CA and its leaf certificates."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", type=Path, required=True, help="PKI directory")

    def add_force(p: argparse.ArgumentParser) -> None:
        p.add_argument("--force", action="store_true", help="replace existing keys/certificates")

    def add_leaf_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--ip", action="append", default=[], metavar="IP", help="extra IP SAN (repeatable)"
        )
        p.add_argument(
            "--no-loopback",
            dest="loopback",
            action="store_false",
            help="leave 127.0.0.1 and ::1 out of the SANs",
        )

    ca = sub.add_parser("ca", help="make the CA: DIR/ca.crt, DIR/ca.key")
    add_dir(ca)
    ca.add_argument("--name", default="p2pshare CA", help="CA common name")
    ca.add_argument("--days", type=int, default=3650, help="validity in days")
    add_force(ca)
    ca.set_defaults(run=_cmd_ca)

    issue = sub.add_parser("issue", help="issue a leaf: DIR/NAME.crt, DIR/NAME.key")
    issue.add_argument("name", metavar="NAME", help="host name (DNS SAN and common name)")
    add_dir(issue)
    add_leaf_options(issue)
    issue.add_argument(
        "--dns",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS SAN after NAME, which stays the first (repeatable)",
    )
    issue.add_argument("--days", type=int, default=825, help="validity in days")
    add_force(issue)
    issue.set_defaults(run=_cmd_issue)

    init = sub.add_parser("init", help="make a CA and one leaf per NAME")
    add_dir(init)
    init.add_argument("names", nargs="+", metavar="NAME", help="host names")
    init.add_argument(
        "--ip", action="append", default=[], metavar="IP", help="extra IP SAN (repeatable)"
    )
    add_force(init)
    init.set_defaults(run=_cmd_init)

    show = sub.add_parser("show", help="print a certificate's names, validity and fingerprint")
    show.add_argument("file", type=Path, metavar="FILE")
    show.set_defaults(run=_cmd_show)

    fingerprint = sub.add_parser(
        "fingerprint",
        help="print the CA fingerprint newcomers pass to peerd --ca-fingerprint (SHA256:<hex>)",
    )
    fingerprint.add_argument("file", type=Path, metavar="FILE", help="the CA certificate")
    fingerprint.set_defaults(run=_cmd_fingerprint)
    return parser


def _describe(exc: OSError) -> str:
    if exc.filename is not None:
        return f"{exc.strerror or exc}: {exc.filename}"
    return str(exc)


def _run(args: argparse.Namespace) -> None:
    """Run the subcommand; what can go wrong becomes one :class:`CommandError` line."""
    try:
        args.run(args, sys.stdout)
    except FileExistsError as exc:
        hint = " (use --force to replace it)" if hasattr(args, "force") else ""
        raise CommandError(f"{_describe(exc)}{hint}") from exc
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    except OSError as exc:
        raise CommandError(_describe(exc)) from exc


def main(argv: Sequence[str] | None = None) -> ExitCode:
    """Run the PKI tool: OK, FAILURE if the command failed, USAGE for a bad command line."""
    parser = build_parser()
    return run_command("certs", lambda: _run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
