"""Where no system PostgreSQL is installed, the suite's server comes from the ``pgserver``
wheel (tests/support/postgres.py, README "Database"): that fallback starts and serves the
index's store like the system's server does."""

from __future__ import annotations

import os

import psycopg
import pytest

from indexd.pgstore import PostgresIndexStore
from tests.support.postgres import pgserver_binaries, start_postgres


def test_the_pgserver_wheel_binaries_run_a_server_the_store_works_on() -> None:
    bindir = pgserver_binaries()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the test extra's pgserver wheel is not installed")
        pytest.skip("pgserver is not installed (pip install -e '.[test]')")
    server = start_postgres(bindir)
    try:
        url = server.new_database("fallback")
        with psycopg.connect(url) as conn:
            [(version,)] = conn.execute("SHOW server_version_num").fetchall()
        assert int(version) >= 150000
        store = PostgresIndexStore(url)
        try:
            assert store.add_user("alice", b"$2b$04$hash", 1.0)
            assert store.password_hash("alice") == b"$2b$04$hash"
        finally:
            store.close()
    finally:
        server.stop()
