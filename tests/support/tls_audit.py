"""TLS audit of a live indexd and a live peerd (``make audit``, or
``python tests/support/tls_audit.py``).

Starts ``python -m indexd`` and ``python -m peerd`` on loopback with a throwaway PKI and checks,
against the running daemons, what PROTOCOL.md §1 and README.md's security model promise:

- only TLS 1.3 is spoken: SSL 2/3 and TLS 1.0/1.1/1.2 are refused;
- every cipher suite accepted is an AEAD suite;
- X25519 is the only key-exchange group;
- the peer requires a CA-issued client certificate; the index accepts a client without one but
  refuses one from another CA; neither compresses.

Three independent probes: sslyze (when installed: ``make audit`` installs it in its own venv,
because it pins an older ``cryptography``), Python's ``ssl`` module, and ``openssl s_client``
(one TLS 1.3 cipher suite or group at a time, which Python cannot ask for). Prints one line per
check and a summary; exits 1 if any check fails (0 otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from certs import init_pki  # noqa: E402

HOST = "127.0.0.1"
AEAD_SUITES = frozenset(
    {
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS_AES_128_CCM_SHA256",
        "TLS_AES_128_CCM_8_SHA256",
    }
)
EXPECTED_GROUP = "X25519"
OTHER_GROUPS = ("P-256", "P-384", "P-521", "X448", "ffdhe2048", "ffdhe3072")
PASSWORD = "tls audit password"


@dataclass
class Check:
    """One line of the report."""

    target: str
    name: str
    ok: bool
    detail: str


@dataclass
class Target:
    """A daemon under audit: where it listens, its TLS name, and whether it needs a cert."""

    label: str
    port: int
    name: str
    needs_client_cert: bool


class Audit:
    """Runs the probes and collects the checks."""

    def __init__(self, pki: Path, other_pki: Path) -> None:
        self.pki = pki
        self.other_pki = other_pki
        self.checks: list[Check] = []

    def record(self, target: Target, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(target.label, name, ok, detail))
        mark = "PASS" if ok else "FAIL"
        print(f"  [{mark}] {target.label:<6} {name:<44} {detail}", flush=True)

    # --- Python's ssl ---------------------------------------------------------------------

    def _context(
        self,
        version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
        cert: str | None = "peer2",
        pki: Path | None = None,
    ) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(self.pki / "ca.crt"))
        if version < ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL 3 offer TLS 1.0/1.1 at all
        ctx.minimum_version = ctx.maximum_version = version
        if cert is not None:
            where = pki or self.pki
            ctx.load_cert_chain(str(where / f"{cert}.crt"), str(where / f"{cert}.key"))
        return ctx

    def _talk(self, target: Target, ctx: ssl.SSLContext) -> tuple[bool, str]:
        """Handshake and one read: (True, "cipher / version") if the server kept talking."""
        try:
            with (
                socket.create_connection((HOST, target.port), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname=target.name) as tls,
            ):
                cipher = tls.cipher()  # None only before the handshake
                described = f"{tls.version()} {cipher[0] if cipher else '?'}"
                compression = tls.compression()
                # TLS 1.3 refuses a client certificate after the handshake: read to see it.
                tls.settimeout(1.0)
                try:
                    data = tls.recv(1)
                except TimeoutError:
                    data = None  # still open, nothing to say: accepted
                if data == b"":
                    return False, "closed by the server after the handshake"
                return True, described + (f" compression={compression}" if compression else "")
        except (ssl.SSLError, OSError) as exc:
            return False, f"refused ({type(exc).__name__}: {exc})"

    def python_probes(self, target: Target) -> None:
        for version, label in (
            (ssl.TLSVersion.TLSv1, "TLS 1.0"),
            (ssl.TLSVersion.TLSv1_1, "TLS 1.1"),
            (ssl.TLSVersion.TLSv1_2, "TLS 1.2"),
        ):
            try:
                ctx = self._context(version)
            except (ssl.SSLError, ValueError) as exc:
                self.record(target, f"python: {label} refused", True, f"not offered here ({exc})")
                continue
            accepted, detail = self._talk(target, ctx)
            if "NO_PROTOCOLS_AVAILABLE" in detail:
                self.record(
                    target, f"python: {label} refused", True, "this OpenSSL cannot offer it"
                )
                continue
            self.record(target, f"python: {label} refused", not accepted, detail)
        accepted, detail = self._talk(target, self._context())
        cipher = detail.split()[1] if accepted and len(detail.split()) > 1 else ""
        self.record(
            target,
            "python: TLS 1.3 accepted with an AEAD suite",
            accepted and detail.startswith("TLSv1.3") and cipher in AEAD_SUITES,
            detail,
        )
        self.record(
            target, "python: no TLS compression", accepted and "compression=" not in detail, detail
        )
        for group in ("prime256v1", "secp384r1", "secp521r1"):
            ctx = self._context()
            ctx.set_ecdh_curve(group)
            accepted, detail = self._talk(target, ctx)
            self.record(target, f"python: key exchange {group} refused", not accepted, detail)

    def client_cert_probes(self, target: Target) -> None:
        without, d1 = self._talk(target, self._context(cert=None))
        foreign, d2 = self._talk(target, self._context(cert="peer1", pki=self.other_pki))
        with_ca, d3 = self._talk(target, self._context(cert="peer2"))
        if target.needs_client_cert:
            self.record(target, "client certificate required (none sent)", not without, d1)
        else:
            self.record(target, "a client without certificate is accepted", without, d1)
        self.record(target, "a client certificate of another CA refused", not foreign, d2)
        self.record(target, "a client certificate of the CA accepted", with_ca, d3)

    # --- openssl s_client -----------------------------------------------------------------

    def _s_client(self, target: Target, *args: str, cert: bool = True) -> tuple[bool, str]:
        argv = [
            "openssl", "s_client",
            "-connect", f"{HOST}:{target.port}",
            "-servername", target.name,
            "-CAfile", str(self.pki / "ca.crt"),
            "-verify_return_error",
            *args,
        ]  # fmt: skip
        if cert:
            argv += ["-cert", str(self.pki / "peer2.crt"), "-key", str(self.pki / "peer2.key")]
        try:
            done = subprocess.run(argv, input=b"", capture_output=True, timeout=15, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"openssl failed: {exc}"
        out = done.stdout.decode(errors="replace")
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("New, ") and "Cipher is" in line:
                cipher = line.rsplit(" ", 1)[1]
                if cipher != "(NONE)":
                    temp = next(
                        (
                            x.split(":", 1)[1].strip()
                            for x in out.splitlines()
                            if "Server Temp Key" in x or "Peer Temp Key" in x
                        ),
                        "?",
                    )
                    return True, f"{line.split(',')[1].strip()} {cipher} key exchange {temp}"
        tail = (done.stderr.decode(errors="replace").strip().splitlines() or ["refused"])[-1]
        return False, f"refused ({tail[:90]})"

    def openssl_probes(self, target: Target) -> None:
        for flag, label in (("-tls1", "TLS 1.0"), ("-tls1_1", "TLS 1.1"), ("-tls1_2", "TLS 1.2")):
            accepted, detail = self._s_client(target, flag, "-cipher", "DEFAULT:@SECLEVEL=0")
            self.record(target, f"openssl: {label} refused", not accepted, detail)
        accepted_suites = []
        for suite in sorted(AEAD_SUITES):
            accepted, detail = self._s_client(target, "-tls1_3", "-ciphersuites", suite)
            if accepted:
                accepted_suites.append(suite)
                self.record(
                    target,
                    f"openssl: {suite} accepted is AEAD",
                    suite in AEAD_SUITES and f"key exchange {EXPECTED_GROUP}" in detail,
                    detail,
                )
            else:
                self.record(target, f"openssl: {suite} not offered (fine)", True, detail)
        self.record(
            target,
            "openssl: at least one TLS 1.3 suite accepted",
            bool(accepted_suites),
            ", ".join(accepted_suites) or "none",
        )
        accepted, detail = self._s_client(target, "-tls1_3", "-groups", EXPECTED_GROUP)
        self.record(target, f"openssl: key exchange {EXPECTED_GROUP} accepted", accepted, detail)
        for group in OTHER_GROUPS:
            accepted, detail = self._s_client(target, "-tls1_3", "-groups", group)
            self.record(target, f"openssl: key exchange {group} refused", not accepted, detail)

    # --- sslyze ---------------------------------------------------------------------------

    def sslyze_probes(self, target: Target) -> None:
        try:
            from sslyze import (
                ClientAuthenticationCredentials,
                OpenSslFileTypeEnum,
                Scanner,
                ServerNetworkConfiguration,
                ServerNetworkLocation,
                ServerScanRequest,
                ServerScanStatusEnum,
            )
            from sslyze.plugins.scan_commands import ScanCommand
        except ImportError:
            self.record(target, "sslyze", True, "not installed: skipped (make audit installs it)")
            return
        location = ServerNetworkLocation(target.name, target.port, ip_address=HOST)
        commands = {
            ScanCommand.SSL_2_0_CIPHER_SUITES,
            ScanCommand.SSL_3_0_CIPHER_SUITES,
            ScanCommand.TLS_1_0_CIPHER_SUITES,
            ScanCommand.TLS_1_1_CIPHER_SUITES,
            ScanCommand.TLS_1_2_CIPHER_SUITES,
            ScanCommand.TLS_1_3_CIPHER_SUITES,
            ScanCommand.ELLIPTIC_CURVES,
            ScanCommand.TLS_COMPRESSION,
            ScanCommand.HEARTBLEED,
            ScanCommand.OPENSSL_CCS_INJECTION,
        }

        def scan(credentials: object | None) -> object:
            config = ServerNetworkConfiguration(
                target.name, tls_client_auth_credentials=credentials
            )
            scanner = Scanner()
            scanner.queue_scans(
                [
                    ServerScanRequest(
                        server_location=location,
                        network_configuration=config,
                        scan_commands=commands,
                    )
                ]
            )
            return next(iter(scanner.get_results()))

        if target.needs_client_cert:
            bare = scan(None)
            self.record(
                target,
                "sslyze: no connection without a client cert",
                bare.scan_status == ServerScanStatusEnum.ERROR_NO_CONNECTIVITY,  # type: ignore[attr-defined]
                str(bare.scan_status),  # type: ignore[attr-defined]
            )
        credentials = None
        if target.needs_client_cert:
            # (sslyze's legacy-protocol client cannot present an Ed25519 key, so against the
            # peer it checks TLS 1.3 only; the Python and openssl probes cover the rest.)
            credentials = ClientAuthenticationCredentials(
                certificate_chain_path=self.pki / "peer2.crt",
                key_path=self.pki / "peer2.key",
                key_type=OpenSslFileTypeEnum.PEM,
            )
        result = scan(credentials)
        if result.scan_status != ServerScanStatusEnum.COMPLETED:  # type: ignore[attr-defined]
            self.record(target, "sslyze: scan completed", False, str(result.scan_status))  # type: ignore[attr-defined]
            return
        scan_result = result.scan_result  # type: ignore[attr-defined]
        for attr, label in (
            ("ssl_2_0_cipher_suites", "SSL 2.0"),
            ("ssl_3_0_cipher_suites", "SSL 3.0"),
            ("tls_1_0_cipher_suites", "TLS 1.0"),
            ("tls_1_1_cipher_suites", "TLS 1.1"),
            ("tls_1_2_cipher_suites", "TLS 1.2"),
        ):
            attempt = getattr(scan_result, attr)
            if attempt.result is None:
                if not target.needs_client_cert:
                    self.record(target, f"sslyze: {label} refused", False, "scan failed")
                continue
            accepted = [s.cipher_suite.name for s in attempt.result.accepted_cipher_suites]
            self.record(
                target,
                f"sslyze: {label} refused",
                not accepted,
                ", ".join(accepted) or "none accepted",
            )
        tls13 = scan_result.tls_1_3_cipher_suites.result
        accepted13 = [s.cipher_suite.name for s in tls13.accepted_cipher_suites] if tls13 else []
        self.record(
            target,
            "sslyze: TLS 1.3 suites all AEAD",
            bool(accepted13) and set(accepted13) <= AEAD_SUITES,
            ", ".join(accepted13) or "none accepted",
        )
        curves = scan_result.elliptic_curves.result
        supported = sorted(c.name for c in (curves.supported_curves or [])) if curves else []
        self.record(
            target,
            f"sslyze: only {EXPECTED_GROUP}",
            supported == [EXPECTED_GROUP],
            ", ".join(supported),
        )
        compression = scan_result.tls_compression.result
        if compression is not None:
            self.record(
                target, "sslyze: compression disabled", not compression.supports_compression, ""
            )
        heartbleed = scan_result.heartbleed.result
        if heartbleed is not None:
            self.record(
                target,
                "sslyze: not vulnerable to Heartbleed",
                not heartbleed.is_vulnerable_to_heartbleed,
                "",
            )
        ccs = scan_result.openssl_ccs_injection.result
        if ccs is not None:
            self.record(
                target,
                "sslyze: not vulnerable to CCS injection",
                not ccs.is_vulnerable_to_ccs_injection,
                "",
            )


# --- the daemons -------------------------------------------------------------------------------


def _ready_line(proc: subprocess.Popen[bytes], what: str, log: Path) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    line = proc.stdout.readline().decode()
    if not line or time.monotonic() > deadline:
        raise SystemExit(f"tls_audit: {what} did not start:\n{log.read_text()}")
    return line


@contextlib.contextmanager
def daemons(work: Path) -> Iterator[tuple[Target, Target]]:
    """Run indexd and peerd (peer1) on loopback ports for the block."""
    pki = work / "pki"
    env = {**os.environ, "PYTHONPATH": str(REPO), "P2P_PASSWORD": PASSWORD}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        index_log = work / "indexd.log"
        with index_log.open("wb") as err:
            index = subprocess.Popen(
                [
                    sys.executable, "-m", "indexd", "--port", "0", "--db", str(work / "index.db"),
                    "--cert", str(pki / "indexd.crt"), "--key", str(pki / "indexd.key"),
                    "--ca", str(pki / "ca.crt"), "--bcrypt-cost", "4",
                ],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO, env=env,
            )  # fmt: skip
        procs.append(index)
        index_port = int(_ready_line(index, "indexd", index_log).rsplit(":", 1)[1])
        share = work / "share"
        (share / "audit").mkdir(parents=True)
        (share / "audit" / "file.txt").write_bytes(b"audited\n")
        peer_log = work / "peerd.log"
        with peer_log.open("wb") as err:
            peer = subprocess.Popen(
                [
                    sys.executable, "-m", "peerd", "-hostname", "peer1",
                    "-index_server_name", f"{HOST}:{index_port}", "-peer_server_port", "0",
                    "-username", "peer1", "-file_directory", str(share),
                    "-certificate", str(pki / "peer1.crt"), "-private_key", str(pki / "peer1.key"),
                    "--ca", str(pki / "ca.crt"), "--bind", HOST, "--register", "--no-shell",
                ],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO, env=env,
            )  # fmt: skip
        procs.append(peer)
        peer_port = int(_ready_line(peer, "peerd", peer_log).rsplit(" ", 1)[1])
        yield (
            Target("indexd", index_port, "indexd", needs_client_cert=False),
            Target("peerd", peer_port, "peer1", needs_client_cert=True),
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    """Run the audit; 0 if every check passed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-sslyze", action="store_true", help="skip the sslyze probes")
    parser.add_argument("--no-openssl", action="store_true", help="skip the openssl probes")
    args = parser.parse_args(argv)
    # Offering TLS 1.0/1.1 on purpose is the point here, not a mistake to warn about.
    warnings.filterwarnings("ignore", "ssl.TLSVersion", DeprecationWarning)
    with tempfile.TemporaryDirectory(prefix="p2pshare-tls-audit-") as tmp:
        work = Path(tmp)
        init_pki(work / "pki", ("indexd", "peer1", "peer2"), overwrite=True)
        init_pki(work / "other-pki", ("peer1",), overwrite=True)
        audit = Audit(work / "pki", work / "other-pki")
        with daemons(work) as targets:
            for target in targets:
                print(f"{target.label} on {HOST}:{target.port} ({target.name})", flush=True)
                if not args.no_sslyze:
                    audit.sslyze_probes(target)
                audit.python_probes(target)
                audit.client_cert_probes(target)
                if args.no_openssl:
                    pass
                elif shutil.which("openssl") is None:
                    audit.record(target, "openssl", True, "openssl not found: skipped")
                else:
                    audit.openssl_probes(target)
    failed = [c for c in audit.checks if not c.ok]
    print()
    print(f"TLS audit: {len(audit.checks) - len(failed)} passed, {len(failed)} failed")
    for check in failed:
        print(f"  FAILED {check.target}: {check.name}: {check.detail}")
    if not failed:
        print(
            "  indexd and peerd speak TLS 1.3 only, with AEAD suites only, over X25519 only;"
            " peerd requires a CA-issued client certificate."
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
