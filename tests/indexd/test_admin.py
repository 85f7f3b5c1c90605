"""indexd admin: revoke, disable-user, enable-user, certificates and stats, on a SQLite file
and on a PostgreSQL URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexd import __main__ as indexd_main
from indexd.admin import main, parse_serial
from indexd.pgstore import PostgresIndexStore
from indexd.store import IssuedCertificate, SqliteIndexStore
from runner import ExitCode
from tests.support.failover import refusing_port


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database with alice, who holds certificate ab12 for laptop."""
    path = tmp_path / "index.db"
    store = SqliteIndexStore(path)
    store.add_user("alice", b"hash", 1.0)
    store.record_certificate(IssuedCertificate("ab12", "alice", "laptop", 1.0, 4e9))
    store.close()
    return path


def _revoked(db: Path) -> frozenset[str]:
    store = SqliteIndexStore(db)
    try:
        return store.revocations(0.0)[1]
    finally:
        store.close()


def test_revoke_by_serial_takes_the_form_certs_show_prints(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert indexd_main.main(["admin", "--db", str(db), "revoke", "--serial", "AB:12"]) == 0
    assert "revoked 1 certificate(s)" in capsys.readouterr().out
    assert _revoked(db) == {"ab12"}
    assert main(["--db", str(db), "revoke", "--serial", "ab12"]) == ExitCode.FAILURE


@pytest.mark.parametrize("how", [["--user", "Alice"], ["--domain", "LAPTOP"]])
def test_revoke_by_user_or_domain(db: Path, how: list[str]) -> None:
    assert main(["--db", str(db), "revoke", *how]) == 0
    assert _revoked(db) == {"ab12"}


def test_disable_user_revokes_its_certificates_and_enable_user_lets_it_log_in(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--db", str(db), "disable-user", "alice"]) == 0
    assert "disabled alice; revoked 1 certificate(s)" in capsys.readouterr().out
    assert main(["--db", str(db), "disable-user", "carol"]) == ExitCode.FAILURE
    assert main(["--db", str(db), "enable-user", "alice"]) == 0
    store = SqliteIndexStore(db)
    try:
        assert store.password_hash("alice") == b"hash"
    finally:
        store.close()
    assert main(["--db", str(db), "certificates"]) == 0
    assert "ab12 alice laptop" in capsys.readouterr().out.splitlines()[-1]


def test_admin_refuses_a_missing_database_and_a_bad_serial(tmp_path: Path) -> None:
    assert main(["--db", str(tmp_path / "none.db"), "certificates"]) == ExitCode.FAILURE
    assert not (tmp_path / "none.db").exists()
    with pytest.raises(Exception, match="not a hex serial"):
        parse_serial("xyz")


def test_stats_prints_the_counts_of_a_sqlite_database(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--db", str(db), "stats"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "users 1",
        "peers 0",
        "live_peers 0",
        "files 0",
        "keywords 0",
        "revoked_sessions 0",
        "certificates 1",
    ]


def test_admin_takes_a_postgresql_url_for_stats_and_revocations(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = PostgresIndexStore(postgres_url)
    store.add_user("alice", b"hash", 1.0)
    store.record_certificate(IssuedCertificate("ab12", "alice", "laptop", 1.0, 4e9))
    store.close()
    assert indexd_main.main(["admin", "--db", postgres_url, "stats"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "users 1" in out and "certificates 1" in out
    assert main(["--db", postgres_url, "revoke", "--user", "alice"]) == 0
    store = PostgresIndexStore(postgres_url)
    try:
        assert store.revocations(0.0)[1] == {"ab12"}
    finally:
        store.close()


def test_admin_names_an_unreachable_postgresql_database_without_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with refusing_port("127.0.0.1") as port:
        url = f"postgresql://op:s3cret-pw@127.0.0.1:{port}/index"
        assert main(["--db", url, "stats"]) == ExitCode.FAILURE
    err = capsys.readouterr().err
    assert f"cannot open database postgresql://op@127.0.0.1:{port}/index:" in err
    assert "s3cret-pw" not in err


@pytest.mark.parametrize(
    "url", ["postgresql://op:s3cr%zzet-pw@h/index", "postgresql://op:s3cret-pw@[::1/index"]
)
def test_admin_calls_a_malformed_url_malformed_without_its_password(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--db", url, "stats"]) == ExitCode.FAILURE
    err = capsys.readouterr().err
    assert "malformed URL" in err and "s3cr" not in err
