"""indexd.pgstore as the daemon uses it: ``indexd --db postgresql://…`` serving register, auth,
sync and search from PostgreSQL, two daemons on one database, start-up errors that name the
database without its password. (The store's own behaviour: tests/indexd/test_store.py.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from indexd.__main__ import build_parser, config_from_args
from indexd.app import open_store
from indexd.pgstore import PostgresIndexStore, describe, safe_reason
from indexd.store import is_postgres_url
from netproto.operations import SharedFile
from runner import StartupError
from tests.support.failover import refusing_port

PASSWORD = "correct horse battery"


def _file(keyword: str, name: str) -> SharedFile:
    return SharedFile(name, keyword, 1, bytes(32))


async def test_a_daemon_on_postgresql_registers_logs_in_syncs_and_searches(
    postgres_url: str,
    index_config: Callable[..., Any],
    running_index: Any,
    index_client: Any,
) -> None:
    config = index_config(db=postgres_url)
    async with running_index(config) as daemon, index_client(daemon.port, cert="peer1") as client:
        assert await client.register("alice", PASSWORD) == {"username": "alice"}
        await client.login("alice", PASSWORD)
        assert await client.sync("peer1", [_file("Music", "a.mp3"), _file("docs", "b")]) == 2
        [hit] = await client.search("music")
        assert (hit.domain_name, [f.filename for f in hit.files]) == ("peer1", ["a.mp3"])
    store = PostgresIndexStore(postgres_url)
    try:
        assert store.password_hash("alice") is not None
        assert [r.domain_name for r, _ in store.iter_listings()] == ["peer1"]
    finally:
        store.close()


async def test_a_second_daemon_on_the_same_database_loads_what_the_first_stored(
    postgres_url: str,
    index_config: Callable[..., Any],
    running_index: Any,
    index_client: Any,
) -> None:
    async with running_index(index_config(db=postgres_url)) as first:
        async with index_client(first.port, cert="peer1") as client:
            await client.register("alice", PASSWORD)
            await client.login("alice", PASSWORD)
            await client.sync("peer1", [_file("koala", "k.txt")])
        async with (
            running_index(index_config(db=postgres_url)) as second,
            index_client(second.port) as other,
        ):
            await other.login("alice", PASSWORD)
            [hit] = await other.search("koala")
            assert hit.domain_name == "peer1"


def test_an_unreachable_database_is_one_line_naming_it_without_the_password() -> None:
    with refusing_port("127.0.0.1") as port:
        url = f"postgresql://indexd:hunter2-secret@127.0.0.1:{port}/index"
        with pytest.raises(StartupError) as info:
            open_store(url)
    message = str(info.value)
    assert message.startswith(f"cannot open database postgresql://indexd@127.0.0.1:{port}/")
    assert "hunter2-secret" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("postgresql://u:s3cr%zzet@127.0.0.1:1/db", "s3cr%zzet"),  # a bad percent-escape
        ("postgresql://u:s3cret@[::1/db", "s3cret"),  # an unclosed IPv6 bracket
        ("postgresql://u:pw-secret@127.0.0.1:1/db?bogus_option=1", "pw-secret"),
        ("postgresql://u@127.0.0.1:1/db?password=q-secret&bogus_option=1", "q-secret"),
    ],
)
def test_a_malformed_url_is_a_startup_error_without_the_password(url: str, password: str) -> None:
    with pytest.raises(StartupError) as info:
        open_store(url)
    message = str(info.value)
    assert message.startswith("cannot open database postgres") and message.endswith(
        ": malformed URL"
    )
    assert password not in message and "secret" not in message and "\n" not in message


def test_safe_reason_strips_the_url_and_the_password_raw_and_decoded() -> None:
    url = "postgresql://u:p%40ss-word@db.example/index"
    failure = RuntimeError(f'could not reach "{url}" as u with p@ss-word or p%40ss-word\nmore')
    reason = safe_reason(failure, url)
    assert reason == 'could not reach "***" as u with *** or ***'


def test_describe_drops_the_password_and_query_but_keeps_where() -> None:
    assert describe("postgresql://u:pw@db.example:5433/index?sslmode=require") == (
        "postgresql://u@db.example:5433/index"
    )
    assert describe("postgres://[::1]/x") == "postgres://[::1]/x"


def test_db_flag_takes_a_url_or_a_file(tmp_path: Path) -> None:
    common = ["--cert", "c", "--key", "k", "--ca", "a"]
    url = "postgresql://u@127.0.0.1:5432/index"
    assert config_from_args(build_parser().parse_args([*common, "--db", url])).db == url
    as_file = config_from_args(build_parser().parse_args([*common, "--db", "x.db"])).db
    assert as_file == Path("x.db")
    assert is_postgres_url(url) and not is_postgres_url(Path("postgresql:"))
