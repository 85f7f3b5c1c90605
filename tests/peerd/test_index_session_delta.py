"""Incremental sync in the index session (peerd/index_session.py, PROTOCOL.md §4.3.1), against
a fake index: only the changes go once the index acknowledged a version; the whole listing
goes when there is none, when the versions disagree, or when the index does not know
``sync_delta``."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio

from certs import load_cert
from netproto.errors import UnknownOp
from netproto.operations import SharedFile
from peerd.index_session import IndexLink, IndexSession
from tests.support.fake_clock import FakeClock
from tests.support.fake_index import FakeIndex

FILES = [SharedFile(f"{i}.txt", "koala", i, bytes(32)) for i in range(10)]
NEW = SharedFile("new.txt", "koala", 3, bytes([1]) * 32)


@pytest.fixture
def index(pki: Any) -> FakeIndex:
    return FakeIndex(FakeClock(), load_cert(pki.cert("indexd")))


@pytest_asyncio.fixture(loop_scope="function")
async def started(index: FakeIndex) -> tuple[IndexSession, IndexLink]:
    """A session logged in whose first sync sent the whole listing."""
    session = IndexSession(
        index.connect,
        where="127.0.0.1:7000",
        domain_name="peer1",
        username="peer1",
        password="correct horse battery",
        clock=index.clock,
    )
    link = await session.connect()
    await session.auth(link)
    report = await session.update(link, FILES, 7001)
    assert report.full and report.sent == len(FILES) and report.added == len(FILES)
    return session, link


async def test_after_the_first_sync_only_the_changes_are_sent(
    started: tuple[IndexSession, IndexLink], index: FakeIndex
) -> None:
    session, link = started
    files = [*FILES[1:], NEW]  # one removed, one added
    report = await session.update(link, files, 7001)
    assert (report.added, report.changed, report.removed, report.sent) == (1, 0, 1, 2)
    assert not report.full and report.files == len(files)
    assert index.sent == [len(FILES), 2]
    assert sorted(index.listing, key=lambda f: f.filename) == sorted(
        files, key=lambda f: f.filename
    )
    assert session.version == index.version


async def test_nothing_changed_sends_nothing(
    started: tuple[IndexSession, IndexLink], index: FakeIndex
) -> None:
    session, link = started
    report = await session.update(link, list(FILES), 7001)
    assert report.sent == 0 and report.changes == 0 and not report.full
    assert index.sent == [len(FILES)]


async def test_a_version_the_index_does_not_hold_sends_the_whole_listing(
    started: tuple[IndexSession, IndexLink], index: FakeIndex
) -> None:
    session, link = started
    index.version = None  # the index restarted and lost track
    report = await session.update(link, [*FILES, NEW], 7001)
    assert report.full and report.sent == len(FILES) + 1 and report.added == 1
    assert [op for op, _ in index.calls][-2:] == ["sync_delta", "sync"]
    assert session.version == index.version


async def test_an_index_without_sync_delta_gets_whole_listings_from_then_on(
    started: tuple[IndexSession, IndexLink], index: FakeIndex
) -> None:
    session, link = started
    index.errors["sync_delta"] = [UnknownOp("unknown operation 'sync_delta'")]
    await session.update(link, [*FILES, NEW], 7001)
    await session.update(link, list(FILES), 7001)
    assert [op for op, _ in index.calls].count("sync_delta") == 1
    assert index.sent == [len(FILES), len(FILES) + 1, len(FILES)]


async def test_changes_too_large_for_one_frame_go_as_a_whole_listing(
    started: tuple[IndexSession, IndexLink], index: FakeIndex
) -> None:
    session, link = started
    many = [SharedFile(f"{i:0200d}", "koala", 1, bytes(32)) for i in range(6000)]
    report = await session.update(link, many, 7001)
    assert report.full and index.sent[-1] == len(many)
    assert "sync_delta" not in [op for op, _ in index.calls]
